//! LLM orchestration against a local fake OpenRouter (real HTTP, real SSE with comment lines,
//! mid-stream error chunks, 429 with Retry-After, slow answers): every fallback rule, the
//! routing table, streaming order and cancellation, the audit rows, the OpenAI shape.
//!
//! The shared setup is here; the tests are in `complete` (one answer: fallback, routing,
//! audit rows), `stream` (SSE order, failures, timeouts, cancellation) and `clients` (the
//! OpenAI-compatible route, the OpenAI Python SDK and the CLI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod complete;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use xenios_tests::process::CommandExt as _;

use futures::StreamExt;
use serde_json::{Value, json};
use xenios_tests::cli::{run_cli, run_cli_stdin};
use xenios_tests::fake_openrouter::{FakeOpenRouter, Replies, State};
use xenios_tests::{API_KEY, TestApp, wait_for};

const OK_TOKENS: [&str; 3] = ["Hello", " world", "!"];

struct Setup {
    app: TestApp,
    state: Arc<State>,
    upstream: FakeOpenRouter,
    /// The variables `setup` added to the app's: fake upstream, retries, timeouts, extras.
    llm_vars: Vec<(String, String)>,
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    let upstream = FakeOpenRouter::start(Replies::hello_world()).await;
    let state = upstream.state();
    let base = upstream.base_url();
    let llm_vars: Vec<(String, String)> = [
        ("OPENROUTER_API_KEY", "sk-or-test-key"),
        ("OPENROUTER_BASE_URL", base.as_str()),
        ("LLM_MAX_RETRIES", "1"),
        ("LLM_RETRY_BASE_MS", "10"),
        ("LLM_RETRY_MAX_DELAY_MS", "2000"),
        ("LLM_TTFT_TIMEOUT_MS", "400"),
        ("LLM_TIMEOUT_MS", "1000"),
        // These tests name the fake upstream's behaviour models as the service; the default
        // allow-list is the routing table's models (`abuse_llm` covers it).
        ("LLM_ALLOWED_MODELS", "*"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let added = llm_vars.clone();
    let app = TestApp::spawn_with(move |vars| vars.extend(added)).await;
    Setup {
        app,
        state,
        upstream,
        llm_vars,
    }
}

async fn post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("x-api-key", API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn ask(task: &str, models: Option<&[&str]>) -> Value {
    let mut b =
        json!({"task": task, "messages": [{"role": "user", "content": "How did the session go?"}]});
    if let Some(m) = models {
        b["models"] = json!(m);
    }
    b
}

/// Reads SSE events (`event`, parsed `data`) until the body ends.
struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: String,
}

impl SseReader {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: resp.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(),
            buf: String::new(),
        }
    }

    /// The next event as (event name, data), skipping comments; None at the end.
    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            while let Some(pos) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..pos + 2).collect();
                let mut event = "message".to_owned();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_owned());
                    }
                }
                if !data.is_empty() {
                    return Some((event, data.join("\n")));
                }
            }
            match tokio::time::timeout(Duration::from_secs(20), self.body.next()).await {
                Ok(Some(Ok(bytes))) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(_) => return None,
                Err(_) => panic!("no SSE data within 20 s"),
            }
        }
    }
}

async fn logs(app: &TestApp, correlation_id: &str) -> Vec<xenios_core::db::models::InferenceLog> {
    app.backend.database().flush_audit().await;
    app.backend
        .database()
        .inference_logs_for(correlation_id)
        .await
        .unwrap()
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}
