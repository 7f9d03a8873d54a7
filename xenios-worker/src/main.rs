//! `xenios-worker`: consumes Celery-compatible queues on Redis with the runtime of
//! `xenios_core::jobs::worker`; flags follow `celery worker`.

use std::process::ExitCode;

use clap::Parser;
use xenios_core::jobs::worker::{AUDIT_FLUSH_TIMEOUT, health};
use xenios_core::jobs::{Worker, tasks};

mod args;
use args::Args;

fn fail(code: ExitCode, what: impl std::fmt::Display) -> ExitCode {
    eprintln!("xenios-worker: {what}");
    code
}

/// mimalloc, built `no_thp`, as in the server: the reasons and the measurements are beside
/// the server's allocator (`xenios-server/src/main.rs`). For the worker, transparent huge
/// pages took idle RSS from 11 MB (glibc) to 22 MB, and 46 MB during a drain; without them
/// it idles at 13 MB (20 MB during a drain), under its 20 MB idle target.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread runs the whole worker: fetching, the jobs, finishing, heartbeats, the job rows.
/// Its work is waiting on Redis, Postgres and upstream HTTP, plus a little JSON per job;
/// on a multi-thread runtime every spawned job and every wake-up crossed threads. On one
/// thread, `scripts/bench-jobs.sh` drained 22,000-26,400 jobs/s against 16,500-17,500
/// (interleaved, same machine), with the worker's CPU per job halved (13-15.5 µs against
/// 25.5-28) and less memory during the drain (18 MB against 20.5-22.5). A handler that
/// blocks the thread stalls all of it, heartbeats included: CPU-heavy or blocking work
/// belongs in `tokio::task::spawn_blocking` (or a Python Celery worker).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match xenios_core::Config::from_env() {
        Ok(c) => c,
        Err(e) => return fail(ExitCode::from(2), e),
    };
    if args.check {
        return match health::check(&config.jobs) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(ExitCode::FAILURE, format_args!("unhealthy: {e}")),
        };
    }
    // Held to the end of main: dropping it flushes error reports and spans.
    let _telemetry = xenios_core::telemetry::init(&config);
    let options = args.options(&config.jobs);
    let backend = match xenios_core::AiBackend::builder(config).build().await {
        Ok(b) => b,
        Err(e) => return fail(ExitCode::FAILURE, e),
    };
    // The one place handlers are installed: add new tasks in `tasks::register_builtin`.
    let registry = tasks::builtin_registry(&backend.config().jobs);
    let outcome = Worker::new(backend.clone(), registry, options)
        .allow_unhandled_queues(args.allow_unhandled_queues)
        .run(xenios_core::shutdown::signal())
        .await;
    backend.shutdown(AUDIT_FLUSH_TIMEOUT).await;
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            fail(ExitCode::FAILURE, e)
        }
    }
}
