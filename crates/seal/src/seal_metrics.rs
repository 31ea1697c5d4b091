//! `coffer_seal_operations_total` handles, resolved once per provider key, resource rule or
//! cached KMS v2 seed instead of once per value.
//!
//! [`coffer_metrics::record_seal`] finds the labelled counter on every call (hash the labels,
//! lock the metric family's map). Under concurrent LISTs that per-value lookup is a shared
//! lock on the read path (kubernetes #135408). Here the counters are looked up when a provider
//! or a rule is built, and a read or write only increments an atomic. Names and labels are
//! those of `record_seal`: the provider is the label's text before the first quote or
//! parenthesis (without a trailing ` key`), the key the first quoted name.

use std::fmt;

use prometheus::IntCounter;

/// `(provider, key)` of a public label such as `aesgcm key "k1"` or `kms v2 "x" key_id …`.
fn label_parts(label: &str) -> (&str, &str) {
    let head = match label.find(['"', '(']) {
        Some(i) => &label[..i],
        None => label,
    };
    let head = head.trim();
    let provider = head.strip_suffix(" key").unwrap_or(head);
    let mut quoted = label.splitn(3, '"');
    quoted.next();
    let key = match (quoted.next(), quoted.next()) {
        (Some(k), Some(_)) => k,
        _ => "",
    };
    (provider, key)
}

fn counter(op: &str, label: &str, result: &str) -> IntCounter {
    let (provider, key) = label_parts(label);
    coffer_metrics::metrics()
        .seal_operations
        .with_label_values(&[op, provider, key, result])
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
            ok: counter("open", label, "ok"),
            stale: counter("open", label, "stale"),
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
            seal_ok: counter("seal", write_label, "ok"),
            seal_error: counter("seal", write_label, "error"),
            open_error: counter("open", write_label, "error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_like_record_seal() {
        assert_eq!(label_parts("aesgcm key \"k1\""), ("aesgcm", "k1"));
        assert_eq!(
            label_parts("aesgcm (keys \"k1\", \"k2\")"),
            ("aesgcm", "k1")
        );
        assert_eq!(label_parts("identity"), ("identity", ""));
        assert_eq!(
            label_parts("kms v2 \"x\" key_id \"1\" (HKDF_SHA256_XNONCE_AES_GCM_SEED)"),
            ("kms v2", "x")
        );
        assert_eq!(label_parts("kms v1 \"a"), ("kms v1", ""));
    }

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
