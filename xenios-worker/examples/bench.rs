//! Job queue benchmark (run by `scripts/bench-jobs.sh`, which runs Celery's side,
//! `tests/python/bench_celery.py`, on the same Redis with the same number of jobs and the same
//! rules): enqueue rate of one producer, one awaited call per job (the compared figure; the
//! batched API and 32 concurrent callers shown apart); drain rate of no-op jobs by one
//! `xenios-worker` process started and warmed up before the clock, the clock stopped when all
//! N results are stored; Redis commands and Postgres row writes per drained job;
//! enqueue-to-start latency (from task-started events); worker RSS.
//!
//! `cargo run --release -p xenios-worker --example bench -- [jobs]` with `REDIS_URL` set to
//! a Redis database the benchmark may flush. Prints `RESULT key=value` lines for the script.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use xenios_core::jobs::EnqueueRequest;
use xenios_core::redis::redis;
use xenios_core::{AiBackend, Config, RequestContext};

async fn len(conn: &mut redis::aio::MultiplexedConnection, queue: &str) -> (u64, u64) {
    let (q, u): (u64, u64) = redis::pipe()
        .cmd("LLEN")
        .arg(queue)
        .cmd("HLEN")
        .arg("unacked")
        .query_async(conn)
        .await
        .unwrap();
    (q, u)
}

fn rss_kib(pid: u32) -> u64 {
    xenios_core::health::proc_status_kib(Some(pid), "VmRSS").unwrap_or(0)
}

/// Whether the drain runs with task events (`BENCH_TASK_EVENTS=1`): both sides the same,
/// off by default as in `celery worker` without `-E`. The latency phase always has them (it
/// reads the `task-started` events).
fn drain_events() -> bool {
    matches!(
        std::env::var("BENCH_TASK_EVENTS").as_deref(),
        Ok("1" | "true")
    )
}

fn spawn_worker(concurrency: &str, events: bool, extra: &[&str]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("xenios-worker");
    Command::new(bin)
        .args([
            "-Q",
            "bench",
            "-c",
            concurrency,
            "-n",
            "bench@%h",
            "--allow-unhandled-queues",
        ])
        .args(extra)
        .env("LOG_LEVEL", "error")
        .env("JOB_TASK_EVENTS", if events { "true" } else { "false" })
        .stdin(Stdio::null())
        .spawn()
        .expect("xenios-worker binary (cargo build --release -p xenios-worker)")
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

async fn wait_empty(conn: &mut redis::aio::MultiplexedConnection) {
    loop {
        if len(conn, "bench").await == (0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Calls and microseconds per Redis command since the server started (INFO commandstats).
/// A script's time includes the commands it calls, which are also counted on their own.
async fn commandstats(conn: &mut redis::aio::MultiplexedConnection) -> CommandStats {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| -> Option<u64> {
                rest.split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            Some((name.to_owned(), (field("calls")?, field("usec")?)))
        })
        .collect()
}

/// The benchmark's own commands, left out of the per-job counts (as in bench_celery.py). It
/// polls results with STRLEN, which no worker uses, so the worker's own EXISTS are counted.
const OWN_COMMANDS: &[&str] = &[
    "strlen", "info", "rename", "flushdb", "llen", "hlen", "dbsize",
];

/// Fewest and most results checked at once when the oldest missing one is stored (see
/// `wait_results`).
const POLL_WINDOW: (usize, usize) = (16, 256);

/// CPU time (user + system) a process has used, in µs, from `/proc/<pid>/stat`.
fn cpu_us(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces) start at its closing paren.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks * 10_000
}

/// CPU time of every process named `comm` (all of Postgres' backends, say), in µs.
fn cpu_us_named(comm: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .map(cpu_us)
        .sum()
}

/// CPU time of the processes that do a drain's work: worker, Redis, Postgres, this benchmark.
#[derive(Clone, Copy)]
struct Cpu {
    worker: u64,
    redis: u64,
    postgres: u64,
    bench: u64,
}

impl Cpu {
    fn read(worker: u32, redis: u32) -> Self {
        Self {
            worker: cpu_us(worker),
            redis: cpu_us(redis),
            postgres: cpu_us_named("postgres"),
            bench: cpu_us(std::process::id()),
        }
    }
}

async fn redis_pid(conn: &mut redis::aio::MultiplexedConnection) -> u32 {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:")?.trim().parse().ok())
        .unwrap_or(0)
}

fn commands_per_job(
    before: &CommandStats,
    after: &CommandStats,
    n: usize,
) -> (f64, String, String) {
    let mut calls: Vec<(String, u64, u64)> = after
        .iter()
        .filter(|(k, _)| !OWN_COMMANDS.contains(&k.as_str()))
        .map(|(k, (c, us))| {
            let (c0, us0) = before.get(k).copied().unwrap_or((0, 0));
            (k.clone(), c.saturating_sub(c0), us.saturating_sub(us0))
        })
        .filter(|(_, c, _)| *c > 0)
        .collect();
    calls.sort_by_key(|c| std::cmp::Reverse(c.1));
    let total: u64 = calls.iter().map(|(_, c, _)| c).sum();
    let per = |v: u64| v as f64 / n as f64;
    let top = calls
        .iter()
        .take(6)
        .map(|(k, c, _)| format!("{k} {:.2}", per(*c)))
        .collect::<Vec<_>>()
        .join(", ");
    calls.sort_by_key(|c| std::cmp::Reverse(c.2));
    let time = calls
        .iter()
        .take(8)
        .map(|(k, _, us)| format!("{k} {:.1}", per(*us)))
        .collect::<Vec<_>>()
        .join(", ");
    (per(total), top, time)
}

/// Waits until every `celery-task-meta-<id>` exists. While the oldest missing one does not,
/// only it is checked (every 2 ms); once it does, the next ones are checked in one pipeline.
/// That window is twice what the last one found (within [`POLL_WINDOW`]): workers finish
/// roughly in order, so a window follows the drain's pace, and polling costs about three
/// commands per job, not one per id in a fixed window of 256 every 2 ms (nine per job at
/// 11,000 jobs/s), which took CPU from the workers on a 2-core machine. bench_celery.py
/// polls the same way.
async fn wait_results(
    conn: &mut redis::aio::MultiplexedConnection,
    missing: Vec<String>,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    let key = |id: &str| format!("celery-task-meta-{id}");
    let mut window = POLL_WINDOW.0;
    // A deque: each poll takes its window off the front and puts back what is still
    // missing, without moving the other ids (a Vec rebuilt per poll copied all N of them,
    // which at 60,000 jobs cost the benchmark more CPU than the polling itself).
    let mut missing = std::collections::VecDeque::from(missing);
    while let Some(oldest) = missing.front() {
        assert!(
            Instant::now() < deadline,
            "{} results missing at the deadline",
            missing.len()
        );
        let size: u64 = redis::cmd("STRLEN")
            .arg(key(oldest))
            .query_async(conn)
            .await
            .unwrap();
        if size == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let polled: Vec<String> = missing.drain(..missing.len().min(window)).collect();
        let mut pipe = redis::pipe();
        for id in &polled {
            pipe.cmd("STRLEN").arg(key(id));
        }
        let sizes: Vec<u64> = pipe.query_async(conn).await.unwrap();
        let found = sizes.iter().filter(|&&s| s > 0).count();
        window = (2 * found).clamp(POLL_WINDOW.0, POLL_WINDOW.1);
        for (id, size) in polled.into_iter().zip(sizes).rev() {
            if size == 0 {
                missing.push_front(id);
            }
        }
    }
}

/// Inserts + updates of the `ai_backend` tables so far, as Postgres' statistics tell once
/// every writer has flushed them: a backend idle for 10 s (PGSTAT_IDLE_INTERVAL) or gone has,
/// hence the wait. `None` without psql or DATABASE_URL.
async fn pg_row_writes() -> Option<u64> {
    tokio::time::sleep(Duration::from_secs(11)).await;
    let url = std::env::var("DATABASE_URL").ok()?;
    let out = Command::new("psql")
        .args([url.as_str(), "-Atc"])
        .arg("SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables WHERE schemaname = 'ai_backend'")
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// What one drain measured: its time, and the counters read just before and after it.
struct Drained {
    secs: f64,
    cpu: (Cpu, Cpu),
    stats: (CommandStats, CommandStats),
    busy_rss: u64,
    /// Postgres row writes before the clock, when asked for (see [`pg_row_writes`]).
    rows_before: Option<u64>,
}

type CommandStats = std::collections::HashMap<String, (u64, u64)>;

/// Drains `n` no-op jobs by the same rules as Celery's side: the worker (with `extra`
/// arguments) is started and has finished a warm-up job before the clock; the N jobs wait
/// in a staging list RENAMEd onto the worker's queue when the clock starts (the last job is
/// enqueued normally, which also wakes a blocked pop); the clock stops when all N results
/// are stored. With `count_rows`, Postgres' row count is read before the clock (an 11 s
/// wait, outside the timed part).
async fn drain(
    backend: &AiBackend,
    ctx: &RequestContext,
    conn: &mut redis::aio::MultiplexedConnection,
    n: usize,
    extra: &[&str],
    count_rows: bool,
) -> Drained {
    let _: () = redis::cmd("FLUSHDB").query_async(conn).await.unwrap();
    let worker = spawn_worker("8", drain_events(), extra);
    let warm = backend
        .jobs()
        .enqueue(ctx, EnqueueRequest::new("xenios.noop").queue("bench"))
        .await
        .unwrap();
    wait_results(
        conn,
        vec![warm.id.as_str().to_owned()],
        Duration::from_secs(120),
    )
    .await;
    let mut ids = Vec::with_capacity(n);
    for chunk in 0..(n - 1).div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(n - 1))
            .map(|_| EnqueueRequest::new("xenios.noop").queue("bench-staging"))
            .collect();
        let batch_ids = backend.jobs().enqueue_many(ctx, batch).await.unwrap();
        ids.extend(batch_ids.iter().map(|id| id.as_str().to_owned()));
    }
    backend.database().flush_audit().await;
    let rows_before = if count_rows {
        pg_row_writes().await
    } else {
        None
    };
    let stats_before = commandstats(conn).await;
    let redis_pid = redis_pid(conn).await;
    let cpu_before = Cpu::read(worker.id(), redis_pid);
    let start = Instant::now();
    let _: () = redis::cmd("RENAME")
        .arg("bench-staging")
        .arg("bench")
        .query_async(conn)
        .await
        .unwrap();
    let last = backend
        .jobs()
        .enqueue(ctx, EnqueueRequest::new("xenios.noop").queue("bench"))
        .await
        .unwrap();
    ids.push(last.id.as_str().to_owned());
    wait_results(conn, ids, Duration::from_secs(600)).await;
    let secs = start.elapsed().as_secs_f64();
    let cpu_after = Cpu::read(worker.id(), redis_pid);
    let stats_after = commandstats(conn).await;
    let busy_rss = rss_kib(worker.id());
    stop(worker);
    Drained {
        secs,
        cpu: (cpu_before, cpu_after),
        stats: (stats_before, stats_after),
        busy_rss,
        rows_before,
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    let config = Config::from_env().expect("config");
    let url = secrecy::ExposeSecret::expose_secret(&config.redis.url).to_owned();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    let backend = AiBackend::builder(config).build().await.unwrap();
    let ctx = RequestContext::system();

    // Idle RSS of a worker process.
    let worker = spawn_worker("8", true, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle_rss = rss_kib(worker.id());

    // Enqueue-to-start latency, one job at a time, against the idle worker.
    let ev_channel = format!(
        "/{}.celeryev/*",
        client.get_connection_info().redis_settings().db()
    );
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.psubscribe(&ev_channel).await.unwrap();
    let mut events = pubsub.into_on_message();
    let samples = 500usize;
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let sent = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        let id = backend
            .jobs()
            .enqueue(&ctx, EnqueueRequest::new("xenios.noop").queue("bench"))
            .await
            .unwrap()
            .id;
        'wait: loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .expect("task-started event")
                .unwrap();
            let env: serde_json::Value = serde_json::from_slice(msg.get_payload_bytes()).unwrap();
            let Some(body) = event_body(&env) else {
                continue;
            };
            let list = match body {
                serde_json::Value::Array(a) => a,
                other => vec![other],
            };
            for ev in list {
                if ev["type"] == "task-started" && ev["uuid"] == id.as_str() {
                    lat.push((ev["timestamp"].as_f64().unwrap() - sent) * 1000.0);
                    break 'wait;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(events);
    wait_empty(&mut conn).await;
    stop(worker);
    lat.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];

    // Enqueue, into a list no worker reads (deleted afterwards). One call per job, each
    // awaited, as Celery's `send_task` loop in bench_celery.py: the compared figure.
    let enq_queue = "bench-enqueue";
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    let start = Instant::now();
    for _ in 0..n {
        backend
            .jobs()
            .enqueue(&ctx, EnqueueRequest::new("xenios.noop").queue(enq_queue))
            .await
            .unwrap();
    }
    let single_secs = start.elapsed().as_secs_f64();
    // Shown apart, not compared: the batched API (pipelined LPUSHes) and one call per job
    // from 32 concurrent callers (a server's request handlers sharing the producer).
    let start = Instant::now();
    for chunk in 0..n.div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|_| EnqueueRequest::new("xenios.noop").queue(enq_queue))
            .collect();
        backend.jobs().enqueue_many(&ctx, batch).await.unwrap();
    }
    let batched_secs = start.elapsed().as_secs_f64();
    let callers = 32usize;
    let per_caller = n.div_ceil(callers);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (backend, ctx) = (backend.clone(), ctx.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..per_caller {
                backend
                    .jobs()
                    .enqueue(&ctx, EnqueueRequest::new("xenios.noop").queue(enq_queue))
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let concurrent_secs = start.elapsed().as_secs_f64();
    let concurrent_n = per_caller * callers;

    // Drain, the compared figure: Celery's default prefetch multiplier (4) on both sides.
    let d = drain(&backend, &ctx, &mut conn, n, &[], true).await;
    let (cpu_before, cpu_after) = &d.cpu;
    backend.database().flush_audit().await;
    let rows_after = pg_row_writes().await;
    let (per_job, top, redis_time) = commands_per_job(&d.stats.0, &d.stats.1, n);
    let drain_rate = n as f64 / d.secs;

    println!(
        "xenios enqueue (one call per job, 1 producer, each awaited): {:.0} jobs/s ({n} jobs)",
        n as f64 / single_secs
    );
    println!("RESULT xenios_enqueue={:.1}", n as f64 / single_secs);
    println!(
        "xenios enqueue, shown apart: batched {:.0} jobs/s ({n} jobs); one call per job from {callers} callers {:.0} jobs/s ({concurrent_n} jobs)",
        n as f64 / batched_secs,
        concurrent_n as f64 / concurrent_secs
    );
    println!(
        "xenios drain (1 worker process, -c 8, no-op, results stored, job rows written): {drain_rate:.0} jobs/s ({n} jobs in {:.3} s)",
        d.secs
    );
    println!("RESULT xenios_drain={drain_rate:.1}");
    println!("xenios drain: {per_job:.1} Redis commands/job ({top})");
    println!(
        "xenios drain: Redis µs/job by command, as Redis times them (a script's time includes the commands it calls): {redis_time}"
    );
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64;
    println!(
        "xenios drain: CPU µs/job: worker {:.1}, redis {:.1}, postgres {:.1}, benchmark (enqueue of the last job, polling) {:.1}",
        per(cpu_after.worker, cpu_before.worker),
        per(cpu_after.redis, cpu_before.redis),
        per(cpu_after.postgres, cpu_before.postgres),
        per(cpu_after.bench, cpu_before.bench),
    );
    match (d.rows_before, rows_after) {
        (Some(b), Some(a)) => println!(
            "xenios drain: {:.2} Postgres row writes/job (inserts + updates of ai_backend tables)",
            a.saturating_sub(b) as f64 / n as f64
        ),
        _ => println!("xenios drain: Postgres row writes not measured (psql unavailable)"),
    }
    // Shown apart, not compared: the same drain with a larger prefetch window. Each take
    // is bounded by the free prefetch slots (32 at -c 8 and Celery's default multiplier of
    // 4), and per-take costs dominate at that size; bench_celery.py shows Celery's side.
    let apart = drain(
        &backend,
        &ctx,
        &mut conn,
        n,
        &["--prefetch-multiplier", "16"],
        false,
    )
    .await;
    let apart_rate = n as f64 / apart.secs;
    let (a_before, a_after) = &apart.cpu;
    println!(
        "xenios drain, shown apart, at --prefetch-multiplier 16: {apart_rate:.0} jobs/s ({n} jobs); CPU µs/job: worker {:.1}, redis {:.1}",
        per(a_after.worker, a_before.worker),
        per(a_after.redis, a_before.redis),
    );
    println!("RESULT xenios_drain_prefetch16={apart_rate:.1}");
    println!(
        "xenios enqueue-to-start latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({samples} samples)",
        p(0.50),
        p(0.99),
        lat[lat.len() - 1]
    );
    println!(
        "xenios worker RSS: idle {:.1} MB, during the drain {:.1} MB",
        idle_rss as f64 / 1024.0,
        d.busy_rss as f64 / 1024.0
    );
    backend.database().flush_audit().await;
}

/// The body of a kombu event envelope (base64 JSON, as Celery and our worker publish it).
fn event_body(envelope: &serde_json::Value) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let b64 = envelope.get("body")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
