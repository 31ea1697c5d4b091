//! The watch hub: delivers committed revisions to watchers, in order, without gaps or
//! duplicates, and without ever letting a slow watcher stall the writer or grow memory.
//!
//! The writer thread feeds the hub every durable group ([`WatchHub::committed`]); each event is
//! wrapped in an `Arc` once and shared by every watcher it matches. Watchers live on
//! *streams* (one per gRPC `Watch` call); each stream has one bounded output channel of
//! [`Notice`]s, one live task and one catch-up task. The writer only appends the group to the
//! recent revisions and wakes each stream's live task: its work per group is O(streams),
//! however many watchers exist. A stream holds at most `max_per_stream` watchers and the hub at
//! most `max_total` ([`WatchStream::set_limits`]); a create beyond either is refused.
//!
//! A watcher is either *synced* (its stream's live task pushes its events from the recent
//! revisions straight into the stream's channel with `try_send`, under the hub lock, before
//! any progress notification or cancel of that stream is queued) or *unsynced* (the stream's
//! catch-up task reads its revisions from the store's history, a bounded batch at a time, and
//! awaits room in the channel). New
//! watchers start unsynced. When the channel is full, a synced watcher becomes unsynced at
//! the revision it missed, so its events come from history later; if that history has been
//! compacted meanwhile, the watcher is cancelled with `compact_revision` (never skipped,
//! etcd #17529). Every watcher remembers `next_rev`, the next revision it must deliver, and
//! a revision below it is never sent again, so no event is duplicated. See `docs/watch.md`.
//!
//! The hub keeps the most recent revisions it was fed (at most [`RECENT_REVISIONS`] and
//! [`RECENT_BYTES`]) in memory. A watcher that was synced and fell behind because its stream
//! was full catches up from there while it can, like etcd's victims, instead of reading and
//! decrypting the same revisions from history once per watcher. New watchers always read
//! history first, so a start below the compacted revision is still cancelled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use coffer_proto::mvccpb::{event::EventType, Event};
use prost::Message;
use tokio::sync::{mpsc, Notify};

use crate::events::CommittedRevision;
use crate::Error;

/// Most revisions one catch-up batch reads from history (etcd's cap too).
pub const MAX_CATCH_UP_REVISIONS: i64 = 1000;
/// Most recent revisions the hub keeps in memory for watchers that fell behind.
pub const RECENT_REVISIONS: usize = 4096;
/// Most bytes (encoded events) the recent revisions may take.
pub const RECENT_BYTES: usize = 64 << 20;
/// `cancel_reason` of a create whose range is empty.
pub const REASON_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// `cancel_reason` of a create with a negative start revision (etcd 3.4.38+/3.5.24+/3.6.6+).
pub const REASON_NEGATIVE_START: &str = "etcdserver: mvcc: required revision has been compacted";
/// `cancel_reason` of a create whose explicit id is already in use on the stream.
pub const REASON_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
/// `cancel_reason` of a create beyond the watcher limits: etcd's overload error
/// (`ErrTooManyRequests`), which clientv3 turns back into a typed error.
pub const REASON_TOO_MANY_WATCHERS: &str = "etcdserver: too many requests";
/// Default limit of watchers on one stream (etcd has none).
pub const DEFAULT_MAX_WATCHERS_PER_STREAM: usize = 10_000;
/// Default limit of watchers in the hub over all streams (etcd has none).
pub const DEFAULT_MAX_WATCHERS: usize = 100_000;

/// The history of the keyspace, as the hub needs it to catch watchers up.
pub trait History: Send + Sync + 'static {
    /// Events of `[key, range_end)` (etcd's range rules, already normalised) in revisions
    /// `from ..= from + max - 1` (capped at the current revision), with plaintext values and
    /// `prev_kv` when the previous version is still in history.
    fn read(&self, key: &[u8], range_end: &[u8], from: i64, max: i64)
        -> Result<HistoryRead, Error>;

    /// Whether `caller` may watch `[key, range_end)` (READ on it, against the current auth
    /// state). A refusal cancels the create with etcd's reason. Default: allowed.
    fn authorize(&self, caller: &crate::Caller, key: &[u8], range_end: &[u8]) -> Result<(), Error> {
        let _ = (caller, key, range_end);
        Ok(())
    }

    /// The auth state now (for naming a stream's caller). Default: auth disabled.
    fn auth_view(&self) -> Arc<crate::auth::AuthState> {
        Arc::new(crate::auth::AuthState::default())
    }
}

/// What a history read found.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryRead {
    /// The revisions read; `through` is the last revision covered (events or not), `current`
    /// the store's revision at the time of the read.
    Batch {
        /// Revisions with at least one matching event, in order.
        revisions: Vec<CommittedRevision>,
        /// Last revision covered by the read.
        through: i64,
        /// Current revision of the store when read.
        current: i64,
    },
    /// `from` is below the compacted revision.
    Compacted(i64),
}

/// What a watcher asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSpec {
    /// First key (empty is treated as `"\0"`).
    pub key: Vec<u8>,
    /// End of the range (etcd's rules: empty = one key, `"\0"` = from key).
    pub range_end: Vec<u8>,
    /// First revision to deliver; 0 = after the current revision.
    pub start_revision: i64,
    /// Attach `prev_kv` to events.
    pub prev_kv: bool,
    /// Drop PUT events.
    pub no_put: bool,
    /// Drop DELETE events.
    pub no_delete: bool,
    /// Receive periodic progress notifications.
    pub progress_notify: bool,
    /// Allow the server to split large responses.
    pub fragment: bool,
}

impl WatchSpec {
    fn matches_key(&self, k: &[u8]) -> bool {
        if self.range_end.is_empty() {
            k == self.key.as_slice()
        } else if self.range_end == [0] {
            k >= self.key.as_slice()
        } else {
            k >= self.key.as_slice() && k < self.range_end.as_slice()
        }
    }

    fn wants(&self, e: &Event) -> bool {
        let is_put = e.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return false;
        }
        e.kv.as_ref().is_some_and(|kv| self.matches_key(&kv.key))
    }
}

/// One message for a stream's client, turned into a `WatchResponse` by the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// `{watch_id, created}` with the header revision at creation.
    Created {
        /// The watcher's id.
        watch_id: i64,
        /// Current revision at creation.
        revision: i64,
    },
    /// A refused create: `{watch_id=-1, created, canceled, cancel_reason}`.
    Refused {
        /// Why.
        reason: String,
        /// Current revision.
        revision: i64,
    },
    /// Events of one watcher (one or more whole revisions).
    Events {
        /// The watcher's id.
        watch_id: i64,
        /// Header revision.
        revision: i64,
        /// The events, shared with other watchers.
        events: Vec<Arc<Event>>,
        /// Keep `prev_kv` on the events.
        prev_kv: bool,
        /// The watcher allows fragmentation.
        fragment: bool,
    },
    /// A progress notification (`watch_id` -1 answers a RequestProgress).
    Progress {
        /// The watcher's id, or -1.
        watch_id: i64,
        /// Revision every event up to which was delivered.
        revision: i64,
    },
    /// `{watch_id, canceled}`; `compact_revision` set for a compaction cancel, `reason` for
    /// a failure.
    Canceled {
        /// The watcher's id.
        watch_id: i64,
        /// Compacted revision, 0 if not a compaction cancel.
        compact_revision: i64,
        /// Cancel reason (empty for a client cancel or compaction).
        reason: String,
        /// Header revision.
        revision: i64,
    },
}

struct Watcher {
    stream: u64,
    watch_id: i64,
    spec: Arc<WatchSpec>,
    /// The next revision this watcher must deliver.
    next_rev: i64,
    /// Its created response has been queued (events may follow).
    ready: bool,
    synced: bool,
    /// It has been synced once, so its start was checked against compaction and it may catch
    /// up from the recent revisions in memory.
    memory_ok: bool,
    /// An event or notification went out since the last progress tick.
    sent_since_tick: bool,
}

/// One recent revision kept in memory.
struct Recent {
    revision: i64,
    events: Vec<Arc<Event>>,
    bytes: usize,
}

struct StreamSlot {
    out: mpsc::Sender<Notice>,
    /// Wakes the stream's live-delivery task.
    live: Arc<Notify>,
    /// Keys of the stream's watchers, so its task looks only at them.
    members: Vec<u64>,
    /// Last revision whose events the stream's synced watchers have been given.
    delivered: i64,
    /// A watcher of the stream may need catch-up (new, or fell back); cleared by the stream's
    /// task when it finds none, so a wake for live delivery alone does not scan the watchers.
    catch_up: bool,
}

#[derive(Default)]
struct HubState {
    /// Last revision fed to the hub.
    last: i64,
    watchers: HashMap<u64, Watcher>,
    streams: HashMap<u64, StreamSlot>,
    next_key: u64,
    /// Every revision in `recent_from ..= last` with events, in order.
    recent: VecDeque<Recent>,
    recent_from: i64,
    recent_bytes: usize,
}

impl HubState {
    /// Removes a watcher; returns whether it existed.
    fn remove_watcher(&mut self, key: u64) -> bool {
        let Some(w) = self.watchers.remove(&key) else {
            return false;
        };
        if let Some(slot) = self.streams.get_mut(&w.stream) {
            slot.members.retain(|k| *k != key);
        }
        true
    }

    /// Live delivery for one stream: queues, for each synced watcher of `stream`, the events it
    /// wants in the revisions fed since the stream's previous delivery; a watcher whose
    /// channel is full, or whose revisions memory no longer holds, falls back to catch-up.
    /// Runs under the hub lock on the stream's live task (never on the writer), and before any
    /// progress notification, created or cancel response of the stream is queued, so those
    /// still follow every event up to `last`. Returns whether a watcher fell back (the caller
    /// wakes the catch-up task).
    fn deliver(&mut self, stream: u64) -> bool {
        let HubState {
            last,
            watchers,
            streams,
            recent,
            recent_from,
            ..
        } = self;
        let Some(slot) = streams.get_mut(&stream) else {
            return false;
        };
        let from = slot.delivered + 1;
        if from > *last {
            return false;
        }
        slot.delivered = *last;
        let mut fell_back = false;
        if from < *recent_from {
            // Revisions memory no longer holds: whoever needs them reads history.
            for key in &slot.members {
                let Some(w) = watchers.get_mut(key) else {
                    continue;
                };
                let next = w.next_rev.max(from);
                if w.synced && next < *recent_from {
                    w.synced = false;
                    w.next_rev = next;
                    fell_back = true;
                }
            }
        }
        let mut dead = Vec::new();
        let start = recent.partition_point(|r| r.revision < from);
        for rev in recent.iter().skip(start) {
            for key in &slot.members {
                let Some(w) = watchers.get_mut(key) else {
                    continue;
                };
                if !w.ready || !w.synced || rev.revision < w.next_rev {
                    continue;
                }
                w.next_rev = rev.revision + 1;
                let matching: Vec<Arc<Event>> = rev
                    .events
                    .iter()
                    .filter(|e| w.spec.wants(e))
                    .cloned()
                    .collect();
                if matching.is_empty() {
                    continue;
                }
                let notice = Notice::Events {
                    watch_id: w.watch_id,
                    revision: rev.revision,
                    events: matching,
                    prev_kv: w.spec.prev_kv,
                    fragment: w.spec.fragment,
                };
                match slot.out.try_send(notice) {
                    Ok(()) => w.sent_since_tick = true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Slow client: catch up later, starting at this revision.
                        tracing::debug!(
                            watch_id = w.watch_id,
                            revision = rev.revision,
                            "watch stream full; watcher falls back to catch-up"
                        );
                        w.synced = false;
                        w.next_rev = rev.revision;
                        fell_back = true;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => dead.push(*key),
                }
            }
        }
        slot.catch_up |= fell_back;
        for key in dead {
            self.remove_watcher(key);
        }
        fell_back
    }

    /// Forgets the recent revisions: from now on they start after `revision`.
    fn reset_recent(&mut self, revision: i64) {
        self.recent.clear();
        self.recent_bytes = 0;
        self.recent_from = revision + 1;
    }

    /// Appends a revision fed to the hub, dropping the oldest beyond the limits.
    fn push_recent(&mut self, revision: i64, events: &[Arc<Event>]) {
        if revision != self.last + 1 {
            // Revisions in between are unknown here.
            self.reset_recent(revision - 1);
        }
        let bytes = events.iter().map(|e| e.encoded_len()).sum();
        self.recent.push_back(Recent {
            revision,
            events: events.to_vec(),
            bytes,
        });
        self.recent_bytes += bytes;
        while self.recent.len() > RECENT_REVISIONS || self.recent_bytes > RECENT_BYTES {
            let Some(old) = self.recent.pop_front() else {
                break;
            };
            self.recent_bytes -= old.bytes;
            self.recent_from = old.revision + 1;
        }
    }

    /// A catch-up batch from memory: the events `spec` wants in revisions `from ..=` at most
    /// `from + MAX_CATCH_UP_REVISIONS - 1`, if memory still holds all of them.
    fn read_recent(&self, spec: &WatchSpec, from: i64) -> Option<Batch> {
        if from < self.recent_from || from > self.last {
            return None;
        }
        let through = (from + MAX_CATCH_UP_REVISIONS - 1).min(self.last);
        let start = self.recent.partition_point(|r| r.revision < from);
        let events = self
            .recent
            .iter()
            .skip(start)
            .take_while(|r| r.revision <= through)
            .flat_map(|r| r.events.iter())
            .filter(|e| spec.wants(e))
            .cloned()
            .collect();
        Some(Batch {
            events,
            through,
            current: self.last,
        })
    }
}

/// Events of a catch-up batch, whether from history or memory.
struct Batch {
    events: Vec<Arc<Event>>,
    /// Last revision covered.
    through: i64,
    /// The revision for the response header.
    current: i64,
}

/// The watch hub of one store.
pub struct WatchHub {
    state: Mutex<HubState>,
    watchers: AtomicUsize,
    history: Arc<dyn History>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub")
            .field("watchers", &self.watchers.load(Ordering::Relaxed))
            .finish()
    }
}

impl WatchHub {
    /// A hub at revision `current` reading catch-up history from `history`.
    pub fn new(current: i64, history: Arc<dyn History>) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            state: Mutex::new(HubState {
                last: current,
                recent_from: current + 1,
                ..Default::default()
            }),
            watchers: AtomicUsize::new(0),
            history,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every update under the lock is a plain field write; a poisoned state is still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any watcher exists (the writer collects events only then).
    pub fn active(&self) -> bool {
        self.watchers.load(Ordering::Acquire) > 0
    }

    /// Number of watchers.
    pub fn watcher_count(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }

    /// The store's auth state now (the history's view of it).
    pub fn auth_view(&self) -> Arc<crate::auth::AuthState> {
        self.history.auth_view()
    }

    /// Last revision the hub was fed.
    pub fn revision(&self) -> i64 {
        self.lock().last
    }

    /// Feeds one durable group. `revisions` is `None` when the writer did not collect events
    /// (no watcher existed when the group started): watchers that would need those revisions
    /// then fall back to history. `current` is the store's revision after the group.
    pub fn committed(&self, revisions: Option<Vec<CommittedRevision>>, current: i64) {
        let mut st = self.lock();
        if let Some(revisions) = revisions {
            for rev in revisions {
                let events: Vec<Arc<Event>> = rev.events.into_iter().map(Arc::new).collect();
                st.push_recent(rev.revision, &events);
                st.last = rev.revision;
            }
        }
        if current > st.last {
            // Revisions without collected events: whoever needs them reads history.
            st.reset_recent(current);
            st.last = current;
        }
        // Each stream's live task delivers to its watchers: O(streams) here, not O(watchers).
        for slot in st.streams.values() {
            slot.live.notify_one();
        }
    }

    /// Opens a stream with an output channel of `capacity` notices and starts its live and
    /// catch-up tasks (must be called inside a tokio runtime).
    pub fn open_stream(self: &Arc<Self>, capacity: usize) -> (WatchStream, mpsc::Receiver<Notice>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let wake = Arc::new(Notify::new());
        let live = Arc::new(Notify::new());
        let closed = Arc::new(AtomicBool::new(false));
        let id = {
            let mut st = self.lock();
            st.next_key += 1;
            let id = st.next_key;
            let delivered = st.last;
            st.streams.insert(
                id,
                StreamSlot {
                    out: tx.clone(),
                    live: Arc::clone(&live),
                    members: Vec::new(),
                    delivered,
                    catch_up: false,
                },
            );
            id
        };
        tokio::spawn(live_loop(
            Arc::clone(self),
            id,
            Arc::clone(&live),
            Arc::clone(&wake),
            Arc::clone(&closed),
        ));
        tokio::spawn(catch_up_loop(
            Arc::clone(self),
            id,
            Arc::clone(&wake),
            Arc::clone(&closed),
            tx.clone(),
        ));
        (
            WatchStream {
                hub: Arc::clone(self),
                id,
                out: tx,
                wake,
                live,
                closed,
                next_auto_id: 0,
                ids: HashMap::new(),
                max_per_stream: DEFAULT_MAX_WATCHERS_PER_STREAM,
                max_total: DEFAULT_MAX_WATCHERS,
            },
            rx,
        )
    }
}

/// One client stream's side of the hub: creates and cancels its watchers, answers progress
/// requests and ticks. Dropping it removes its watchers.
pub struct WatchStream {
    hub: Arc<WatchHub>,
    id: u64,
    out: mpsc::Sender<Notice>,
    wake: Arc<Notify>,
    live: Arc<Notify>,
    closed: Arc<AtomicBool>,
    next_auto_id: i64,
    /// watch id → watcher key in the hub.
    ids: HashMap<i64, u64>,
    /// Most watchers on this stream.
    max_per_stream: usize,
    /// Most watchers in the hub when this stream creates one.
    max_total: usize,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("id", &self.id)
            .field("watchers", &self.ids.len())
            .finish()
    }
}

impl WatchStream {
    /// Creates a watcher for `caller` (`watch_id` 0 = server-assigned) and queues its created
    /// response, or the refusal (first the caller's READ permission on the range, as etcd).
    /// Returns the id, or `None` when refused. Created responses go out in call order; a
    /// stream whose client is gone returns `None`.
    pub async fn create(
        &mut self,
        mut spec: WatchSpec,
        watch_id: i64,
        caller: &crate::Caller,
    ) -> Option<i64> {
        if spec.key.is_empty() {
            spec.key = vec![0];
        }
        if let Err(e) = self
            .hub
            .history
            .authorize(caller, &spec.key, &spec.range_end)
        {
            let revision = self.hub.revision();
            self.refuse(&crate::auth::watch_refusal(&e), revision).await;
            return None;
        }
        let range_empty = !spec.range_end.is_empty()
            && spec.range_end != [0]
            && spec.range_end.as_slice() <= spec.key.as_slice();
        let duplicate = watch_id != 0 && self.live_id(watch_id);
        let negative = spec.start_revision < 0;
        if range_empty || duplicate || negative {
            let reason = if range_empty {
                REASON_EMPTY_RANGE
            } else if duplicate {
                REASON_DUPLICATE_ID
            } else {
                REASON_NEGATIVE_START
            };
            let revision = self.hub.revision();
            self.refuse(reason, revision).await;
            return None;
        }
        let auto_from = self.next_auto_id;
        let id = if watch_id != 0 {
            watch_id
        } else {
            while self.live_id(self.next_auto_id) {
                self.next_auto_id += 1;
            }
            let id = self.next_auto_id;
            self.next_auto_id += 1;
            id
        };
        let spec = Arc::new(spec);
        let added = {
            let mut st = self.hub.lock();
            let on_stream = st.streams.get(&self.id).map_or(0, |s| s.members.len());
            let total = st.watchers.len();
            if on_stream >= self.max_per_stream || total >= self.max_total {
                tracing::debug!(
                    on_stream,
                    total,
                    max_per_stream = self.max_per_stream,
                    max_total = self.max_total,
                    "watch create refused: watcher limit reached"
                );
                Err(st.last)
            } else {
                // Events up to `last` of the stream's other watchers go before the created response.
                if st.deliver(self.id) {
                    self.wake.notify_one();
                }
                st.next_key += 1;
                let key = st.next_key;
                let last = st.last;
                let next_rev = if spec.start_revision > 0 {
                    spec.start_revision
                } else {
                    last + 1
                };
                st.watchers.insert(
                    key,
                    Watcher {
                        stream: self.id,
                        watch_id: id,
                        spec,
                        next_rev,
                        ready: false,
                        synced: false,
                        memory_ok: false,
                        sent_since_tick: false,
                    },
                );
                if let Some(slot) = st.streams.get_mut(&self.id) {
                    slot.members.push(key);
                }
                self.hub
                    .watchers
                    .store(st.watchers.len(), Ordering::Release);
                Ok((key, last))
            }
        };
        let (key, revision) = match added {
            Ok(added) => added,
            Err(revision) => {
                // The refused create takes no id.
                self.next_auto_id = auto_from;
                self.refuse(REASON_TOO_MANY_WATCHERS, revision).await;
                return None;
            }
        };
        self.ids.insert(id, key);
        if self
            .out
            .send(Notice::Created {
                watch_id: id,
                revision,
            })
            .await
            .is_err()
        {
            return None;
        }
        {
            let mut st = self.hub.lock();
            if let Some(w) = st.watchers.get_mut(&key) {
                w.ready = true;
            }
            if let Some(slot) = st.streams.get_mut(&self.id) {
                slot.catch_up = true;
            }
        }
        self.wake.notify_one();
        Some(id)
    }

    /// Sets the watcher limits of this stream: at most `max_per_stream` watchers on it, and a
    /// create is refused while the hub holds `max_total` watchers.
    pub fn set_limits(&mut self, max_per_stream: usize, max_total: usize) {
        self.max_per_stream = max_per_stream;
        self.max_total = max_total;
    }

    async fn refuse(&self, reason: &str, revision: i64) {
        let _ = self
            .out
            .send(Notice::Refused {
                reason: reason.to_owned(),
                revision,
            })
            .await;
    }

    fn live_id(&mut self, watch_id: i64) -> bool {
        let Some(key) = self.ids.get(&watch_id) else {
            return false;
        };
        if self.hub.lock().watchers.contains_key(key) {
            return true;
        }
        // Removed by the hub (compaction cancel); the id is free again.
        self.ids.remove(&watch_id);
        false
    }

    /// Cancels a watcher: `{watch_id, canceled}` if it existed, nothing otherwise.
    pub async fn cancel(&mut self, watch_id: i64) {
        let Some(key) = self.ids.remove(&watch_id) else {
            return;
        };
        let (existed, revision) = {
            let mut st = self.hub.lock();
            // Events up to `last` go before the cancel response, as they would have live.
            if st.deliver(self.id) {
                self.wake.notify_one();
            }
            let existed = st.remove_watcher(key);
            self.hub
                .watchers
                .store(st.watchers.len(), Ordering::Release);
            (existed, st.last)
        };
        if existed {
            let _ = self
                .out
                .send(Notice::Canceled {
                    watch_id,
                    compact_revision: 0,
                    reason: String::new(),
                    revision,
                })
                .await;
        }
    }

    /// RequestProgress (etcd 3.5.13+): one `{watch_id=-1, revision}` if the stream has
    /// watchers and every one is synced with no start revision in the future; otherwise
    /// nothing. Returns whether a notification was queued.
    pub fn request_progress(&self) -> bool {
        let mut st = self.hub.lock();
        if st.deliver(self.id) {
            self.wake.notify_one();
        }
        let Some(slot) = st.streams.get(&self.id) else {
            return false;
        };
        let mut any = false;
        for w in slot.members.iter().filter_map(|k| st.watchers.get(k)) {
            any = true;
            if !w.ready || !w.synced || w.spec.start_revision > st.last {
                return false;
            }
        }
        // Queued under the hub lock, so it follows every event <= last already queued.
        any && self
            .out
            .try_send(Notice::Progress {
                watch_id: -1,
                revision: st.last,
            })
            .is_ok()
    }

    /// A periodic tick: a progress notification to every synced watcher with
    /// `progress_notify` that received nothing since the previous tick (none to a watcher
    /// whose start revision is still in the future, etcd #20221).
    pub fn progress_tick(&self) {
        let mut st = self.hub.lock();
        if st.deliver(self.id) {
            self.wake.notify_one();
        }
        let HubState {
            last,
            watchers,
            streams,
            ..
        } = &mut *st;
        let last = *last;
        let Some(slot) = streams.get(&self.id) else {
            return;
        };
        for key in &slot.members {
            let Some(w) = watchers.get_mut(key) else {
                continue;
            };
            let eligible = w.spec.progress_notify
                && w.ready
                && w.synced
                && w.spec.start_revision <= last
                && !w.sent_since_tick;
            w.sent_since_tick = false;
            if eligible {
                let _ = self.out.try_send(Notice::Progress {
                    watch_id: w.watch_id,
                    revision: last,
                });
            }
        }
    }

    /// Completes when the client side of the output channel is gone.
    pub async fn closed(&self) {
        self.out.closed().await;
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
        self.live.notify_one();
        let mut st = self.hub.lock();
        if let Some(slot) = st.streams.remove(&self.id) {
            for key in slot.members {
                st.watchers.remove(&key);
            }
        }
        self.hub
            .watchers
            .store(st.watchers.len(), Ordering::Release);
    }
}

/// The stream's live task: delivers each group the writer fed to the stream's synced watchers
/// (in parallel with the catch-up task, as the writer used to), and wakes the catch-up task
/// when one fell back.
async fn live_loop(
    hub: Arc<WatchHub>,
    stream: u64,
    live: Arc<Notify>,
    wake: Arc<Notify>,
    closed: Arc<AtomicBool>,
) {
    loop {
        live.notified().await;
        if closed.load(Ordering::Acquire) {
            return;
        }
        let fell_back = {
            let mut st = hub.lock();
            if !st.streams.contains_key(&stream) {
                return;
            }
            let fell_back = st.deliver(stream);
            // Watchers whose client went away were removed.
            hub.watchers.store(st.watchers.len(), Ordering::Release);
            fell_back
        };
        if fell_back {
            wake.notify_one();
        }
    }
}

/// A catch-up job: one unsynced watcher's position.
struct Job {
    key: u64,
    watch_id: i64,
    spec: Arc<WatchSpec>,
    next_rev: i64,
    memory_ok: bool,
}

/// The stream's catch-up task: brings unsynced watchers up to the hub's revision from history.
async fn catch_up_loop(
    hub: Arc<WatchHub>,
    stream: u64,
    wake: Arc<Notify>,
    closed: Arc<AtomicBool>,
    out: mpsc::Sender<Notice>,
) {
    // Where the next search for an unsynced watcher starts, so every watcher gets its turn.
    let mut cursor = 0;
    loop {
        wake.notified().await;
        loop {
            if closed.load(Ordering::Acquire) {
                return;
            }
            let job = {
                let mut st = hub.lock();
                let HubState {
                    last,
                    watchers,
                    streams,
                    ..
                } = &mut *st;
                let Some(slot) = streams.get_mut(&stream) else {
                    return;
                };
                let n = if slot.catch_up { slot.members.len() } else { 0 };
                let mut job = None;
                for i in 0..n {
                    let at = (cursor + i) % n;
                    let key = slot.members[at];
                    let Some(w) = watchers.get_mut(&key) else {
                        continue;
                    };
                    if !w.ready || w.synced {
                        continue;
                    }
                    if w.next_rev > *last {
                        w.synced = true;
                        w.memory_ok = true;
                        continue;
                    }
                    job = Some(Job {
                        key,
                        watch_id: w.watch_id,
                        spec: Arc::clone(&w.spec),
                        next_rev: w.next_rev,
                        memory_ok: w.memory_ok,
                    });
                    cursor = at + 1;
                    break;
                }
                slot.catch_up = job.is_some();
                job
            };
            let Some(job) = job else { break };
            if !catch_up_one(&hub, &out, job).await {
                return;
            }
        }
    }
}

/// Reads one batch for a watcher (from the recent revisions in memory when it may and they
/// cover it, else from history) and queues it. Returns false when the client is gone.
async fn catch_up_one(hub: &Arc<WatchHub>, out: &mpsc::Sender<Notice>, job: Job) -> bool {
    let from = job.next_rev;
    let recent = if job.memory_ok {
        hub.lock().read_recent(&job.spec, from)
    } else {
        None
    };
    let read = match recent {
        Some(batch) => Ok(batch),
        None => read_history(hub, &job.spec, from).await,
    };
    let remove = |hub: &WatchHub| {
        let mut st = hub.lock();
        st.remove_watcher(job.key);
        hub.watchers.store(st.watchers.len(), Ordering::Release);
        st.last
    };
    match read {
        Err(Caught::Compacted(at)) => {
            remove(hub);
            tracing::debug!(
                watch_id = job.watch_id,
                next = from,
                compacted = at,
                "watcher needs compacted history; cancelling"
            );
            out.send(Notice::Canceled {
                watch_id: job.watch_id,
                compact_revision: at,
                reason: String::new(),
                // etcd sends compaction cancels with header revision 0.
                revision: 0,
            })
            .await
            .is_ok()
        }
        Err(Caught::Failed(e)) => {
            let revision = remove(hub);
            tracing::warn!(watch_id = job.watch_id, error = %e, "watch history read failed; cancelling the watcher");
            out.send(Notice::Canceled {
                watch_id: job.watch_id,
                compact_revision: 0,
                reason: e.to_string(),
                revision,
            })
            .await
            .is_ok()
        }
        Ok(Batch {
            events,
            through,
            current,
        }) => {
            let sent = !events.is_empty();
            if sent {
                // Still wanted? (cancelled meanwhile → drop the batch).
                if !hub.lock().watchers.contains_key(&job.key) {
                    return true;
                }
                let notice = Notice::Events {
                    watch_id: job.watch_id,
                    revision: current.max(through),
                    events,
                    prev_kv: job.spec.prev_kv,
                    fragment: job.spec.fragment,
                };
                if out.send(notice).await.is_err() {
                    return false;
                }
            }
            if through < from {
                // Nothing readable yet (cannot happen while the hub trails the index);
                // back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let mut st = hub.lock();
            let last = st.last;
            if let Some(w) = st.watchers.get_mut(&job.key) {
                if w.next_rev == from {
                    w.next_rev = w.next_rev.max(through + 1);
                    w.sent_since_tick |= sent;
                    if w.next_rev > last {
                        w.synced = true;
                        w.memory_ok = true;
                    }
                }
            }
            true
        }
    }
}

/// Why a catch-up read gave no batch.
enum Caught {
    /// The revision needed is below the compacted revision.
    Compacted(i64),
    /// History could not be read.
    Failed(Error),
}

/// One batch of history for `spec` from revision `from`, read off the async threads.
async fn read_history(hub: &WatchHub, spec: &Arc<WatchSpec>, from: i64) -> Result<Batch, Caught> {
    let history = Arc::clone(&hub.history);
    let spec = Arc::clone(spec);
    let read = tokio::task::spawn_blocking(move || {
        history
            .read(&spec.key, &spec.range_end, from, MAX_CATCH_UP_REVISIONS)
            .map(|r| (r, spec))
    })
    .await
    .unwrap_or_else(|e| Err(Error::Engine(format!("history reader failed: {e}"))));
    match read {
        Ok((HistoryRead::Compacted(at), _)) => Err(Caught::Compacted(at)),
        Ok((
            HistoryRead::Batch {
                revisions,
                through,
                current,
            },
            spec,
        )) => Ok(Batch {
            events: revisions
                .into_iter()
                .flat_map(|r| r.events)
                .filter(|e| spec.wants(e))
                .map(Arc::new)
                .collect(),
            through,
            current,
        }),
        Err(e) => Err(Caught::Failed(e)),
    }
}

#[cfg(test)]
mod tests;

/// The recent revisions in memory: watchers that fell behind catch up from there without
/// reading history; new watchers and revisions memory no longer holds still read history.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod recent_tests {
    use super::*;
    use coffer_proto::mvccpb::KeyValue;
    use std::time::Duration;

    /// TEST ONLY: history that counts reads and returns every requested revision up to
    /// `current` with one PUT of key `k`.
    #[derive(Default)]
    struct CountingHistory {
        reads: AtomicUsize,
        current: std::sync::atomic::AtomicI64,
    }

    /// Feeds the hub as the writer does, after the revisions are in history.
    fn feed(hub: &WatchHub, history: &CountingHistory, revs: Option<Vec<i64>>, current: i64) {
        history.current.store(current, Ordering::SeqCst);
        hub.committed(revs.map(|r| r.into_iter().map(rev).collect()), current);
    }

    fn rev(r: i64) -> CommittedRevision {
        CommittedRevision {
            revision: r,
            events: vec![Event {
                r#type: EventType::Put as i32,
                kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    value: format!("v{r}").into_bytes(),
                    create_revision: 2,
                    mod_revision: r,
                    version: r - 1,
                    lease: 0,
                }),
                prev_kv: None,
            }],
        }
    }

    impl History for CountingHistory {
        fn read(&self, _: &[u8], _: &[u8], from: i64, max: i64) -> Result<HistoryRead, Error> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let current = self.current.load(Ordering::SeqCst);
            let through = (from + max - 1).min(current);
            Ok(HistoryRead::Batch {
                revisions: (from..=through).map(rev).collect(),
                through,
                current,
            })
        }
    }

    fn spec(start_revision: i64) -> WatchSpec {
        WatchSpec {
            key: b"k".to_vec(),
            start_revision,
            ..Default::default()
        }
    }

    async fn next_revisions(rx: &mut mpsc::Receiver<Notice>) -> Vec<i64> {
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a notice within 10 s")
            .expect("stream open");
        match n {
            Notice::Events { events, .. } => events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision)
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    async fn wait_synced(hub: &WatchHub) {
        for _ in 0..1000 {
            if hub.lock().watchers.values().all(|w| w.synced) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("watcher never synced");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_that_fell_behind_catches_up_from_memory() {
        let history = Arc::new(CountingHistory::default());
        let hub = WatchHub::new(1, Arc::clone(&history) as Arc<dyn History>);
        let (mut ws, mut rx) = hub.open_stream(1);
        ws.create(spec(0), 0, &crate::Caller::Internal).await;
        assert!(matches!(rx.recv().await, Some(Notice::Created { .. })));
        wait_synced(&hub).await;
        // Room for one notice: revision 2 goes out live, 3 (or 4, when this test took 2 in
        // between) finds the channel full; the rest comes from memory.
        feed(&hub, &history, Some(vec![2, 3, 4]), 4);
        assert_eq!(next_revisions(&mut rx).await, vec![2]);
        let mut got = next_revisions(&mut rx).await;
        if got == [3] {
            got.extend(next_revisions(&mut rx).await);
        }
        assert_eq!(got, vec![3, 4]);
        wait_synced(&hub).await;
        feed(&hub, &history, Some(vec![5]), 5);
        assert_eq!(next_revisions(&mut rx).await, vec![5]);
        assert_eq!(history.reads.load(Ordering::SeqCst), 0);

        // Revisions fed without events: memory forgets, the watcher reads history.
        feed(&hub, &history, Some(vec![6]), 6);
        feed(&hub, &history, Some(vec![7]), 7);
        feed(&hub, &history, None, 8);
        // The stream's task may deliver 6 and 7 live before 8 arrives (then 7 comes from
        // memory and 8 from history, or 7 and 8 from history together), or run only after
        // memory forgot them (then 6..=8 come from history together): one read in every case.
        let mut got = Vec::new();
        while got.last() != Some(&8) {
            got.extend(next_revisions(&mut rx).await);
        }
        assert_eq!(got, vec![6, 7, 8]);
        assert_eq!(history.reads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_watcher_reads_history_even_when_memory_holds_its_start() {
        let history = Arc::new(CountingHistory::default());
        let hub = WatchHub::new(1, Arc::clone(&history) as Arc<dyn History>);
        let (mut first, mut first_rx) = hub.open_stream(16);
        first.create(spec(0), 0, &crate::Caller::Internal).await;
        assert!(matches!(
            first_rx.recv().await,
            Some(Notice::Created { .. })
        ));
        wait_synced(&hub).await;
        feed(&hub, &history, Some(vec![2, 3, 4]), 4);
        // Memory holds 2..=4, but a new watcher's start must be checked against compaction.
        let (mut second, mut rx) = hub.open_stream(16);
        second.create(spec(3), 0, &crate::Caller::Internal).await;
        assert!(matches!(rx.recv().await, Some(Notice::Created { .. })));
        assert_eq!(next_revisions(&mut rx).await, vec![3, 4]);
        assert_eq!(history.reads.load(Ordering::SeqCst), 1);
    }

    /// The writer's `committed` queues nothing itself: the stream's own task delivers (so the
    /// writer's work per group does not grow with the number of watchers).
    #[tokio::test(flavor = "current_thread")]
    async fn committed_hands_delivery_to_the_stream_task() {
        let history = Arc::new(CountingHistory::default());
        let hub = WatchHub::new(1, Arc::clone(&history) as Arc<dyn History>);
        let (mut ws, mut rx) = hub.open_stream(16);
        for _ in 0..3 {
            ws.create(spec(0), 0, &crate::Caller::Internal).await;
            assert!(matches!(rx.recv().await, Some(Notice::Created { .. })));
        }
        wait_synced(&hub).await;
        // On this single-threaded runtime the stream's task cannot run during the call.
        feed(&hub, &history, Some(vec![2]), 2);
        assert!(rx.try_recv().is_err(), "the writer queued an event itself");
        for _ in 0..3 {
            assert_eq!(next_revisions(&mut rx).await, vec![2]);
        }
        assert_eq!(history.reads.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn memory_keeps_the_newest_revisions_within_the_limits() {
        let mut st = HubState {
            last: 1,
            recent_from: 2,
            ..Default::default()
        };
        for r in 2..(RECENT_REVISIONS as i64 + 12) {
            let events: Vec<Arc<Event>> = rev(r).events.into_iter().map(Arc::new).collect();
            st.push_recent(r, &events);
            st.last = r;
        }
        assert_eq!(st.recent.len(), RECENT_REVISIONS);
        assert_eq!(st.recent_from, 12);
        assert_eq!(st.recent.front().unwrap().revision, 12);
        assert!(st.read_recent(&spec(0), 11).is_none());
        let b = st.read_recent(&spec(0), 12).unwrap();
        assert_eq!(b.through, 12 + MAX_CATCH_UP_REVISIONS - 1);
        assert_eq!(b.events.len(), MAX_CATCH_UP_REVISIONS as usize);
        // A gap: what came before is forgotten.
        let events: Vec<Arc<Event>> = rev(st.last + 5).events.into_iter().map(Arc::new).collect();
        st.push_recent(st.last + 5, &events);
        assert_eq!(st.recent.len(), 1);
        assert_eq!(st.recent_from, st.recent[0].revision);
    }
}
