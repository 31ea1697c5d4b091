//! Where nonces, IVs, seeds and HKDF infos come from.
//!
//! Every provider draws its random bytes through [`RandomSource`], so tests can replay the exact
//! bytes kube-apiserver consumed when it wrote a vector and compare the output byte for byte.
//! Production uses [`SystemRandom`]: a ChaCha20 CSPRNG in user space, seeded from the operating
//! system (`getrandom`) and reseeded regularly. A `getrandom` system call per value costs about as
//! much as encrypting 1 KiB with AES-GCM, which is why the bytes are not fetched from the kernel
//! one value at a time (decisions.md, "Encryption in coffer serve").

use std::fmt;
use std::sync::Mutex;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

/// The random source failed (the OS refused to seed the generator, or a test source ran dry).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
#[error("random source failed: {reason}")]
pub struct RandomError {
    reason: String,
}

impl RandomError {
    /// A failure with a reason meant for an operator (never include random bytes).
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// A source of cryptographically secure random bytes. Shared by every provider of a keyspace.
pub trait RandomSource: Send + Sync + fmt::Debug {
    /// Fills `buf` completely with random bytes. Each call is one "read" in the vectors' sense.
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// Bytes drawn before the generator is reseeded from the OS.
const RESEED_AFTER_BYTES: u64 = 1 << 30;

/// ChaCha20 seeded from the operating system, behind a mutex (a value takes a few nanoseconds
/// under the lock). Reseeds from the OS every GiB of output.
pub struct SystemRandom {
    inner: Mutex<State>,
}

struct State {
    rng: ChaCha20Rng,
    drawn: u64,
}

impl SystemRandom {
    /// A generator seeded from the OS.
    pub fn new() -> Result<Self, RandomError> {
        Ok(Self {
            inner: Mutex::new(State {
                rng: seeded()?,
                drawn: 0,
            }),
        })
    }
}

fn seeded() -> Result<ChaCha20Rng, RandomError> {
    ChaCha20Rng::from_rng(rand_core::OsRng)
        .map_err(|e| RandomError::new(format!("cannot seed from the operating system: {e}")))
}

impl RandomSource for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        // A poisoned lock only means another thread panicked while holding it; the generator
        // state itself is still a valid ChaCha20 state.
        let mut state = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.drawn >= RESEED_AFTER_BYTES {
            state.rng = seeded()?;
            state.drawn = 0;
        }
        state.rng.fill_bytes(buf);
        state.drawn = state.drawn.saturating_add(buf.len() as u64);
        Ok(())
    }
}

impl fmt::Debug for SystemRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemRandom(ChaCha20, OS-seeded)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_differs() {
        let r = SystemRandom::new().unwrap();
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        r.fill(&mut a).unwrap();
        r.fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
        assert!(!format!("{r:?}").contains(&hex::encode(a)));
    }
}
