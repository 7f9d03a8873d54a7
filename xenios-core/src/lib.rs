//! # xenios-core
//!
//! The engine of the Xenios AI backend. Other Rust services embed it through one typed
//! facade, [`AiBackend`]; the server, worker and CLI binaries are thin shells over it.
//!
//! ## Layout
//! [`AiBackend`] (`backend/`) is built once ([`AiBackend::builder`]) and hands out one
//! handle per domain; each handle lives in its domain's module, so the facade stays a table
//! of contents rather than a second copy of every domain's API:
//!
//! | call | handle | where it lives |
//! |---|---|---|
//! | `backend.llm()` | [`llm::Llm`]: complete, stream, budgets, counters | [`llm`] |
//! | `backend.jobs()` | [`jobs::Jobs`]: enqueue, results, revoke | [`jobs`] (`client/`) |
//! | `backend.auth()` | [`auth::Auth`]: API key, Supabase tokens, rate limits | [`auth`] (`gate.rs`) |
//! | `backend.database()` | [`db::Database`]: migrations, rows, audit counters | [`db`] (`database.rs`) |
//! | `backend.readiness()`, `status()`, `whoami()`, `prepare()`, `shutdown()` | the facade | `backend/` (`status.rs`, `mod.rs`) |
//!
//! Why handles and not one flat facade: each domain's calls, errors and docs stay together,
//! an embedder sees at a glance what a domain offers, and a domain never needs the facade:
//! it is given what it needs at construction (the worker runtime, for one, takes
//! [`jobs::worker::WorkerDeps`], which [`AiBackend::worker_deps`] hands over).
//!
//! The modules:
//! - [`config`]: typed settings from the environment, one file per section, every problem
//!   reported at once; [`Config::warnings`] for what is valid but suspicious.
//! - [`context`]: the per-request [`RequestContext`] (correlation ID, principal) that travels
//!   into jobs and upstream calls.
//! - [`auth`]: API-key and Supabase JWT verification, rate limits; no HTTP types.
//! - [`llm`]: LLM orchestration: OpenRouter and fake providers, per-task routes, retries,
//!   fallback, streaming, one audit row per call; [`llm::input`] holds the rules for
//!   requests from outside (roles, OpenAI content, task or model).
//! - [`db`]: Postgres (diesel-async on bb8), schema `ai_backend`; [`db::DbError`].
//! - [`deferred`]: work a request hands over to run after its answer is written (audit
//!   row, access-log line).
//! - [`redis`]: the Redis pool (bb8-redis).
//! - [`jobs`]: the Celery-compatible job queue (producer, worker runtime, result backend,
//!   events and pidbox for Flower).
//! - [`metrics`]: Prometheus metrics (names, help texts, histograms) and their text page.
//! - [`health`]: readiness probes of the dependencies.
//! - [`telemetry`]: structured logging (JSON lines written by a thread of their own), error
//!   reports, traces.
//! - [`shutdown`]: SIGTERM/SIGINT handling shared by the binaries.
//! - [`version`]: the service name, version and commit of this build.
//! - [`error`]: the one facade [`Error`], its [`ErrorKind`] classification and the
//!   [`error::Component`] that is down.
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> Result<(), xenios_core::Error> {
//! let config = xenios_core::Config::from_env()?;
//! let backend = xenios_core::AiBackend::builder(config).build().await?;
//! println!("ready: {}", backend.readiness().await.ready);
//! backend.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod auth;
pub mod backend;
pub mod config;
pub mod context;
pub mod db;
pub mod deferred;
pub mod error;
pub mod health;
pub mod jobs;
pub mod llm;
pub mod metrics;
pub mod redis;
pub mod shutdown;
pub mod telemetry;
pub mod version;

pub use backend::{AiBackend, AiBackendBuilder, ServiceStatus};
pub use config::{Config, ConfigError, Environment};
pub use context::{CorrelationId, RequestContext};
pub use error::{Error, ErrorKind, Result};
