//! A limit on failed authentications (Coffer's own; etcd has none): per user name and per
//! client IP address (IPv6 by /64, the block one host usually holds), a token bucket of [`DEFAULT_BURST`] attempts that refills one attempt
//! per [`DEFAULT_REFILL`]. An attempt takes one token from both buckets *before* the password
//! is checked, so a refused attempt costs no bcrypt work; a successful one gives its tokens
//! back, so users who type their password right are never limited.
//!
//! A refused attempt gets `RESOURCE_EXHAUSTED` `etcdserver: too many failed authentications,
//! retry in Ns`. Memory is bounded: at most `max_keys` buckets are kept; full buckets are the
//! same as none and are dropped first, then the least recently used.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{AuthError, Clock, SystemClock};

/// Failed attempts allowed in a burst, per user name and per address.
pub const DEFAULT_BURST: u32 = 5;
/// Time for one more attempt to be allowed.
pub const DEFAULT_REFILL: Duration = Duration::from_secs(1);
/// Buckets kept at most (user names and addresses together).
pub const DEFAULT_MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(Arc<str>),
    Addr(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Attempts available at `at` (fractions accrue between refills).
    tokens: f64,
    at: Instant,
}

/// The address a bucket is kept for: IPv4 as is (also when mapped into IPv6), IPv6 cut to
/// its /64.
fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// The failed-authentication limiter.
pub struct FailureLimiter {
    burst: f64,
    refill: Duration,
    max_keys: usize,
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new(
            DEFAULT_BURST,
            DEFAULT_REFILL,
            DEFAULT_MAX_KEYS,
            Arc::new(SystemClock),
        )
    }
}

/// One admitted attempt: its tokens are spent unless [`Attempt::succeeded`] is called.
#[must_use = "call succeeded() when the password was right"]
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    keys: Vec<Key>,
}

impl Attempt<'_> {
    /// The password was right: the attempt does not count.
    pub fn succeeded(self) {
        let mut buckets = self.limiter.lock();
        for key in &self.keys {
            if let Some(b) = buckets.get_mut(key) {
                b.tokens = (b.tokens + 1.0).min(self.limiter.burst);
            }
        }
    }
}

impl FailureLimiter {
    /// A limiter allowing `burst` failures, then one per `refill`, for at most `max_keys`
    /// user names and addresses.
    pub fn new(
        burst: u32,
        refill: Duration,
        max_keys: usize,
        clock: Arc<dyn Clock>,
    ) -> FailureLimiter {
        FailureLimiter {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            max_keys: max_keys.max(2),
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn level(&self, bucket: Option<&Bucket>, now: Instant) -> f64 {
        match bucket {
            None => self.burst,
            Some(b) => {
                let refilled =
                    now.saturating_duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
                (b.tokens + refilled).min(self.burst)
            }
        }
    }

    /// Admits an attempt to authenticate as `user` from `addr`, or refuses it when either has
    /// no attempt left. Call before checking the password.
    pub fn begin(&self, user: &str, addr: Option<IpAddr>) -> Result<Attempt<'_>, AuthError> {
        let now = self.clock.now();
        let mut keys = vec![Key::User(user.into())];
        keys.extend(addr.map(|a| Key::Addr(address_key(a))));
        let mut buckets = self.lock();
        let levels: Vec<f64> = keys
            .iter()
            .map(|k| self.level(buckets.get(k), now))
            .collect();
        let lowest = levels.iter().copied().fold(f64::INFINITY, f64::min);
        if lowest < 1.0 {
            let wait = self.refill.as_secs_f64() * (1.0 - lowest);
            return Err(AuthError::TooManyFailures {
                retry_after_secs: (wait.ceil() as u64).max(1),
            });
        }
        for (key, level) in keys.iter().zip(levels) {
            buckets.insert(
                key.clone(),
                Bucket {
                    tokens: level - 1.0,
                    at: now,
                },
            );
        }
        if buckets.len() > self.max_keys {
            self.evict(&mut buckets, now);
        }
        Ok(Attempt {
            limiter: self,
            keys,
        })
    }

    /// Drops full buckets, then the least recently used ones, down to `max_keys`.
    fn evict(&self, buckets: &mut HashMap<Key, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.level(Some(b), now) < self.burst);
        while buckets.len() > self.max_keys {
            let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, b)| b.at)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            buckets.remove(&oldest);
        }
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::auth::FakeClock;

    fn limiter(max_keys: usize) -> (Arc<FakeClock>, FailureLimiter) {
        let clock = Arc::new(FakeClock::default());
        let l = FailureLimiter::new(5, Duration::from_secs(1), max_keys, clock.clone());
        (clock, l)
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn retry_after(r: Result<Attempt<'_>, AuthError>) -> u64 {
        match r {
            Err(AuthError::TooManyFailures { retry_after_secs }) => retry_after_secs,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("admitted"),
        }
    }

    #[test]
    fn five_failures_then_one_per_second() {
        let (clock, l) = limiter(100);
        for _ in 0..5 {
            drop(l.begin("alice", ip("10.0.0.1")).unwrap());
        }
        assert_eq!(retry_after(l.begin("alice", ip("10.0.0.1"))), 1);
        clock.advance(Duration::from_millis(500));
        assert_eq!(retry_after(l.begin("alice", ip("10.0.0.1"))), 1);
        clock.advance(Duration::from_millis(500));
        drop(l.begin("alice", ip("10.0.0.1")).unwrap());
        assert!(l.begin("alice", ip("10.0.0.1")).is_err());
        clock.advance(Duration::from_secs(60));
        for _ in 0..5 {
            drop(l.begin("alice", ip("10.0.0.1")).unwrap());
        }
        assert!(
            l.begin("alice", ip("10.0.0.1")).is_err(),
            "the burst is capped"
        );
    }

    #[test]
    fn per_user_and_per_address() {
        let (_clock, l) = limiter(100);
        for i in 0..5 {
            drop(l.begin("alice", ip(&format!("10.0.0.{i}"))).unwrap());
        }
        // alice is limited from any address; others from those addresses are not.
        assert!(l.begin("alice", ip("10.0.0.99")).is_err());
        assert!(l.begin("alice", None).is_err());
        drop(l.begin("bob", ip("10.0.0.1")).unwrap());
        // One address guessing many names is limited too.
        for name in ["u1", "u2", "u3", "u4", "u5"] {
            drop(l.begin(name, ip("10.9.9.9")).unwrap());
        }
        assert!(l.begin("u6", ip("10.9.9.9")).is_err());
        drop(l.begin("u6", ip("10.9.9.8")).unwrap());
    }

    #[test]
    fn ipv6_is_limited_by_its_64_block() {
        let (_clock, l) = limiter(100);
        for i in 0..5 {
            let a = format!("2001:db8:1:2::{i:x}");
            drop(l.begin(&format!("user{i}"), ip(&a)).unwrap());
        }
        assert!(l.begin("user9", ip("2001:db8:1:2:ffff::1")).is_err());
        drop(l.begin("user9", ip("2001:db8:1:3::1")).unwrap());
        // An IPv4-mapped address shares the IPv4 address's bucket.
        for i in 0..5 {
            drop(l.begin(&format!("v4user{i}"), ip("10.1.1.1")).unwrap());
        }
        assert!(l.begin("v4user9", ip("::ffff:10.1.1.1")).is_err());
    }

    #[test]
    fn successes_do_not_count() {
        let (_clock, l) = limiter(100);
        for _ in 0..50 {
            l.begin("alice", ip("10.0.0.1")).unwrap().succeeded();
        }
        for _ in 0..5 {
            drop(l.begin("alice", ip("10.0.0.1")).unwrap());
        }
        assert!(l.begin("alice", ip("10.0.0.1")).is_err());
    }

    #[test]
    fn memory_is_bounded_and_limited_keys_outlive_idle_ones() {
        let (clock, l) = limiter(10);
        for _ in 0..5 {
            drop(l.begin("victim", None).unwrap());
        }
        clock.advance(Duration::from_millis(10));
        for i in 0..1000 {
            drop(l.begin(&format!("spray{i}"), None).unwrap());
            assert!(l.len() <= 10);
        }
        // The oldest go first: the sprayed names pushed the victim out, which is the price of
        // bounded memory; the address bucket is what limits a sprayer.
        assert!(l.len() <= 10);
        clock.advance(Duration::from_secs(10));
        drop(l.begin("new", None).unwrap());
        for i in 0..20 {
            drop(l.begin(&format!("again{i}"), None).unwrap());
        }
        assert!(l.len() <= 10);
    }

    #[test]
    fn full_buckets_are_dropped_first() {
        let (clock, l) = limiter(4);
        for _ in 0..5 {
            drop(l.begin("limited", None).unwrap());
        }
        clock.advance(Duration::from_millis(100));
        drop(l.begin("a", None).unwrap());
        drop(l.begin("b", None).unwrap());
        drop(l.begin("c", None).unwrap());
        clock.advance(Duration::from_secs(2));
        // a, b and c have refilled; "limited" (older) is still short and survives.
        drop(l.begin("d", None).unwrap());
        assert!(l.len() <= 4);
        assert!(
            l.begin("limited", None).is_ok(),
            "refilled 2 of 5 after 2 s"
        );
        assert!(l.begin("limited", None).is_ok());
        assert!(l.begin("limited", None).is_err(), "still limited");
    }
}
