//! Watch validation: every watcher's events against etcd's documented guarantees
//! (reference §1.9: ordered, unique, reliable, atomic; prev_kv; start revision; cancel on
//! compaction) and against the *final history* of writes.
//!
//! The final history is the linearization the KV checker finds ([`crate::linearizability`]):
//! for each revision, the write that made it and every key it changed with the full new and
//! previous key-values. When the KV history is not linearizable (that is reported
//! separately) it falls back to what answered writes report (keys and values, no versions).
//! Revisions no KV answer shows (uncertain writes after the last answered operation) are
//! patched in from the watchers themselves, as etcd's robustness suite does: a write any
//! watcher saw happened, and every other watcher of its keys must see it the same way.
//!
//! Guarantees checked, each a [`Violation::kind`]:
//! - `ordered`: events strictly increase by (revision, position of the key's change in the
//!   revision's write, e.g. a txn's op order);
//! - `unique`: no (revision, key) event twice;
//! - `matches-history`: an event at revision R on key K is the change R made to K: kind,
//!   value, and when known create/mod revision, version, lease; a delete event's kv has
//!   only key and mod_revision; `watchers-agree` for revisions known only from watchers;
//! - `in-range`: the key is inside the watched range;
//! - `header`: the response's header revision is at least the event's revision;
//! - `after-start`: no event below the start revision (`start_revision`, or
//!   `created_revision + 1` when it was 0);
//! - `gap-free`: every change in the watched range with revision in
//!   `[start, end]` was received, where `end` is the last received revision for a broken
//!   stream or a cancelled watcher, and the final revision of the history for a stream that
//!   ended cleanly (the runner closes watchers only after they had time to catch up);
//!   `compacted-not-cancelled` when the missing revisions lie below a compaction and the
//!   watcher was not cancelled (etcd #17529: skipped instead of cancelled); `progress-notify`
//!   when the missing change is at or below a progress notification's revision but after
//!   `end` (etcd #15220);
//! - `prev-kv`: with prev_kv requested, the key as of revision R-1 (none for a creation);
//!   `prev-kv-missing` when it is absent although the key existed (etcd may omit it when
//!   that version was compacted meanwhile); prev_kv attached although not requested;
//! - `compaction-cancel`: a cancel with `compact_revision` C is only allowed when the
//!   watcher's next needed revision (last received + 1, or its start) is below C, and C must
//!   be a compaction some client asked for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use crate::history::{
    EventKind, History, KeyValue, Outcome, Request, Response, TxnOp, TxnOpResult, WatchRecord,
};
use crate::linearizability;

/// One broken watch guarantee.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The guarantee broken (see the module docs).
    pub kind: &'static str,
    /// Index of the watcher in [`History::watches`].
    pub watch: usize,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: watch #{}: {}", self.kind, self.watch, self.detail)
    }
}

/// One key changed at one revision, as far as it is known.
#[derive(Debug, Clone)]
struct Ch {
    key: String,
    kind: EventKind,
    value: String,
    /// The full key-value after a put, when the linearization is known.
    kv: Option<KeyValue>,
    /// The key before the change, when the linearization is known (inner `None`: absent).
    prev: Option<Option<KeyValue>>,
}

/// What is known of one revision.
#[derive(Debug, Clone, Default)]
struct Rev {
    changes: Vec<Ch>,
    /// Known only from watchers (so possibly only some of its keys).
    from_watch: bool,
}

/// The final history of writes.
struct Final {
    revs: BTreeMap<i64, Rev>,
    last_revision: i64,
    compactions: Vec<i64>,
    /// `History::sealed_prev_kv`.
    sealed: Vec<(i64, i64)>,
}

/// Budget for resolving the linearization the watch check compares against.
const RESOLVE_BUDGET: Duration = Duration::from_secs(30);

/// Cap on violations of one kind reported per watcher.
const PER_KIND: usize = 5;

/// Checks every watcher of `h`.
pub fn check(h: &History) -> Vec<Violation> {
    let fin = final_history(h);
    let mut out = Vec::new();
    for (i, w) in h.watches.iter().enumerate() {
        check_watch(i, w, &fin, &mut out);
    }
    out
}

fn final_history(h: &History) -> Final {
    let mut revs: BTreeMap<i64, Rev> = BTreeMap::new();
    let mut last_revision = 1;
    if let Some(resolved) = linearizability::resolve(h, RESOLVE_BUDGET) {
        last_revision = resolved.final_revision;
        for (rev, _, changes) in resolved.writes {
            let changes = changes
                .into_iter()
                .map(|c| Ch {
                    kind: if c.kv.is_some() {
                        EventKind::Put
                    } else {
                        EventKind::Delete
                    },
                    value: c.kv.as_ref().map(|kv| kv.value.clone()).unwrap_or_default(),
                    kv: c.kv.as_ref().map(|kv| kv.to_key_value(&c.key)),
                    prev: Some(c.prev.as_ref().map(|kv| kv.to_key_value(&c.key))),
                    key: c.key,
                })
                .collect();
            revs.insert(
                rev,
                Rev {
                    changes,
                    from_watch: false,
                },
            );
        }
    } else {
        for op in &h.operations {
            let Some(rev) = linearizability::reported_write(op) else {
                continue;
            };
            revs.entry(rev).or_insert_with(|| Rev {
                changes: reported_changes(op),
                from_watch: false,
            });
        }
    }
    for op in &h.operations {
        if let Outcome::Ok(r) = &op.outcome {
            last_revision = last_revision.max(r.revision());
        }
    }
    // Patch in what watchers saw at revisions the KV history does not show.
    for w in &h.watches {
        for ev in &w.events {
            let r = ev.kv.mod_revision;
            last_revision = last_revision.max(r);
            let entry = revs.entry(r).or_insert_with(|| Rev {
                changes: Vec::new(),
                from_watch: true,
            });
            if entry.from_watch && !entry.changes.iter().any(|c| c.key == ev.kv.key) {
                entry.changes.push(Ch {
                    key: ev.kv.key.clone(),
                    kind: ev.kind,
                    value: ev.kv.value.clone(),
                    kv: None,
                    prev: None,
                });
            }
        }
    }
    let compactions = h
        .operations
        .iter()
        .filter(|op| !matches!(op.outcome, Outcome::Failed(_)))
        .filter_map(|op| match op.request {
            Request::Compact { revision } => Some(revision),
            _ => None,
        })
        .collect();
    Final {
        revs,
        last_revision,
        compactions,
        sealed: h.sealed_prev_kv.clone(),
    }
}

/// The changes an answered write reports, without versions.
fn reported_changes(op: &crate::history::Operation) -> Vec<Ch> {
    let put = |key: &str, value: &str| Ch {
        key: key.to_string(),
        kind: EventKind::Put,
        value: value.to_string(),
        kv: None,
        prev: None,
    };
    let del = |key: &str| Ch {
        key: key.to_string(),
        kind: EventKind::Delete,
        value: String::new(),
        kv: None,
        prev: None,
    };
    match (&op.request, &op.outcome) {
        (Request::Put { key, value, .. }, _) => vec![put(key, value)],
        (Request::Delete { key }, _) => vec![del(key)],
        (
            Request::Txn {
                success, failure, ..
            },
            Outcome::Ok(Response::Txn {
                succeeded, results, ..
            }),
        ) => {
            let branch = if *succeeded { success } else { failure };
            branch
                .iter()
                .zip(results)
                .filter_map(|(op, res)| match (op, res) {
                    (TxnOp::Put { key, value }, _) => Some(put(key, value)),
                    (TxnOp::Delete { key }, TxnOpResult::Delete { deleted }) if *deleted > 0 => {
                        Some(del(key))
                    }
                    _ => None,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

fn in_range(w: &WatchRecord, key: &str) -> bool {
    match w.range_end.as_deref() {
        None | Some("") => key == w.key,
        Some("\0") => key >= w.key.as_str(),
        Some(end) => w.key.as_str() <= key && key < end,
    }
}

/// Collects violations of one kind for one watcher, capped.
struct Sink<'a> {
    watch: usize,
    out: &'a mut Vec<Violation>,
    counts: HashMap<&'static str, usize>,
}

impl Sink<'_> {
    fn push(&mut self, kind: &'static str, detail: String) {
        let n = self.counts.entry(kind).or_insert(0);
        *n += 1;
        if *n <= PER_KIND {
            self.out.push(Violation {
                kind,
                watch: self.watch,
                detail,
            });
        }
    }

    fn finish(self) {
        for (kind, n) in self.counts {
            if n > PER_KIND {
                self.out.push(Violation {
                    kind,
                    watch: self.watch,
                    detail: format!("... and {} more of this kind", n - PER_KIND),
                });
            }
        }
    }
}

fn show(kv: &KeyValue) -> String {
    format!(
        "{}={} (create {}, mod {}, version {}, lease {})",
        kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
    )
}

fn check_watch(index: usize, w: &WatchRecord, fin: &Final, out: &mut Vec<Violation>) {
    let mut sink = Sink {
        watch: index,
        out,
        counts: HashMap::new(),
    };
    let start = if w.start_revision > 0 {
        w.start_revision
    } else {
        w.created_revision + 1
    };
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut prev_pos: Option<(i64, usize)> = None;
    for (n, ev) in w.events.iter().enumerate() {
        let r = ev.kv.mod_revision;
        let key = ev.kv.key.as_str();
        let at = format!("event {n} ({:?} {key} at revision {r})", ev.kind);
        if ev.response_revision < r {
            sink.push(
                "header",
                format!(
                    "{at} came in a response with header revision {}",
                    ev.response_revision
                ),
            );
        }
        if !in_range(w, key) {
            sink.push("in-range", format!("{at} is outside the watched range"));
        }
        if r < start {
            sink.push(
                "after-start",
                format!("{at} is before the watcher's start revision {start}"),
            );
        }
        if !seen.insert((r, key)) {
            sink.push("unique", format!("{at} was received before"));
            continue;
        }
        let info = fin.revs.get(&r);
        let change = info.and_then(|i| i.changes.iter().enumerate().find(|(_, c)| c.key == key));
        let pos = (r, change.map_or(0, |(p, _)| p));
        if let Some(prev) = prev_pos {
            if pos <= prev {
                sink.push(
                    "ordered",
                    format!(
                        "{at} came after an event at revision {} (position {})",
                        prev.0, prev.1
                    ),
                );
            }
        }
        prev_pos = Some(pos.max(prev_pos.unwrap_or(pos)));
        let Some((_, ch)) = change else {
            if info.is_some_and(|i| !i.from_watch) {
                sink.push(
                    "matches-history",
                    format!("{at}: the write of revision {r} did not change {key}"),
                );
            }
            continue;
        };
        let kind = if info.is_some_and(|i| i.from_watch) {
            "watchers-agree"
        } else {
            "matches-history"
        };
        if ch.kind != ev.kind || (ev.kind == EventKind::Put && ch.value != ev.kv.value) {
            sink.push(
                kind,
                format!(
                    "{at} shows {}, but revision {r} {} {key}{}",
                    show(&ev.kv),
                    if ch.kind == EventKind::Put {
                        "put"
                    } else {
                        "deleted"
                    },
                    if ch.kind == EventKind::Put {
                        format!("={}", ch.value)
                    } else {
                        String::new()
                    }
                ),
            );
            continue;
        }
        match ev.kind {
            EventKind::Put => {
                if let Some(kv) = &ch.kv {
                    if kv != &ev.kv {
                        sink.push(
                            "matches-history",
                            format!("{at} shows {}, the history has {}", show(&ev.kv), show(kv)),
                        );
                    }
                }
            }
            EventKind::Delete => {
                let kv = &ev.kv;
                if !kv.value.is_empty()
                    || kv.create_revision != 0
                    || kv.version != 0
                    || kv.lease != 0
                {
                    sink.push(
                        "matches-history",
                        format!("{at}: a delete event's kv must carry only key and mod_revision, got {}", show(kv)),
                    );
                }
            }
        }
        check_prev_kv(w, ev, ch, fin, &at, &mut sink);
    }

    // Gap-free.
    let last_received = w.events.iter().map(|e| e.kv.mod_revision).max();
    let end = if w.broken || w.cancel.is_some() {
        last_received.unwrap_or(start - 1)
    } else {
        fin.last_revision.max(last_received.unwrap_or(0))
    };
    let progress = w.progress.iter().copied().max().unwrap_or(0);
    let horizon = end.max(progress);
    let max_compaction = fin.compactions.iter().copied().max().unwrap_or(0);
    let mut missing: Vec<(i64, String)> = Vec::new();
    let mut missing_progress: Vec<(i64, String)> = Vec::new();
    if horizon >= start {
        for (&r, info) in fin.revs.range(start..=horizon) {
            for c in &info.changes {
                if in_range(w, &c.key) && !seen.contains(&(r, c.key.as_str())) {
                    if r <= end {
                        missing.push((r, c.key.clone()));
                    } else {
                        missing_progress.push((r, c.key.clone()));
                    }
                }
            }
        }
    }
    let list = |v: &[(i64, String)]| {
        v.iter()
            .take(5)
            .map(|(r, k)| format!("{k}@{r}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !missing.is_empty() {
        let compacted = missing.iter().any(|(r, _)| *r < max_compaction);
        let kind = if compacted && w.cancel.is_none() {
            "compacted-not-cancelled"
        } else {
            "gap-free"
        };
        sink.push(
            kind,
            format!(
                "{} change(s) in the watched range between revisions {start} and {end} never arrived (first: {}){}",
                missing.len(),
                list(&missing),
                if kind == "compacted-not-cancelled" {
                    format!("; they lie below compaction {max_compaction}: the watcher should have been cancelled, not advanced (etcd #17529)")
                } else {
                    String::new()
                }
            ),
        );
    }
    if !missing_progress.is_empty() {
        sink.push(
            "progress-notify",
            format!(
                "a progress notification announced revision {progress}, but {} change(s) at or below it never arrived (first: {}) (etcd #15220)",
                missing_progress.len(),
                list(&missing_progress)
            ),
        );
    }

    // Compaction cancel.
    if let Some(cancel) = &w.cancel {
        let c = cancel.compact_revision;
        if c > 0 {
            let next = last_received.map_or(start, |r| r + 1);
            if next >= c {
                sink.push(
                    "compaction-cancel",
                    format!("cancelled for compaction at {c}, but the watcher only needed revisions from {next} on (etcd cancels when next < compact revision)"),
                );
            }
            if !fin.compactions.contains(&c) {
                sink.push(
                    "compaction-cancel",
                    format!("cancelled for compaction at {c}, but no client compacted to {c}"),
                );
            }
        }
    }
    sink.finish();
}

/// The one exception to "prev_kv is the key as the history wrote it": while the server ran
/// without the key that sealed a value (`History::sealed_prev_kv`), an event may carry that
/// value as stored, sealed bytes starting `k8s:enc:`, with every other field exact.
fn sealed_as_stored(
    fin: &Final,
    ev: &crate::history::WatchEvent,
    got: &crate::history::KeyValue,
    want: &crate::history::KeyValue,
) -> bool {
    let r = ev.response_revision;
    let in_window = fin.sealed.iter().any(|&(from, to)| r >= from && r <= to);
    in_window
        && got.value.starts_with("k8s:enc:")
        && crate::history::KeyValue {
            value: want.value.clone(),
            ..got.clone()
        } == *want
}

fn check_prev_kv(
    w: &WatchRecord,
    ev: &crate::history::WatchEvent,
    ch: &Ch,
    fin: &Final,
    at: &str,
    sink: &mut Sink<'_>,
) {
    if !w.prev_kv {
        if let Some(p) = &ev.prev_kv {
            sink.push(
                "prev-kv",
                format!(
                    "{at} carries prev_kv {} though the watcher did not ask for it",
                    show(p)
                ),
            );
        }
        return;
    }
    match &ch.prev {
        Some(expected) => {
            let creation = ev.kind == EventKind::Put && expected.is_none();
            match (&ev.prev_kv, expected) {
                (Some(got), Some(want)) if got != want && !sealed_as_stored(fin, ev, got, want) => {
                    sink.push(
                        "prev-kv",
                        format!(
                            "{at}: prev_kv is {}, the key before was {}",
                            show(got),
                            show(want)
                        ),
                    )
                }
                (Some(got), None) => sink.push(
                    "prev-kv",
                    format!(
                        "{at}: prev_kv is {}, but the key did not exist before",
                        show(got)
                    ),
                ),
                (None, Some(want)) if !creation => sink.push(
                    "prev-kv-missing",
                    format!(
                        "{at}: prev_kv is missing; the key before was {}",
                        show(want)
                    ),
                ),
                _ => {}
            }
        }
        None => {
            // Versions unknown: check prev_kv against the writes we know of.
            let Some(got) = &ev.prev_kv else { return };
            let r = ev.kv.mod_revision;
            if got.key != ch.key || got.mod_revision >= r {
                sink.push(
                    "prev-kv",
                    format!(
                        "{at}: prev_kv {} is not an earlier version of {}",
                        show(got),
                        ch.key
                    ),
                );
                return;
            }
            if let Some(info) = fin.revs.get(&got.mod_revision) {
                if let Some(c) = info.changes.iter().find(|c| c.key == got.key) {
                    let sealed = fin.sealed.iter().any(|&(from, to)| {
                        ev.response_revision >= from && ev.response_revision <= to
                    }) && got.value.starts_with("k8s:enc:");
                    if c.kind != EventKind::Put || (c.value != got.value && !sealed) {
                        sink.push(
                            "prev-kv",
                            format!(
                                "{at}: prev_kv {} does not match what revision {} wrote",
                                show(got),
                                got.mod_revision
                            ),
                        );
                        return;
                    }
                }
            }
            let between = fin
                .revs
                .range(got.mod_revision + 1..r)
                .find(|(_, info)| info.changes.iter().any(|c| c.key == got.key));
            if let Some((rb, _)) = between {
                sink.push(
                    "prev-kv",
                    format!(
                        "{at}: prev_kv {} is stale: {} changed again at revision {rb}",
                        show(got),
                        got.key
                    ),
                );
            }
        }
    }
}
