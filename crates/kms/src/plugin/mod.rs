//! `coffer kms-plugin` (to be written).
