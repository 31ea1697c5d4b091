//! The sequential model of etcd's single-member keyspace: keys with their versions, the current
//! revision, leases and the compact revision, and what each request does to them. The search
//! ([`super::search`]) replays operations through it in revision order.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::history::{Compare, Key, KeyValue, TxnOp, TxnOpResult, Value};

/// One live key as the model holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Kv {
    pub value: Value,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Kv {
    /// The wire form of this key.
    pub fn to_key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// One key changed by a write: the new version (`None` for a delete) and the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub key: Key,
    pub kv: Option<Kv>,
    pub prev: Option<Kv>,
}

/// The whole model state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct State {
    /// Current revision (1 for an empty store).
    pub revision: i64,
    pub kvs: BTreeMap<Key, Kv>,
    /// Live leases among those granted by an operation of the history.
    pub live_leases: BTreeSet<i64>,
    /// Leases the history never saw granted but saw revoked.
    pub dead_foreign_leases: BTreeSet<i64>,
    /// Compact revision (0 = never compacted).
    pub compact_revision: i64,
}

/// What a transaction did when run against the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnRun {
    pub succeeded: bool,
    pub results: Vec<TxnOpResult>,
    pub changes: Vec<Change>,
}

impl State {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        State {
            revision: 1,
            ..State::default()
        }
    }

    /// A fingerprint of the state, for the search's cache of explored configurations.
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// Whether lease `id` exists. Leases never granted by an operation of the history (the
    /// checker cannot know them) are assumed to exist until revoked.
    pub fn lease_exists(&self, id: i64, granted_in_history: &HashSet<i64>) -> bool {
        if granted_in_history.contains(&id) {
            self.live_leases.contains(&id)
        } else {
            !self.dead_foreign_leases.contains(&id)
        }
    }

    /// Keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Key> {
        self.kvs
            .iter()
            .filter(|(_, kv)| kv.lease == id)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Keys in `[key, end)` (or just `key`), as a read at the current revision returns them.
    pub fn range(&self, key: &str, end: Option<&str>) -> Vec<KeyValue> {
        match end {
            None => self
                .kvs
                .get(key)
                .map(|kv| vec![kv.to_key_value(key)])
                .unwrap_or_default(),
            Some(end) if end > key => self
                .kvs
                .range::<str, _>((
                    std::ops::Bound::Included(key),
                    std::ops::Bound::Excluded(end),
                ))
                .map(|(k, kv)| kv.to_key_value(k))
                .collect(),
            Some(_) => Vec::new(),
        }
    }

    /// Puts `key=value` at revision `rev` (the caller bumps [`State::revision`]).
    pub fn put(&mut self, key: &str, value: &str, lease: i64, rev: i64) -> Change {
        let prev = self.kvs.get(key).cloned();
        let kv = Kv {
            value: value.to_string(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        self.kvs.insert(key.to_string(), kv.clone());
        Change {
            key: key.to_string(),
            kv: Some(kv),
            prev,
        }
    }

    /// Deletes `key` if it exists.
    pub fn delete(&mut self, key: &str) -> Option<Change> {
        self.kvs.remove(key).map(|prev| Change {
            key: key.to_string(),
            kv: None,
            prev: Some(prev),
        })
    }

    /// Whether every compare holds.
    pub fn compares_hold(&self, compares: &[Compare]) -> bool {
        compares.iter().all(|c| match c {
            Compare::ModRevisionEquals { key, revision } => {
                self.kvs.get(key).map_or(0, |kv| kv.mod_revision) == *revision
            }
            Compare::ValueEquals { key, value } => {
                self.kvs.get(key).is_some_and(|kv| &kv.value == value)
            }
        })
    }

    /// Runs a transaction as if it were applied next: its writes (if any) get revision
    /// `self.revision + 1`, which the caller commits by bumping the revision when
    /// `changes` is non-empty. The state is modified.
    pub fn txn(&mut self, compares: &[Compare], success: &[TxnOp], failure: &[TxnOp]) -> TxnRun {
        let succeeded = self.compares_hold(compares);
        let ops = if succeeded { success } else { failure };
        let rev = self.revision + 1;
        let mut results = Vec::with_capacity(ops.len());
        let mut changes = Vec::new();
        for op in ops {
            match op {
                TxnOp::Put { key, value } => {
                    changes.push(self.put(key, value, 0, rev));
                    results.push(TxnOpResult::Put);
                }
                TxnOp::Get { key } => results.push(TxnOpResult::Get {
                    kvs: self.range(key, None),
                }),
                TxnOp::Delete { key } => {
                    let change = self.delete(key);
                    results.push(TxnOpResult::Delete {
                        deleted: i64::from(change.is_some()),
                    });
                    changes.extend(change);
                }
            }
        }
        TxnRun {
            succeeded,
            results,
            changes,
        }
    }
}

/// Shows a key as the model or a response holds it, for reports.
pub(crate) struct ShowKvs<'a>(pub &'a [KeyValue]);

impl fmt::Display for ShowKvs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "(none)");
        }
        for (i, kv) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(
                f,
                "{}={} (create {}, mod {}, version {}, lease {})",
                kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_versions_and_delete_resets() {
        let mut s = State::new();
        s.put("a", "1", 0, 2);
        s.put("a", "2", 0, 3);
        let kv = &s.kvs["a"];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert!(s.delete("a").is_some());
        assert!(s.delete("a").is_none());
        s.put("a", "3", 0, 5);
        let kv = &s.kvs["a"];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    }

    #[test]
    fn txn_reads_its_own_writes_and_absent_value_compare_is_false() {
        let mut s = State::new();
        let run = s.txn(
            &[Compare::ValueEquals {
                key: "a".into(),
                value: "x".into(),
            }],
            &[],
            &[
                TxnOp::Put {
                    key: "a".into(),
                    value: "y".into(),
                },
                TxnOp::Get { key: "a".into() },
            ],
        );
        assert!(!run.succeeded);
        assert_eq!(run.changes.len(), 1);
        match &run.results[1] {
            TxnOpResult::Get { kvs } => assert_eq!(kvs[0].mod_revision, 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn range_is_half_open_and_empty_when_end_not_after_key() {
        let mut s = State::new();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            s.put(k, "v", 0, i as i64 + 2);
        }
        assert_eq!(s.range("a", Some("c")).len(), 2);
        assert!(s.range("b", Some("a")).is_empty());
    }
}
