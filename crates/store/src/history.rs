//! The embedded store's history for the watch hub's catch-up reads: the records of a range of
//! revisions, turned into events with plaintext values and `prev_kv`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::engine::{engine_err, RECORDS};
use crate::events::{self, CommittedRevision};
use crate::record::{Record, Rev};
use crate::state::{load_value, Shared, Want};
use crate::watch::{History, HistoryRead};
use crate::Error;

/// The history of an [`crate::EmbeddedStore`].
pub(crate) struct EmbeddedHistory {
    pub(crate) shared: Arc<Shared>,
}

/// A record found by a history scan, before its value is opened.
struct Found {
    rev: Rev,
    key: Vec<u8>,
    /// `(create_revision, version, lease, sealed)` of a put; `None` for a tombstone.
    put: Option<(i64, i64, i64, Vec<u8>)>,
    /// The key's version visible at `rev.main - 1` (the event's prev_kv), if any.
    prev: Option<crate::index::Entry>,
}

impl History for EmbeddedHistory {
    fn authorize(&self, caller: &crate::Caller, key: &[u8], range_end: &[u8]) -> Result<(), Error> {
        self.shared
            .auth()
            .check(caller, key, range_end, crate::auth::PermType::Read)
    }

    fn auth_view(&self) -> Arc<crate::auth::AuthState> {
        self.shared.auth()
    }

    fn read(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        max: i64,
    ) -> Result<HistoryRead, Error> {
        let shared = &*self.shared;
        if shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::Stopped);
        }
        let Some(bounds) = crate::index::key_bounds(key, range_end) else {
            return Ok(HistoryRead::Batch {
                revisions: Vec::new(),
                through: from - 1,
                current: shared.read_index().current,
            });
        };
        let in_range = |k: &[u8]| {
            use std::ops::RangeBounds;
            RangeBounds::<[u8]>::contains(&bounds, k)
        };
        // Scan records and look up previous versions under the index lock, so compaction
        // cannot remove what the scan relies on; open values after releasing it.
        let (found, current, through, snapshot) = {
            let ix = shared.read_index();
            if from < ix.compacted {
                return Ok(HistoryRead::Compacted(ix.compacted));
            }
            let current = ix.current;
            let from = from.max(1);
            let to = current.min(from.saturating_add(max.max(1) - 1));
            if to < from {
                return Ok(HistoryRead::Batch {
                    revisions: Vec::new(),
                    through: from - 1,
                    current,
                });
            }
            let snapshot = shared.engine.read()?;
            let mut found = Vec::new();
            {
                let table = snapshot
                    .open_table(RECORDS)
                    .map_err(engine_err("open records"))?;
                let lo = Rev::new(from, 0).to_key();
                let hi = Rev::new(to + 1, 0).to_key();
                for item in table
                    .range::<&[u8]>(lo.as_slice()..hi.as_slice())
                    .map_err(engine_err("scan records"))?
                {
                    let (k, v) = item.map_err(engine_err("scan records"))?;
                    let rev = Rev::from_key(k.value())?;
                    let rec = Record::decode(rev, v.value())?;
                    let rkey = rec.key();
                    if !in_range(rkey) {
                        continue;
                    }
                    let put = match rec {
                        Record::Put {
                            create_revision,
                            version,
                            lease,
                            sealed,
                            ..
                        } => Some((create_revision, version, lease, sealed.to_vec())),
                        Record::Tombstone { .. } => None,
                    };
                    let is_create = matches!(put, Some((c, _, _, _)) if c == rev.main);
                    let prev = if is_create {
                        None
                    } else {
                        ix.get(rkey, rev.main - 1)
                    };
                    found.push(Found {
                        rev,
                        key: rkey.to_vec(),
                        put,
                        prev,
                    });
                }
            }
            (found, current, to, snapshot)
        };
        let table = snapshot
            .open_table(RECORDS)
            .map_err(engine_err("open records"))?;
        let mut revisions: Vec<CommittedRevision> = Vec::new();
        for f in found {
            let prev_kv = match f.prev {
                Some(e) => Some(events::kv(
                    f.key.clone(),
                    &e,
                    load_value(&table, shared, &f.key, e.rev, Want::PrevKv)?,
                )),
                None => None,
            };
            let put = match f.put {
                Some((create_revision, version, lease, sealed)) => {
                    let value = shared.open(&f.key, &sealed)?;
                    let entry = crate::index::Entry {
                        rev: f.rev,
                        create: create_revision,
                        version,
                        lease,
                    };
                    Some(events::kv(f.key.clone(), &entry, value))
                }
                None => None,
            };
            let event = events::event(f.key, f.rev.main, put, prev_kv);
            events::push(&mut revisions, f.rev.main, event);
        }
        Ok(HistoryRead::Batch {
            revisions,
            through,
            current,
        })
    }
}
