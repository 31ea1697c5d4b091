//! The server side of etcd authentication, as self-contained pieces the Auth service and the
//! other services call: password hashes ([`password`]), tokens ([`token`]), who a request
//! comes from ([`identity`]), the limit on failed authentications ([`ratelimit`]) and the one
//! log line per denied request ([`denial`]). The users, roles and permissions themselves live
//! in the store.
//!
//! [`authenticate`] joins the limit, the password check and the token for `Authenticate`.
//!
//! Secrets (passwords, tokens) travel in [`Secret`], whose `Debug` prints a redaction, and
//! never appear in an error or a log line.

pub mod authenticate;
pub mod denial;
pub mod identity;
pub mod password;
pub mod ratelimit;
pub mod service;
pub mod token;

use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// What an authentication step can fail with. The messages are etcd's, byte for byte, except
/// for [`AuthError::TooManyFailures`] (Coffer's own limit) and the configuration errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A token that is unknown, expired, badly signed or of the wrong algorithm.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// `Authenticate` while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    NotEnabled,
    /// Wrong password or unknown user (the two are not told apart).
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A password was given for a user created with `no_password` (etcd sends this text,
    /// outside its error table, as UNKNOWN).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// Too many failed authentications for this user name or from this address: refused
    /// before the password is checked. Coffer's own (etcd has no such limit).
    #[error("etcdserver: too many failed authentications, retry in {retry_after_secs}s")]
    TooManyFailures {
        /// Whole seconds until one more attempt is allowed (at least 1).
        retry_after_secs: u64,
    },
    /// A password longer than bcrypt's 72 bytes (Go's bcrypt refuses to hash it too).
    #[error("bcrypt: password length exceeds 72 bytes")]
    PasswordTooLong,
    /// JWT tokens configured with a public key only cannot be issued (etcd's ErrVerifyOnly).
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// A token could not be signed, or a hash could not be computed. Details stay in the log.
    #[error("coffer: authentication failed internally (details in the server log)")]
    Internal,
}

impl AuthError {
    /// The gRPC code etcd sends for this error.
    pub fn code(&self) -> Code {
        match self {
            AuthError::InvalidAuthToken => Code::Unauthenticated,
            AuthError::AuthFailed => Code::InvalidArgument,
            AuthError::NotEnabled => Code::FailedPrecondition,
            AuthError::TooManyFailures { .. } => Code::ResourceExhausted,
            // etcd sends errors outside its table as UNKNOWN with the raw text.
            AuthError::PasswordTooLong | AuthError::VerifyOnly | AuthError::NoPasswordUser => {
                Code::Unknown
            }
            AuthError::Internal => Code::Internal,
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// A secret string (a password or a token): readable only through [`Secret::expose`], and
/// printed as `<redacted>` by `Debug`. Its bytes are wiped when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(zeroize::Zeroizing::new(value.into()))
    }

    /// The secret itself, to send to its owner or to check it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Monotonic time, replaceable in tests.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct FakeClock {
    start: Instant,
    offset: std::sync::Mutex<Duration>,
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock {
            start: Instant::now(),
            offset: std::sync::Mutex::new(Duration::ZERO),
        }
    }
}

impl FakeClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        *offset += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn errors_carry_etcds_codes_and_text() {
        let s = Status::from(AuthError::InvalidAuthToken);
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(s.message(), "etcdserver: invalid auth token");
        let s = Status::from(AuthError::AuthFailed);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "etcdserver: authentication failed, invalid user ID or password"
        );
        let s = Status::from(AuthError::TooManyFailures {
            retry_after_secs: 3,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "etcdserver: too many failed authentications, retry in 3s"
        );
    }
}
