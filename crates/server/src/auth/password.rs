//! Password hashes as etcd keeps them: bcrypt in Go's `$2a$` format, at the cost of
//! `--bcrypt-cost` (default 10, 4..=31). Hashing and checking take tens of milliseconds at the
//! default cost, so both run on tokio's blocking pool; callers hold no lock across them.

use super::{AuthError, Secret};

/// `--bcrypt-cost` default (Go's `bcrypt.DefaultCost`).
pub const DEFAULT_BCRYPT_COST: u32 = 10;
/// Smallest accepted `--bcrypt-cost` (Go's `bcrypt.MinCost`).
pub const MIN_BCRYPT_COST: u32 = 4;
/// Largest accepted `--bcrypt-cost` (Go's `bcrypt.MaxCost`).
pub const MAX_BCRYPT_COST: u32 = 31;
/// bcrypt reads at most this many bytes of a password.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// A validated `--bcrypt-cost`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BcryptCost(u32);

impl BcryptCost {
    /// `cost` if it is within 4..=31 (etcd refuses to start otherwise).
    pub fn new(cost: u32) -> Result<BcryptCost, String> {
        if (MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost) {
            Ok(BcryptCost(cost))
        } else {
            Err(format!(
                "--bcrypt-cost {cost} is out of range: expected {MIN_BCRYPT_COST} to {MAX_BCRYPT_COST}"
            ))
        }
    }

    /// The cost (log2 of the rounds).
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for BcryptCost {
    fn default() -> Self {
        BcryptCost(DEFAULT_BCRYPT_COST)
    }
}

/// Hashes `password` on the blocking pool. The hash is `$2a$<cost>$...` like Go's, 60 bytes.
/// A password over 72 bytes is refused, as Go's bcrypt does (bcrypt would ignore its tail).
pub async fn hash(password: Secret, cost: BcryptCost) -> Result<String, AuthError> {
    if password.expose().len() > MAX_PASSWORD_BYTES {
        return Err(AuthError::PasswordTooLong);
    }
    let parts = tokio::task::spawn_blocking(move || {
        bcrypt::hash_with_result(password.expose(), cost.get())
    })
    .await
    .map_err(|_| AuthError::Internal)?
    .map_err(|e| {
        tracing::error!(error = %e, "bcrypt hashing failed");
        AuthError::Internal
    })?;
    Ok(parts.format_for_version(bcrypt::Version::TwoA))
}

/// Whether `password` matches `hash` (any of `$2a$`, `$2b$`, `$2x$`, `$2y$`), checked on the
/// blocking pool. A malformed hash matches nothing.
pub async fn verify(password: Secret, hash: String) -> bool {
    tokio::task::spawn_blocking(move || bcrypt::verify(password.expose(), &hash).unwrap_or(false))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Made by etcd 3.4.23 (Go's x/crypto bcrypt) for `etcdctl user add alice:s3cret`, read
    /// from the authUsers bucket of its snapshot (the conformance test `auth` checks a fresh
    /// one the same way).
    const GO_HASH: &str = "$2a$10$VuTrVB4.qx6FWwtMc3rlEeFtJyKgeTQ1TxVEuNfFVtAmHsx1DAdOi";

    #[tokio::test]
    async fn verifies_a_hash_made_by_go() {
        assert!(verify(Secret::new("s3cret"), GO_HASH.into()).await);
        assert!(!verify(Secret::new("s3cret!"), GO_HASH.into()).await);
        assert!(!verify(Secret::new(""), GO_HASH.into()).await);
        // The same hash under the `$2b$` name is the same hash.
        let b = GO_HASH.replacen("$2a$", "$2b$", 1);
        assert!(verify(Secret::new("s3cret"), b).await);
    }

    #[tokio::test]
    async fn hashes_in_gos_format_and_round_trips() {
        let cost = BcryptCost::new(4).unwrap();
        let h = hash(Secret::new("pw"), cost).await.unwrap();
        assert!(h.starts_with("$2a$04$"), "{h}");
        assert_eq!(h.len(), 60);
        assert!(verify(Secret::new("pw"), h.clone()).await);
        assert!(!verify(Secret::new("pW"), h.clone()).await);
        let again = hash(Secret::new("pw"), cost).await.unwrap();
        assert_ne!(h, again, "every hash has its own salt");
    }

    #[tokio::test]
    async fn long_passwords_and_bad_hashes() {
        let cost = BcryptCost::new(4).unwrap();
        let long = "x".repeat(73);
        assert!(matches!(
            hash(Secret::new(long), cost).await,
            Err(AuthError::PasswordTooLong)
        ));
        assert!(hash(Secret::new("x".repeat(72)), cost).await.is_ok());
        assert!(!verify(Secret::new("pw"), "not a hash".into()).await);
        assert!(!verify(Secret::new("pw"), String::new()).await);
    }

    #[test]
    fn cost_range() {
        assert_eq!(BcryptCost::default().get(), 10);
        assert!(BcryptCost::new(4).is_ok());
        assert!(BcryptCost::new(31).is_ok());
        for bad in [0, 3, 32, 100] {
            let e = BcryptCost::new(bad).unwrap_err();
            assert!(e.contains("--bcrypt-cost"), "{e}");
        }
    }
}
