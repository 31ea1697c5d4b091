//! EncryptionConfiguration: strict parsing, validation, and the resource → etcd key mapping.
pub mod model;
