//! `Authenticate`, in the order that keeps refusals cheap and answers uninformative: the
//! failure limit first (before any bcrypt work), then the password check on the blocking pool
//! (an unknown user is checked against a dummy hash of the same cost, so that both take the
//! same time and give the same answer), then a token. The Auth service reads the user from the
//! store and hands its hash in; it holds no lock across [`Authenticator::authenticate`].

use std::net::IpAddr;
use std::sync::Arc;

use super::password::{self, BcryptCost};
use super::ratelimit::FailureLimiter;
use super::token::TokenProvider;
use super::{AuthError, Secret};

/// What the store holds about the user who authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredUser {
    /// No user by that name.
    Unknown,
    /// A user created with `no_password` (certificate authentication only).
    NoPassword,
    /// A user and its bcrypt hash.
    Hash(String),
}

/// Checks passwords and issues tokens.
pub struct Authenticator {
    tokens: Arc<dyn TokenProvider>,
    limiter: FailureLimiter,
    cost: BcryptCost,
    /// A hash of a random password at `cost`, made on first need.
    dummy: tokio::sync::OnceCell<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("cost", &self.cost.get())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator issuing `tokens`, limiting failures with `limiter`; `cost` is
    /// `--bcrypt-cost` (the dummy hash's cost).
    pub fn new(
        tokens: Arc<dyn TokenProvider>,
        limiter: FailureLimiter,
        cost: BcryptCost,
    ) -> Authenticator {
        Authenticator {
            tokens,
            limiter,
            cost,
            dummy: tokio::sync::OnceCell::new(),
        }
    }

    /// The token provider (for resolving callers and dropping tokens).
    pub fn tokens(&self) -> &Arc<dyn TokenProvider> {
        &self.tokens
    }

    /// A token for `name` if `password` is right. `stored` is what the store held for `name`
    /// at `auth_revision`; `addr` is the client's address (for the failure limit).
    pub async fn authenticate(
        &self,
        name: &str,
        password: Secret,
        addr: Option<IpAddr>,
        stored: StoredUser,
        auth_revision: u64,
    ) -> Result<Secret, AuthError> {
        let attempt = self.limiter.begin(name, addr)?;
        let right = match stored {
            StoredUser::Hash(hash) => password::verify(password, hash).await,
            StoredUser::NoPassword => return Err(AuthError::NoPasswordUser),
            StoredUser::Unknown => {
                let dummy = self
                    .dummy
                    .get_or_try_init(|| async {
                        let mut random = [0u8; 18];
                        getrandom::getrandom(&mut random).map_err(|_| AuthError::Internal)?;
                        password::hash(Secret::new(hex_string(&random)), self.cost).await
                    })
                    .await?;
                let _ = password::verify(password, dummy.clone()).await;
                false
            }
        };
        if !right {
            return Err(AuthError::AuthFailed);
        }
        attempt.succeeded();
        self.tokens.assign(name, auth_revision)
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::token::SimpleTokens;
    use crate::auth::FakeClock;
    use std::time::Duration;

    fn authenticator() -> (Arc<SimpleTokens>, Authenticator) {
        let clock = Arc::new(FakeClock::default());
        let tokens = Arc::new(SimpleTokens::new(Duration::from_secs(300), clock.clone()));
        let limiter = FailureLimiter::new(3, Duration::from_secs(1), 100, clock);
        let a = Authenticator::new(tokens.clone(), limiter, BcryptCost::new(4).unwrap());
        (tokens, a)
    }

    #[tokio::test]
    async fn right_wrong_unknown_and_no_password() {
        let (tokens, a) = authenticator();
        let hash = password::hash(Secret::new("pw"), BcryptCost::new(4).unwrap())
            .await
            .unwrap();
        let addr = Some("10.0.0.1".parse().unwrap());
        let tok = a
            .authenticate(
                "alice",
                Secret::new("pw"),
                addr,
                StoredUser::Hash(hash.clone()),
                7,
            )
            .await
            .unwrap();
        assert_eq!(&*tokens.info(tok.expose()).unwrap().user, "alice");
        for (stored, want) in [
            (StoredUser::Hash(hash.clone()), "authentication failed"),
            (StoredUser::Unknown, "authentication failed"),
            (StoredUser::NoPassword, "no password user"),
        ] {
            let e = a
                .authenticate("bob", Secret::new("nope"), None, stored, 7)
                .await
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[tokio::test]
    async fn refused_before_bcrypt_once_limited() {
        let (_tokens, a) = authenticator();
        let hash = password::hash(Secret::new("pw"), BcryptCost::new(4).unwrap())
            .await
            .unwrap();
        for _ in 0..3 {
            let e = a
                .authenticate("alice", Secret::new("x"), None, StoredUser::Unknown, 1)
                .await
                .unwrap_err();
            assert!(matches!(e, AuthError::AuthFailed));
        }
        // Even the right password is refused now: the limit is checked before the password.
        for stored in [
            StoredUser::Hash(hash),
            StoredUser::Hash("not a hash".into()),
        ] {
            let e = a
                .authenticate("alice", Secret::new("pw"), None, stored, 1)
                .await
                .unwrap_err();
            assert!(matches!(e, AuthError::TooManyFailures { .. }), "{e}");
        }
    }
}
