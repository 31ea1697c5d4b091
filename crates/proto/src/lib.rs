//! etcd's v3 gRPC API (packages `etcdserverpb`, `mvccpb`, `authpb`) as Rust types, tonic
//! clients and tonic servers. The `.proto` files under `proto/` were written for Coffer from
//! the field tables of etcd's v3.5 API (with the 3.6 additions); the package and service names
//! are etcd's, so method paths on the wire are identical and every etcd client works unchanged.

#![allow(missing_docs, clippy::all)]

/// `mvccpb`: `KeyValue` and `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// `authpb`: users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// `etcdserverpb`: every request, response and service of the v3 API.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub use etcdserverpb::*;
pub use mvccpb::{Event, KeyValue};
