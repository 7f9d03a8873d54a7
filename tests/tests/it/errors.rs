//! The server's one error mapping, over HTTP from the real `xenios-server` process: a
//! refused caller is 403, a dependency holding data the backend cannot use is 500 (and the
//! same request succeeds once it is repaired), a dependency that is down is 503 (and the
//! same request succeeds once it is back), each as
//! `{"error": {"code", "message", "correlation_id"}}` whose correlation ID is the request's.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use xenios_core::redis::redis;
use xenios_tests::fake_openrouter::{FakeOpenRouter, Replies};
use xenios_tests::process::ServerProcess;
use xenios_tests::{API_KEY, RedisProcess, TestDb, test_vars, wait_for};

const JWT_SECRET: &str = "errors-jwt-secret-0123456789abcdefghij";

fn user_token() -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({
        "iss": "https://errors.supabase.test/auth/v1", "aud": "authenticated",
        "sub": uuid::Uuid::new_v4().to_string(), "exp": now + 3600, "iat": now,
        "role": "authenticated", "is_anonymous": false,
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Sends `req` with a correlation ID and checks the error: status, code, and the body's
/// shape with that correlation ID in body and header. Returns the error object.
async fn expect_error(req: reqwest::RequestBuilder, status: u16, code: &str) -> Value {
    let rid = format!("req-errors-{}", uuid::Uuid::new_v4().simple());
    let resp = req.header("x-request-id", &rid).send().await.unwrap();
    let got = resp.status().as_u16();
    let header = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{body}");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(e["correlation_id"], rid.as_str(), "{body}");
    assert_eq!(header.as_deref(), Some(rid.as_str()));
    assert_eq!(body.as_object().unwrap().len(), 1, "only `error`: {body}");
    e.clone()
}

#[tokio::test]
async fn the_real_server_maps_refusals_to_403_bad_data_to_500_and_a_dependency_down_to_503() {
    let db = TestDb::new().await;
    let mut redis = RedisProcess::start().await;
    let upstream = FakeOpenRouter::start(Replies::ok()).await;
    let mut vars = test_vars(&db, &redis.url());
    vars.insert("SUPABASE_JWT_SECRET".into(), JWT_SECRET.into());
    vars.insert("OPENROUTER_API_KEY".into(), "sk-or-test-key".into());
    vars.insert("OPENROUTER_BASE_URL".into(), upstream.base_url());
    let server = ServerProcess::start(&vars);
    let client = reqwest::Client::new();
    let token = user_token();

    // 403: a user may not choose models, on either LLM route.
    let ask = json!({"task": "chat", "models": ["openai/o1-pro"],
        "messages": [{"role": "user", "content": "hi"}]});
    for path in ["/api/v1/llm/complete", "/api/v1/llm/stream"] {
        let req = client
            .post(server.url(path))
            .header("x-api-key", API_KEY)
            .bearer_auth(&token)
            .json(&ask);
        expect_error(req, 403, "model_choice_forbidden").await;
    }
    let openai = json!({"model": "openai/o1-pro", "messages": [{"role": "user", "content": "hi"}]});
    let req = client
        .post(server.url("/v1/chat/completions"))
        .header("x-api-key", API_KEY)
        .bearer_auth(&token)
        .json(&openai);
    expect_error(req, 403, "model_choice_forbidden").await;
    assert!(upstream.is_empty(), "a refused call reached the upstream");

    // 503: Redis (the broker) is down; enqueue and result reads say so, and may be retried.
    let enqueue = || {
        client
            .post(server.url("/api/v1/jobs"))
            .header("x-api-key", API_KEY)
            .json(&json!({"task": "xenios.echo", "args": [1]}))
    };
    let accepted = enqueue().send().await.unwrap();
    assert_eq!(accepted.status(), 202);
    let id = accepted.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get_job = || {
        client
            .get(server.url(&format!("/api/v1/jobs/{id}")))
            .header("x-api-key", API_KEY)
    };

    // 500: the job's result key holds a hash (planted by hand). Redis answers, so this is no
    // outage to retry: an internal error that tells the caller nothing of Redis' reply.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let result_key = format!("celery-task-meta-{id}");
    let _: () = redis::cmd("HSET")
        .arg(&result_key)
        .arg("planted")
        .arg("by hand")
        .query_async(&mut conn)
        .await
        .unwrap();
    let e = expect_error(get_job(), 500, "internal_error").await;
    assert_eq!(e["message"], "internal error", "{e}");
    // Repaired: the same request answers again, without a restart.
    let _: () = redis::cmd("DEL")
        .arg(&result_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let repaired = get_job().send().await.unwrap();
    assert_eq!(repaired.status(), 200);
    let job: Value = repaired.json().await.unwrap();
    assert_eq!(job["state"], "PENDING", "{job}");

    redis.stop();
    expect_error(enqueue(), 503, "queue_unavailable").await;
    expect_error(get_job(), 503, "queue_unavailable").await;
    let ready = client
        .get(server.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    // Redis back: the same requests succeed, without a restart.
    redis.restart().await;
    wait_for(
        "enqueue to succeed again",
        Duration::from_secs(30),
        || async {
            let r = enqueue().send().await.ok()?;
            (r.status() == 202).then_some(())
        },
    )
    .await;
}
