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

/// mimalloc instead of glibc's malloc: a request or a job allocates and frees many small
/// buffers across threads, and glibc's allocator (`_int_malloc`, `_int_free`,
/// `malloc_consolidate`) was a fifth of the server's user-space CPU in a profile of
/// `scripts/bench-me.sh`; with mimalloc the same run answers 5-19% more requests. Built
/// `no_thp` (the workspace's feature): with transparent huge pages its arenas took the
/// server's idle RSS from 20 to 42 MB, without them 25 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
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
