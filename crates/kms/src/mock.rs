//! A mock KMS v2 plugin for tests (to be written).
