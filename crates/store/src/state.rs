//! The state the readers and the writer thread share: the engine, the in-memory key index, the
//! leases, the alarms and the sealer; and how a stored value is read and opened.
//!
//! Lock order: the index lock before the lease lock. Readers take the index lock only to pick
//! revisions and begin an engine read; the writer changes the index only after a commit.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use coffer_proto::AlarmMember;
use redb::ReadableTable;

use crate::engine::{self, Engine};
use crate::events::CommitListener;
use crate::index::Index;
use crate::lease::Leases;
use crate::record::{Record, Rev};
use crate::sealer::Sealer;
use crate::Error;

/// What the readers and the writer share.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    index: RwLock<Index>,
    pub(crate) sealer: Arc<dyn Sealer>,
    pub(crate) listener: Option<Arc<dyn CommitListener>>,
    /// Effective quota in bytes; <= 0 means none.
    pub(crate) quota: i64,
    pub(crate) compaction_batch: usize,
    pub(crate) max_leases: usize,
    pub(crate) db_size: AtomicI64,
    pub(crate) commits: AtomicU64,
    pub(crate) stopped: AtomicBool,
    leases: Mutex<Leases>,
    /// Active alarms, as persisted in the meta.
    alarms: Mutex<Vec<AlarmMember>>,
    /// Set when a commit's outcome became unknown: writes are refused until a restart.
    writes_stopped: Mutex<Option<String>>,
    /// The auth state as of the last durable auth change (swapped whole by the writer).
    auth: crate::auth::SharedAuth,
}

/// Limits and hooks from the store's options.
pub(crate) struct Settings {
    pub listener: Option<Arc<dyn CommitListener>>,
    pub quota: i64,
    pub compaction_batch: usize,
    pub max_leases: usize,
}

impl Shared {
    pub(crate) fn new(
        engine: Engine,
        index: Index,
        sealer: Arc<dyn Sealer>,
        leases: Leases,
        alarms: Vec<AlarmMember>,
        auth: crate::auth::AuthState,
        s: Settings,
    ) -> Shared {
        let shared = Shared {
            engine,
            index: RwLock::new(index),
            sealer,
            listener: s.listener,
            quota: s.quota,
            compaction_batch: s.compaction_batch.max(1),
            max_leases: s.max_leases,
            db_size: AtomicI64::new(0),
            commits: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            leases: Mutex::new(leases),
            alarms: Mutex::new(alarms),
            writes_stopped: Mutex::new(None),
            auth: RwLock::new(Arc::new(auth)),
        };
        shared.refresh_size();
        shared
    }

    pub(crate) fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way readers
        // could misread (updates are plain pushes), so a poisoned lock is still usable.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease set. Lock order: the index lock (if taken) before this one.
    pub(crate) fn leases(&self) -> MutexGuard<'_, Leases> {
        // Updates are single map operations; a poisoned set is still consistent.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The alarm list (changed only by the writer thread, after its durable commit).
    pub(crate) fn alarms(&self) -> MutexGuard<'_, Vec<AlarmMember>> {
        self.alarms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The auth state as of the last durable auth change.
    pub(crate) fn auth(&self) -> Arc<crate::auth::AuthState> {
        Arc::clone(&self.auth.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Publishes a durable auth change (the writer thread only).
    pub(crate) fn set_auth(&self, auth: crate::auth::AuthState) {
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(auth);
    }

    /// Why writes are refused, if a commit's outcome became unknown.
    pub(crate) fn writes_stopped(&self) -> Option<String> {
        self.writes_stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Refuses every later write (reads go on) until a restart replays the log.
    pub(crate) fn stop_writes(&self, why: &str) {
        tracing::error!(
            error = %why,
            "a commit failed after reaching the disk: its outcome is unknown; writes are \
             refused until the server is restarted, which replays the write-ahead log"
        );
        let mut w = self
            .writes_stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some(why.to_string());
        }
    }

    pub(crate) fn refresh_size(&self) {
        self.db_size
            .store(self.engine.file_size(), Ordering::Relaxed);
    }

    /// Opens `stored` (the sealed value of `key`).
    pub(crate) fn open(&self, key: &[u8], stored: &[u8]) -> Result<Vec<u8>, Error> {
        self.sealer.open(key, stored).map_err(|reason| Error::Open {
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        })
    }

    /// Seals `plain` for `key`.
    pub(crate) fn seal(&self, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, Error> {
        self.sealer.seal_detailed(key, plain).map_err(|f| {
            let key = String::from_utf8_lossy(key).into_owned();
            match f.kms_unavailable {
                Some(provider) => Error::KmsUnavailable {
                    key,
                    provider,
                    reason: f.reason,
                },
                None => Error::Seal {
                    key,
                    reason: f.reason,
                },
            }
        })
    }
}

/// What a value is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The plaintext, or an error: reads, compares, `ignore_value`.
    Plain,
    /// A `prev_kv`: the plaintext, or the value as stored when it cannot be opened (a key
    /// removed from the config, an unreachable KMS), so such a key can still be deleted and
    /// its DELETE event still carries a `prev_kv`. A damaged record is still an error.
    PrevKv,
}

/// Reads the record of `rev` (checksum verified) and opens its value.
pub(crate) fn load_value(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    shared: &Shared,
    key: &[u8],
    rev: Rev,
    want: Want,
) -> Result<Vec<u8>, Error> {
    let guard = engine::get_record(table, rev)?.ok_or_else(|| {
        Error::Corrupt(format!(
            "the record {}.{} of key {:?} is missing from the engine",
            rev.main,
            rev.sub,
            String::from_utf8_lossy(key)
        ))
    })?;
    match Record::decode(rev, guard.value())? {
        Record::Put { sealed, .. } => match shared.open(key, sealed) {
            Ok(v) => Ok(v),
            Err(e) if want == Want::PrevKv => {
                tracing::warn!(error = %e, revision = rev.main, "a previous value cannot be opened: passed on as stored");
                Ok(sealed.to_vec())
            }
            Err(e) => Err(e),
        },
        Record::Tombstone { .. } => Err(Error::Corrupt(format!(
            "the record {}.{} is a tombstone where a value was expected",
            rev.main, rev.sub
        ))),
    }
}
