//! # xenios-core
//!
//! The engine of the Xenios AI backend. Other Rust services embed it through one typed
//! facade, [`AiBackend`]; the server, worker and CLI binaries are thin shells over it.
//!
//! ## Layout
//! - [`backend`]: [`AiBackend`] and its builder; owns the pools and the HTTP client.
//! - [`config`]: typed settings from the environment, every problem reported at once.
//! - [`context`]: the per-request [`RequestContext`] (correlation ID, principal) that travels
//!   into jobs and upstream calls.
//! - [`auth`]: API-key and Supabase JWT verification, with no HTTP types.
//! - [`llm`]: LLM orchestration: OpenRouter and fake providers, per-task routes, retries,
//!   fallback, streaming, one audit row per call.
//! - [`db`]: Postgres (diesel-async on bb8), schema `ai_backend`.
//! - [`redis`]: the Redis pool (bb8-redis).
//! - [`jobs`]: the Celery-compatible job queue (producer, worker runtime, result backend,
//!   events and pidbox for Flower).
//! - [`metrics`]: Prometheus metrics (names, help texts, histograms) and their text page.
//! - [`health`]: readiness probes of the dependencies.
//! - [`telemetry`]: structured logging.
//! - [`shutdown`]: SIGTERM/SIGINT handling shared by the binaries.
//! - [`error`]: the [`Error`] enum and its [`ErrorKind`] classification.
//!
//! ## Example
//! ```no_run
//! # async fn demo() -> Result<(), xenios_core::Error> {
//! let config = xenios_core::Config::from_env()?;
//! let backend = xenios_core::AiBackend::builder(config).build().await?;
//! println!("ready: {}", backend.readiness().await.ready);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod auth;
pub mod backend;
pub mod config;
pub mod context;
pub mod db;
pub mod error;
pub mod health;
pub mod jobs;
pub mod llm;
pub mod metrics;
pub mod redis;
pub mod shutdown;
pub mod telemetry;

pub use backend::{AiBackend, AiBackendBuilder, ServiceStatus};
pub use config::{Config, ConfigError, Environment};
pub use context::{CorrelationId, RequestContext};
pub use error::{Error, ErrorKind, Result};
