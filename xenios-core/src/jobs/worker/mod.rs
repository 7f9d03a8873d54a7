//! The worker runtime: takes messages from Celery queues, runs registered Rust handlers.
//!
//! - **Delivery**: messages are taken atomically into `unacked` (`jobs::broker::take`) and acked
//!   after the handler finished (acks_late), in the same Lua step that stores the result.
//!   A worker that dies leaves its messages in `unacked`; any worker (ours or Celery's)
//!   restores them after the visibility timeout (reject_on_worker_lost: no FAILURE stored).
//!   While it lives, a worker refreshes what it holds every heartbeat.
//! - **Waking**: a pub/sub connection of its own listens to keyspace notifications of the
//!   queue lists (enabled with `CONFIG SET` when allowed; otherwise the worker polls every
//!   50 ms) and to the pidbox channel; one reconnecting connection serves the rest.
//! - **Faults**: every Redis step recovers with backoff when Redis comes back; the health
//!   file ([`health`]) says whether Redis answers; one result Redis refuses never blocks
//!   the others (it is dead-lettered after a few tries).
//! - **Limits**: soft limit -> [`TaskContext::soft_time_limit`] resolves and the handler may
//!   clean up (returning [`TaskError::SoftTimeLimitExceeded`] stores Celery's
//!   `SoftTimeLimitExceeded`); hard limit -> the handler's future is dropped and
//!   `TimeLimitExceeded` stored. Defaults `JOB_SOFT_TIME_LIMIT_SECS`/`JOB_HARD_TIME_LIMIT_SECS`.
//! - **Retries**: a handler returns [`TaskError::Retry`]; a new message with `retries + 1` and
//!   an ETA (exponential backoff unless given) replaces the old one atomically.
//! - **Warm shutdown**: stop taking, let running handlers finish until
//!   `WORKER_SHUTDOWN_TIMEOUT_SECS`, then put them, with the reserved and ETA messages, back
//!   at the front of their queues. Nothing is lost.
//! - **Bad input**: unknown task names, oversized messages (`JOB_MAX_MESSAGE_BYTES`) and
//!   undecodable messages go to `jobs::broker::DEAD_LETTER_KEY` with a stored
//!   failure when their id is known; absurd time limits, ETAs and rates are clamped.
//!
//! ## Layout
//! - `deps`: [`WorkerDeps`], the parts of the engine a worker is built from.
//! - `handler`: the handler API ([`TaskError`], [`TaskContext`], [`TaskRegistry`]).
//! - `options`: [`WorkerOptions`] and [`WorkerSummary`].
//! - `run`: [`Worker`], its lifecycle and warm shutdown.
//! - `state`: the state shared by the worker's tasks and the pidbox.
//! - `fetch`: taking messages and dispatching them (now or at their ETA).
//! - `execute`: running one handler under its limits and concluding the job.
//! - `finish`: storing results and acking, in batches, item by item.
//! - `background`: the listener (keyspace notifications, pidbox) and the heartbeat.
//! - `link`: the worker's reconnecting Redis connection and when Redis last answered.
//! - [`health`]: the health file and `xenios-worker --check`.
//! - `limits`: task rate limits (pidbox `rate_limit`).

mod background;
mod deps;
mod execute;
mod fetch;
mod finish;
mod handler;
pub mod health;
mod limits;
mod link;
mod options;
mod run;
mod state;

pub use deps::WorkerDeps;
pub use handler::{TaskContext, TaskError, TaskRegistry};
pub(crate) use limits::RateLimit;
pub use options::{WorkerOptions, WorkerSummary};
pub use run::{AUDIT_FLUSH_TIMEOUT, Worker};
pub(crate) use state::{Held, Shared};
