//! Streamed answers: SSE order, failures before and after the first token, timeouts, and
//! cancellation when the client goes away.

use super::*;

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
