//! What a commit tells the watch hub and any other listener: the changes of each revision as
//! etcd events with plaintext values, and the one function that turns a stored change into an
//! event (used by the writer for new commits and by the history reader for catch-up).

use coffer_proto::mvccpb::{event::EventType, Event, KeyValue};

use crate::index::Entry;

/// The changes of one revision, with plaintext values.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedRevision {
    /// The revision.
    pub revision: i64,
    /// Its events in sub-revision order; `prev_kv` is filled when the key existed.
    pub events: Vec<Event>,
}

/// Receives every committed revision, after it is durable and before clients are answered.
/// Called on the writer thread: keep it quick (hand off to a channel).
pub trait CommitListener: Send + Sync + 'static {
    /// The revisions of one durable group, in order.
    fn committed(&self, revisions: &[CommittedRevision]);
}

/// A KeyValue of `key` in the version `e`.
pub(crate) fn kv(key: Vec<u8>, e: &Entry, value: Vec<u8>) -> KeyValue {
    KeyValue {
        key,
        create_revision: e.create,
        mod_revision: e.rev.main,
        version: e.version,
        value,
        lease: e.lease,
    }
}

/// The event of a change at revision `mod_revision`: a put (`Some(kv)`, the new version) or a
/// delete of `key` (`None`), with the previous version if there was one.
pub(crate) fn event(
    key: Vec<u8>,
    mod_revision: i64,
    put: Option<KeyValue>,
    prev_kv: Option<KeyValue>,
) -> Event {
    match put {
        Some(kv) => Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv,
        },
        None => Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key,
                mod_revision,
                ..Default::default()
            }),
            prev_kv,
        },
    }
}

/// Appends `event` of `revision` to `out`, starting a new revision when it changes.
pub(crate) fn push(out: &mut Vec<CommittedRevision>, revision: i64, event: Event) {
    match out.last_mut() {
        Some(r) if r.revision == revision => r.events.push(event),
        _ => out.push(CommittedRevision {
            revision,
            events: vec![event],
        }),
    }
}
