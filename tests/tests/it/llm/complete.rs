//! One answer per request: every fallback rule, the routing table on the wire, the audit rows.

use super::*;

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
