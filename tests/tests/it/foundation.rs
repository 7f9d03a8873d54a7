//! The foundation: health, readiness, status, OpenAPI, correlation IDs, error bodies,
//! graceful shutdown, against the real server, Postgres and Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use xenios_tests::fake_openrouter::{FakeOpenRouter, Replies};
use xenios_tests::process::ServerProcess;
use xenios_tests::{
    API_KEY, FakeUpstream, RedisProcess, TcpProxy, TestApp, TestDb, test_vars, url_via_port,
    wait_for,
};

#[tokio::test]
async fn health_and_live_answer_without_auth() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "healthy"}));
    let r = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn ready_reports_postgres_and_redis() {
    let app = TestApp::spawn().await;
    // The first probe opens the pools' first connections, which can exceed the probe's
    // deadline on a loaded box: wait (bounded) for the 200.
    let body = app.wait_ready_status(200, Duration::from_secs(20)).await;
    assert_eq!(body["status"], "ready");
    let names: Vec<&str> = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", "redis"]);
    for c in body["components"].as_array().unwrap() {
        assert_eq!(c["status"], "healthy", "{c}");
    }
}

#[tokio::test]
async fn ready_turns_503_while_redis_is_down_and_recovers_without_restart() {
    let mut redis = RedisProcess::start().await;
    let db = TestDb::new().await;
    let vars = test_vars(&db, &redis.url());
    let app = TestApp::spawn_on(db, None, vars).await;
    app.wait_ready_status(200, Duration::from_secs(20)).await;

    redis.stop();
    let body = app.wait_ready_status(503, Duration::from_secs(15)).await;
    assert_eq!(body["status"], "not_ready");
    let redis_c = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "redis")
        .unwrap()
        .clone();
    assert_eq!(redis_c["status"], "unhealthy");
    assert!(redis_c["error"].as_str().is_some_and(|e| !e.is_empty()));
    let pg = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "postgres")
        .unwrap()
        .clone();
    assert_eq!(pg["status"], "healthy");
    // Liveness does not depend on Redis.
    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);

    redis.restart().await;
    app.wait_ready_status(200, Duration::from_secs(15)).await;
}

#[tokio::test]
async fn status_needs_the_api_key() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/api/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key");

    let r = app
        .client
        .get(app.url("/api/v1/status"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["message"], "invalid API key");

    let r = app.get("/api/v1/status").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["service"], "xenios-ai-backend");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["environment"], "development");
    assert!(body["git_commit"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(body["uptime_secs"].is_u64());
    assert_eq!(body["components"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn unknown_route_and_bad_method_get_json_errors_with_the_correlation_id() {
    let app = TestApp::spawn().await;
    let r = app.get("/api/v1/nope").await;
    assert_eq!(r.status(), 404);
    let header = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(body["error"]["correlation_id"], header.as_str());

    let r = app.client.post(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

#[tokio::test]
async fn correlation_id_is_taken_when_sane_and_generated_otherwise() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "req-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-abc.123");

    let r = app
        .client
        .get(app.url("/health"))
        .header("x-correlation-id", "corr-7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "corr-7");

    let r = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "evil\tvalue with spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn openapi_document_and_docs_ui_are_served() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spec: Value = r.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/health", "/health/live", "/health/ready", "/api/v1/status"] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
    let r = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger"), "not the Swagger UI");
}

#[tokio::test]
async fn cors_preflight_allows_only_configured_origins() {
    let app = TestApp::spawn_with(|v| {
        v.insert("CORS_ORIGINS".into(), "https://app.xenios.example".into());
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/status"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "x-api-key")
            .send()
    };
    let ok = preflight("https://app.xenios.example").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.xenios.example"
    );
    let bad = preflight("https://evil.example").await.unwrap();
    assert!(bad.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting_and_returns() {
    let mut app = TestApp::spawn().await;
    assert_eq!(app.get("/health").await.status(), 200);
    app.shutdown().await.unwrap();
    let addr = app.addr;
    wait_for(
        "the listener to close",
        Duration::from_secs(10),
        || async move { tokio::net::TcpStream::connect(addr).await.err().map(|_| ()) },
    )
    .await;
}

/// The binary serves from `SERVER_THREADS` threads on one port: many connections at once,
/// proxied LLM calls among them (each thread with its own upstream client), all answered;
/// then SIGTERM lets an in-flight call finish and the process exits cleanly, its audit rows
/// written.
#[tokio::test]
async fn the_binary_serves_from_a_thread_per_listener_and_stops_cleanly() {
    let db = TestDb::new().await;
    let redis = RedisProcess::start().await;
    let upstream = FakeOpenRouter::start(Replies::ok()).await;
    let mut vars = test_vars(&db, &redis.url());
    vars.insert("SERVER_THREADS".into(), "3".into());
    vars.insert("OPENROUTER_API_KEY".into(), "sk-or-test-key".into());
    vars.insert("OPENROUTER_BASE_URL".into(), upstream.base_url());
    vars.insert("RUN_MIGRATIONS".into(), "true".into());
    // 48 requests at once from one caller: this test is about serving, not rate limits.
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "0".into());
    let mut server = ServerProcess::start(&vars);

    // A second server on the same port is refused at start, as with a single listener:
    // SO_REUSEPORT must not let it take a share of the first one's connections.
    let port = server.addr.rsplit(':').next().unwrap().to_owned();
    let mut second = std::process::Command::new(xenios_tests::jobs_support::server_bin());
    second
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&vars)
        .env("PORT", &port)
        .current_dir(std::env::temp_dir());
    let out =
        xenios_tests::process::output_within_async(second, None, xenios_tests::process::DEADLINE)
            .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second server started on port {port}: {stderr}"
    );
    assert!(
        stderr.contains("cannot listen on") && stderr.contains("in use"),
        "{stderr}"
    );

    let expected: Vec<String> = (0..3).map(|i| format!("xenios-http-{i}")).collect();
    // A thread names itself once it runs: wait for all three.
    let names = wait_for("three serving threads", Duration::from_secs(10), || {
        let names = server.thread_names();
        let all = expected.iter().all(|e| names.contains(e));
        async move { all.then_some(names) }
    })
    .await;
    let serving = names
        .iter()
        .filter(|n| n.starts_with("xenios-http-"))
        .count();
    assert_eq!(serving, 3, "{names:?}");

    // 24 connections of their own (the kernel spreads them over the three sockets), each
    // asking /me and making an LLM call.
    let calls = (0..24).map(|i| {
        let (me, complete) = (server.url("/api/v1/me"), server.url("/api/v1/llm/complete"));
        async move {
            let client = xenios_tests::connection_per_request();
            let r = client
                .get(me)
                .header("x-api-key", API_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "connection {i}");
            let (status, v) = chat(&client, &complete).await;
            assert_eq!(status, 200, "connection {i}");
            assert_eq!(v["content"], "ok", "connection {i}: {v}");
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(upstream.len(), 24);

    let status =
        tokio::task::spawn_blocking(move || server.terminate_within(Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // Every proxied call's audit row reached Postgres before the exit.
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM ai_backend.inference_logs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 24);
}

/// Each serving thread keeps upstream connections of its own: after the upstream dies
/// (listener gone, open connections broken) calls fail with an error answer, and once it is
/// back every thread reaches it again, without a restart of the server.
#[tokio::test]
async fn every_serving_thread_reaches_the_upstream_again_after_it_dies_and_comes_back() {
    let db = TestDb::new().await;
    let redis = RedisProcess::start().await;
    let upstream = FakeOpenRouter::start(Replies::ok()).await;
    let upstream_addr: std::net::SocketAddr = upstream
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches("/api/v1")
        .parse()
        .unwrap();
    let mut proxy = TcpProxy::start(upstream_addr).await;
    let mut vars = test_vars(&db, &redis.url());
    vars.insert("SERVER_THREADS".into(), "2".into());
    vars.insert("OPENROUTER_API_KEY".into(), "sk-or-test-key".into());
    vars.insert(
        "OPENROUTER_BASE_URL".into(),
        url_via_port(&upstream.base_url(), proxy.port),
    );
    vars.insert("LLM_MAX_RETRIES".into(), "0".into());
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "0".into());
    let server = ServerProcess::start(&vars);
    let complete = server.url("/api/v1/llm/complete");
    // 8 connections of their own (spread over both threads), each one call: its status.
    let round = || {
        let complete = complete.clone();
        async move {
            let calls = (0..8).map(|_| {
                let complete = complete.clone();
                async move { chat(&xenios_tests::connection_per_request(), &complete).await }
            });
            futures::future::join_all(calls).await
        }
    };
    for (status, v) in round().await {
        assert_eq!(status, 200, "{v}");
    }

    proxy.cut();
    for (status, v) in round().await {
        assert!(status.is_server_error(), "{status}: {v}");
        assert!(
            v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{v}"
        );
    }

    proxy.restore().await;
    wait_for(
        "the upstream to be reached again",
        Duration::from_secs(30),
        || {
            let round = round();
            async move { round.await.iter().all(|(s, _)| *s == 200).then_some(()) }
        },
    )
    .await;
    for (status, v) in round().await {
        assert_eq!(status, 200, "{v}");
    }
}

/// One chat call to `complete` (`/api/v1/llm/complete`): its status and body (`null` when
/// the body is not JSON).
async fn chat(client: &reqwest::Client, complete: &str) -> (reqwest::StatusCode, Value) {
    let body = json!({"task": "chat", "messages": [{"role": "user", "content": "hi"}]});
    let r = client
        .post(complete)
        .header("x-api-key", API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn fake_upstream_helper_serves_real_http() {
    use poem::{Route, get, handler};
    #[handler]
    fn hello() -> &'static str {
        "hi"
    }
    let up = FakeUpstream::start(Route::new().at("/hello", get(hello))).await;
    let text = reqwest::get(format!("{}/hello", up.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "hi");
}
