//! The KMS client (to be written).
