//! LLM orchestration against a local fake OpenRouter (real HTTP, real SSE with comment lines,
//! mid-stream error chunks, 429 with Retry-After, slow answers): every fallback rule, the
//! routing table, streaming order and cancellation, the audit rows, the OpenAI shape.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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

#[tokio::test]
async fn complete_answers_from_the_primary_sends_the_correlation_id_and_logs_a_row() {
    let s = setup(&[]).await;
    let resp = s
        .app
        .client
        .post(s.app.url("/api/v1/llm/complete"))
        .header("x-api-key", API_KEY)
        .header("x-request-id", "req-llm-complete-1")
        .json(&ask("chat", None))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["content"], "Hello world!");
    assert_eq!(body["model_used"], "anthropic/claude-opus-4.5");
    assert_eq!(body["model_requested"], "anthropic/claude-opus-4.5");
    assert_eq!(body["fallback_used"], false);
    assert_eq!(body["usage"]["total_tokens"], 10);
    assert_eq!(body["cost_usd"], 0.00042);
    assert!(body["latency_ms"].is_u64());

    let reqs = s.state.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 1);
    let sent = &reqs[0].body;
    assert_eq!(reqs[0].request_id.as_deref(), Some("req-llm-complete-1"));
    assert_eq!(
        reqs[0].authorization.as_deref(),
        Some("Bearer sk-or-test-key")
    );
    // Sent as written (0.7), not widened from f32 (0.699999988...).
    assert_eq!(sent["temperature"], json!(0.7));
    assert_eq!(sent["max_tokens"], 1500);

    let rows = logs(&s.app, "req-llm-complete-1").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.task_type, "chat");
    assert_eq!(row.status, "success");
    assert_eq!(row.model_used.as_deref(), Some("anthropic/claude-opus-4.5"));
    assert!(!row.fallback_used);
    assert!(!row.streaming);
    assert_eq!(row.total_tokens, Some(10));
    assert_eq!(row.cost_usd, Some(0.00042));
    // AUDIT_STORE_PAYLOADS is off by default: no prompt in the row.
    assert!(row.request_payload.is_none() && row.response_payload.is_none());
}

#[tokio::test]
async fn every_retryable_failure_falls_back_to_the_next_model() {
    let s = setup(&[]).await;
    // (primary, attempts expected on it: retryable ones are retried once first, but a
    // timeout moves on at once)
    let cases = [
        ("p/fail-408", 2),
        ("p/always-429", 2),
        ("p/fail-500", 2),
        ("p/fail-502", 2),
        ("p/fail-503", 2),
        ("p/slow", 1),
        ("p/long-429", 1),
    ];
    for (i, (primary, attempts)) in cases.into_iter().enumerate() {
        let fallback = format!("ok/fallback-{i}");
        let resp = post(
            &s.app,
            "/api/v1/llm/complete",
            ask("intent_classification", Some(&[primary, &fallback])),
        )
        .await;
        let rid = request_id(&resp);
        assert_eq!(resp.status(), 200, "{primary}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["model_used"], fallback.as_str(), "{primary}");
        assert_eq!(body["model_requested"], primary, "{primary}");
        assert_eq!(body["fallback_used"], true, "{primary}");
        assert_eq!(s.state.count(primary), attempts, "{primary}");
        let rows = logs(&s.app, &rid).await;
        assert_eq!(rows.len(), 1);
        assert!(rows[0].fallback_used);
        assert_eq!(rows[0].model_requested, primary);
        assert!(
            rows[0].error.as_deref().unwrap_or("").contains(primary),
            "the primary's failure is kept: {:?}",
            rows[0].error
        );
    }
}

#[tokio::test]
async fn client_errors_stop_without_fallback() {
    let s = setup(&[]).await;
    for status in [400, 401, 402, 403] {
        let primary = format!("p/fail-{status}");
        let fallback = format!("ok/never-{status}");
        let resp = post(
            &s.app,
            "/api/v1/llm/complete",
            ask("chat", Some(&[&primary, &fallback])),
        )
        .await;
        let rid = request_id(&resp);
        assert_eq!(resp.status(), 502, "{status}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "upstream_refused", "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&primary) && msg.contains(&format!("HTTP {status}")),
            "{msg}"
        );
        assert_eq!(s.state.count(&primary), 1, "not retried");
        assert_eq!(s.state.count(&fallback), 0, "no fallback");
        let rows = logs(&s.app, &rid).await;
        assert_eq!(rows[0].status, "error");
        assert!(rows[0].model_used.is_none());
    }
}

#[tokio::test]
async fn when_all_models_fail_the_error_lists_each_in_order() {
    let s = setup(&[]).await;
    let resp = post(
        &s.app,
        "/api/v1/llm/complete",
        ask("chat", Some(&["a/fail-503", "b/fail-500", "c/fail-502"])),
    )
    .await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "all_models_failed");
    let msg = body["error"]["message"].as_str().unwrap();
    let a = msg.find("1) a/fail-503: HTTP 503").expect(msg);
    let b = msg.find("2) b/fail-500: HTTP 500").expect(msg);
    let c = msg.find("3) c/fail-502: HTTP 502").expect(msg);
    assert!(a < b && b < c, "{msg}");
    assert!(msg.contains("(2 attempts)"), "{msg}");

    // Every model timing out is a 504.
    let resp = post(
        &s.app,
        "/api/v1/llm/complete",
        ask("chat", Some(&["a/slow", "b/slow"])),
    )
    .await;
    assert_eq!(resp.status(), 504);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn retry_after_is_honoured_on_the_same_model() {
    let s = setup(&[]).await;
    let started = Instant::now();
    let resp = post(
        &s.app,
        "/api/v1/llm/complete",
        ask("chat", Some(&["p/flaky-429", "ok/unused"])),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model_used"], "p/flaky-429");
    assert_eq!(body["fallback_used"], false);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}, Retry-After was 1 s",
        started.elapsed()
    );
    assert_eq!(s.state.count("p/flaky-429"), 2);
    assert_eq!(s.state.count("ok/unused"), 0);
}

#[tokio::test]
async fn connect_errors_fall_back_and_are_listed() {
    // A port nobody listens on.
    let closed = xenios_tests::free_port();
    let app = TestApp::spawn_with(move |vars| {
        vars.insert("OPENROUTER_API_KEY".into(), "sk-or-test-key".into());
        vars.insert(
            "OPENROUTER_BASE_URL".into(),
            format!("http://127.0.0.1:{closed}/api/v1"),
        );
        vars.insert("LLM_MAX_RETRIES".into(), "1".into());
        vars.insert("LLM_RETRY_BASE_MS".into(), "10".into());
    })
    .await;
    let resp = post(&app, "/api/v1/llm/complete", ask("entity_extraction", None)).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("1) anthropic/claude-sonnet-4: connect error")
            && msg.contains("2) openai/gpt-4o-mini: connect error"),
        "{msg}"
    );
    assert!(!msg.contains("sk-or-test-key"));
}

/// The product spec's routing table, literally: task, primary, fallback, temperature,
/// max_tokens.
const SPEC_TABLE: [(&str, &str, &str, f64, u64); 5] = [
    (
        "session_summary",
        "anthropic/claude-opus-4.5",
        "anthropic/claude-sonnet-4",
        0.3,
        4000,
    ),
    (
        "insight_generation",
        "anthropic/claude-opus-4.5",
        "anthropic/claude-sonnet-4",
        0.5,
        2000,
    ),
    (
        "chat",
        "anthropic/claude-opus-4.5",
        "anthropic/claude-sonnet-4",
        0.7,
        1500,
    ),
    (
        "intent_classification",
        "anthropic/claude-sonnet-4",
        "openai/gpt-4o-mini",
        0.0,
        100,
    ),
    (
        "entity_extraction",
        "anthropic/claude-sonnet-4",
        "openai/gpt-4o-mini",
        0.0,
        500,
    ),
];

#[tokio::test]
async fn routing_table_is_the_spec_table_on_the_wire_for_primary_and_fallback() {
    let s = setup(&[]).await;
    for (task, primary, fallback, temperature, max_tokens) in SPEC_TABLE {
        // The primary answers: the upstream receives exactly the spec's values.
        s.state.down.lock().unwrap().clear();
        let resp = post(&s.app, "/api/v1/llm/complete", ask(task, None)).await;
        assert_eq!(resp.status(), 200, "{task}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["model_used"], primary, "{task}");
        let last = s.state.last().unwrap().body;
        assert_eq!(last["model"], primary, "{task}");
        assert_eq!(last["max_tokens"], json!(max_tokens), "{task}");
        // Sent as the spec writes it (0.3), not widened from f32.
        assert_eq!(last["temperature"], json!(temperature), "{task}");

        // The primary is down: the fallback receives the same temperature and max_tokens.
        s.state.down.lock().unwrap().insert(primary.to_owned());
        let resp = post(&s.app, "/api/v1/llm/complete", ask(task, None)).await;
        let rid = request_id(&resp);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["model_used"], fallback, "{task}");
        assert_eq!(body["fallback_used"], true, "{task}");
        let last = s.state.last().unwrap().body;
        assert_eq!(last["model"], fallback, "{task}");
        assert_eq!(last["max_tokens"], json!(max_tokens), "{task}");
        assert_eq!(last["temperature"], json!(temperature), "{task}");
        let rows = logs(&s.app, &rid).await;
        assert_eq!(rows[0].task_type, task);
    }

    // chat streamed: the same route on the wire, with `stream: true`.
    s.state.down.lock().unwrap().clear();
    let resp = post(&s.app, "/api/v1/llm/stream", ask("chat", None)).await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    while sse.next().await.is_some() {}
    let last = s.state.last().unwrap().body;
    assert_eq!(last["model"], "anthropic/claude-opus-4.5");
    assert_eq!(last["stream"], true);
    assert_eq!(last["max_tokens"], 1500);
    assert_eq!(last["temperature"], json!(0.7));
}

#[tokio::test]
async fn routes_are_overridable_from_the_environment() {
    let s = setup(&[("LLM_ROUTES", "chat=x/custom-1,x/custom-2")]).await;
    let resp = post(&s.app, "/api/v1/llm/complete", ask("chat", None)).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model_used"], "x/custom-1");
    assert_eq!(s.state.models_seen(), ["x/custom-1"]);

    let mut vars = HashMap::new();
    vars.insert(
        "LLM_ROUTES".to_owned(),
        "chat=a/x,a/x;summaries=a/y;entity_extraction=".to_owned(),
    );
    let err = xenios_core::Config::from_map(&vars)
        .unwrap_err()
        .to_string();
    assert!(err.contains("listed twice"), "{err}");
    assert!(err.contains("unknown task `summaries`"), "{err}");
    assert!(
        err.contains("task `entity_extraction`: the list of models is empty"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_is_422() {
    let s = setup(&[]).await;
    for body in [
        json!({"task": "poetry", "messages": [{"role": "user", "content": "x"}]}),
        json!({"task": "chat", "messages": []}),
        json!({"task": "chat", "messages": [{"role": "wizard", "content": "x"}]}),
        json!({"task": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 9.0}),
        json!({"task": "chat", "messages": [{"role": "user", "content": "x"}], "models": ["a b"]}),
        json!({"task": "chat", "messages": [{"role": "user", "content": "x"}], "models": ["a/b", "a/b"]}),
    ] {
        for path in ["/api/v1/llm/complete", "/api/v1/llm/stream"] {
            let resp = post(&s.app, path, body.clone()).await;
            assert_eq!(resp.status(), 422, "{path} {body}");
            let b: Value = resp.json().await.unwrap();
            assert_eq!(b["error"]["code"], "validation_error");
        }
    }
    assert!(s.state.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn stream_forwards_deltas_in_order_then_done_and_ignores_comments() {
    let s = setup(&[]).await;
    let resp = post(&s.app, "/api/v1/llm/stream", ask("chat", None)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let rid = request_id(&resp);
    let mut sse = SseReader::new(resp);
    let mut deltas = Vec::new();
    let done = loop {
        let (event, data) = sse.next().await.expect("stream ended without done");
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["type"], event.as_str());
        match event.as_str() {
            "delta" => {
                // Only what a delta carries: no null fields of the other event types.
                let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
                assert_eq!(keys, ["content", "type"], "{data}");
                deltas.push(v["content"].as_str().unwrap().to_owned());
            }
            "done" => break v,
            other => panic!("unexpected {other}: {data}"),
        }
    };
    assert_eq!(deltas, OK_TOKENS);
    assert_eq!(done["model_used"], "anthropic/claude-opus-4.5");
    assert_eq!(done["fallback_used"], false);
    assert_eq!(done["usage"]["total_tokens"], 10);
    assert_eq!(done["usage"]["cost_usd"], 0.00042);
    assert!(sse.next().await.is_none());
    let sent = s.state.requests.lock().unwrap()[0].body.clone();
    assert_eq!(sent["stream"], true);
    let rows = logs(&s.app, &rid).await;
    assert_eq!(rows[0].status, "success");
    assert!(rows[0].streaming);
    assert!(rows[0].ttft_ms.is_some());
    assert_eq!(rows[0].total_tokens, Some(10));
}

#[tokio::test]
async fn stream_tokens_arrive_before_the_upstream_finishes() {
    let s = setup(&[]).await;
    let resp = post(&s.app, "/api/v1/llm/stream", ask("chat", Some(&["d/drip"]))).await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let (event, _) = sse.next().await.unwrap();
    assert_eq!(event, "delta");
    let sent = s.state.dripped.load(Ordering::SeqCst);
    assert!(
        sent < 100,
        "first token forwarded only after {sent} upstream chunks"
    );
}

#[tokio::test]
async fn stream_failure_before_the_first_token_falls_back() {
    let s = setup(&[]).await;
    let resp = post(
        &s.app,
        "/api/v1/llm/stream",
        ask("chat", Some(&["p/midstream-before", "ok/second"])),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let mut text = String::new();
    let done = loop {
        let (event, data) = sse.next().await.unwrap();
        let v: Value = serde_json::from_str(&data).unwrap();
        match event.as_str() {
            "delta" => text.push_str(v["content"].as_str().unwrap()),
            "done" => break v,
            other => panic!("unexpected {other}: {data}"),
        }
    };
    assert_eq!(text, "Hello world!");
    assert_eq!(done["model_used"], "ok/second");
    assert_eq!(done["fallback_used"], true);
    // A broken stream moves to the next model at once (no retry of the same one).
    assert_eq!(s.state.count("p/midstream-before"), 1);

    // Before any token, total failure is an HTTP error, not a 200 stream.
    let resp = post(
        &s.app,
        "/api/v1/llm/stream",
        ask("chat", Some(&["p/midstream-before", "q/fail-503"])),
    )
    .await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    let msg = body["error"]["message"].as_str().unwrap();
    // Each model and how it failed, never the provider's own text.
    assert!(
        msg.contains("p/midstream-before: stream failed") && msg.contains("q/fail-503: HTTP 503"),
        "{msg}"
    );
    assert!(!msg.contains("provider disconnected"), "{msg}");
}

#[tokio::test]
async fn stream_failure_after_a_token_ends_with_an_error_event() {
    let s = setup(&[]).await;
    let resp = post(
        &s.app,
        "/api/v1/llm/stream",
        ask("chat", Some(&["p/midstream-after", "ok/not-used"])),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    let mut sse = SseReader::new(resp);
    let (e1, d1) = sse.next().await.unwrap();
    assert_eq!(e1, "delta");
    assert_eq!(
        serde_json::from_str::<Value>(&d1).unwrap()["content"],
        "partial"
    );
    let (e2, d2) = sse.next().await.unwrap();
    assert_eq!(e2, "error", "{d2}");
    let v: Value = serde_json::from_str(&d2).unwrap();
    assert_eq!(v["code"], "upstream_stream_failed");
    let message = v["message"].as_str().unwrap();
    assert_eq!(message, "p/midstream-after: stream failed", "{v}");
    assert!(sse.next().await.is_none());
    assert_eq!(
        s.state.count("ok/not-used"),
        0,
        "never restarted after a token"
    );
    let rows = logs(&s.app, &rid).await;
    assert_eq!(rows[0].status, "error");
    assert_eq!(rows[0].model_used.as_deref(), Some("p/midstream-after"));
}

#[tokio::test]
async fn a_stream_past_the_total_timeout_ends_with_a_timeout_event() {
    // The first token comes after 1.5 s, then one every 20 ms for 10 s. The 3 s total
    // deadline counts from the attempt's request: the stream ends at about 3 s, long before
    // the upstream finishes (and well before 4.5 s, where a deadline counted from the first
    // token would end it).
    let s = setup(&[("LLM_TTFT_TIMEOUT_MS", "2500"), ("LLM_TIMEOUT_MS", "3000")]).await;
    let resp = post(
        &s.app,
        "/api/v1/llm/stream",
        ask("chat", Some(&["d/late-drip"])),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let rid = request_id(&resp);
    let mut sse = SseReader::new(resp);
    let mut deltas = 0;
    let (event, data) = loop {
        let (event, data) = sse.next().await.unwrap();
        if event != "delta" {
            break (event, data);
        }
        deltas += 1;
    };
    assert_eq!(event, "error", "{data}");
    let v: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(v["code"], "upstream_timeout");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("not finished within 3000 ms"),
        "{v}"
    );
    assert!(sse.next().await.is_none());
    assert!(deltas >= 1);
    assert!(s.state.dripped.load(Ordering::SeqCst) < 500);
    wait_for(
        "the upstream request to be closed",
        Duration::from_secs(10),
        || async { s.state.disconnected.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    let rows = logs(&s.app, &rid).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "error");
    assert!(rows[0].streaming);
    assert!(
        (3000..4000).contains(&rows[0].latency_ms),
        "the call lasted {} ms",
        rows[0].latency_ms
    );
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream_request() {
    let s = setup(&[]).await;
    let resp = s
        .app
        .client
        .post(s.app.url("/api/v1/llm/stream"))
        .header("x-api-key", API_KEY)
        .header("x-request-id", "req-llm-cancel-1")
        .json(&ask("chat", Some(&["d/drip"])))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(resp);
    let (event, _) = sse.next().await.unwrap();
    assert_eq!(event, "delta");
    drop(sse);
    wait_for(
        "the fake upstream to see the disconnect",
        Duration::from_secs(10),
        || async { s.state.disconnected.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    assert!(s.state.dripped.load(Ordering::SeqCst) < 500);
    let row = wait_for("a cancelled audit row", Duration::from_secs(10), || async {
        logs(&s.app, "req-llm-cancel-1")
            .await
            .into_iter()
            .find(|r| r.status == "cancelled")
    })
    .await;
    assert!(row.streaming);
}

#[tokio::test]
async fn audit_rows_store_payloads_only_when_enabled() {
    let s = setup(&[("AUDIT_STORE_PAYLOADS", "true")]).await;
    let resp = post(&s.app, "/api/v1/llm/complete", ask("chat", None)).await;
    let rid = request_id(&resp);
    assert_eq!(resp.status(), 200);
    let rows = logs(&s.app, &rid).await;
    let req = rows[0].request_payload.as_ref().unwrap();
    assert_eq!(req["messages"][0]["content"], "How did the session go?");
    assert_eq!(
        rows[0].response_payload.as_ref().unwrap()["content"],
        "Hello world!"
    );
}

#[tokio::test]
async fn openai_compatible_endpoint_complete_and_stream() {
    let s = setup(&[]).await;
    // A task name as the model uses that task's route.
    let resp = post(
        &s.app,
        "/v1/chat/completions",
        json!({"model": "chat", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello world!");
    assert_eq!(body["model"], "anthropic/claude-opus-4.5");
    assert_eq!(body["usage"]["total_tokens"], 10);

    // A model id is used as is, streamed.
    let resp = post(
        &s.app,
        "/v1/chat/completions",
        json!({"model": "openai/gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let mut text = String::new();
    let mut saw_done = false;
    while let Some((_, data)) = sse.next().await {
        if data == "[DONE]" {
            saw_done = true;
            continue;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert!(saw_done);
    assert_eq!(text, "Hello world!");
    assert_eq!(s.state.models_seen().last().unwrap(), "openai/gpt-4o-mini");
    let sent = s.upstream.requests();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].messages(), [("user".to_owned(), "hi".to_owned())]);
    assert_eq!(sent[1].body["stream"], true);
}

fn conversation(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
        .collect()
}

#[tokio::test]
async fn the_upstream_receives_every_message_in_order_on_both_routes() {
    let s = setup(&[]).await;
    let turns = [
        ("system", "You are a coach's assistant."),
        ("user", "First question"),
        ("assistant", "First answer"),
        ("user", "Second question"),
    ];
    let messages: Vec<Value> = turns
        .iter()
        .map(|(r, c)| json!({"role": r, "content": c}))
        .collect();
    for path in ["/api/v1/llm/complete", "/api/v1/llm/stream"] {
        let resp = post(&s.app, path, json!({"task": "chat", "messages": messages})).await;
        assert_eq!(resp.status(), 200, "{path}");
        let _ = resp.bytes().await.unwrap();
        assert_eq!(
            s.upstream.last().unwrap().messages(),
            conversation(&turns),
            "{path}"
        );
    }

    // The OpenAI route: text parts are joined into one string (other parts dropped),
    // `developer` is sent as `system`, and the order is kept.
    let resp = post(
        &s.app,
        "/v1/chat/completions",
        json!({"model": "chat", "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Hel"},
                {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                {"type": "text", "text": "lo"}
            ]},
            {"role": "assistant", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "Again"}]}
        ]}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let sent = s.upstream.last().unwrap();
    assert_eq!(
        sent.messages(),
        conversation(&[
            ("system", "Be brief."),
            ("user", "Hello"),
            ("assistant", "Hi"),
            ("user", "Again"),
        ])
    );
    assert!(
        sent.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["content"].is_string()),
        "content parts reach the upstream flattened: {}",
        sent.body
    );
}

#[tokio::test]
async fn max_completion_tokens_wins_over_max_tokens_on_the_openai_route() {
    let s = setup(&[]).await;
    for (fields, expected) in [
        (json!({"max_tokens": 50, "max_completion_tokens": 70}), 70),
        (json!({"max_completion_tokens": 70, "max_tokens": 90}), 70),
        (json!({"max_tokens": 50}), 50),
        (json!({"max_completion_tokens": 60}), 60),
    ] {
        let mut body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let resp = post(&s.app, "/v1/chat/completions", body).await;
        assert_eq!(resp.status(), 200, "{fields}");
        let sent = s.upstream.last().unwrap();
        assert_eq!(sent.max_tokens(), Some(expected), "{fields}");
        assert!(
            sent.body.get("max_completion_tokens").is_none(),
            "one limit goes upstream: {}",
            sent.body
        );
    }
}

#[tokio::test]
async fn development_without_a_key_uses_the_fake_provider() {
    let app = TestApp::spawn_with(|v| {
        v.insert("LLM_ALLOWED_MODELS".into(), "fake/*".into());
    })
    .await;
    assert!(app.backend.config().uses_fake_llm());
    assert_eq!(app.backend.llm().provider_name(), "fake");
    let resp = post(
        &app,
        "/api/v1/llm/complete",
        ask("chat", Some(&["fake/fail-5xx", "fake/ok"])),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["model_used"], "fake/ok");
    assert_eq!(body["fallback_used"], true);

    app.backend.database().flush_audit().await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "xenios_llm_calls_total 1",
        "xenios_llm_fallbacks_total 1",
        "xenios_llm_retries_total 2",
        "xenios_llm_latency_seconds_count 1",
        // The call's inference_logs row, written by the audit writer.
        "xenios_audit_rows_queued_total 1",
        "xenios_audit_rows_written_total 1",
        "xenios_audit_rows_dropped_total 0",
        "xenios_audit_rows_failed_total 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn the_openai_python_sdk_completes_and_streams() {
    let s = setup(&[]).await;
    let python = match std::env::var("XENIOS_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            let out = std::process::Command::new("scripts/py-venv.sh")
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .output_within_deadline();
            assert!(
                out.status.success(),
                "py-venv.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/openai_sdk.py");
    let base = s.app.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .env("XENIOS_BASE_URL", base)
            .env("XENIOS_API_KEY", API_KEY)
            .output_within_deadline()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("complete: Hello world!"), "{stdout}");
    assert!(stdout.contains("stream: Hello| world|!"), "{stdout}");
}

/// The variables that point `xenios-cli` at the same database, Redis and fake upstream, with
/// the same settings, as the app of `s`.
fn cli_vars(s: &Setup) -> HashMap<String, String> {
    let redis = s.app.redis.as_ref().unwrap();
    let mut vars = xenios_tests::test_vars(&s.app.db, &redis.url);
    vars.extend(s.llm_vars.iter().cloned());
    vars
}

#[tokio::test]
async fn the_cli_reads_the_prompt_from_stdin_when_it_is_dash_or_absent() {
    let s = setup(&[]).await;
    let vars = cli_vars(&s);

    // `complete -`: the whole of stdin is the prompt, less one trailing newline.
    let (code, out, err) = run_cli_stdin(
        &vars,
        &["complete", "--model", "d/ok", "-"],
        b"First line\nsecond line\n",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "Hello world!\n");
    let seen = s.state.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.body["model"], "d/ok");
    assert_eq!(
        seen.body["messages"][0]["content"],
        "First line\nsecond line"
    );

    // `stream` without a prompt argument reads stdin too.
    let (code, out, err) = run_cli_stdin(
        &vars,
        &["stream", "--system", "Be brief.", "--model", "e/ok"],
        b"Piped prompt\r\n",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "Hello world!\n");
    let seen = s.state.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.body["model"], "e/ok");
    assert_eq!(seen.body["stream"], true);
    assert_eq!(
        seen.messages(),
        [
            ("system".to_owned(), "Be brief.".to_owned()),
            ("user".to_owned(), "Piped prompt".to_owned()),
        ],
        "--system goes first, as the system message"
    );
    let rows = logs(&s.app, &upstream_request_id(&s, "e/ok")).await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].streaming && rows[0].status == "success");

    // A literal argument is still used as is, stdin ignored.
    let (code, _, err) = run_cli_stdin(
        &vars,
        &["complete", "--model", "f/ok", "Arg prompt"],
        b"ignored",
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let seen = s.state.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.body["messages"][0]["content"], "Arg prompt");

    // Hostile stdin: empty, blank, not UTF-8, larger than 1 MiB: exit 2, nothing sent.
    let sent_before = s.state.requests.lock().unwrap().len();
    let huge = vec![b'a'; 1024 * 1024 + 1];
    for (input, says) in [
        (&b""[..], "empty"),
        (&b"  \n\t\n"[..], "empty"),
        (&b"\xff\xfe bad"[..], "not UTF-8"),
        (&huge[..], "larger than"),
    ] {
        let (code, out, err) = run_cli_stdin(&vars, &["complete", "-"], input).await;
        assert_eq!(code, Some(2), "{says}: {err}");
        assert!(out.is_empty(), "{says}: {out}");
        assert!(err.contains(says), "{says}: {err}");
    }
    assert_eq!(s.state.requests.lock().unwrap().len(), sent_before);
}

/// The X-Request-ID the fake upstream saw with the last request for `model`.
fn upstream_request_id(s: &Setup, model: &str) -> String {
    s.state
        .requests
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|r| r.model() == model)
        .and_then(|r| r.request_id.clone())
        .unwrap_or_else(|| panic!("the upstream saw no request for {model}"))
}

#[tokio::test]
async fn the_cli_completes_and_streams_through_the_backend_with_its_audit_rows() {
    let s = setup(&[]).await;
    let vars = cli_vars(&s);

    // complete: the answer on stdout, the model and fallback on stderr, a success row
    // under the correlation ID that was sent upstream.
    let (code, out, err) = run_cli(
        &vars,
        &[
            "complete",
            "--task",
            "chat",
            "--model",
            "c/fail-503,c/ok",
            "How was it?",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "Hello world!\n");
    assert!(err.contains("[model c/ok (fallback), 10 tokens"), "{err}");
    assert!(!err.contains("fake LLM"), "{err}");
    let seen = s.state.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.body["messages"][0]["content"], "How was it?");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer sk-or-test-key"));
    let rows = logs(&s.app, &upstream_request_id(&s, "c/ok")).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].task_type.as_str(), rows[0].status.as_str()),
        ("chat", "success")
    );
    assert_eq!(rows[0].model_used.as_deref(), Some("c/ok"));
    assert!(rows[0].fallback_used && !rows[0].streaming);

    // stream: the tokens in order, then the summary; a streaming success row.
    let (code, out, err) = run_cli(
        &vars,
        &["stream", "--system", "Be brief.", "--model", "s/ok", "Hi"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "Hello world!\n");
    assert!(err.contains("[model s/ok, 10 tokens"), "{err}");
    let rows = logs(&s.app, &upstream_request_id(&s, "s/ok")).await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].streaming && rows[0].status == "success");

    // Refusals and bad input: a clear message and a failure exit code.
    let (code, _, err) = run_cli(&vars, &["complete", "--model", "r/fail-401", "x"]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("refused") && err.contains("r/fail-401"),
        "{err}"
    );
    let (code, _, err) = run_cli(&vars, &["complete", "--task", "poetry", "x"]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("poetry"), "{err}");
    let (code, _, err) = run_cli(&vars, &["stream", "--model", "m/midstream-after", "x"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("stream failed"), "{err}");
}

#[tokio::test]
async fn the_cli_prints_stream_tokens_as_they_arrive() {
    use std::io::Read;

    /// Kills and reaps the CLI however the test ends.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let s = setup(&[]).await;
    let child = std::process::Command::new(xenios_tests::jobs_support::cli_bin())
        .args(["stream", "--model", "d/drip", "Go"])
        .envs(cli_vars(&s))
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let mut stdout = child.0.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut printed = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !printed.contains("t2 ") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(bytes)) => printed.push_str(&String::from_utf8_lossy(&bytes)),
            _ => panic!("no streamed tokens on stdout within 20 s: {printed:?}"),
        }
    }
    // The upstream drips 500 tokens 20 ms apart. Tokens printed as they arrive show while it
    // is still near the start; output held in stdout's buffer (1 KiB, no newline yet) would
    // first show some 250 tokens in, and output printed at the end after all 500.
    let dripped = s.state.dripped.load(Ordering::SeqCst);
    assert!(printed.starts_with("t0 t1 t2 "), "{printed:?}");
    assert!(
        dripped < 100,
        "first tokens shown only after {dripped} were sent"
    );
    drop(child);
    reader.join().unwrap();
    wait_for(
        "the upstream to see the CLI gone",
        Duration::from_secs(10),
        || async { s.state.disconnected.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_cli_says_when_the_fake_llm_answers() {
    let app = TestApp::spawn().await;
    let redis = app.redis.as_ref().unwrap();
    let mut vars = xenios_tests::test_vars(&app.db, &redis.url);
    vars.insert("LLM_ALLOWED_MODELS".into(), "fake/*".into());
    let (code, out, err) = run_cli(&vars, &["complete", "--model", "fake/ok", "Hello there"]).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.trim().is_empty());
    assert!(err.contains("built-in fake LLM"), "{err}");
    assert!(err.contains("[model fake/ok"), "{err}");
}
