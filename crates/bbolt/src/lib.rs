//! Placeholder: the bbolt helper writes this crate (see the contract in /work/notes/snapshot-api.md).
