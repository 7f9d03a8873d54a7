//! Job queue benchmark (run by `scripts/bench-jobs.sh`, which also runs Celery on the same
//! Redis): enqueue rate of one producer (batched; one call per job from 32 concurrent
//! callers; one awaited call at a time), drain rate of no-op tasks by one `xenios-worker`
//! process, enqueue-to-start latency (from task-started events), worker idle RSS.
//!
//! `cargo run --release -p xenios-worker --example bench -- [jobs]` with `REDIS_URL` set to
//! a Redis database the benchmark may flush.

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

fn spawn_worker(concurrency: &str) -> Child {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("xenios-worker");
    Command::new(bin)
        .args(["-Q", "bench", "-c", concurrency, "-n", "bench@%h"])
        .env("LOG_LEVEL", "error")
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
    let worker = spawn_worker("8");
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
            let Some(body) = xenios_core::jobs::protocol::envelope_body(&env) else {
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

    // Enqueue rate of one producer (batched API: pipelined LPUSHes).
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    let start = Instant::now();
    for chunk in 0..n.div_ceil(1000) {
        let batch = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|_| EnqueueRequest::new("xenios.noop").queue("bench"))
            .collect();
        backend.jobs().enqueue_many(&ctx, batch).await.unwrap();
    }
    let enqueue_secs = start.elapsed().as_secs_f64();
    // One at a time (a request handler's enqueue), for reference.
    let single_n = 5000.min(n);
    let start = Instant::now();
    for _ in 0..single_n {
        backend
            .jobs()
            .enqueue(&ctx, EnqueueRequest::new("xenios.noop").queue("bench"))
            .await
            .unwrap();
    }
    let single_secs = start.elapsed().as_secs_f64();
    // One call per job from many tasks of the one producer at once (a server's request
    // handlers): the calls share the producer connection and are pipelined together.
    let callers = 32usize;
    let concurrent_n = n.max(callers);
    let per_caller = concurrent_n / callers;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(callers);
    for _ in 0..callers {
        let (backend, ctx) = (backend.clone(), ctx.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..per_caller {
                backend
                    .jobs()
                    .enqueue(&ctx, EnqueueRequest::new("xenios.noop").queue("bench"))
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
    let total = n + single_n + concurrent_n;

    // Drain rate of one worker process (results stored, acks_late).
    let start = Instant::now();
    let worker = spawn_worker("8");
    wait_empty(&mut conn).await;
    let drain_secs = start.elapsed().as_secs_f64();
    let busy_rss = rss_kib(worker.id());
    stop(worker);
    let results: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();

    println!(
        "xenios enqueue (batched, 1 producer): {:.0} jobs/s ({n} jobs in {enqueue_secs:.3} s)",
        n as f64 / enqueue_secs
    );
    println!(
        "xenios enqueue (one call per job, {callers} callers): {:.0} jobs/s ({concurrent_n} jobs)",
        concurrent_n as f64 / concurrent_secs
    );
    println!(
        "xenios enqueue (one call per job, one caller, each awaited): {:.0} jobs/s ({single_n} jobs)",
        single_n as f64 / single_secs
    );
    println!(
        "xenios drain (1 worker process, -c 8, no-op, results stored): {:.0} jobs/s ({total} jobs in {drain_secs:.3} s; {results} keys after)",
        total as f64 / drain_secs
    );
    println!(
        "xenios enqueue-to-start latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({samples} samples)",
        p(0.50),
        p(0.99),
        lat[lat.len() - 1]
    );
    println!(
        "xenios worker RSS: idle {:.1} MB, after drain {:.1} MB",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0
    );
    backend.database().flush_audit().await;
}
