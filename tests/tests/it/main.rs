//! The black-box tests, one module per area, linked into one binary (each test binary links
//! the whole stack, so fourteen of them cost fourteen links). nextest runs every test in a
//! process of its own all the same.
//!
//! `sentry.rs` and `traces.rs` stay binaries of their own: each installs a process-wide
//! singleton (the Sentry client, the global tracer provider), which holds only when the
//! process runs that one test, as under plain `cargo test` it would not in a shared binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse_jobs;
mod abuse_llm;
mod auth;
mod contract;
mod db;
mod embedding;
mod errors;
mod foundation;
mod jobs;
mod jobs_faults;
mod jobs_interop;
mod jobs_lifecycle;
mod jobs_llm;
mod llm;
mod llm_only;
