//! The in-memory key index (etcd's `treeIndex`): an ordered map from each key to its
//! generations of revisions. A generation starts with the put that creates the key and ends
//! with the tombstone that deletes it. The index answers "which revision of which key is
//! visible at revision R" for ranges, counts and compares without touching the engine, and
//! carries enough (create revision, version, lease) that `count_only` and `keys_only` never
//! read or open a value. It is rebuilt from the `records` table at start-up.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::record::Rev;

/// What the index knows about one visible revision of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Revision of the put (its record's table key).
    pub rev: Rev,
    /// Revision that created this generation.
    pub create: i64,
    /// Version of the key at this put (1 on creation).
    pub version: i64,
    /// Lease attached by this put.
    pub lease: i64,
}

#[derive(Debug, Clone)]
struct Generation {
    created: i64,
    /// Version of `revs[0]` (compaction may drop the first puts of a generation).
    first_version: i64,
    /// The puts of this generation with the lease each attached; never empty.
    revs: Vec<(Rev, i64)>,
    tombstone: Option<Rev>,
}

impl Generation {
    fn entry(&self, i: usize) -> Entry {
        let (rev, lease) = self.revs[i];
        Entry {
            rev,
            create: self.created,
            version: self.first_version + i as i64,
            lease,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct KeyHistory {
    gens: Vec<Generation>,
}

impl KeyHistory {
    fn at(&self, rev: i64) -> Option<Entry> {
        let g = self.gens.iter().rev().find(|g| g.revs[0].0.main <= rev)?;
        if g.tombstone.is_some_and(|t| t.main <= rev) {
            return None;
        }
        let n = g.revs.partition_point(|(r, _)| r.main <= rev);
        // n >= 1 because revs[0].main <= rev.
        Some(g.entry(n - 1))
    }

    fn latest(&self) -> Option<Entry> {
        let g = self.gens.last()?;
        if g.tombstone.is_some() {
            return None;
        }
        Some(g.entry(g.revs.len() - 1))
    }

    /// Drops what no read at `at` or later can see; appends the revisions of removed records
    /// to `removed`. Returns true when nothing is left.
    fn compact(&mut self, at: i64, removed: &mut Vec<Rev>) -> bool {
        let mut keep = Vec::with_capacity(self.gens.len());
        for mut g in self.gens.drain(..) {
            match g.tombstone {
                Some(t) if t.main <= at => {
                    removed.extend(g.revs.iter().map(|(r, _)| *r));
                    removed.push(t);
                }
                _ => {
                    let n = g.revs.partition_point(|(r, _)| r.main <= at);
                    if n > 1 {
                        removed.extend(g.revs[..n - 1].iter().map(|(r, _)| *r));
                        g.revs.drain(..n - 1);
                        g.first_version += (n - 1) as i64;
                    }
                    keep.push(g);
                }
            }
        }
        self.gens = keep;
        self.gens.is_empty()
    }
}

/// A change to apply to the index, in revision order.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// A put of `key` at `rev` with `lease`.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its revision.
        rev: Rev,
        /// The lease it attaches.
        lease: i64,
    },
    /// A deletion of `key` at `rev`.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// Its revision.
        rev: Rev,
    },
}

/// Lower and upper bound of a key range.
pub type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Selects the keys of a `(key, range_end)` pair as etcd does (§1.1): empty end = one key,
/// `"\0"` = every key from `key`, else `[key, end)` (empty when `end <= key`).
pub fn key_bounds<'a>(key: &'a [u8], end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if end == [0] {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(end)))
    }
}

/// The key index plus the store's revision counters, kept under one lock so a reader sees a
/// consistent (index, current, compacted) triple.
#[derive(Debug, Default)]
pub struct Index {
    keys: BTreeMap<Vec<u8>, KeyHistory>,
    /// Current revision (1 for an empty store).
    pub current: i64,
    /// Compacted revision (-1 when never compacted, as in etcd).
    pub compacted: i64,
}

impl Index {
    /// An empty index at revision 1.
    pub fn new() -> Self {
        Index {
            keys: BTreeMap::new(),
            current: 1,
            compacted: -1,
        }
    }

    /// The visible revision of `key` at `rev`.
    pub fn get(&self, key: &[u8], rev: i64) -> Option<Entry> {
        self.keys.get(key)?.at(rev)
    }

    /// The latest live revision of `key`.
    pub fn latest(&self, key: &[u8]) -> Option<Entry> {
        self.keys.get(key)?.latest()
    }

    /// Calls `f` for each key visible at `rev` in `(key, end)`, in key order, until it
    /// returns false.
    pub fn visit(&self, key: &[u8], end: &[u8], rev: i64, mut f: impl FnMut(&[u8], Entry) -> bool) {
        let Some(bounds) = key_bounds(key, end) else {
            return;
        };
        if let (Bound::Included(a), Bound::Included(_)) = bounds {
            if let Some(e) = self.get(a, rev) {
                f(a, e);
            }
            return;
        }
        for (k, h) in self.keys.range::<[u8], _>(bounds) {
            if let Some(e) = h.at(rev) {
                if !f(k, e) {
                    return;
                }
            }
        }
    }

    /// Number of keys visible at `rev` in `(key, end)`.
    pub fn count(&self, key: &[u8], end: &[u8], rev: i64) -> i64 {
        let mut n = 0;
        self.visit(key, end, rev, |_, _| {
            n += 1;
            true
        });
        n
    }

    /// Applies one committed change.
    pub fn apply(&mut self, m: &Mutation) {
        match m {
            Mutation::Put { key, rev, lease } => {
                let h = self.keys.entry(key.clone()).or_default();
                match h.gens.last_mut() {
                    Some(g) if g.tombstone.is_none() => g.revs.push((*rev, *lease)),
                    _ => h.gens.push(Generation {
                        created: rev.main,
                        first_version: 1,
                        revs: vec![(*rev, *lease)],
                        tombstone: None,
                    }),
                }
            }
            Mutation::Delete { key, rev } => {
                if let Some(g) = self
                    .keys
                    .get_mut(key.as_slice())
                    .and_then(|h| h.gens.last_mut())
                {
                    if g.tombstone.is_none() {
                        g.tombstone = Some(*rev);
                    }
                }
            }
        }
    }

    /// Adds a stored put while rebuilding from the records table (which may have lost the
    /// first puts of a generation to compaction).
    pub fn restore_put(&mut self, key: &[u8], rev: Rev, create: i64, version: i64, lease: i64) {
        let h = self.keys.entry(key.to_vec()).or_default();
        match h.gens.last_mut() {
            Some(g) if g.tombstone.is_none() && g.created == create => g.revs.push((rev, lease)),
            _ => h.gens.push(Generation {
                created: create,
                first_version: version,
                revs: vec![(rev, lease)],
                tombstone: None,
            }),
        }
    }

    /// Compaction at `at`: forgets every revision that neither a read at `at` or later nor a
    /// watch starting at `at` needs, and returns the revisions whose records may be deleted.
    ///
    /// A watch may start at exactly the compacted revision, so revision `at`'s own events must
    /// survive, tombstones included, with the versions they replaced (their `prev_kv`). etcd
    /// drops a tombstone at the compacted revision, and a watch opened there misses that DELETE
    /// (etcd-io/etcd#19179). Here the records are kept as a compaction at `at - 1` would keep
    /// them, while reads and watches below `at` are still refused: one extra version per key
    /// changed at `at`, deleted by the next compaction.
    pub fn compact(&mut self, at: i64) -> Vec<Rev> {
        let mut removed = Vec::new();
        let keep_from = at - 1;
        self.keys.retain(|_, h| !h.compact(keep_from, &mut removed));
        removed.sort_unstable();
        removed
    }

    /// Number of live keys (latest revision not a delete): etcd's `keys_total`.
    pub fn live_count(&self) -> usize {
        self.keys.values().filter(|h| h.latest().is_some()).count()
    }

    /// Number of keys with any retained history (live or not).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn put(ix: &mut Index, key: &str, main: i64) {
        ix.apply(&Mutation::Put {
            key: key.as_bytes().to_vec(),
            rev: Rev::new(main, 0),
            lease: 0,
        });
    }
    fn del(ix: &mut Index, key: &str, main: i64) {
        ix.apply(&Mutation::Delete {
            key: key.as_bytes().to_vec(),
            rev: Rev::new(main, 0),
        });
    }

    #[test]
    fn generations_and_point_reads() {
        let mut ix = Index::new();
        put(&mut ix, "a", 2);
        put(&mut ix, "a", 3);
        del(&mut ix, "a", 4);
        put(&mut ix, "a", 6);
        assert_eq!(ix.get(b"a", 1), None);
        let e = ix.get(b"a", 3).unwrap();
        assert_eq!((e.rev.main, e.create, e.version), (3, 2, 2));
        assert_eq!(ix.get(b"a", 4), None);
        assert_eq!(ix.get(b"a", 5), None);
        let e = ix.get(b"a", 6).unwrap();
        assert_eq!((e.rev.main, e.create, e.version), (6, 6, 1));
        assert_eq!(ix.latest(b"a").unwrap().rev.main, 6);
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_need() {
        let mut ix = Index::new();
        put(&mut ix, "a", 2);
        put(&mut ix, "a", 3);
        put(&mut ix, "a", 5);
        put(&mut ix, "b", 2);
        del(&mut ix, "b", 4);
        let removed = ix.compact(4);
        let mains: Vec<i64> = removed.iter().map(|r| r.main).collect();
        // a@2 only (superseded by a@3 <= 3). b's tombstone at 4 and the b@2 it replaced stay
        // for a watch that starts at 4 (etcd-io/etcd#19179).
        assert_eq!(mains, vec![2]);
        let e = ix.get(b"a", 4).unwrap();
        assert_eq!((e.rev.main, e.version), (3, 2));
        assert_eq!(ix.get(b"a", 5).unwrap().version, 3);
        assert_eq!(ix.get(b"b", 3).unwrap().rev.main, 2);
        assert_eq!(ix.key_count(), 2);
        // The next compaction takes them; a@3 stays as the version a@5 replaced.
        let mains: Vec<i64> = ix.compact(5).iter().map(|r| r.main).collect();
        assert_eq!(mains, vec![2, 4]);
        assert_eq!(ix.get(b"a", 4).unwrap().rev.main, 3);
        assert_eq!(ix.key_count(), 1);
    }

    #[test]
    fn ranges_follow_etcd_bounds() {
        let mut ix = Index::new();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            put(&mut ix, k, 2 + i as i64);
        }
        assert_eq!(ix.count(b"a", b"", 10), 1);
        assert_eq!(ix.count(b"a", b"c", 10), 2);
        assert_eq!(ix.count(b"b", b"\0", 10), 2);
        assert_eq!(ix.count(b"c", b"a", 10), 0);
        assert_eq!(ix.count(b"\0", b"\0", 3), 2);
    }
}
