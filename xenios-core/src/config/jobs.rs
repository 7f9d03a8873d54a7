//! Job queue settings (`JOB_*`, `WORKER_*`).

use std::time::Duration;

use super::reader::Reader;

/// Job queue settings (Celery-compatible queues on Redis, see [`crate::jobs`]).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// `JOB_DEFAULT_QUEUE`: queue of tasks no route matches (default `default`).
    pub default_queue: String,
    /// `JOB_ROUTES`: comma-separated `prefix=queue` pairs; the longest task-name prefix wins
    /// (default routes `xenios.llm.`, `llm.` to `llm`, and likewise `extraction`,
    /// `transcription`, `analytics`).
    pub routes: Vec<(String, String)>,
    /// `JOB_VISIBILITY_TIMEOUT_SECS`: how long a taken, unacknowledged message may go without
    /// a sign of life from its worker before it is restored to its queue (default 3600, as
    /// kombu). Live workers refresh the messages they hold, so long jobs are not duplicated.
    pub visibility_timeout: Duration,
    /// `JOB_RESULT_EXPIRES_SECS`: lifetime of `celery-task-meta-*` results (default 86400).
    pub result_expires: Duration,
    /// `JOB_SOFT_TIME_LIMIT_SECS`: default soft limit; the handler is told (default 300).
    pub soft_time_limit: Duration,
    /// `JOB_HARD_TIME_LIMIT_SECS`: default hard limit; the handler is stopped (default 600).
    pub hard_time_limit: Duration,
    /// `JOB_MAX_RETRIES`: retries a handler may ask for (default 3).
    pub max_retries: u32,
    /// `JOB_TASK_EVENTS`: workers send task events for Flower from the start, like
    /// `celery worker -E` (default true).
    pub task_events: bool,
    /// `JOB_MAX_TIME_LIMIT_SECS`: longest time limit a message or a `time_limit` control
    /// command may ask for; longer ones are cut to it (default 86400).
    pub max_time_limit: Duration,
    /// `JOB_MAX_MESSAGE_BYTES`: largest message a worker runs; larger ones are
    /// dead-lettered with a FAILURE result (default 262144, 256 KiB).
    pub max_message_bytes: usize,
    /// `JOB_MAX_ETA_HELD`: ETA/countdown messages a worker holds in memory beyond its
    /// prefetch; past that they take prefetch slots and the rest wait in Redis (default 1000).
    pub max_eta_held: usize,
    /// `WORKER_SHUTDOWN_TIMEOUT_SECS`: how long a warm shutdown waits for running jobs
    /// before it gives their messages back to their queues and exits (default 100, below
    /// the compose files' 120 s `stop_grace_period`).
    pub worker_shutdown_timeout: Duration,
    /// `WORKER_HEALTH_FILE`: the file a running worker rewrites every 2 s while Redis answers
    /// it; `xenios-worker --check` reads it (default `/tmp/xenios-worker.health`).
    pub worker_health_file: std::path::PathBuf,
    /// `WORKER_HEALTH_MAX_AGE_SECS`: `xenios-worker --check` fails when the health file is
    /// older than this (default 30).
    pub worker_health_max_age: Duration,
    /// `WORKER_REDIS_GIVE_UP_SECS`: a worker without Redis for this long exits non-zero, for
    /// its supervisor to restart it (default: never gives up).
    pub worker_redis_give_up: Option<Duration>,
    /// `JOB_DIAGNOSTIC_TASKS`: register (and catalogue) `xenios.sleep` and `xenios.fail`
    /// (default true in development only).
    pub diagnostic_tasks: bool,
    /// `JOB_EXTRA_TASKS`: tasks of Python workers HTTP callers may enqueue, as
    /// comma-separated `name/queue/users|service/max_bytes` (see
    /// [`crate::jobs::catalog::parse_extra_tasks`]).
    pub extra_tasks: Vec<crate::jobs::catalog::TaskDecl>,
}

/// Default `JOB_ROUTES`.
pub const DEFAULT_JOB_ROUTES: &str = "xenios.llm.=llm,llm.=llm,xenios.extraction.=extraction,\
extraction.=extraction,xenios.transcription.=transcription,transcription.=transcription,\
xenios.analytics.=analytics,analytics.=analytics";

impl JobsConfig {
    /// Reads the section (`JOB_*`, `WORKER_*`).
    pub(super) fn read(r: &mut Reader<'_>, dev: bool) -> Self {
        let default_queue = r
            .get("JOB_DEFAULT_QUEUE")
            .unwrap_or_else(|| "default".to_owned());
        if let Err(e) = crate::jobs::check_queue_name(&default_queue) {
            r.problems.push(format!("JOB_DEFAULT_QUEUE: {e}"));
        }
        let raw_routes = r
            .get("JOB_ROUTES")
            .unwrap_or_else(|| DEFAULT_JOB_ROUTES.to_owned());
        let mut routes = Vec::new();
        for pair in raw_routes
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some((prefix, queue)) if !prefix.trim().is_empty() => {
                    match crate::jobs::check_queue_name(queue.trim()) {
                        Ok(()) => routes.push((prefix.trim().to_owned(), queue.trim().to_owned())),
                        Err(e) => r.problems.push(format!("JOB_ROUTES: `{pair}`: {e}")),
                    }
                }
                _ => r.problems.push(format!(
                    "JOB_ROUTES: `{pair}` is not `task-name-prefix=queue`"
                )),
            }
        }
        let diagnostic_tasks = r.bool("JOB_DIAGNOSTIC_TASKS", dev);
        let extra_tasks = match r.get("JOB_EXTRA_TASKS") {
            None => Vec::new(),
            Some(raw) => {
                // Every built-in name, whatever JOB_DIAGNOSTIC_TASKS says: a Python task may
                // not take the name of a Rust one.
                let names = crate::jobs::tasks::BUILTIN_NAMES;
                let (decls, problems) = crate::jobs::catalog::parse_extra_tasks(&raw, &names);
                r.problems.extend(problems);
                decls
            }
        };
        let soft = r.parse("JOB_SOFT_TIME_LIMIT_SECS", 300.0f64);
        let hard = r.parse("JOB_HARD_TIME_LIMIT_SECS", 600.0f64);
        for (name, v) in [
            ("JOB_SOFT_TIME_LIMIT_SECS", soft),
            ("JOB_HARD_TIME_LIMIT_SECS", hard),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 1e7) {
                r.problems
                    .push(format!("{name}: must be a positive number of seconds"));
            }
        }
        let secs = |v: f64| {
            Duration::from_secs_f64(if v.is_finite() && v > 0.0 && v < 1e7 {
                v
            } else {
                1.0
            })
        };
        JobsConfig {
            default_queue,
            routes,
            visibility_timeout: Duration::from_secs(
                r.parse("JOB_VISIBILITY_TIMEOUT_SECS", 3600u64).max(1),
            ),
            result_expires: Duration::from_secs(
                r.parse("JOB_RESULT_EXPIRES_SECS", 86_400u64).max(1),
            ),
            soft_time_limit: secs(soft),
            hard_time_limit: secs(hard),
            max_retries: r.parse("JOB_MAX_RETRIES", 3u32),
            task_events: r.bool("JOB_TASK_EVENTS", true),
            max_time_limit: Duration::from_secs(
                r.parse("JOB_MAX_TIME_LIMIT_SECS", 86_400u64)
                    .clamp(1, 365 * 24 * 3600),
            ),
            max_message_bytes: r.parse("JOB_MAX_MESSAGE_BYTES", 256 * 1024usize).max(1024),
            max_eta_held: r.parse("JOB_MAX_ETA_HELD", 1000usize),
            worker_shutdown_timeout: Duration::from_secs(
                r.parse("WORKER_SHUTDOWN_TIMEOUT_SECS", 100u64)
                    .min(24 * 3600),
            ),
            worker_health_file: r
                .get("WORKER_HEALTH_FILE")
                .unwrap_or_else(|| "/tmp/xenios-worker.health".to_owned())
                .into(),
            worker_health_max_age: Duration::from_secs(
                r.parse("WORKER_HEALTH_MAX_AGE_SECS", 30u64).max(1),
            ),
            worker_redis_give_up: r
                .get("WORKER_REDIS_GIVE_UP_SECS")
                .is_some()
                .then(|| Duration::from_secs(r.parse("WORKER_REDIS_GIVE_UP_SECS", 0u64).max(1))),
            diagnostic_tasks,
            extra_tasks,
        }
    }
}
