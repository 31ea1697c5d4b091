//! Failures the suite expects from Debian's etcd 3.4.23, each tied to its upstream issue. A
//! finding that matches an entry for the target under test is reported as expected and does not
//! fail the run; anything else does. Coffer has no expected failures.
//!
//! The list holds only what the suite actually hits on 3.4.23 (see README's robustness section
//! for the runs that established it); an entry never matches Coffer.

use std::fmt;

use coffer_conformance::ServerKind;
use serde::Serialize;

/// Which check produced a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The linearizability checker.
    Linearizability,
    /// The watch validator.
    Watch,
    /// A scenario check of the fault injector (recovery after quota or full disk, ...).
    Scenario,
}

/// A known upstream bug.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Known {
    /// etcd-io/etcd issue number.
    pub issue: u32,
    /// What it is.
    pub title: &'static str,
    /// Fixed in.
    pub fixed_in: &'static str,
    /// Which check reports it.
    #[serde(skip)]
    source: Source,
    /// The finding kinds it shows up as.
    #[serde(skip)]
    kinds: &'static [&'static str],
}

/// One violation found by a run.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Which check.
    pub source: Source,
    /// The guarantee broken (the checker's `kind`).
    pub kind: String,
    /// What was seen.
    pub detail: String,
    /// The upstream bug that explains it, when the target is known to have it.
    pub expected: Option<Known>,
}

impl Finding {
    /// A finding not (yet) matched against the expected list.
    pub fn new(source: Source, kind: &str, detail: String) -> Self {
        Finding {
            source,
            kind: kind.to_string(),
            detail,
            expected: None,
        }
    }
}

/// Longest detail a one-line summary prints (the JSON output keeps it whole).
const DISPLAY_DETAIL: usize = 600;

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut detail = self.detail.as_str();
        let mut cut = "";
        if detail.len() > DISPLAY_DETAIL {
            let mut end = DISPLAY_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail = &detail[..end];
            cut = " […]";
        }
        match &self.expected {
            Some(k) => write!(
                f,
                "[expected: etcd-io/etcd#{} {}] {detail}{cut}",
                k.issue, k.title
            ),
            None => write!(f, "[UNEXPECTED {:?}] {detail}{cut}", self.source),
        }
    }
}

/// The etcd 3.4.23 bugs this suite hits.
pub const ETCD_3_4_23: &[Known] = &[
    Known {
        issue: 10681,
        title: "prevKV not returned when the previous version was compacted while the watcher \
                caught up (event sent without prev_kv instead of cancelling the watch)",
        fixed_in: "not fixed upstream (open)",
        source: Source::Watch,
        kinds: &["prev-kv-missing"],
    },
    Known {
        issue: 17529,
        title: "a slow watcher whose next revision was compacted skips the events it missed \
                instead of being cancelled (watch event loss after compaction)",
        fixed_in: "3.4.31, 3.5.13",
        source: Source::Watch,
        kinds: &["compacted-not-cancelled"],
    },
];

/// etcd-io/etcd#16659: etcd applies a write that crosses the quota and still answers
/// `database space exceeded` (upstream documented it as intended rather than fixing it). The
/// suite records such answers from etcd as uncertain, so the checker allows either outcome;
/// from Coffer they stay definite failures.
pub const NOSPACE_MAY_APPLY: Known = Known {
    issue: 16659,
    title: "a write answered `database space exceeded` may have been applied",
    fixed_in: "not fixed (documented behaviour)",
    source: Source::Linearizability,
    kinds: &[],
};

/// Whether `target` may apply a write it answers with NOSPACE ([`NOSPACE_MAY_APPLY`]).
pub fn nospace_may_apply(target: ServerKind) -> bool {
    target == ServerKind::Etcd
}

/// Marks `finding` expected when the target is known to fail that way.
pub fn classify(target: ServerKind, mut finding: Finding) -> Finding {
    if target == ServerKind::Etcd {
        finding.expected = ETCD_3_4_23
            .iter()
            .find(|k| k.source == finding.source && k.kinds.contains(&finding.kind.as_str()))
            .copied();
    }
    finding
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coffer_never_has_expected_failures() {
        for k in ETCD_3_4_23 {
            for kind in k.kinds {
                let f = classify(
                    ServerKind::Coffer,
                    Finding::new(k.source, kind, String::new()),
                );
                assert!(f.expected.is_none());
                let f = classify(
                    ServerKind::Etcd,
                    Finding::new(k.source, kind, String::new()),
                );
                assert_eq!(f.expected.map(|e| e.issue), Some(k.issue));
            }
        }
        let f = classify(
            ServerKind::Etcd,
            Finding::new(Source::Linearizability, "linearizability", String::new()),
        );
        assert!(f.expected.is_none(), "etcd must stay linearizable");
    }
}
