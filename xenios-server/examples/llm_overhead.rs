//! Latency the server adds to an LLM call (not a test: run `scripts/bench-llm.sh`).
//!
//! `scripts/bench-llm.sh` takes its `complete` figures from oha against an nginx mock, three
//! separate processes; it runs this example (with `BENCH_RATES=""`) only for the streaming
//! time to first token. Run alone, the example measures both itself, but its mock and its
//! load generator share one process, whose own wake-ups and scheduling inflate the direct
//! path at high rates (the added latency can come out negative).
//!
//! Loopback only. This process runs a fast mock OpenRouter and the load generator; the real
//! `xenios-server` binary (release build, API-key check on, audit rows written to Postgres)
//! runs as its own process, pointed at the mock, as in production. An open-loop generator
//! sends, at fixed rates, requests straight to the mock and through
//! `POST /api/v1/llm/complete`, interleaved in the same run. Each latency is measured from
//! the moment its request was *scheduled*, not from when it was sent, so that a late
//! generator or a stalled server counts against the figures (no coordinated omission);
//! failures (transport errors and non-2xx answers) are counted per path. Reported for each
//! rate: p50/p99 of each path, the difference (the added latency) and the ratio; then the same
//! for streaming, time to the first token straight vs through `POST /api/v1/llm/stream`.
//!
//! Environment: `DATABASE_URL`, `REDIS_URL` (for the server), `BENCH_RATES` (requests/s per
//! path, default `20 200 1000`), `BENCH_SECS` (per rate, default 10; at least 600 samples a
//! path are taken whatever the rate), `BENCH_STREAM_RATE` (default 200),
//! `XENIOS_SERVER_BIN` (default: `xenios-server` next to this example's directory),
//! `BENCH_LOG_LEVEL`/`BENCH_LOG_FORMAT` (the server's `LOG_LEVEL`/`LOG_FORMAT`, default
//! `info`/`json`, the production configuration: one access-log line per request),
//! `BENCH_RATE_LIMIT_PER_MINUTE` / `BENCH_RATE_LIMIT_BURST` (the per-caller limiter, default
//! off; set them high to measure the limiter without refusals), `BENCH_SERVER_WORKER_THREADS`
//! (the server's Tokio worker threads; default: one per core).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use poem::{Body, EndpointExt, Response, handler};
use tokio::sync::Mutex;

const KEY: &str = "bench-api-key-0123456789";

const COMPLETION: &str = r#"{"id":"gen-1","model":"bench/model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello world!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"cost":0.0001}}"#;

#[handler]
async fn mock_upstream(body: poem::web::Json<serde_json::Value>) -> Response {
    if body.0["stream"].as_bool().unwrap_or(false) {
        let chunks = vec![
            ": OPENROUTER PROCESSING\n\n".to_owned(),
            r#"data: {"model":"bench/model","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}"#.to_owned() + "\n\n",
            r#"data: {"model":"bench/model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}"#.to_owned() + "\n\n",
            "data: [DONE]\n\n".to_owned(),
        ];
        let s = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
        return Response::builder()
            .content_type("text/event-stream")
            .body(Body::from_bytes_stream(s));
    }
    Response::builder()
        .content_type("application/json")
        .body(COMPLETION)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

#[derive(Clone, Copy)]
enum Kind {
    Direct,
    Gateway,
    DirectStream,
    GatewayStream,
}

async fn one(client: &reqwest::Client, kind: Kind, mock: &str, server: &str) -> bool {
    let body = serde_json::json!({
        "task": "chat",
        "model": "bench/model",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": matches!(kind, Kind::DirectStream),
    });
    let req = match kind {
        Kind::Direct | Kind::DirectStream => client
            .post(format!("{mock}/chat/completions"))
            .bearer_auth("bench"),
        Kind::Gateway => client
            .post(format!("{server}/api/v1/llm/complete"))
            .header("x-api-key", KEY),
        Kind::GatewayStream => client
            .post(format!("{server}/api/v1/llm/stream"))
            .header("x-api-key", KEY),
    };
    let Ok(resp) = req.json(&body).send().await else {
        return false;
    };
    if !resp.status().is_success() {
        return false;
    }
    match kind {
        Kind::Direct | Kind::Gateway => resp.bytes().await.is_ok(),
        Kind::DirectStream | Kind::GatewayStream => {
            // Time to the first token: the first chunk that carries content.
            let mut body = resp.bytes_stream();
            let mut seen = String::new();
            while let Some(Ok(b)) = body.next().await {
                seen.push_str(&String::from_utf8_lossy(&b));
                if seen.contains("Hello") {
                    return true;
                }
            }
            false
        }
    }
}

/// Runs `kinds` interleaved at `rate` requests/s each for `secs`; latencies in µs per kind,
/// each from its request's scheduled time, and the failures per kind.
async fn run(
    client: &reqwest::Client,
    kinds: &[Kind],
    rate: u64,
    secs: u64,
    mock: &str,
    server: &str,
) -> (Vec<Vec<u64>>, Vec<u64>) {
    let results: Vec<Arc<Mutex<Vec<u64>>>> = kinds
        .iter()
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    let errors: Vec<Arc<std::sync::atomic::AtomicU64>> = kinds
        .iter()
        .map(|_| Arc::new(std::sync::atomic::AtomicU64::new(0)))
        .collect();
    let period = Duration::from_nanos(1_000_000_000 / rate / kinds.len() as u64);
    let total = rate * secs * kinds.len() as u64;
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total as usize);
    for i in 0..total {
        let at = start + period * i as u32;
        tokio::time::sleep_until(at).await;
        let k = (i % kinds.len() as u64) as usize;
        let (client, out, errors) = (client.clone(), results[k].clone(), errors[k].clone());
        let (kind, mock, server) = (kinds[k], mock.to_owned(), server.to_owned());
        let scheduled = at.into_std();
        handles.push(tokio::spawn(async move {
            if one(&client, kind, &mock, &server).await {
                let us = scheduled.elapsed().as_micros() as u64;
                out.lock().await.push(us);
            } else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
    let mut out = Vec::new();
    for r in results {
        let mut v = r.lock().await.clone();
        v.sort_unstable();
        out.push(v);
    }
    let errors = errors
        .iter()
        .map(|e| e.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    (out, errors)
}

fn report(title: &str, a: &[u64], b: &[u64], errors: &[u64]) {
    let (a50, a99, b50, b99) = (pct(a, 0.5), pct(a, 0.99), pct(b, 0.5), pct(b, 0.99));
    println!("{title}");
    println!(
        "  direct:  n={:<6} failed={:<4} p50 {a50:.3} ms  p99 {a99:.3} ms",
        a.len(),
        errors[0]
    );
    println!(
        "  gateway: n={:<6} failed={:<4} p50 {b50:.3} ms  p99 {b99:.3} ms",
        b.len(),
        errors[1]
    );
    println!(
        "  added:   p50 {:.3} ms  p99 {:.3} ms  (gateway/direct: p50 {:.2}x, p99 {:.2}x)",
        b50 - a50,
        b99 - a99,
        b50 / a50,
        b99 / a99
    );
}

#[tokio::main]
async fn main() {
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "20 200 1000".to_owned())
        .split_whitespace()
        .filter_map(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .collect();
    let secs = env_u64("BENCH_SECS", 10);
    let stream_rate = env_u64("BENCH_STREAM_RATE", 200);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_addr = listener.local_addr().unwrap();
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(async move {
        let app = poem::Route::new().at("/chat/completions", poem::post(mock_upstream));
        let _ = poem::Server::new_with_acceptor(acceptor)
            .run(app.map_to_response())
            .await;
    });
    let mock = format!("http://{mock_addr}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = format!("http://127.0.0.1:{port}");
    let bin = std::env::var_os("XENIOS_SERVER_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("xenios-server")
        });
    let mut child = std::process::Command::new(&bin)
        .env("ENVIRONMENT", "development")
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("OPENROUTER_API_KEY", "sk-or-bench")
        .env("OPENROUTER_BASE_URL", &mock)
        .env("XENIOS_BACKEND_API_KEY", KEY)
        .env("LLM_ROUTES", "chat=bench/model")
        .env(
            "LOG_LEVEL",
            std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned()),
        )
        .env(
            "LOG_FORMAT",
            std::env::var("BENCH_LOG_FORMAT").unwrap_or_else(|_| "json".to_owned()),
        )
        // The access log goes to a file, as a container's log driver would take it, not to
        // the terminal of the benchmark.
        .stderr(log_file())
        // One client sends every request: the per-caller limit would answer 429 to most, so
        // it is off unless BENCH_RATE_LIMIT_PER_MINUTE turns it on (high enough to refuse
        // nothing, e.g. 100000000) to measure what the limiter itself costs.
        .env(
            "RATE_LIMIT_PER_MINUTE",
            std::env::var("BENCH_RATE_LIMIT_PER_MINUTE").unwrap_or_else(|_| "0".to_owned()),
        )
        .env(
            "RATE_LIMIT_BURST",
            std::env::var("BENCH_RATE_LIMIT_BURST").unwrap_or_else(|_| "100000".to_owned()),
        )
        .env("RUN_MIGRATIONS", "true")
        .stdin(std::process::Stdio::null())
        // BENCH_SERVER_WORKER_THREADS: the server's Tokio worker threads (its
        // TOKIO_WORKER_THREADS), to compare runtime shapes; this process keeps its own.
        .envs(
            std::env::var("BENCH_SERVER_WORKER_THREADS")
                .ok()
                .map(|n| ("TOKIO_WORKER_THREADS", n)),
        )
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo build --release -p xenios-server)",
                bin.display()
            )
        });
    let server_pid = child.id();

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let ready = format!("{server}/health/ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(&ready).send().await {
            Ok(r) if r.status().is_success() => break,
            _ if Instant::now() > deadline => {
                let _ = child.kill();
                panic!("xenios-server not ready on {server} (is Postgres up?)");
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    println!("warming up...");
    let _ = run(
        &client,
        &[Kind::Direct, Kind::Gateway],
        rates.iter().copied().max().unwrap_or(200),
        2,
        &mock,
        &server,
    )
    .await;
    let before = audit_metrics(&client, &server).await;

    for &rate in &rates {
        // At least 600 samples a path, so that p99 rests on several of them.
        let secs = secs.max(600_u64.div_ceil(rate));
        let cpu_before = cpu_secs(server_pid);
        let (r, errors) = run(
            &client,
            &[Kind::Direct, Kind::Gateway],
            rate,
            secs,
            &mock,
            &server,
        )
        .await;
        report(
            &format!("complete: {rate} req/s per path, {secs} s, open loop"),
            &r[0],
            &r[1],
            &errors,
        );
        let cpu = cpu_secs(server_pid) - cpu_before;
        println!(
            "  server CPU (user+system) per proxied call: {:.0} µs",
            cpu * 1e6 / r[1].len().max(1) as f64
        );
    }
    let (r, errors) = run(
        &client,
        &[Kind::DirectStream, Kind::GatewayStream],
        stream_rate,
        secs.min(5),
        &mock,
        &server,
    )
    .await;
    report(
        &format!("stream, time to first token: {stream_rate} req/s per path"),
        &r[0],
        &r[1],
        &errors,
    );
    // The server's audit writer batches for 20 ms: give it a moment, then read its counters.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = audit_metrics(&client, &server).await;
    println!("server audit rows before: {before}");
    println!("server audit rows after:  {after}");
    println!(
        "server RSS after the run: {:.1} MB",
        rss_kib(server_pid) as f64 / 1024.0
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &server_pid.to_string()])
        .status();
    let _ = child.wait();
}

/// The audit writer's counters and the shared rate limiter's state from the server's
/// `/metrics` (which needs the API key).
async fn audit_metrics(client: &reqwest::Client, server: &str) -> String {
    let text = client
        .get(format!("{server}/metrics"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("xenios_audit_rows_") || l.starts_with("xenios_rate_limit_"))
        .map(|l| {
            l.trim_start_matches("xenios_audit_rows_")
                .replace("_total", "")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// User plus system CPU time of a process so far, in seconds (`/proc/<pid>/stat`).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may hold spaces: utime and stime are the 12th and
    // 13th of them, in clock ticks.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0);
    let per_sec = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    ticks / per_sec
}

/// Where the server's stdout (its access log) goes: `BENCH_SERVER_LOG`, default
/// `target/bench-llm-server.log`.
fn log_file() -> std::process::Stdio {
    let path = std::env::var("BENCH_SERVER_LOG")
        .unwrap_or_else(|_| "target/bench-llm-server.log".to_owned());
    std::fs::File::create(&path)
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null())
}

fn rss_kib(pid: u32) -> u64 {
    xenios_core::health::proc_status_kib(Some(pid), "VmRSS").unwrap_or(0)
}
