//! `coffer_seal_operations_total` handles, resolved once per provider key, resource rule or
//! cached KMS v2 seed instead of once per value.
//!
//! [`coffer_metrics::record_seal`] finds the labelled counter on every call (hash the labels,
//! lock the metric family's map). Under concurrent LISTs that per-value lookup is a shared
//! lock on the read path (kubernetes #135408). Here the counters are looked up when a provider
//! or a rule is built ([`coffer_metrics::seal_counter`], the same names and labels), and a read
//! or write only increments an atomic.

use std::fmt;

use coffer_metrics::{SealOp, SealResult};
use prometheus::IntCounter;

fn counter(op: SealOp, label: &str, result: SealResult) -> IntCounter {
    coffer_metrics::seal_counter(op, label, result)
}

/// The `open` counters of one provider key (or one cached seed).
pub(crate) struct OpenCounters {
    ok: IntCounter,
    stale: IntCounter,
}

impl OpenCounters {
    /// The counters of values opened by the provider labelled `label`.
    pub(crate) fn new(label: &str) -> Self {
        Self {
            ok: counter(SealOp::Open, label, SealResult::Ok),
            stale: counter(SealOp::Open, label, SealResult::Stale),
        }
    }

    /// Counts one successful open.
    pub(crate) fn record(&self, stale: bool) {
        if stale {
            self.stale.inc();
        } else {
            self.ok.inc();
        }
    }
}

impl fmt::Debug for OpenCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpenCounters")
    }
}

/// The counters of one resource rule: seals by its writing provider, and failed opens (which
/// are counted under the writing provider, as no provider opened the value).
pub(crate) struct RuleCounters {
    pub(crate) seal_ok: IntCounter,
    pub(crate) seal_error: IntCounter,
    pub(crate) open_error: IntCounter,
}

impl RuleCounters {
    /// The counters of a rule whose writing provider is labelled `write_label`.
    pub(crate) fn new(write_label: &str) -> Self {
        Self {
            seal_ok: counter(SealOp::Seal, write_label, SealResult::Ok),
            seal_error: counter(SealOp::Seal, write_label, SealResult::Error),
            open_error: counter(SealOp::Open, write_label, SealResult::Error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_counters_are_record_seals_counters() {
        let label = "aesgcm key \"resolved-once\"";
        let before = coffer_metrics::metrics()
            .seal_operations
            .with_label_values(&["open", "aesgcm", "resolved-once", "stale"])
            .get();
        let c = OpenCounters::new(label);
        c.record(true);
        coffer_metrics::record_seal(
            coffer_metrics::SealOp::Open,
            label,
            coffer_metrics::SealResult::Stale,
        );
        assert_eq!(c.stale.get(), before + 2);
        let r = RuleCounters::new(label);
        r.seal_ok.inc();
        assert!(coffer_metrics::encode().contains(
            "coffer_seal_operations_total{key=\"resolved-once\",operation=\"seal\",provider=\"aesgcm\",result=\"ok\"} 1"
        ));
    }
}
