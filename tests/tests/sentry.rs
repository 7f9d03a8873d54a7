//! Sentry for real: `SENTRY_DSN` points at a local fake ingest endpoint that records every
//! envelope; a 5xx answer, an LLM call on which every model failed, a panic and a failed job
//! must each arrive as an event tagged with correlation ID, task, environment and release,
//! with no secret, prompt or output anywhere in what was sent.
//!
//! One test per file: Sentry's client and the tracing subscriber are process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::web::Data;
use poem::{Body, EndpointExt, Response, handler};
use serde_json::{Value, json};
use xenios_core::Config;
use xenios_tests::{API_KEY, FakeUpstream, TestApp, TestDb, TestRedis, test_vars, wait_for};

const UPSTREAM_KEY: &str = "sk-or-sentry-test-secret-key";
const PROMPT: &str = "PROMPT-TEXT-that-must-never-leave";

#[derive(Default)]
struct Ingest {
    envelopes: Mutex<Vec<String>>,
    paths: Mutex<Vec<String>>,
}

#[handler]
async fn envelope(req: &poem::Request, body: Body, state: Data<&Arc<Ingest>>) -> Response {
    let bytes = body.into_vec().await.unwrap();
    state
        .paths
        .lock()
        .unwrap()
        .push(req.uri().path().to_owned());
    state
        .envelopes
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&bytes).into_owned());
    Response::builder()
        .content_type("application/json")
        .body("{}")
}

/// An OpenRouter on which every model is down (its error body quotes the "output").
#[handler]
async fn all_down() -> Response {
    Response::builder()
        .status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
        .content_type("application/json")
        .body(
            json!({"error": {"code": 503, "message": "down; partial output: OUTPUT-TEXT"}})
                .to_string(),
        )
}

/// The events (JSON payloads of `event` items) in the recorded envelopes.
fn events(ingest: &Ingest) -> Vec<Value> {
    let mut out = Vec::new();
    for env in ingest.envelopes.lock().unwrap().iter() {
        let lines: Vec<&str> = env.lines().collect();
        for pair in lines.windows(2) {
            let Ok(header) = serde_json::from_str::<Value>(pair[0]) else {
                continue;
            };
            if header["type"] == "event" {
                out.push(serde_json::from_str(pair[1]).unwrap());
            }
        }
    }
    out
}

fn message(e: &Value) -> String {
    e["message"]
        .as_str()
        .or_else(|| e["logentry"]["message"].as_str())
        .or_else(|| e["exception"]["values"][0]["value"].as_str())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_panics_failed_jobs_and_failed_llm_calls_reach_sentry_tagged_and_scrubbed() {
    let ingest = Arc::new(Ingest::default());
    let sentry = FakeUpstream::start(
        poem::Route::new()
            .at("/api/4242/envelope/", poem::post(envelope))
            .data(ingest.clone()),
    )
    .await;
    let upstream = FakeUpstream::start(
        poem::Route::new().at("/api/v1/chat/completions", poem::post(all_down)),
    )
    .await;

    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let mut vars = test_vars(&db, &redis.url);
    for (k, v) in [
        (
            "SENTRY_DSN",
            format!("http://0123456789abcdef@{}/4242", sentry.addr),
        ),
        ("OPENROUTER_API_KEY", UPSTREAM_KEY.to_owned()),
        ("OPENROUTER_BASE_URL", format!("{}/api/v1", upstream.base)),
        ("LLM_MAX_RETRIES", "0".to_owned()),
    ] {
        vars.insert(k.to_owned(), v);
    }
    let config = Config::from_map(&vars).unwrap();
    let telemetry = xenios_core::telemetry::init(&config);
    assert!(telemetry.reports_errors() && !telemetry.exports_traces());
    let app = TestApp::spawn_on(db, Some(redis), vars).await;
    app.backend.database().migrate().await.unwrap();

    // 1. An LLM call on which every model fails: a 502 answer.
    let resp = app
        .client
        .post(app.url("/api/v1/llm/complete"))
        .header("x-api-key", API_KEY)
        .header("x-request-id", "req-sentry-llm-1")
        .header("cookie", "session=COOKIE-SECRET")
        .json(&json!({"task": "chat", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);

    // 2. A panic inside a request's span.
    let panicked = std::thread::spawn(|| {
        let span = tracing::info_span!("request", correlation_id = "req-sentry-panic-1");
        let _entered = span.enter();
        panic!("boom while serving");
    })
    .join();
    assert!(panicked.is_err());

    // 3. A failed job, reported as the worker does.
    xenios_core::telemetry::report_job_failure(
        "xenios.llm.summarize",
        "0b6a4a4e-job-id",
        Some("req-sentry-job-1"),
        "HandlerError",
    );

    assert!(telemetry.flush(Duration::from_secs(10)));
    let all = wait_for("four Sentry events", Duration::from_secs(20), || {
        let found = events(&ingest);
        async move { (found.len() >= 4).then_some(found) }
    })
    .await;
    assert!(
        ingest
            .paths
            .lock()
            .unwrap()
            .iter()
            .all(|p| p == "/api/4242/envelope/")
    );

    let find = |what: &str| -> Value {
        all.iter()
            .find(|e| message(e).contains(what))
            .cloned()
            .unwrap_or_else(|| panic!("no event with `{what}` in {all:#?}"))
    };
    let llm = find("LLM call failed");
    assert_eq!(llm["tags"]["correlation_id"], "req-sentry-llm-1");
    assert_eq!(llm["tags"]["task"], "chat");
    let http = find("request failed");
    assert_eq!(http["tags"]["correlation_id"], "req-sentry-llm-1");
    assert_eq!(http["tags"]["status"], "502");
    let panic_event = find("boom while serving");
    assert_eq!(panic_event["tags"]["correlation_id"], "req-sentry-panic-1");
    let job = find("job xenios.llm.summarize failed");
    assert_eq!(job["tags"]["correlation_id"], "req-sentry-job-1");
    assert_eq!(job["tags"]["task_name"], "xenios.llm.summarize");
    assert_eq!(job["tags"]["task_id"], "0b6a4a4e-job-id");
    for e in [&llm, &http, &panic_event, &job] {
        assert_eq!(e["environment"], "development", "{e}");
        assert_eq!(e["release"], xenios_core::backend::GIT_COMMIT, "{e}");
        assert!(e.get("request").is_none() && e.get("user").is_none(), "{e}");
    }

    // Nothing secret, no prompt, no output, no request headers in anything sent.
    let sent = ingest.envelopes.lock().unwrap().join("\n");
    for secret in [
        UPSTREAM_KEY,
        API_KEY,
        PROMPT,
        "OUTPUT-TEXT",
        "COOKIE-SECRET",
        "x-api-key",
    ] {
        assert!(!sent.contains(secret), "`{secret}` was sent: {sent}");
    }
    drop(telemetry);
}
