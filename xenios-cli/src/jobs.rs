//! `enqueue` and `job` subcommands.

use std::process::ExitCode;
use std::time::Duration;

use xenios_core::jobs::{EnqueueRequest, JobResult, JobState};
use xenios_core::{AiBackend, RequestContext};

/// The job row is best effort here: the CLI does not hang when Postgres is down.
const AUDIT_FLUSH: Duration = Duration::from_secs(3);

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

#[allow(clippy::too_many_arguments)]
pub async fn enqueue(
    backend: &AiBackend,
    task: String,
    args: &str,
    kwargs: &str,
    queue: Option<String>,
    countdown: Option<f64>,
    priority: Option<u8>,
    wait: bool,
    timeout: f64,
) -> ExitCode {
    let parsed = (|| -> Result<EnqueueRequest, String> {
        let args: serde_json::Value =
            serde_json::from_str(args).map_err(|e| format!("--args is not JSON: {e}"))?;
        let kwargs: serde_json::Value =
            serde_json::from_str(kwargs).map_err(|e| format!("--kwargs is not JSON: {e}"))?;
        let mut req = EnqueueRequest::new(task)
            .args(args)
            .map_err(|e| format!("--args: {e}"))?
            .kwargs(kwargs)
            .map_err(|e| format!("--kwargs: {e}"))?;
        req.queue = queue;
        req.priority = priority;
        if let Some(c) = countdown {
            if !(c.is_finite() && (0.0..3.2e7).contains(&c)) {
                return Err("--countdown must be 0 to 31536000 seconds".to_owned());
            }
            req.countdown = Some(Duration::from_secs_f64(c));
        }
        Ok(req)
    })();
    let req = match parsed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = RequestContext::system();
    let id = match backend.enqueue(&ctx, req).await {
        Ok(id) => id,
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !wait {
        println!("{id}");
        backend.flush_audit_within(AUDIT_FLUSH).await;
        return ExitCode::SUCCESS;
    }
    eprintln!("enqueued {id}; waiting");
    let timeout = Duration::from_secs_f64(if timeout.is_finite() {
        timeout.clamp(0.0, 86_400.0)
    } else {
        60.0
    });
    let result = backend.wait_result(id.as_str(), timeout).await;
    backend.flush_audit_within(AUDIT_FLUSH).await;
    match result {
        Ok(r) => print_result(&r),
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

pub async fn show(backend: &AiBackend, id: &str) -> ExitCode {
    match backend.job_result(id).await {
        Ok(r) => print_result(&r),
        Err(e) => {
            eprintln!("xenios-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `xenios-cli revoke`.
pub async fn revoke(backend: &AiBackend, id: &str, terminate: bool) -> ExitCode {
    match backend.revoke(id, terminate).await {
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
