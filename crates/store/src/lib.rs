//! # coffer-store: the MVCC keyspace behind `coffer serve`
//!
//! Revisions, the key index, compaction, group commit, the watch hub ([`watch`]), leases
//! ([`lease`]) and etcd's auth state, checked at apply time ([`auth`]).
//! Values are sealed through a [`Sealer`] before they reach the engine and opened after.
//! [`backend::Backend`] is the one interface the server talks to; the embedded engine
//! ([`EmbeddedStore`], on redb) implements it now and the etcd gateway will later.
//!
//! ```no_run
//! # async fn demo(sealer: std::sync::Arc<dyn coffer_store::Sealer>) -> Result<(), coffer_store::Error> {
//! use coffer_store::{Backend, Caller, EmbeddedStore, StoreOptions};
//! let store = EmbeddedStore::open(std::path::Path::new("/var/lib/coffer"), sealer, StoreOptions::default())?;
//! let put = coffer_proto::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() };
//! // A client's request carries its caller; Coffer's own tools are `Caller::Internal`.
//! let resp = store.put(&Caller::Internal, put).await?;
//! assert_eq!(resp.header.map(|h| h.revision), Some(2));
//! # Ok(()) }
//! ```

// The house (docs/storage.md), bottom up: record/lease/wal layouts, `caller` and `auth` (the
// pure auth model), `engine` (redb and the log), `state` (what readers and the writer share),
// `txn` and `plan` (the pure step), `watch` and `history`, `writer` (the thread), `snapshot`
// and `embedded` (the store).
pub mod alarm;
pub mod auth;
pub mod backend;
pub mod caller;
pub mod disk;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod events;
mod history;
pub mod index;
pub mod lease;
mod plan;
pub mod quota;
pub mod range;
pub mod record;
pub mod sealer;
pub mod snapshot;
mod state;
mod txn;
mod wal;
pub mod watch;
pub mod writer;

pub use alarm::AlarmChange;
pub use auth::{AuthChange, AuthChanged, AuthState};
pub use backend::{Backend, StoreStatus};
pub use caller::Caller;
pub use embedded::{EmbeddedStore, StoreOptions, DB_FILE, DEFAULT_MAX_LEASES, DEFAULT_QUOTA_BYTES};
pub use engine::{EngineFaults, EngineOptions};
pub use error::Error;
pub use events::{CommitListener, CommittedRevision};
pub use sealer::{SealFailure, Sealer};
pub use watch::{History, HistoryRead, Notice, WatchHub, WatchSpec, WatchStream};
