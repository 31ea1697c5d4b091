//! Integration tests of the embedded store through the `Backend` trait (one binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod common;
mod compact;
mod faults;
mod group;
mod model;
mod restart;
mod sealing;
mod semantics;
mod txn;
