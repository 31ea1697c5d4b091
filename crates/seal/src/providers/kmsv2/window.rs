//! The health of one KMS v2 provider and its write window.
//!
//! Writes are allowed until `write_window` (default 3 min) after the last *fully healthy*
//! Status: healthz exactly `ok`, version `v2`/`v2beta1` and unchanged since the first Status,
//! a valid key_id and, if the key_id changed, a new seed wrapped under it. Unlike upstream, a
//! Status that answers with healthz ≠ `ok` does not extend the window (kubernetes #138950).
//! The time that counts is taken when the Status reply arrives, before any Encrypt.
//!
//! The `coffer_kms_healthy` gauge is set on every probe; `coffer_kms_write_window_seconds` is
//! computed at scrape time by a hook holding only a `Weak` reference, so a dropped provider's
//! hook does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus::IntGauge;

/// Upstream's write window: 3 minutes after the last healthy Status.
pub const DEFAULT_WRITE_WINDOW: Duration = Duration::from_secs(180);

/// No window: writes never stop (an in-process key service, whose Status cannot fail).
const NO_WINDOW: u64 = u64::MAX;

/// Monotonic time in nanoseconds from the kernel's coarse clock: a vDSO read of the last
/// tick, several times cheaper than `Instant::now` and checked on every write; its resolution
/// (one tick, 1–4 ms) is ample for a window of minutes.
#[cfg(target_os = "linux")]
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Monotonic time in nanoseconds (elsewhere: from `Instant`).
#[cfg(not(target_os = "linux"))]
pub(crate) fn now_ns() -> u64 {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    nanos(BASE.get_or_init(std::time::Instant::now).elapsed())
}

/// Why a write was refused: how long since the last healthy Status, and the window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed {
    pub(crate) since: Option<Duration>,
    pub(crate) window: Duration,
}

/// See the module docs.
pub(crate) struct Health {
    /// [`now_ns`] at the last fully healthy Status, plus one; 0 = never.
    last_healthy: AtomicU64,
    /// The window in nanoseconds, or [`NO_WINDOW`].
    window_ns: AtomicU64,
    first_version: OnceLock<String>,
    last_error: Mutex<Option<String>>,
    healthy_gauge: IntGauge,
    window_gauge: IntGauge,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1)
}

impl Health {
    /// The health of the provider named `provider` (the metrics' `provider` label).
    pub(crate) fn new(provider: &str) -> Arc<Self> {
        let kms = coffer_metrics::kms::kms();
        let health = Arc::new(Self {
            last_healthy: AtomicU64::new(0),
            window_ns: AtomicU64::new(nanos(DEFAULT_WRITE_WINDOW)),
            first_version: OnceLock::new(),
            last_error: Mutex::new(None),
            healthy_gauge: kms.healthy.with_label_values(&[provider]),
            window_gauge: kms.write_window.with_label_values(&[provider]),
        });
        health.healthy_gauge.set(0);
        let weak = Arc::downgrade(&health);
        coffer_metrics::kms::on_scrape(move || {
            if let Some(h) = weak.upgrade() {
                let left = h.window_left().unwrap_or(Duration::ZERO).as_secs();
                h.window_gauge.set(i64::try_from(left).unwrap_or(i64::MAX));
            }
        });
        health
    }

    /// Sets the window (`None`: writes never stop for lack of a healthy Status).
    pub(crate) fn set_window(&self, window: Option<Duration>) {
        self.window_ns
            .store(window.map_or(NO_WINDOW, nanos), Ordering::Relaxed);
    }

    /// The window, if there is one.
    pub(crate) fn window(&self) -> Option<Duration> {
        match self.window_ns.load(Ordering::Relaxed) {
            NO_WINDOW => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// The version of the first Status, recorded if this is the first valid one; an error
    /// text if it differs from an earlier one.
    pub(crate) fn check_version(&self, version: &str) -> Result<(), String> {
        let first = self.first_version.get_or_init(|| version.to_owned());
        if first == version {
            Ok(())
        } else {
            Err(format!(
                "KMSv2 API version should not change after the initial status response version {first}, got {version}"
            ))
        }
    }

    /// Records a fully healthy Status received at `at_ns` ([`now_ns`]): the window re-opens
    /// from there.
    pub(crate) fn mark_healthy(&self, at_ns: u64) {
        self.last_healthy
            .fetch_max(at_ns.saturating_add(1), Ordering::SeqCst);
    }

    /// Records the outcome of a probe (gauge, last error).
    pub(crate) fn record(&self, error: Option<String>) {
        self.healthy_gauge.set(i64::from(error.is_none()));
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// The last probe's error, if it failed.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn since_healthy(&self) -> Option<Duration> {
        match self.last_healthy.load(Ordering::SeqCst) {
            0 => None,
            ns => Some(Duration::from_nanos(now_ns().saturating_sub(ns - 1))),
        }
    }

    /// Time left before writes stop: `None` with no window or before the first healthy Status,
    /// zero once closed.
    pub(crate) fn window_left(&self) -> Option<Duration> {
        let window = self.window()?;
        self.since_healthy().map(|s| window.saturating_sub(s))
    }

    /// `Ok` while writes are allowed.
    pub(crate) fn check_write(&self) -> Result<(), Closed> {
        let window = self.window_ns.load(Ordering::Relaxed);
        if window == NO_WINDOW {
            return Ok(());
        }
        let since = self.since_healthy();
        match since {
            Some(s) if nanos(s) < window => Ok(()),
            _ => Err(Closed {
                since,
                window: Duration::from_nanos(window),
            }),
        }
    }
}

/// A duration in milliseconds for an error message: `190 s`, `0.4 s` below ten seconds, and
/// `ever` for `u64::MAX` (no healthy Status at all).
pub fn show_ms(ms: u64) -> String {
    if ms == u64::MAX {
        return "ever".to_owned();
    }
    let d = Duration::from_millis(ms);
    if d >= Duration::from_secs(10) {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_opens_on_healthy_status_and_closes_after_it() {
        let h = Health::new("window-unit");
        assert!(h.check_write().is_err(), "never healthy");
        assert_eq!(h.window_left(), None);
        h.set_window(Some(Duration::from_millis(100)));
        h.mark_healthy(now_ns());
        assert!(h.check_write().is_ok());
        assert!(h.window_left().unwrap() > Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(120));
        let closed = h.check_write().unwrap_err();
        assert!(closed.since.unwrap() >= Duration::from_millis(100));
        assert_eq!(closed.window, Duration::from_millis(100));
        assert_eq!(h.window_left(), Some(Duration::ZERO));
        h.set_window(None);
        assert!(h.check_write().is_ok());
        assert_eq!(h.window_left(), None);
    }

    #[test]
    fn version_may_not_change() {
        let h = Health::new("version-unit");
        h.check_version("v2").unwrap();
        h.check_version("v2").unwrap();
        assert_eq!(
            h.check_version("v2beta1").unwrap_err(),
            "KMSv2 API version should not change after the initial status response version v2, got v2beta1"
        );
    }

    #[test]
    fn seconds_read_well() {
        assert_eq!(show_ms(190_400), "190 s");
        assert_eq!(show_ms(400), "0.4 s");
        assert_eq!(show_ms(u64::MAX), "ever");
    }
}
