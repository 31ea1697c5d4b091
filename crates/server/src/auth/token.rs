//! Auth tokens: the `--auth-token` spec and the two providers etcd has.
//!
//! - `simple` (default): 16 random ASCII letters, `.`, a counter (`rPiNDAzUaMMyVDNJ.101`),
//!   held in memory only, valid for `--auth-token-ttl` seconds (default 300) after its last use.
//!   The auth revision is the store's current one at use time.
//! - `jwt,pub-key=<pem>,priv-key=<pem>,sign-method=<alg>,ttl=<go duration>`: signed tokens
//!   with the claims `username`, `revision` and `exp`, valid until `exp` (default ttl 5m), not
//!   refreshed on use. Options are split like etcd does (`,` then exactly one `=`, a repeated
//!   option is an error, unknown options are ignored with a warning). Sign methods: HS256,
//!   HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 and EdDSA. ES512
//!   (which etcd offers) is refused at start: the signing library (ring) has no P-521. EC and
//!   Ed25519 private keys must be PKCS#8 (`BEGIN PRIVATE KEY`), not SEC1 (`BEGIN EC PRIVATE
//!   KEY`) as Go also accepts. With a public key only, tokens are checked but not issued.
//!
//! Tokens leave this module only as [`Secret`]s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::KeyPair;
use serde::{Deserialize, Serialize};

use super::{AuthError, Clock, Secret, SystemClock};

/// `--auth-token-ttl` default, in seconds.
pub const DEFAULT_AUTH_TOKEN_TTL_SECS: u64 = 300;
/// The JWT `ttl` option's default.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(5 * 60);
/// Length of the random part of a simple token.
const SIMPLE_TOKEN_LETTERS: usize = 16;

/// Why `--auth-token` is unusable. The message names the option and the file, never a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenConfigError {
    /// An option that is not `name=value`, a repeated option, an unknown token type or an
    /// unparsable ttl (etcd's `auth: invalid auth options`).
    #[error("--auth-token: invalid auth options: {0}")]
    InvalidOptions(String),
    /// `sign-method` missing or not one etcd knows (etcd's `auth: invalid auth signature
    /// method`).
    #[error("--auth-token: invalid auth signature method {0:?}")]
    InvalidMethod(String),
    /// A sign method etcd knows but Coffer cannot use.
    #[error("--auth-token: sign-method {0} is not supported by Coffer (no P-521 in its crypto library); use ES256 or ES384")]
    UnsupportedMethod(String),
    /// No key for the sign method (etcd's `auth: missing key data`).
    #[error("--auth-token: missing key data: sign-method {0} needs priv-key (HMAC) or priv-key and/or pub-key")]
    MissingKey(String),
    /// A key file that cannot be read.
    #[error("--auth-token: cannot read {option} {path}: {reason}")]
    ReadKey {
        /// `pub-key` or `priv-key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A key file that is not a key for the sign method.
    #[error("--auth-token: {option} {path} is not a {expected}")]
    BadKey {
        /// `pub-key` or `priv-key`.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
    },
    /// The public key is not the private key's (etcd's `auth: public and private keys don't
    /// match`).
    #[error("--auth-token: public and private keys don't match")]
    KeyMismatch,
    /// `--auth-token-ttl` of zero.
    #[error("--auth-token-ttl must be positive")]
    ZeroTtl,
}

/// A parsed `--auth-token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSpec {
    /// `simple`.
    Simple,
    /// `jwt,...`.
    Jwt(JwtSpec),
}

/// The options of a `jwt` token spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSpec {
    /// `sign-method`, as given.
    pub sign_method: String,
    /// `pub-key`: a PEM file.
    pub pub_key: Option<PathBuf>,
    /// `priv-key`: a PEM file, or the raw secret for HS*.
    pub priv_key: Option<PathBuf>,
    /// `ttl` (default 5m).
    pub ttl: Duration,
    /// Options etcd does not know (ignored with a warning, as etcd does).
    pub unknown: Vec<String>,
}

impl TokenSpec {
    /// Parses `--auth-token` as etcd does.
    pub fn parse(spec: &str) -> Result<TokenSpec, TokenConfigError> {
        let mut parts = spec.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut options: Vec<(&str, &str)> = Vec::new();
        for part in parts {
            let pair: Vec<&str> = part.split('=').collect();
            let [name, value] = pair[..] else {
                return Err(TokenConfigError::InvalidOptions(format!(
                    "option {part:?} is not name=value"
                )));
            };
            if options.iter().any(|(n, _)| *n == name) {
                return Err(TokenConfigError::InvalidOptions(format!(
                    "option {name:?} given twice"
                )));
            }
            options.push((name, value));
        }
        match kind {
            "simple" => Ok(TokenSpec::Simple),
            "jwt" => JwtSpec::from_options(&options).map(TokenSpec::Jwt),
            other => Err(TokenConfigError::InvalidOptions(format!(
                "unknown token type {other:?}: expected simple or jwt"
            ))),
        }
    }
}

impl JwtSpec {
    fn from_options(options: &[(&str, &str)]) -> Result<JwtSpec, TokenConfigError> {
        let get = |name: &str| {
            options
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .filter(|v| !v.is_empty())
        };
        let ttl = match get("ttl") {
            None => DEFAULT_JWT_TTL,
            Some(text) => {
                let nanos = coffer_seal::config::parse_go_duration(text)
                    .map_err(|e| TokenConfigError::InvalidOptions(format!("ttl: {e}")))?;
                match u64::try_from(nanos) {
                    Ok(n) if n > 0 => Duration::from_nanos(n),
                    _ => {
                        return Err(TokenConfigError::InvalidOptions(format!(
                            "ttl {text:?} is not a positive duration"
                        )))
                    }
                }
            }
        };
        Ok(JwtSpec {
            sign_method: get("sign-method").unwrap_or_default().to_owned(),
            pub_key: get("pub-key").map(PathBuf::from),
            priv_key: get("priv-key").map(PathBuf::from),
            ttl,
            unknown: options
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| !["sign-method", "pub-key", "priv-key", "ttl"].contains(n))
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The user name.
    pub user: Arc<str>,
    /// The auth revision the token was issued at (JWT); `None` for simple tokens, whose
    /// revision is the store's current one.
    pub auth_revision: Option<u64>,
}

/// Issues and checks tokens.
pub trait TokenProvider: Send + Sync {
    /// A new token for `user`, who authenticated at `auth_revision`.
    fn assign(&self, user: &str, auth_revision: u64) -> Result<Secret, AuthError>;
    /// Who `token` names, or `None` if it is unknown, expired or badly signed (the caller
    /// answers `invalid auth token`). A simple token's lifetime restarts.
    fn info(&self, token: &str) -> Option<TokenInfo>;
    /// Forgets the tokens of `user` (deleted, or its password changed). No-op for JWT.
    fn invalidate_user(&self, user: &str);
    /// Forgets every token (auth disabled). No-op for JWT.
    fn disable(&self);
}

/// The provider `spec` describes; `simple_ttl` is `--auth-token-ttl`. Reads the key files.
pub fn new_provider(
    spec: &TokenSpec,
    simple_ttl: Duration,
) -> Result<Arc<dyn TokenProvider>, TokenConfigError> {
    match spec {
        TokenSpec::Simple => {
            if simple_ttl.is_zero() {
                return Err(TokenConfigError::ZeroTtl);
            }
            Ok(Arc::new(SimpleTokens::new(
                simple_ttl,
                Arc::new(SystemClock),
            )))
        }
        TokenSpec::Jwt(jwt) => {
            if !jwt.unknown.is_empty() {
                tracing::warn!(options = ?jwt.unknown, "unknown JWT options in --auth-token");
            }
            Ok(Arc::new(JwtTokens::load(jwt)?))
        }
    }
}

/// etcd's simple tokens, in memory.
pub struct SimpleTokens {
    ttl: Duration,
    clock: Arc<dyn Clock>,
    state: Mutex<SimpleState>,
}

struct SimpleState {
    tokens: HashMap<String, SimpleEntry>,
    next_index: u64,
    /// Expired tokens are swept when the map reaches this size.
    sweep_at: usize,
}

struct SimpleEntry {
    user: Arc<str>,
    expires: Instant,
}

const MIN_SWEEP: usize = 1024;

impl SimpleTokens {
    /// A provider whose tokens live `ttl` after their last use.
    pub fn new(ttl: Duration, clock: Arc<dyn Clock>) -> SimpleTokens {
        SimpleTokens {
            ttl,
            clock,
            state: Mutex::new(SimpleState {
                tokens: HashMap::new(),
                next_index: 1,
                sweep_at: MIN_SWEEP,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SimpleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tokens held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.state().tokens.len()
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 16 letters from `[a-zA-Z]`, uniformly (bytes of 208 and above are redrawn).
fn random_letters() -> Result<String, AuthError> {
    const LETTERS: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = String::with_capacity(SIMPLE_TOKEN_LETTERS);
    let mut buf = [0u8; 32];
    while out.len() < SIMPLE_TOKEN_LETTERS {
        getrandom::getrandom(&mut buf).map_err(|_| AuthError::Internal)?;
        for b in buf {
            if out.len() < SIMPLE_TOKEN_LETTERS && b < 208 {
                out.push(char::from(LETTERS[usize::from(b % 52)]));
            }
        }
    }
    Ok(out)
}

impl TokenProvider for SimpleTokens {
    fn assign(&self, user: &str, _auth_revision: u64) -> Result<Secret, AuthError> {
        let letters = random_letters()?;
        let now = self.clock.now();
        let mut state = self.state();
        if state.tokens.len() >= state.sweep_at {
            state.tokens.retain(|_, e| e.expires > now);
            state.sweep_at = (state.tokens.len() * 2).max(MIN_SWEEP);
        }
        let token = format!("{letters}.{}", state.next_index);
        state.next_index += 1;
        state.tokens.insert(
            token.clone(),
            SimpleEntry {
                user: user.into(),
                expires: now + self.ttl,
            },
        );
        Ok(Secret::new(token))
    }

    fn info(&self, token: &str) -> Option<TokenInfo> {
        let now = self.clock.now();
        let mut state = self.state();
        let entry = state.tokens.get_mut(token)?;
        if entry.expires <= now {
            state.tokens.remove(token);
            return None;
        }
        entry.expires = now + self.ttl;
        Some(TokenInfo {
            user: entry.user.clone(),
            auth_revision: None,
        })
    }

    fn invalidate_user(&self, user: &str) {
        self.state().tokens.retain(|_, e| &*e.user != user);
    }

    fn disable(&self) {
        self.state().tokens.clear();
    }
}

/// The claims of an etcd JWT.
#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signed tokens (etcd's `jwt` provider).
pub struct JwtTokens {
    algorithm: Algorithm,
    /// `None` with a public key only.
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.encoding.is_none())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn read_key(option: &'static str, path: &Path) -> Result<Vec<u8>, TokenConfigError> {
    std::fs::read(path).map_err(|e| TokenConfigError::ReadKey {
        option,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl JwtTokens {
    /// Loads the keys `spec` names and checks that they fit the sign method and each other.
    pub fn load(spec: &JwtSpec) -> Result<JwtTokens, TokenConfigError> {
        let method = spec.sign_method.as_str();
        let algorithm = match method {
            "ES512" => return Err(TokenConfigError::UnsupportedMethod(method.to_owned())),
            m => m
                .parse::<Algorithm>()
                .map_err(|_| TokenConfigError::InvalidMethod(m.to_owned()))?,
        };
        let private = match &spec.priv_key {
            Some(p) => Some((read_key("priv-key", p)?, p.as_path())),
            None => None,
        };
        let public = match &spec.pub_key {
            Some(p) => Some((read_key("pub-key", p)?, p.as_path())),
            None => None,
        };
        let missing = || TokenConfigError::MissingKey(method.to_owned());
        let (encoding, decoding) = if method.starts_with("HS") {
            // HMAC: the private key file's bytes are the secret; pub-key is not used.
            let (secret, _) = private.ok_or_else(missing)?;
            (
                Some(EncodingKey::from_secret(&secret)),
                DecodingKey::from_secret(&secret),
            )
        } else {
            let encoding = match &private {
                Some((pem, path)) => Some(private_key(algorithm, pem, path)?),
                None => None,
            };
            let decoding = match (&public, &private) {
                (Some((pem, path)), _) => public_key(algorithm, pem, path)?,
                (None, Some((pem, path))) => public_of_private(algorithm, pem, path)?,
                (None, None) => return Err(missing()),
            };
            (encoding, decoding)
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_aud = false;
        let tokens = JwtTokens {
            algorithm,
            encoding,
            decoding,
            validation,
            ttl: spec.ttl,
        };
        if tokens.encoding.is_some() && public.is_some() {
            // Both keys given: a token signed with one must verify with the other.
            let probe = tokens
                .assign("coffer-key-check", 0)
                .map_err(|_| TokenConfigError::KeyMismatch)?;
            if tokens.info(probe.expose()).is_none() {
                return Err(TokenConfigError::KeyMismatch);
            }
        }
        Ok(tokens)
    }

    /// Signs claims; for tests that need tokens a provider would not issue.
    fn sign(&self, claims: &Claims) -> Result<Secret, AuthError> {
        let key = self.encoding.as_ref().ok_or(AuthError::VerifyOnly)?;
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, key)
            .map(Secret::new)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sign a JWT");
                AuthError::Internal
            })
    }
}

fn bad_key(option: &'static str, path: &Path, expected: &'static str) -> TokenConfigError {
    TokenConfigError::BadKey {
        option,
        path: path.to_owned(),
        expected,
    }
}

fn family_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::ES256 => "PKCS#8 PEM P-256 private key",
        Algorithm::ES384 => "PKCS#8 PEM P-384 private key",
        Algorithm::EdDSA => "PKCS#8 PEM Ed25519 private key",
        _ => "PEM RSA private key",
    }
}

fn private_key(
    algorithm: Algorithm,
    pem: &[u8],
    path: &Path,
) -> Result<EncodingKey, TokenConfigError> {
    let key = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    };
    key.map_err(|_| bad_key("priv-key", path, family_name(algorithm)))
}

fn public_key(
    algorithm: Algorithm,
    pem: &[u8],
    path: &Path,
) -> Result<DecodingKey, TokenConfigError> {
    let (key, expected) = match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => (DecodingKey::from_ec_pem(pem), "PEM EC public key"),
        Algorithm::EdDSA => (DecodingKey::from_ed_pem(pem), "PEM Ed25519 public key"),
        _ => (DecodingKey::from_rsa_pem(pem), "PEM RSA public key"),
    };
    key.map_err(|_| bad_key("pub-key", path, expected))
}

/// The verifying key of a private key PEM (etcd verifies with the private key's public half
/// when no pub-key is given).
fn public_of_private(
    algorithm: Algorithm,
    pem: &[u8],
    path: &Path,
) -> Result<DecodingKey, TokenConfigError> {
    let bad = || bad_key("priv-key", path, family_name(algorithm));
    let parsed = pem::parse(pem).map_err(|_| bad())?;
    let der = parsed.contents();
    let rng = ring::rand::SystemRandom::new();
    let ec = |alg| {
        ring::signature::EcdsaKeyPair::from_pkcs8(alg, der, &rng)
            .map(|k| DecodingKey::from_ec_der(k.public_key().as_ref()))
            .map_err(|_| bad())
    };
    match algorithm {
        Algorithm::ES256 => ec(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => ec(&ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        Algorithm::EdDSA => ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(|k| DecodingKey::from_ed_der(k.public_key().as_ref()))
            .map_err(|_| bad()),
        _ => {
            let pair = if parsed.tag() == "RSA PRIVATE KEY" {
                ring::rsa::KeyPair::from_der(der)
            } else {
                ring::rsa::KeyPair::from_pkcs8(der)
            };
            pair.map(|k| DecodingKey::from_rsa_der(k.public().as_ref()))
                .map_err(|_| bad())
        }
    }
}

impl TokenProvider for JwtTokens {
    fn assign(&self, user: &str, auth_revision: u64) -> Result<Secret, AuthError> {
        let exp = SystemTime::now()
            .checked_add(self.ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .ok_or(AuthError::Internal)?;
        self.sign(&Claims {
            username: user.to_owned(),
            revision: auth_revision,
            exp,
        })
    }

    fn info(&self, token: &str) -> Option<TokenInfo> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Some(TokenInfo {
                user: data.claims.username.into(),
                auth_revision: Some(data.claims.revision),
            }),
            // The reason (signature, algorithm, expiry, format) is not logged: it may quote
            // parts of the token.
            Err(_) => None,
        }
    }

    fn invalidate_user(&self, _user: &str) {}

    fn disable(&self) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
