//! Batching of queued notices. When a stream's client reads more slowly than events arrive, its
//! queue holds many `Events` notices; sending each as its own response costs one encode and one
//! HTTP/2 frame per watcher per revision. [`merge`] folds the notices already queued (never
//! waiting for more) into one response per watcher, as etcd's catch-up does, under three rules:
//! - a watcher's events keep their order, and whole revisions stay together;
//! - nothing moves across a non-event notice (created, cancelled, progress): a progress
//!   response at revision R still follows every event at or below R sent on the stream, and a
//!   watcher's created response still precedes its events;
//! - a merged response stays below [`MAX_EVENTS`] events and about [`MAX_BYTES`] of keys and
//!   values (a `fragment=true` watcher's response is split further when sent).

use std::collections::HashMap;

use coffer_store::Notice;

/// Events per merged response at most.
pub const MAX_EVENTS: usize = 1000;
/// Key and value bytes per merged response, about (one notice alone may exceed it).
pub const MAX_BYTES: usize = 1024 * 1024;

/// Notices taken off the queue at once.
pub const BATCH: usize = 256;

fn size(n: &Notice) -> usize {
    match n {
        Notice::Events { events, .. } => events
            .iter()
            .map(|e| {
                let kv = |kv: &Option<coffer_proto::mvccpb::KeyValue>| {
                    kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len())
                };
                kv(&e.kv) + kv(&e.prev_kv)
            })
            .sum(),
        _ => 0,
    }
}

/// Merges the `Events` notices of each watcher between two other notices; see the module docs.
pub fn merge(batch: Vec<Notice>) -> Vec<Notice> {
    let mut out: Vec<Notice> = Vec::with_capacity(batch.len());
    // Watch id → (index in `out` of its open merged notice, bytes so far). Cleared at every
    // non-event notice, so nothing merges across one.
    let mut open: HashMap<i64, (usize, usize)> = HashMap::new();
    for n in batch {
        let Notice::Events {
            watch_id,
            revision,
            events,
            ..
        } = &n
        else {
            open.clear();
            out.push(n);
            continue;
        };
        let bytes = size(&n);
        if let Some(&(at, so_far)) = open.get(watch_id) {
            if let Some(Notice::Events {
                revision: merged_rev,
                events: merged,
                ..
            }) = out.get_mut(at)
            {
                if merged.len() + events.len() <= MAX_EVENTS && so_far + bytes <= MAX_BYTES {
                    merged.extend(events.iter().cloned());
                    *merged_rev = (*merged_rev).max(*revision);
                    open.insert(*watch_id, (at, so_far + bytes));
                    continue;
                }
            }
        }
        open.insert(*watch_id, (out.len(), bytes));
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use coffer_proto::mvccpb::{Event, KeyValue};

    use super::*;

    fn events(watch_id: i64, revision: i64) -> Notice {
        Notice::Events {
            watch_id,
            revision,
            events: vec![Arc::new(Event {
                r#type: 0,
                kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    value: format!("{watch_id}@{revision}").into_bytes(),
                    mod_revision: revision,
                    ..Default::default()
                }),
                prev_kv: None,
            })],
            prev_kv: false,
            fragment: false,
        }
    }

    /// (watch id, header revision, event revisions) per notice, or the notice kind.
    fn shape(ns: &[Notice]) -> Vec<String> {
        ns.iter()
            .map(|n| match n {
                Notice::Events {
                    watch_id,
                    revision,
                    events,
                    ..
                } => {
                    let revs: Vec<i64> = events
                        .iter()
                        .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
                        .collect();
                    format!("{watch_id}@{revision}{revs:?}")
                }
                Notice::Progress { watch_id, revision } => {
                    format!("progress {watch_id}@{revision}")
                }
                Notice::Created { watch_id, .. } => format!("created {watch_id}"),
                Notice::Canceled { watch_id, .. } => format!("canceled {watch_id}"),
                Notice::Refused { .. } => "refused".into(),
            })
            .collect()
    }

    #[test]
    fn each_watcher_gets_one_response_in_order() {
        let batch = vec![
            events(1, 5),
            events(2, 5),
            events(1, 6),
            events(2, 6),
            events(1, 7),
        ];
        assert_eq!(shape(&merge(batch)), ["1@7[5, 6, 7]", "2@6[5, 6]"]);
    }

    #[test]
    fn nothing_moves_across_progress_created_or_canceled() {
        let batch = vec![
            events(1, 5),
            Notice::Progress {
                watch_id: -1,
                revision: 5,
            },
            events(1, 6),
            Notice::Created {
                watch_id: 2,
                revision: 6,
            },
            events(2, 7),
            events(1, 7),
            Notice::Canceled {
                watch_id: 1,
                compact_revision: 0,
                reason: String::new(),
                revision: 7,
            },
            events(2, 8),
        ];
        assert_eq!(
            shape(&merge(batch)),
            [
                "1@5[5]",
                "progress -1@5",
                "1@6[6]",
                "created 2",
                "2@7[7]",
                "1@7[7]",
                "canceled 1",
                "2@8[8]"
            ]
        );
    }

    #[test]
    fn merged_responses_stay_below_the_caps() {
        let batch: Vec<Notice> = (0..(MAX_EVENTS as i64 + 10))
            .map(|r| events(1, r + 2))
            .collect();
        let merged = merge(batch);
        assert_eq!(merged.len(), 2);
        let counts: Vec<usize> = merged
            .iter()
            .map(|n| match n {
                Notice::Events { events, .. } => events.len(),
                _ => 0,
            })
            .collect();
        assert_eq!(counts, [MAX_EVENTS, 10]);
    }
}
