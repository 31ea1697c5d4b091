//! Harness for the tests that need real processes: starts Debian's `etcd` and `coffer serve` on
//! loopback ports with fresh data directories, talks to both through `etcdctl` and a Rust gRPC
//! client, and compares the answers.
