//! OpenTelemetry for real: `OTEL_EXPORTER_OTLP_ENDPOINT` points at a local OTLP/HTTP
//! receiver that decodes the protobuf `ExportTraceServiceRequest`s. One request, its LLM
//! attempt and the upstream call share a trace (joined from the caller's `traceparent`); an
//! enqueue carries a `traceparent` in the Celery message headers, from which a job's span
//! and that job's LLM call continue the same trace.
//!
//! One test per file: the tracer provider and the tracing subscriber are process-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use poem::web::Data;
use poem::{Body, EndpointExt, Response, handler};
use prost::Message as _;
use serde_json::{Value, json};
use xenios_core::Config;
use xenios_core::jobs::TaskMessage;
use xenios_core::jobs::{Worker, WorkerOptions, tasks};
use xenios_core::redis::redis;
use xenios_tests::fake_openrouter::FakeOpenRouter;
use xenios_tests::{API_KEY, FakeUpstream, TestApp, TestDb, TestRedis, test_vars, wait_for};

/// A span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Collector {
    spans: Mutex<Vec<Span>>,
    content_types: Mutex<Vec<String>>,
}

#[handler]
async fn traces(req: &poem::Request, body: Body, state: Data<&Arc<Collector>>) -> Response {
    let bytes = body.into_vec().await.unwrap();
    state
        .content_types
        .lock()
        .unwrap()
        .push(req.content_type().unwrap_or("").to_owned());
    let export = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
    let mut spans = state.spans.lock().unwrap();
    for rs in export.resource_spans {
        for ss in rs.scope_spans {
            for s in ss.spans {
                let attributes = s
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::StringValue(s)) => s.clone(),
                            Some(other) => format!("{other:?}"),
                            None => String::new(),
                        };
                        (kv.key.clone(), v)
                    })
                    .collect();
                spans.push(Span {
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes,
                });
            }
        }
    }
    Response::builder()
        .content_type("application/x-protobuf")
        .body(Vec::<u8>::new())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace id of a `traceparent` value.
fn trace_id_of(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00", "{traceparent}");
    parts[1].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_trace_runs_through_request_llm_attempt_upstream_enqueue_and_job() {
    let collector = Arc::new(Collector::default());
    let receiver = FakeUpstream::start(
        poem::Route::new()
            .at("/v1/traces", poem::post(traces))
            .data(collector.clone()),
    )
    .await;
    let upstream = FakeOpenRouter::canned().await;

    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let redis_url = redis.url.clone();
    let mut vars = test_vars(&db, &redis.url);
    for (k, v) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base.clone()),
        ("OPENROUTER_API_KEY", "sk-or-trace-test".to_owned()),
        ("OPENROUTER_BASE_URL", upstream.base_url()),
    ] {
        vars.insert(k.to_owned(), v);
    }
    let config = Config::from_map(&vars).unwrap();
    let telemetry = xenios_core::telemetry::init(&config);
    assert!(telemetry.exports_traces() && !telemetry.reports_errors());
    let app = TestApp::spawn_on(db, Some(redis), vars).await;

    // 1. A request that joins the caller's trace: its span, its LLM attempt and the upstream
    //    call all carry the caller's trace id.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let resp = app
        .client
        .post(app.url("/api/v1/llm/complete"))
        .header("x-api-key", API_KEY)
        .header("x-request-id", "req-trace-llm")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"task": "chat", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = upstream.last().unwrap();
    let upstream_tp = sent
        .traceparent
        .expect("the upstream call carries a traceparent");
    assert_eq!(trace_id_of(&upstream_tp), caller_trace);

    // A malformed or oversized traceparent is ignored: the request starts its own trace.
    for bad in [
        "garbage",
        "00-zz-zz-01",
        &format!("00-{}-{caller_span}-01", "0".repeat(32)),
        &"a".repeat(4000),
    ] {
        let resp = app
            .client
            .post(app.url("/api/v1/llm/complete"))
            .header("x-api-key", API_KEY)
            .header("traceparent", bad)
            .json(&json!({"task": "chat", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{bad}");
        let tp = upstream.last().unwrap().traceparent.unwrap();
        assert_ne!(trace_id_of(&tp), caller_trace);
        assert_ne!(trace_id_of(&tp), "0".repeat(32));
    }

    // 2. A request without a traceparent that enqueues a job: the message's headers carry a
    //    traceparent of that request's trace.
    let resp = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("x-api-key", API_KEY)
        .header("x-request-id", "req-trace-job")
        .json(&json!({"task": "xenios.llm.complete", "args": [], "kwargs": {"task": "session_summary", "prompt": "summarise"}}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let mut conn = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: String = redis::cmd("LINDEX")
        .arg("llm")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let envelope: Value = serde_json::from_str(&raw).unwrap();
    let header_tp = envelope["headers"]["traceparent"]
        .as_str()
        .expect("the Celery message headers carry a traceparent")
        .to_owned();
    let m = TaskMessage::decode(raw.as_bytes()).unwrap();

    // 3. The worker side: the real worker runtime runs the job; its span continues the
    //    message's trace, and the job's LLM call sends that trace upstream.
    assert_eq!(m.task, "xenios.llm.complete");
    let seen_before = upstream.requests().len();
    let options = WorkerOptions {
        queues: vec!["llm".to_owned()],
        concurrency: 1,
        hostname: Some("traces@%h".to_owned()),
        prefetch_multiplier: 1,
    };
    tokio::time::timeout(
        Duration::from_secs(60),
        Worker::new(
            app.backend.clone(),
            tasks::builtin_registry(&app.backend.config().jobs),
            options,
        )
        .run_until_idle(),
    )
    .await
    .expect("the worker drains the llm queue")
    .unwrap();
    assert_eq!(upstream.requests().len(), seen_before + 1);
    let job_upstream_tp = upstream
        .last()
        .unwrap()
        .traceparent
        .expect("the job's LLM call carries a traceparent");
    assert_eq!(trace_id_of(&job_upstream_tp), trace_id_of(&header_tp));

    // What the receiver got.
    assert!(telemetry.flush(Duration::from_secs(10)));
    let spans = wait_for("the exported spans", Duration::from_secs(20), || {
        let spans = collector.spans.lock().unwrap().clone();
        async move {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
            let enough = names.iter().filter(|n| **n == "request").count() >= 2
                && names.iter().filter(|n| **n == "llm.attempt").count() >= 2
                && names.contains(&"enqueue")
                && names.contains(&"job");
            enough.then_some(spans)
        }
    })
    .await;
    assert!(
        collector
            .content_types
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.starts_with("application/x-protobuf"))
    );
    let find = |name: &str, pred: &dyn Fn(&Span) -> bool| -> Span {
        spans
            .iter()
            .find(|s| s.name == name && pred(s))
            .cloned()
            .unwrap_or_else(|| panic!("no `{name}` span in {spans:#?}"))
    };

    // 1: the HTTP span is the caller's child; the attempt and the upstream call in its trace.
    let http = find("request", &|s| {
        s.attr("correlation_id") == Some("req-trace-llm")
    });
    assert_eq!(http.trace_id, caller_trace);
    assert_eq!(http.parent_span_id, caller_span);
    let attempt = find("llm.attempt", &|s| s.trace_id == caller_trace);
    assert_eq!(attempt.attr("model"), Some("anthropic/claude-opus-4.5"));
    assert_eq!(attempt.attr("correlation_id"), Some("req-trace-llm"));
    assert!(upstream_tp.contains(&attempt.span_id), "{upstream_tp}");

    // 2: the enqueue span is in the enqueuing request's trace and named in the header.
    let http2 = find("request", &|s| {
        s.attr("correlation_id") == Some("req-trace-job")
    });
    assert_ne!(http2.trace_id, caller_trace);
    assert_eq!(trace_id_of(&header_tp), http2.trace_id);
    let enqueue = find("enqueue", &|s| s.trace_id == http2.trace_id);
    assert!(header_tp.contains(&enqueue.span_id), "{header_tp}");

    // 3: the job's span is the enqueue span's child; its LLM attempt in the same trace.
    let job = find("job", &|_| true);
    assert_eq!(job.trace_id, http2.trace_id);
    assert_eq!(job.parent_span_id, enqueue.span_id);
    assert_eq!(job.attr("task"), Some("xenios.llm.complete"));
    assert_eq!(job.attr("correlation_id"), Some("req-trace-job"));
    let job_attempt = find("llm.attempt", &|s| s.trace_id == http2.trace_id);
    assert!(job_upstream_tp.contains(&job_attempt.span_id));
    drop(telemetry);
}
