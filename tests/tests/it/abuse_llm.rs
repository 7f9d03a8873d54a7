//! Hostile callers of the LLM, auth and HTTP surfaces, through real HTTP: the real server on
//! port 0 (or the real `xenios-server` binaries), real Postgres and Redis, a local fake
//! OpenRouter that records what it was asked.
//!
//! One test or more per rule: users cannot choose models, the service only among
//! `LLM_ALLOWED_MODELS` and at most 5, `max_tokens` only lowers a route, per-user daily token
//! budgets, rate limits shared by replicas (and their fallback when Redis is gone), fail-closed
//! auth context and CORS, API key rotation, closed `/metrics` and `/health/ready`, and no
//! provider error text in any answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use xenios_tests::process::CommandExt as _;

use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use poem::EndpointExt;
use serde_json::{Value, json};
use xenios_tests::FakeUpstream;
use xenios_tests::fake_openrouter::{FakeOpenRouter, Replies, SECRET_MARK};
use xenios_tests::process::ServerProcess;
use xenios_tests::{API_KEY, RedisProcess, TestApp, TestDb, TestRedis, wait_for};

const JWT_SECRET: &str = "abuse-llm-jwt-secret-0123456789abcdef";
struct Setup {
    app: TestApp,
    /// The fake OpenRouter: every request it was sent.
    seen: FakeOpenRouter,
}

/// The server with the fake OpenRouter, HS256 user tokens and `extra` variables.
async fn setup(extra: &[(&str, &str)]) -> Setup {
    let seen = FakeOpenRouter::start(Replies::ok()).await;
    let mut vars: Vec<(String, String)> = vec![
        ("OPENROUTER_API_KEY".into(), "sk-or-test-key".into()),
        ("OPENROUTER_BASE_URL".into(), seen.base_url()),
        ("LLM_MAX_RETRIES".into(), "0".into()),
        ("SUPABASE_JWT_SECRET".into(), JWT_SECRET.into()),
    ];
    vars.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let app = TestApp::spawn_with(move |v| v.extend(vars)).await;
    Setup { app, seen }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 access token of a new user; returns (user id, token).
fn user_token() -> (String, String) {
    let sub = uuid::Uuid::new_v4().to_string();
    let claims = json!({
        "iss": "https://abuse.supabase.test/auth/v1", "aud": "authenticated", "sub": sub,
        "exp": now() + 3600, "iat": now(),
        "role": "authenticated", "is_anonymous": false,
    });
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    (sub, token)
}

/// POSTs `body` with the API key and, when given, a user's bearer token.
async fn post(app: &TestApp, path: &str, token: Option<&str>, body: Value) -> reqwest::Response {
    let mut r = app
        .client
        .post(app.url(path))
        .header("x-api-key", API_KEY)
        .json(&body);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.send().await.unwrap()
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut r = app.client.get(app.url(path)).header("x-api-key", API_KEY);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.send().await.unwrap()
}

fn ask(task: &str) -> Value {
    json!({"task": task, "messages": [{"role": "user", "content": "How did it go?"}]})
}

fn openai(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]})
}

async fn error_of(resp: reqwest::Response, status: u16) -> Value {
    let got = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{body}");
    assert!(body["error"]["correlation_id"].is_string(), "{body}");
    body["error"].clone()
}

/// The whole body of an SSE response as text.
async fn sse_text(resp: reqwest::Response) -> String {
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), body.next())
        .await
        .expect("SSE body stalled")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    text
}

async fn metrics(app: &TestApp) -> String {
    let r = get(app, "/metrics", None).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// `/metrics` of a server process.
async fn metrics_of(server: &ServerProcess) -> String {
    server.get("/metrics").await.text().await.unwrap()
}

/// The variables of a server whose limits a test never reaches (60,000 a minute, a burst
/// of 10,000), on `redis`, taking Supabase tokens.
fn limits_far_off(db: &TestDb, redis: &RedisProcess) -> HashMap<String, String> {
    let mut vars = xenios_tests::test_vars(db, &redis.url());
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "60000".into());
    vars.insert("RATE_LIMIT_BURST".into(), "10000".into());
    vars.insert("SUPABASE_JWT_SECRET".into(), JWT_SECRET.into());
    vars
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

// ---- Item 4: model choice and max_tokens -------------------------------------------------

#[tokio::test]
async fn users_cannot_choose_models_and_the_upstream_never_sees_one() {
    let s = setup(&[]).await;
    let (_, token) = user_token();
    let route = s
        .app
        .backend
        .config()
        .llm
        .routes
        .route(xenios_core::llm::Task::Chat)
        .models
        .clone();
    for path in ["/api/v1/llm/complete", "/api/v1/llm/stream"] {
        for models in [json!(["openai/o1-pro"]), json!([route[0]]), json!([])] {
            let mut body = ask("chat");
            body["models"] = models.clone();
            body["max_tokens"] = json!(5);
            let e = error_of(post(&s.app, path, Some(&token), body).await, 403).await;
            assert_eq!(e["code"], "model_choice_forbidden", "{path} {models}: {e}");
        }
    }
    // The OpenAI route: a raw model id is a choice of model; a task name is not.
    for model in ["openai/o1-pro", route[0].as_str()] {
        let e = error_of(
            post(&s.app, "/v1/chat/completions", Some(&token), openai(model)).await,
            403,
        )
        .await;
        assert_eq!(e["code"], "model_choice_forbidden", "{e}");
    }
    assert_eq!(s.seen.len(), 0, "refused calls reach no upstream");

    // What a user may do: a task, its route's models.
    let r = post(&s.app, "/api/v1/llm/complete", Some(&token), ask("chat")).await;
    assert_eq!(r.status(), 200);
    let r = post(&s.app, "/v1/chat/completions", Some(&token), openai("chat")).await;
    assert_eq!(r.status(), 200);
    let r = post(&s.app, "/api/v1/llm/stream", Some(&token), ask("chat")).await;
    assert_eq!(r.status(), 200);
    assert!(sse_text(r).await.contains("event: done"));
    let seen = s.seen.models();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|m| route.contains(m)), "{seen:?}");
}

#[tokio::test]
async fn the_service_names_at_most_five_allowed_models() {
    // Default LLM_ALLOWED_MODELS: the routing table's models.
    let s = setup(&[]).await;
    let routes = &s.app.backend.config().llm.routes;
    let chat = routes.route(xenios_core::llm::Task::Chat).models.clone();
    let opus = routes.route(xenios_core::llm::Task::SessionSummary).models[0].clone();

    // Six models: 422, whatever they are.
    let mut body = ask("chat");
    body["models"] = json!(["a/1", "a/2", "a/3", "a/4", "a/5", "a/6"]);
    let e = error_of(post(&s.app, "/api/v1/llm/complete", None, body).await, 422).await;
    assert!(e["message"].as_str().unwrap().contains("at most 5"), "{e}");

    // A model outside LLM_ALLOWED_MODELS: 403 model_not_allowed, on every route.
    let mut body = ask("chat");
    body["models"] = json!([chat[0], "openai/o1-pro"]);
    for path in ["/api/v1/llm/complete", "/api/v1/llm/stream"] {
        let e = error_of(post(&s.app, path, None, body.clone()).await, 403).await;
        assert_eq!(e["code"], "model_not_allowed", "{e}");
    }
    let e = error_of(
        post(
            &s.app,
            "/v1/chat/completions",
            None,
            openai("openai/o1-pro"),
        )
        .await,
        403,
    )
    .await;
    assert_eq!(e["code"], "model_not_allowed", "{e}");

    // Duplicates: 422; a huge hostile list is refused at once, not compared pair by pair.
    let mut body = ask("chat");
    body["models"] = json!([chat[0], chat[0]]);
    error_of(post(&s.app, "/api/v1/llm/complete", None, body).await, 422).await;
    let mut body = ask("chat");
    body["models"] = json!(vec!["x/same"; 50_000]);
    let started = Instant::now();
    error_of(post(&s.app, "/api/v1/llm/complete", None, body).await, 422).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.seen.len(), 0);

    // Allowed models of another route, and a raw allowed id on the OpenAI route: served.
    let mut body = ask("chat");
    body["models"] = json!([opus, chat[1]]);
    assert_eq!(
        post(&s.app, "/api/v1/llm/complete", None, body)
            .await
            .status(),
        200
    );
    assert_eq!(
        post(&s.app, "/v1/chat/completions", None, openai(&chat[1]))
            .await
            .status(),
        200
    );
    assert_eq!(s.seen.models(), [opus, chat[1].clone()]);
}

#[tokio::test]
async fn max_tokens_lowers_a_route_but_never_raises_it() {
    let s = setup(&[]).await;
    let (_, token) = user_token();
    let limit = u64::from(
        s.app
            .backend
            .config()
            .llm
            .routes
            .route(xenios_core::llm::Task::Chat)
            .max_tokens,
    );
    for (who, token) in [("user", Some(token.as_str())), ("service", None)] {
        let mut body = ask("chat");
        body["max_tokens"] = json!(limit + 1);
        let e = error_of(
            post(&s.app, "/api/v1/llm/complete", token, body.clone()).await,
            422,
        )
        .await;
        assert!(
            e["message"].as_str().unwrap().contains("max_tokens"),
            "{who}: {e}"
        );
        error_of(post(&s.app, "/api/v1/llm/stream", token, body).await, 422).await;
        for field in ["max_tokens", "max_completion_tokens"] {
            let mut body = openai("chat");
            body[field] = json!(4_000_000);
            error_of(post(&s.app, "/v1/chat/completions", token, body).await, 422).await;
        }
    }
    assert_eq!(s.seen.len(), 0);
    for (value, expected) in [(Some(limit), limit), (Some(100), 100), (None, limit)] {
        let mut body = ask("chat");
        if let Some(v) = value {
            body["max_tokens"] = json!(v);
        }
        let r = post(&s.app, "/api/v1/llm/complete", None, body).await;
        assert_eq!(r.status(), 200);
        assert_eq!(s.seen.last().and_then(|r| r.max_tokens()), Some(expected));
    }
}

// ---- Item 5: per-user daily token budget -------------------------------------------------

fn seconds_to_utc_midnight() -> u64 {
    86_400 - now() % 86_400
}

#[tokio::test]
async fn a_user_past_the_daily_budget_gets_429_until_utc_midnight() {
    // Each call of the fake upstream uses 10 tokens.
    let s = setup(&[("LLM_USER_DAILY_TOKENS", "25")]).await;
    let (alice_id, alice) = user_token();
    let me = get(&s.app, "/api/v1/me", Some(&alice)).await;
    let body: Value = me.json().await.unwrap();
    assert_eq!(body["tokens_used_today"], 0, "{body}");
    assert_eq!(body["daily_token_limit"], 25, "{body}");

    // complete, stream (counted when it ends) and the OpenAI route all count.
    assert_eq!(
        post(&s.app, "/api/v1/llm/complete", Some(&alice), ask("chat"))
            .await
            .status(),
        200
    );
    let r = post(&s.app, "/api/v1/llm/stream", Some(&alice), ask("chat")).await;
    assert_eq!(r.status(), 200);
    assert!(sse_text(r).await.contains("event: done"));
    assert_eq!(
        post(&s.app, "/v1/chat/completions", Some(&alice), openai("chat"))
            .await
            .status(),
        200
    );
    let body: Value = get(&s.app, "/api/v1/me", Some(&alice))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["tokens_used_today"], 30, "{body}");
    assert_eq!(
        s.app
            .backend
            .llm()
            .budget()
            .expect("budget")
            .usage(&alice_id)
            .await
            .unwrap()
            .used,
        30
    );

    let calls = s.seen.len();
    for (path, req) in [
        ("/api/v1/llm/complete", ask("chat")),
        ("/api/v1/llm/stream", ask("chat")),
        ("/v1/chat/completions", openai("chat")),
    ] {
        let r = post(&s.app, path, Some(&alice), req).await;
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let expected = seconds_to_utc_midnight();
        assert!(
            retry.abs_diff(expected) <= 2,
            "Retry-After {retry}, midnight in {expected}"
        );
        let e = error_of(r, 429).await;
        assert_eq!(e["code"], "budget_exceeded", "{path}: {e}");
    }
    assert_eq!(s.seen.len(), calls, "refused calls reach no upstream");

    // Another user has a budget of their own; the service has none.
    let (_, bob) = user_token();
    assert_eq!(
        post(&s.app, "/api/v1/llm/complete", Some(&bob), ask("chat"))
            .await
            .status(),
        200
    );
    for _ in 0..4 {
        assert_eq!(
            post(&s.app, "/api/v1/llm/complete", None, ask("chat"))
                .await
                .status(),
            200
        );
    }
    let body: Value = get(&s.app, "/api/v1/me", Some(&bob))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["tokens_used_today"], 10, "{body}");

    // The counter is one Redis key per user per UTC day, expiring after the day.
    let mut conn = s.app.redis.as_ref().unwrap().conn().await;
    let key = format!("xenios:llm:tokens:{}:{alice_id}", now() / 86_400);
    let ttl: i64 = xenios_core::redis::redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > 0 && ttl as u64 <= seconds_to_utc_midnight() + 3600,
        "TTL {ttl}"
    );
}

// ---- Item 6: rate limits shared by replicas ----------------------------------------------

#[tokio::test]
async fn two_server_processes_on_one_redis_enforce_one_limit() {
    const BURST: usize = 12;
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let mut vars = xenios_tests::test_vars(&db, &redis.url);
    for (k, v) in [
        ("LOG_FORMAT", "json"),
        ("RATE_LIMIT_PER_MINUTE", "1"),
        ("RATE_LIMIT_BURST", "12"),
        // A loaded test box must not push the limiter into its per-process fallback.
        ("RATE_LIMIT_REDIS_TIMEOUT_MS", "5000"),
    ] {
        vars.insert(k.into(), v.into());
    }
    let a = ServerProcess::start(&vars);
    let b = ServerProcess::start(&vars);
    let client = reqwest::Client::new();
    let mut ok = [0usize; 2];
    let mut limited = [0usize; 2];
    for i in 0..(BURST * 3) {
        let which = i % 2;
        let addr = if which == 0 { &a.addr } else { &b.addr };
        let r = client
            .get(format!("http://{addr}/api/v1/me"))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => ok[which] += 1,
            429 => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited");
                limited[which] += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let total = ok[0] + ok[1];
    // One limit's worth (one more token may refill during the test), not one per process.
    assert!(
        total <= BURST + 1,
        "{ok:?} let through: the processes do not share the limit"
    );
    assert!(
        total >= BURST / 2,
        "{ok:?}: leases wasted most of the burst"
    );
    assert!(ok[0] > 0 && ok[1] > 0, "{ok:?}");
    assert!(limited[0] > 0 && limited[1] > 0, "{limited:?}");
    for p in [&a, &b] {
        let text = metrics_of(p).await;
        assert_eq!(
            metric(&text, "xenios_rate_limit_redis_up"),
            Some(1),
            "{text}"
        );
        assert_eq!(
            metric(&text, "xenios_rate_limit_fallback_checks_total"),
            Some(0)
        );
    }
}

/// The shared limiter talks to Redis on every lease: after Redis is killed and started again
/// it goes back to sharing the limit without a restart of the server.
#[tokio::test]
async fn the_shared_limiter_returns_to_redis_after_redis_is_killed_and_restarted() {
    let mut redis = RedisProcess::start().await;
    let db = TestDb::new().await;
    let vars = limits_far_off(&db, &redis);
    let app = TestApp::spawn_on(db, None, vars).await;
    let (_, token) = user_token();
    assert_eq!(get(&app, "/api/v1/me", Some(&token)).await.status(), 200);
    let up = |text: &str| metric(text, "xenios_rate_limit_redis_up");
    assert_eq!(up(&metrics(&app).await), Some(1));

    redis.stop();
    assert_eq!(get(&app, "/api/v1/me", Some(&token)).await.status(), 200);
    let text = metrics(&app).await;
    assert_eq!(up(&text), Some(0), "{text}");
    let leases_while_down = metric(&text, "xenios_rate_limit_leases_total").unwrap();

    redis.restart().await;
    let text = wait_for("the limiter back on Redis", Duration::from_secs(15), || {
        let (app, token) = (&app, &token);
        async move {
            assert_eq!(get(app, "/api/v1/me", Some(token)).await.status(), 200);
            let text = metrics(app).await;
            (up(&text) == Some(1)).then_some(text)
        }
    })
    .await;
    assert!(
        metric(&text, "xenios_rate_limit_leases_total").unwrap() > leases_while_down,
        "{text}"
    );
}

/// The same with the binary's serving threads: the limiter's Redis connection and the pooled
/// ones (the token budget `/me` reads) are driven by whichever serving thread opened them.
/// After Redis is killed and started again, requests on every thread find Redis again.
#[tokio::test]
async fn every_serving_thread_finds_redis_again_after_it_is_killed_and_restarted() {
    let mut redis = RedisProcess::start().await;
    let db = TestDb::new().await;
    let mut vars = limits_far_off(&db, &redis);
    vars.insert("SERVER_THREADS".into(), "2".into());
    vars.insert("LLM_USER_DAILY_TOKENS".into(), "1000".into());
    let server = ServerProcess::start(&vars);
    let (_, token) = user_token();
    // 8 connections of their own (the kernel spreads them over both threads), one `/me`
    // each: their statuses.
    let round = || {
        let (url, token) = (server.url("/api/v1/me"), token.clone());
        async move {
            let calls = (0..8).map(|_| {
                let (url, token) = (url.clone(), token.clone());
                async move {
                    let r = xenios_tests::connection_per_request()
                        .get(url)
                        .header("x-api-key", API_KEY)
                        .header("authorization", format!("Bearer {token}"))
                        .send()
                        .await
                        .unwrap();
                    r.status().as_u16()
                }
            });
            futures::future::join_all(calls).await
        }
    };
    let metrics = || metrics_of(&server);
    assert_eq!(round().await, [200; 8]);
    assert_eq!(
        metric(&metrics().await, "xenios_rate_limit_redis_up"),
        Some(1)
    );

    redis.stop();
    // The budget fails closed without Redis. The limiter first spends the tokens it leased
    // (for up to LEASE_TTL), then finds Redis gone and falls back to the process's own.
    let text = wait_for("the limiter off Redis", Duration::from_secs(30), || {
        let (round, metrics) = (round(), metrics());
        async move {
            let down = round.await;
            assert!(down.iter().all(|s| *s == 503), "{down:?}");
            let text = metrics.await;
            (metric(&text, "xenios_rate_limit_redis_up") == Some(0)).then_some(text)
        }
    })
    .await;
    let leases_while_down = metric(&text, "xenios_rate_limit_leases_total").unwrap();

    redis.restart().await;
    let text = wait_for(
        "every thread back on Redis",
        Duration::from_secs(30),
        || {
            let (round, metrics) = (round(), metrics());
            async move {
                if round.await != [200; 8] {
                    return None;
                }
                let text = metrics.await;
                (metric(&text, "xenios_rate_limit_redis_up") == Some(1)).then_some(text)
            }
        },
    )
    .await;
    assert!(
        metric(&text, "xenios_rate_limit_leases_total").unwrap() > leases_while_down,
        "{text}"
    );
    assert_eq!(round().await, [200; 8]);
}

#[tokio::test]
async fn with_redis_gone_the_in_process_limiter_decides_and_metrics_say_so() {
    let mut redis = RedisProcess::start().await;
    let db = TestDb::new().await;
    let mut vars = xenios_tests::test_vars(&db, &redis.url());
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "1".into());
    vars.insert("RATE_LIMIT_BURST".into(), "4".into());
    vars.insert("SUPABASE_JWT_SECRET".into(), JWT_SECRET.into());
    let app = TestApp::spawn_on(db, None, vars).await;
    let (_, token) = user_token();
    // Shared while Redis is up: two of the four tokens spent there.
    for _ in 0..2 {
        assert_eq!(get(&app, "/api/v1/me", Some(&token)).await.status(), 200);
    }
    let text = metrics(&app).await;
    assert_eq!(
        metric(&text, "xenios_rate_limit_redis_up"),
        Some(1),
        "{text}"
    );
    assert!(metric(&text, "xenios_rate_limit_leases_total").unwrap() >= 1);

    redis.stop();
    // The in-process limiter (its own burst of 4) decides: requests still pass, then 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = get(&app, "/api/v1/me", Some(&token)).await;
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "{statuses:?}");
    let text = metrics(&app).await;
    assert_eq!(
        metric(&text, "xenios_rate_limit_redis_up"),
        Some(0),
        "{text}"
    );
    assert!(metric(&text, "xenios_rate_limit_fallback_checks_total").unwrap() >= 6);
    assert!(metric(&text, "xenios_rate_limit_redis_failures_total").unwrap() >= 1);

    // An unreachable Redis from the start (a closed port) works the same way.
    let db = TestDb::new().await;
    let closed = format!("redis://127.0.0.1:{}/0", xenios_tests::free_port());
    let mut vars = xenios_tests::test_vars(&db, &closed);
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "1".into());
    vars.insert("RATE_LIMIT_BURST".into(), "2".into());
    let app = TestApp::spawn_on(db, None, vars).await;
    let statuses: Vec<u16> = futures::future::join_all(
        (0..12).map(|_| async { get(&app, "/api/v1/me", None).await.status().as_u16() }),
    )
    .await;
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    let mut want = vec![200u16, 200];
    want.extend([429u16; 10]);
    assert_eq!(sorted, want, "{statuses:?}");
    let text = metrics(&app).await;
    assert_eq!(
        metric(&text, "xenios_rate_limit_redis_up"),
        Some(0),
        "{text}"
    );
    // The crowd waited for one attempt on Redis, not one attempt each in turn (which, with
    // a Redis that does not answer, would cost each request every earlier one's timeout).
    let failures = metric(&text, "xenios_rate_limit_redis_failures_total").unwrap();
    assert!(failures <= 2, "{failures} attempts on an unreachable Redis");
}

// ---- Item 7: fail closed ------------------------------------------------------------------

#[tokio::test]
async fn a_handler_without_an_auth_context_is_a_500_never_the_service() {
    let s = setup(&[]).await;
    // The routes mounted without the authentication layer, as a wiring mistake would.
    let api = xenios_server::openapi(&s.app.backend);
    let bare = FakeUpstream::start(
        poem::Route::new()
            .nest("/", api)
            .around(xenios_server::middleware::error_bodies),
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/llm/complete", bare.base))
        .json(&ask("chat"))
        .send()
        .await
        .unwrap();
    let e = error_of(r, 500).await;
    assert_eq!(e["code"], "internal_error");
    assert_eq!(e["message"], "internal error");
    assert_eq!(s.seen.len(), 0, "nothing was done as the service");
}

#[tokio::test]
async fn no_configured_origin_means_no_cross_origin_access() {
    // Staging: CORS_ORIGINS unset means none (development defaults to localhost:3000).
    let app = TestApp::spawn_with(|v| {
        v.insert("ENVIRONMENT".into(), "staging".into());
    })
    .await;
    assert!(app.backend.config().server.cors_origins.is_empty());
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/me"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "x-api-key")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = app
        .client
        .get(app.url("/api/v1/me"))
        .header("x-api-key", API_KEY)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(
        r.headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
}

#[test]
fn a_wildcard_origin_is_a_startup_error_in_staging_and_production() {
    for env in ["staging", "production"] {
        let out = Command::new(xenios_tests::jobs_support::server_bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .env("ENVIRONMENT", env)
            .env("CORS_ORIGINS", "*")
            .env("DATABASE_URL", "postgres://u@127.0.0.1:1/x")
            .env("REDIS_URL", "redis://127.0.0.1:1/0")
            .env("XENIOS_BACKEND_API_KEY", API_KEY)
            .env("SUPABASE_URL", "https://abc.supabase.co")
            .env("OPENROUTER_API_KEY", "sk-or-x")
            .output_within_deadline();
        assert_eq!(out.status.code(), Some(2), "{env}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("invalid configuration") && stderr.contains("CORS_ORIGINS"),
            "{env}: {stderr}"
        );
    }
    // Development may still allow any origin.
    let vars: HashMap<String, String> = [("CORS_ORIGINS".to_owned(), "*".to_owned())].into();
    assert!(xenios_core::Config::from_map(&vars).is_ok());
}

// ---- Item 8: API key rotation -------------------------------------------------------------

#[tokio::test]
async fn the_previous_api_key_is_accepted_and_counted() {
    const OLD: &str = "previous-api-key-0123456789";
    let app = TestApp::spawn_with(|v| {
        v.insert("XENIOS_BACKEND_API_KEY_PREVIOUS".into(), OLD.into());
    })
    .await;
    let with_key = |key: &'static str| {
        app.client
            .get(app.url("/api/v1/me"))
            .header("x-api-key", key)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(with_key(OLD).await.unwrap().status(), 200);
    }
    assert_eq!(with_key(API_KEY).await.unwrap().status(), 200);
    assert_eq!(
        with_key("previous-api-key-012345678")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(with_key("not-a-key").await.unwrap().status(), 401);
    // OpenAI-style clients send the old key as a bearer token.
    let r = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {OLD}"))
        .json(&openai("chat"))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 401);
    let text = metrics(&app).await;
    assert_eq!(
        metric(&text, "xenios_api_key_previous_uses_total"),
        Some(4),
        "{text}"
    );
    assert_eq!(app.backend.auth().previous_api_key_uses(), 4);
}

// ---- Item 9: closed surfaces --------------------------------------------------------------

#[tokio::test]
async fn metrics_need_the_api_key() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(error_of(r, 401).await["code"], "missing_api_key");
    let r = app
        .client
        .get(app.url("/metrics"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r, 401).await["code"], "invalid_api_key");
    let text = metrics(&app).await;
    assert!(text.contains("xenios_llm_calls_total"), "{text}");
}

#[tokio::test]
async fn ready_in_production_names_components_but_no_error_text() {
    let db = TestDb::new().await;
    let port = xenios_tests::free_port();
    let closed = format!("redis://127.0.0.1:{port}/0");
    let mut vars = xenios_tests::test_vars(&db, &closed);
    vars.insert("ENVIRONMENT".into(), "production".into());
    vars.insert("SUPABASE_URL".into(), "https://abc.supabase.co".into());
    vars.insert("OPENROUTER_API_KEY".into(), "sk-or-test-key".into());
    let app = TestApp::spawn_on(db, None, vars).await;
    let body = app.wait_ready_status(503, Duration::from_secs(20)).await;
    let text = body.to_string();
    let redis = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "redis")
        .unwrap()
        .clone();
    assert_eq!(redis["status"], "unhealthy", "{body}");
    for raw in [
        "refused",
        "Connection",
        "os error",
        &port.to_string(),
        "127.0.0.1",
    ] {
        assert!(!text.contains(raw), "`{raw}` in {text}");
    }
    // The authenticated status route hides it too.
    let status = get(&app, "/api/v1/status", None)
        .await
        .text()
        .await
        .unwrap();
    for raw in ["refused", "os error", &port.to_string()] {
        assert!(!status.contains(raw), "`{raw}` in {status}");
    }
}

#[tokio::test]
async fn provider_error_text_never_reaches_a_client() {
    let s = setup(&[("LLM_ALLOWED_MODELS", "p/*,ok/*")]).await;
    let check = |e: &Value| {
        let text = e.to_string();
        assert!(
            !text.contains(SECRET_MARK) && !text.contains("credits"),
            "{text}"
        );
    };
    // complete and stream before the first token: 502 with the model and the status.
    for path in ["/api/v1/llm/complete", "/api/v1/llm/stream"] {
        let mut body = ask("chat");
        body["models"] = json!(["p/secret-402", "ok/never"]);
        let e = error_of(post(&s.app, path, None, body).await, 502).await;
        assert_eq!(e["code"], "upstream_refused", "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("p/secret-402: HTTP 402"),
            "{e}"
        );
        check(&e);
    }
    // The OpenAI route, complete and stream.
    for stream in [false, true] {
        let mut body = openai("p/secret-402");
        body["stream"] = json!(stream);
        let e = error_of(post(&s.app, "/v1/chat/completions", None, body).await, 502).await;
        check(&e);
    }
    // After the first token: the error event carries the model and the kind of failure.
    let mut body = ask("chat");
    body["models"] = json!(["p/secret-mid"]);
    let r = post(&s.app, "/api/v1/llm/stream", None, body).await;
    assert_eq!(r.status(), 200);
    let text = sse_text(r).await;
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("p/secret-mid: stream failed"), "{text}");
    assert!(!text.contains(SECRET_MARK), "{text}");
    let mut body = openai("p/secret-mid");
    body["stream"] = json!(true);
    let text = sse_text(post(&s.app, "/v1/chat/completions", None, body).await).await;
    assert!(text.contains("upstream_stream_failed"), "{text}");
    assert!(!text.contains(SECRET_MARK), "{text}");
    // The full text is kept for operators, in the audit rows.
    s.app.backend.database().flush_audit().await;
    let client = s.app.db.client().await;
    let rows = wait_for("audit rows", Duration::from_secs(10), || async {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM ai_backend.inference_logs WHERE error LIKE '%LEAKME%'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (n > 0).then_some(n)
    })
    .await;
    assert!(rows > 0);
}
