//! # coffer-server: etcd's v3 gRPC API over a Coffer store
//!
//! The tonic services (KV, Maintenance, Cluster, later Watch, Lease and Auth), request limits
//! (`--max-request-bytes`, `--max-txn-ops`), request validation, and the one table that maps
//! store errors to etcd's gRPC codes and `etcdserver: ...` strings. Thin: it translates,
//! checks and delegates to the store.
