//! The record of one run: every client request with its call and return times and what came
//! back (or that nothing certain came back), and every watcher's events. The traffic generator
//! writes it; the linearizability checker and the watch validator read it. It is plain data,
//! serializable to JSON so a failing run can be saved and checked again offline.

use serde::{Deserialize, Serialize};

/// Keys and values are short ASCII strings chosen by the generator (values are unique per write,
/// so a read names the write it saw).
pub type Key = String;
/// See [`Key`].
pub type Value = String;

/// One run's history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Every KV/lease/compaction request, in no particular order.
    pub operations: Vec<Operation>,
    /// Every watcher opened during the run.
    pub watches: Vec<WatchRecord>,
    /// Revision ranges `[from, to]` (the server's revision when it started without a key that
    /// sealed some values, and when it started with it again: the `unopenable` fault). A watch
    /// event delivered in such a range (its response revision) may carry a `prev_kv` whose
    /// value is the value as stored (sealed bytes, `k8s:enc:...`) instead of the plaintext the
    /// history wrote, every other field exact. Empty for every other run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed_prev_kv: Vec<(i64, i64)>,
}

/// One request as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// The client (one sequential stream of requests) that sent it.
    pub client: u32,
    /// Nanoseconds since the start of the run when the request was sent.
    pub call: u64,
    /// Nanoseconds since the start of the run when the answer came; `None` when no answer came
    /// (timeout, broken connection, server killed): the request may take effect at any time
    /// after `call`, or never.
    pub ret: Option<u64>,
    /// What was asked.
    pub request: Request,
    /// What came back.
    pub outcome: Outcome,
}

/// A request the generator sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// `Put key=value`, attached to `lease` (0 = none).
    Put { key: Key, value: Value, lease: i64 },
    /// Linearizable `Range` of one key, or of `[key, end)` when `end` is set.
    Range { key: Key, end: Option<Key> },
    /// `DeleteRange` of one key.
    Delete { key: Key },
    /// A transaction: all `compares` hold → `success`, else `failure`.
    Txn {
        compares: Vec<Compare>,
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
    },
    /// `LeaseGrant` with a server-chosen id. TTLs are long enough never to expire in a run.
    LeaseGrant { ttl: i64 },
    /// `LeaseRevoke`: deletes every key attached, in one revision (none if no key is attached).
    LeaseRevoke { id: i64 },
    /// `Compact` to `revision` (physical = false).
    Compact { revision: i64 },
}

/// One compare of a [`Request::Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    /// `mod_revision(key) == revision` (0 = the key does not exist).
    ModRevisionEquals { key: Key, revision: i64 },
    /// `value(key) == value` (false when the key does not exist).
    ValueEquals { key: Key, value: Value },
}

/// One operation inside a [`Request::Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Put with no lease.
    Put { key: Key, value: Value },
    /// Range of one key.
    Get { key: Key },
    /// Delete of one key.
    Delete { key: Key },
}

/// What happened to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// An answer came back.
    Ok(Response),
    /// The server answered with an error that means the request was not applied (e.g.
    /// `mvcc: required revision has been compacted`, `database space exceeded`). The string is
    /// the gRPC message.
    Failed(String),
    /// No answer, or an error that does not say whether the request was applied.
    Unknown(String),
}

/// A key as a read returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Key,
    pub value: Value,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// A successful answer; `revision` is always the header revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Put {
        revision: i64,
    },
    Range {
        revision: i64,
        kvs: Vec<KeyValue>,
    },
    Delete {
        revision: i64,
        deleted: i64,
    },
    Txn {
        revision: i64,
        succeeded: bool,
        /// One entry per op of the branch taken.
        results: Vec<TxnOpResult>,
    },
    LeaseGrant {
        revision: i64,
        id: i64,
    },
    LeaseRevoke {
        revision: i64,
    },
    Compact {
        revision: i64,
    },
}

impl Response {
    /// The header revision.
    pub fn revision(&self) -> i64 {
        match self {
            Response::Put { revision }
            | Response::Range { revision, .. }
            | Response::Delete { revision, .. }
            | Response::Txn { revision, .. }
            | Response::LeaseGrant { revision, .. }
            | Response::LeaseRevoke { revision }
            | Response::Compact { revision } => *revision,
        }
    }
}

/// The answer to one [`TxnOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    Put,
    Get { kvs: Vec<KeyValue> },
    Delete { deleted: i64 },
}

/// One watcher: what it asked for and everything it received, in order of arrival.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// The client that opened it (watch clients are numbered apart from KV clients).
    pub client: u32,
    /// Watched key, and range end if a range (etcd's `range_end`).
    pub key: Key,
    pub range_end: Option<Key>,
    /// Requested start revision (0 = from now; then `created_revision` says where it started).
    pub start_revision: i64,
    /// Header revision of the created response.
    pub created_revision: i64,
    pub prev_kv: bool,
    /// Every event received, in order.
    pub events: Vec<WatchEvent>,
    /// Progress notifications received (header revisions), in order, interleaved position lost.
    pub progress: Vec<i64>,
    /// Set when the server cancelled the watcher.
    pub cancel: Option<WatchCancel>,
    /// True when the stream broke (server killed or paused past the deadline) rather than ending
    /// cleanly: events after the last one received are simply unknown.
    pub broken: bool,
}

/// One watch event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// The header revision of the response that carried it.
    pub response_revision: i64,
    pub kind: EventKind,
    /// For a delete: key set, value empty, mod_revision = the delete's revision, other fields 0.
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// Put or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// A server-side cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchCancel {
    /// `compact_revision` of the response (non-zero when cancelled because of compaction).
    pub compact_revision: i64,
    pub reason: String,
}
