//! Who a request comes from, by etcd's rule (`AuthInfoFromCtx`, then `AuthInfoFromTLS`):
//!
//! 1. A token in the metadata `token` (else `authorization`, the gateway's name) decides: a
//!    valid one names its user, anything else is `invalid auth token`.
//! 2. Without a token, when `--client-cert-auth` is on, the Common Name of the verified client
//!    certificate is the user, except for requests that came through the gRPC gateway
//!    (metadata `grpcgateway-accept`).
//! 3. Otherwise the caller is anonymous.
//!
//! Callers ask only while auth is enabled; with auth off every request is allowed and tokens
//! are not looked at (as etcd does).

use coffer_store::Caller;
use tonic::metadata::MetadataMap;

use super::token::TokenProvider;
use super::AuthError;
use crate::peer::Peer;

/// The metadata key clients put their token in.
pub const TOKEN_KEY: &str = "token";
/// The key the gRPC gateway uses.
pub const GATEWAY_TOKEN_KEY: &str = "authorization";
/// Set on requests that came through the gRPC gateway.
pub const GATEWAY_MARKER_KEY: &str = "grpcgateway-accept";

/// The caller of a request with `metadata` that arrived from `peer`. `client_cert_auth` is
/// `--client-cert-auth`; `current_auth_revision` is the store's, stamped on callers named by
/// a simple token or a certificate (a JWT carries its own).
pub fn resolve_caller(
    metadata: &MetadataMap,
    peer: &Peer,
    tokens: &dyn TokenProvider,
    client_cert_auth: bool,
    current_auth_revision: u64,
) -> Result<Caller, AuthError> {
    if let Some(value) = metadata
        .get(TOKEN_KEY)
        .or_else(|| metadata.get(GATEWAY_TOKEN_KEY))
    {
        let token = value.to_str().map_err(|_| AuthError::InvalidAuthToken)?;
        let Some(info) = tokens.info(token) else {
            tracing::warn!(peer = ?peer.addr, "invalid auth token");
            return Err(AuthError::InvalidAuthToken);
        };
        return Ok(Caller::user(
            info.user,
            info.auth_revision.unwrap_or(current_auth_revision),
        ));
    }
    if client_cert_auth && !metadata.contains_key(GATEWAY_MARKER_KEY) {
        if let Some(cn) = &peer.common_name {
            return Ok(Caller::user(cn.clone(), current_auth_revision));
        }
    }
    Ok(Caller::Anonymous)
}

/// [`resolve_caller`] for a request, with the [`Peer`] the transport attached to it.
pub fn caller_of<T>(
    request: &tonic::Request<T>,
    tokens: &dyn TokenProvider,
    client_cert_auth: bool,
    current_auth_revision: u64,
) -> Result<Caller, AuthError> {
    resolve_caller(
        request.metadata(),
        &Peer::of(request),
        tokens,
        client_cert_auth,
        current_auth_revision,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::token::SimpleTokens;
    use crate::auth::FakeClock;
    use std::sync::Arc;
    use std::time::Duration;

    fn tokens() -> SimpleTokens {
        SimpleTokens::new(Duration::from_secs(300), Arc::new(FakeClock::default()))
    }

    fn md(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    fn tls_peer(cn: Option<&str>) -> Peer {
        Peer {
            addr: Some("127.0.0.1:5000".parse().unwrap()),
            common_name: cn.map(Into::into),
            tls: true,
        }
    }

    #[test]
    fn a_token_decides() {
        let t = tokens();
        let tok = t.assign("alice", 3).unwrap();
        let peer = tls_peer(Some("bob"));
        let caller = resolve_caller(&md(&[("token", tok.expose())]), &peer, &t, true, 9).unwrap();
        assert_eq!(
            caller,
            Caller::user("alice", 9),
            "simple: the current revision"
        );
        let caller =
            resolve_caller(&md(&[("authorization", tok.expose())]), &peer, &t, true, 9).unwrap();
        assert_eq!(caller, Caller::user("alice", 9));
        // A bad token is an error even with a certificate that names a user.
        for bad in ["nope", ""] {
            let e = resolve_caller(&md(&[("token", bad)]), &peer, &t, true, 9).unwrap_err();
            assert!(matches!(e, AuthError::InvalidAuthToken), "{bad:?}");
        }
        // `token` wins over `authorization`.
        let e = resolve_caller(
            &md(&[("token", "nope"), ("authorization", tok.expose())]),
            &peer,
            &t,
            true,
            9,
        )
        .unwrap_err();
        assert!(matches!(e, AuthError::InvalidAuthToken));
    }

    #[test]
    fn a_jwt_carries_its_revision() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        std::fs::write(&key, b"secret").unwrap();
        let spec = crate::auth::token::JwtSpec {
            sign_method: "HS256".into(),
            pub_key: None,
            priv_key: Some(key),
            ttl: Duration::from_secs(60),
            unknown: vec![],
        };
        let jwt = crate::auth::token::JwtTokens::load(&spec).unwrap();
        let tok = jwt.assign("alice", 4).unwrap();
        let caller = resolve_caller(
            &md(&[("token", tok.expose())]),
            &Peer::default(),
            &jwt,
            false,
            9,
        )
        .unwrap();
        assert_eq!(caller, Caller::user("alice", 4));
    }

    #[test]
    fn a_request_carries_its_peer() {
        let t = tokens();
        let mut req = tonic::Request::new(());
        assert_eq!(caller_of(&req, &t, true, 1).unwrap(), Caller::Anonymous);
        req.extensions_mut().insert(tls_peer(Some("dave")));
        assert_eq!(
            caller_of(&req, &t, true, 1).unwrap(),
            Caller::user("dave", 1)
        );
    }

    #[test]
    fn the_certificate_names_the_user_without_a_token() {
        let t = tokens();
        let peer = tls_peer(Some("carol"));
        assert_eq!(
            resolve_caller(&md(&[]), &peer, &t, true, 2).unwrap(),
            Caller::user("carol", 2)
        );
        // Not with --client-cert-auth off, not through the gateway, not without a CN.
        assert_eq!(
            resolve_caller(&md(&[]), &peer, &t, false, 2).unwrap(),
            Caller::Anonymous
        );
        assert_eq!(
            resolve_caller(
                &md(&[("grpcgateway-accept", "application/json")]),
                &peer,
                &t,
                true,
                2
            )
            .unwrap(),
            Caller::Anonymous
        );
        assert_eq!(
            resolve_caller(&md(&[]), &tls_peer(None), &t, true, 2).unwrap(),
            Caller::Anonymous
        );
        assert_eq!(
            resolve_caller(&md(&[]), &Peer::default(), &t, true, 2).unwrap(),
            Caller::Anonymous
        );
    }
}
