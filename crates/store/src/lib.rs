//! # coffer-store: the MVCC keyspace behind `coffer serve`
//!
//! Revisions, the key index, compaction, group commit, and (later) leases and the watch hub.
//! Values are sealed through `coffer-seal` before they reach the engine and opened after.
//! [`backend::Backend`] is the one interface the server talks to; the embedded engine
//! implements it now and the etcd gateway will later.

pub mod backend;
pub mod error;

pub use backend::{Backend, StoreStatus};
pub use error::Error;
