//! The other ways in: the OpenAI-compatible route, the OpenAI Python SDK, and the CLI.

use super::*;

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
    let metrics = app.get("/metrics").await.text().await.unwrap();
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
