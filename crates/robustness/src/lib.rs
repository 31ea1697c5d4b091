//! The robustness suite (in the manner of etcd's `tests/robustness` and Jepsen): random
//! concurrent traffic against Coffer or etcd while faults are injected, recorded as a
//! [`history::History`], then checked for linearizability ([`linearizability`]) and for the
//! watch guarantees ([`watch_check`]).

pub mod history;
pub mod linearizability;
pub mod watch_check;
