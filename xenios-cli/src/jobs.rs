//! `enqueue`, `job` and `revoke`.

use std::process::ExitCode;
use std::time::Duration;

use xenios_core::jobs::{EnqueueRequest, JobResult, JobState};
use xenios_core::{AiBackend, RequestContext};

/// The flags of `enqueue` that describe the job.
#[derive(Debug)]
pub struct JobArgs {
    /// Task name.
    pub task: String,
    /// `--args`, JSON.
    pub args: String,
    /// `--kwargs`, JSON.
    pub kwargs: String,
    /// `--queue`.
    pub queue: Option<String>,
    /// `--countdown`, seconds.
    pub countdown: Option<f64>,
    /// `--priority`.
    pub priority: Option<u8>,
}

fn print_result(r: &JobResult) -> ExitCode {
    match serde_json::to_string_pretty(r) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::FAILURE;
        }
    }
    if r.state == JobState::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The request of the flags; the rules (arguments, countdown) are core's.
fn request(job: JobArgs) -> Result<EnqueueRequest, String> {
    let args: serde_json::Value =
        serde_json::from_str(&job.args).map_err(|e| format!("--args is not JSON: {e}"))?;
    let kwargs: serde_json::Value =
        serde_json::from_str(&job.kwargs).map_err(|e| format!("--kwargs is not JSON: {e}"))?;
    let mut req = EnqueueRequest::new(job.task)
        .args(args)
        .map_err(|e| format!("--args: {e}"))?
        .kwargs(kwargs)
        .map_err(|e| format!("--kwargs: {e}"))?;
    req.queue = job.queue;
    req.priority = job.priority;
    if let Some(c) = job.countdown {
        req = req.countdown_secs(c).map_err(|e| format!("--{e}"))?;
    }
    Ok(req)
}

/// `enqueue`: prints the job id, or with `wait` (seconds) waits for the result and prints it
/// (exit 1 unless SUCCESS).
pub async fn enqueue(backend: &AiBackend, job: JobArgs, wait: Option<f64>) -> ExitCode {
    let req = match request(job) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = RequestContext::system();
    let id = match backend.jobs().enqueue(&ctx, req).await {
        Ok(e) => e.id,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(timeout) = wait else {
        println!("{id}");
        return ExitCode::SUCCESS;
    };
    eprintln!("enqueued {id}; waiting");
    let timeout = Duration::from_secs_f64(if timeout.is_finite() {
        timeout.clamp(0.0, 86_400.0)
    } else {
        60.0
    });
    match backend.jobs().wait_result(id.as_str(), timeout).await {
        Ok(r) => print_result(&r),
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `job`: a job's state and result as JSON.
pub async fn show(backend: &AiBackend, id: &str) -> ExitCode {
    match backend.jobs().job_result(id).await {
        Ok(r) => print_result(&r),
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `revoke`.
pub async fn revoke(backend: &AiBackend, id: &str, terminate: bool) -> ExitCode {
    match backend.jobs().revoke(id, terminate).await {
        Ok(()) => {
            println!(
                "{id} revoked{}",
                if terminate { " (terminate)" } else { "" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            ExitCode::FAILURE
        }
    }
}
