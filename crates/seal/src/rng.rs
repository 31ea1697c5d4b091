//! Where nonces, IVs, seeds and HKDF infos come from.
//!
//! Every provider draws its random bytes through [`RandomSource`], so tests can replay the exact
//! bytes kube-apiserver consumed when it wrote a vector and compare the output byte for byte.
//!
//! Production uses [`SystemRandom`]: one `getrandom(2)` call per value, no generator state in
//! user space. A user-space generator seeded once is replayed by a restored VM snapshot, a
//! cloned machine or a forked process, and a replayed stream means the same nonce under the
//! same key. The price is one system call per value: 0.4–0.7 µs against 12–34 ns for a
//! user-space ChaCha20 (`benches/providers.rs`, group `random`, on a busy 2-core machine). An
//! aesgcm write draws one value (its nonce), about 0.5 µs; so does a KMS v2 write by Coffer's
//! writer (the info is drawn once per derived key, see `providers::kmsv2`), while
//! kube-apiserver's one-info-per-write scheme draws two.
//!
//! What remains is the kernel's part: a VM snapshot restored between two `getrandom` calls is
//! handled by the kernel reseeding its generator when the hypervisor signals it (Linux's
//! `vmgenid` driver, 5.18 and later, where the hypervisor offers a VM generation ID). On a
//! hypervisor without it, a restored snapshot can repeat the kernel's output until it reseeds.

use std::fmt;

/// The random source failed (the kernel refused, or a test source ran dry).
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

/// The kernel's random bytes, fetched with `getrandom(2)` for every value. Holds no state, so
/// nothing in the process can be replayed by a clone of it.
#[derive(Clone, Copy, Default)]
pub struct SystemRandom {
    _no_state: (),
}

impl SystemRandom {
    /// The kernel's generator; fails if the kernel does not answer (checked once here, so a
    /// missing `getrandom` shows at start rather than at the first write).
    pub fn new() -> Result<Self, RandomError> {
        let source = Self { _no_state: () };
        source.fill(&mut [0u8; 1])?;
        Ok(source)
    }
}

impl RandomSource for SystemRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        getrandom::getrandom(buf)
            .map_err(|e| RandomError::new(format!("the kernel's getrandom failed: {e}")))
    }
}

impl fmt::Debug for SystemRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemRandom(getrandom per value)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The property that makes a restored snapshot or a forked process safe: there is no
    /// generator state in the process to copy. (A user-space ChaCha20 fails this.)
    #[test]
    fn holds_no_generator_state() {
        assert_eq!(std::mem::size_of::<SystemRandom>(), 0);
    }

    #[test]
    fn fills_differ_across_calls_and_instances() {
        let a = SystemRandom::new().unwrap();
        let b = SystemRandom::new().unwrap();
        // At each size a provider draws: 64 values, all distinct, from two instances, and every
        // byte position (including the last) written by some draw.
        for size in [12usize, 16, 24, 32] {
            let mut seen = HashSet::new();
            let mut last_bytes = 0u8;
            for i in 0..64 {
                let mut buf = vec![0u8; size];
                if i % 2 == 0 { &a } else { &b }.fill(&mut buf).unwrap();
                last_bytes |= buf[size - 1];
                assert!(seen.insert(buf), "repeated {size}-byte value");
            }
            assert_ne!(
                last_bytes, 0,
                "the last byte of {size}-byte values is never written"
            );
        }
    }

    #[test]
    fn output_looks_uniform() {
        // 64 KiB: every byte value appears (expected 256 times each; missing one has
        // probability about 256 * e^-256).
        let mut buf = vec![0u8; 64 * 1024];
        SystemRandom::new().unwrap().fill(&mut buf).unwrap();
        let mut counts = [0u32; 256];
        for b in &buf {
            counts[usize::from(*b)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150 && c < 370), "{counts:?}");
    }
}
