//! Hostile callers of the job queue, through real HTTP, real Redis and the real
//! `xenios-worker` binary: reserved queue names, poisoned broker keys, other users' jobs,
//! uncatalogued tasks, oversized arguments and payloads where none may be stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;
use xenios_tests::process::CommandExt as _;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use xenios_core::jobs::EnqueueRequest;
use xenios_core::redis::redis;
use xenios_core::{Config, RequestContext};
use xenios_tests::jobs_support::{ChildProcess, ChildWorker, list, vars_for, worker_bin};
use xenios_tests::{API_KEY, TestApp, TestDb, TestRedis, wait_for};

const SECRET: &str = "abuse-jwt-secret-with-at-least-32-characters";
const SUPABASE: &str = "http://127.0.0.1:9";

/// Every kind of key a queue must never be.
const RESERVED: &[&str] = &[
    "unacked",
    "unacked_index",
    "unacked_mutex",
    "_kombu.binding.default",
    "_kombu.binding.reply.celery.pidbox",
    "celery-task-meta-0b5e1f1c-0000-4000-8000-000000000000",
    "celery-taskset-meta-x",
    "celeryev",
    "celeryev.0b5e1f1c",
    "celery.pidbox",
    "0b5e1f1c.reply.celery.pidbox",
    "xenios.dead_letter",
    "xenios.revoked.x",
    "xenios.owner.x",
    "xenios:ratelimit:x",
];

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn user_token(sub: &str) -> String {
    let claims = json!({
        "iss": format!("{SUPABASE}/auth/v1"), "aud": "authenticated", "sub": sub,
        "exp": now() + 3600, "iat": now(), "role": "authenticated",
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    TestApp::spawn_with(move |v| {
        v.insert("SUPABASE_URL".into(), SUPABASE.into());
        v.insert("SUPABASE_JWT_SECRET".into(), SECRET.into());
        v.extend(extra);
    })
    .await
}

/// The variables the app runs with, for a worker process on the same database and Redis.
fn worker_vars(app: &TestApp, extra: &[(&str, &str)]) -> HashMap<String, String> {
    vars_for(&app.db, app.redis.as_ref().unwrap(), extra)
}

async fn redis_conn(app: &TestApp) -> redis::aio::MultiplexedConnection {
    app.redis.as_ref().unwrap().conn().await
}

/// POST /api/v1/jobs as the service (`token` None) or a user.
async fn post(app: &TestApp, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("x-api-key", API_KEY)
        .json(&body);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = app
        .client
        .request(method, app.url(path))
        .header("x-api-key", API_KEY);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits until the job's result (read by the service) is ready.
async fn ready(app: &TestApp, id: &str) -> Value {
    let path = format!("/api/v1/jobs/{id}");
    wait_for(
        &format!("job {id} ready"),
        Duration::from_secs(60),
        || async {
            let (status, body) = call(app, reqwest::Method::GET, &path, None).await;
            (status == 200
                && ["SUCCESS", "FAILURE", "REVOKED"]
                    .contains(&body["state"].as_str().unwrap_or("")))
            .then_some(body)
        },
    )
    .await
}

#[tokio::test]
async fn a_queue_named_unacked_index_is_refused_and_the_50_jobs_after_it_all_succeed() {
    // 15 refusals, 50 jobs and their reads: over the default burst of one caller.
    let app = app_with(&[
        ("RATE_LIMIT_BURST", "100000"),
        ("RATE_LIMIT_PER_MINUTE", "100000"),
    ])
    .await;
    let _worker = ChildWorker::spawn(&worker_vars(&app, &[]), &["-Q", "default", "-c", "4"]);
    for queue in RESERVED {
        let (status, body) = post(
            &app,
            None,
            json!({"task": "xenios.echo", "args": [1], "queue": queue}),
        )
        .await;
        assert_eq!(status, 422, "{queue}: {body}");
        assert_eq!(body["error"]["code"], "validation_error", "{queue}");
    }
    let mut conn = redis_conn(&app).await;
    let kind: String = redis::cmd("TYPE")
        .arg("unacked_index")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        kind == "zset" || kind == "none",
        "unacked_index is a {kind}"
    );

    let mut ids = Vec::new();
    for i in 0..50 {
        let (status, body) = post(&app, None, json!({"task": "xenios.echo", "args": [i]})).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["queue"], "default");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for (i, id) in ids.iter().enumerate() {
        let job = ready(&app, id).await;
        assert_eq!(job["state"], "SUCCESS", "{job}");
        assert_eq!(job["result"], json!([i]));
    }
}

#[tokio::test]
async fn reserved_names_are_refused_by_the_library_the_config_and_the_worker() {
    let (db, redis) = (TestDb::new().await, TestRedis::new().await);
    let vars = vars_for(&db, &redis, &[]);
    let backend = xenios_core::AiBackend::builder(Config::from_map(&vars).unwrap())
        .build()
        .await
        .unwrap();
    let ctx = RequestContext::system();
    for queue in RESERVED {
        let e = backend
            .jobs()
            .enqueue(&ctx, EnqueueRequest::new("any.task").queue(*queue))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), xenios_core::ErrorKind::Validation, "{queue}: {e}");
        assert!(e.to_string().contains(queue), "{queue}: {e}");
    }
    // A route or default queue onto a reserved name never reaches a message either.
    for (name, value) in [
        ("JOB_ROUTES", "evil.=unacked_index".to_owned()),
        ("JOB_DEFAULT_QUEUE", "celeryev".to_owned()),
        (
            "JOB_EXTRA_TASKS",
            "evil.task/_kombu.binding.default/users/100".to_owned(),
        ),
    ] {
        let mut v = vars.clone();
        v.insert(name.to_owned(), value.clone());
        let e = Config::from_map(&v).unwrap_err();
        let problem = e
            .problems
            .iter()
            .find(|p| p.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {e}"));
        assert!(problem.contains("reserved"), "{problem}");
    }
    for queue in RESERVED {
        let mut v = vars.clone();
        v.insert("JOB_ROUTES".into(), format!("x.={queue}"));
        assert!(Config::from_map(&v).is_err(), "JOB_ROUTES onto {queue}");
    }
    // The worker refuses to consume a reserved name, and says which.
    for queue in ["unacked", "celery-task-meta-x"] {
        let out = Command::new(worker_bin())
            .args(["-Q", &format!("default,{queue}")])
            .envs(&vars)
            .env("LOG_FORMAT", "pretty")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .output_within_deadline();
        assert!(!out.status.success(), "-Q {queue} ran");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("`{queue}`")), "{text}");
    }
    let mut conn = redis.conn().await;
    let bindings: Vec<String> = redis::cmd("KEYS")
        .arg("_kombu.binding.unacked*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(bindings.is_empty(), "{bindings:?}");
}

/// A file removed on drop.
struct LogFile(std::path::PathBuf);

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn a_poisoned_unacked_index_loses_no_message_and_they_run_once_it_is_fixed() {
    let app = app_with(&[]).await;
    let mut conn = redis_conn(&app).await;
    let _: () = redis::cmd("SET")
        .arg("unacked_index")
        .arg("planted by hand")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) = post(&app, None, json!({"task": "xenios.echo", "args": [i]})).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    let log = LogFile(std::env::temp_dir().join(format!(
        "xenios-abuse-worker-{}-{}.log",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    )));
    let log = &log.0;
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(worker_bin());
    cmd.args(["-Q", "default"])
        .envs(worker_vars(&app, &[]))
        .env("LOG_FORMAT", "pretty")
        .env("LOG_LEVEL", "info")
        .current_dir(std::env::temp_dir())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let _worker = ChildProcess::spawn(&mut cmd);
    // The worker meets the wrong type, says so, and takes nothing.
    wait_for(
        "the worker reports the wrong type",
        Duration::from_secs(30),
        || async {
            std::fs::read_to_string(log)
                .ok()
                .filter(|t| t.contains("XENIOS_WRONGTYPE"))
        },
    )
    .await;
    let queued: usize = redis::cmd("LLEN")
        .arg("default")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(queued, 5, "messages left the queue");
    let unacked: usize = redis::cmd("HLEN")
        .arg("unacked")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(unacked, 0);
    // Fixed: every message runs.
    let _: () = redis::cmd("DEL")
        .arg("unacked_index")
        .query_async(&mut conn)
        .await
        .unwrap();
    for (i, id) in ids.iter().enumerate() {
        let job = ready(&app, id).await;
        assert_eq!(job["state"], "SUCCESS", "{job}");
        assert_eq!(job["result"], json!([i]));
    }
}

#[tokio::test]
async fn users_see_and_revoke_only_their_own_jobs_and_the_service_sees_all() {
    let app = app_with(&[]).await;
    let (a, b) = (user_token("user-a"), user_token("user-b"));
    // Far in the future: nothing runs it, so its state is only what revocation does.
    let (status, body) = post(
        &app,
        Some(&a),
        json!({"task": "xenios.echo", "args": ["a's"], "countdown": 3600}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/jobs/{id}");
    let unknown = "/api/v1/jobs/0b5e1f1c-0000-4000-8000-00000000dead";

    let (status, not_found) = call(&app, reqwest::Method::GET, unknown, Some(&b)).await;
    assert_eq!(status, 404);
    let shape = |v: &Value| {
        (
            v["error"]["code"].clone(),
            v["error"]["message"].clone(),
            v["error"].as_object().map(|o| {
                let mut k: Vec<String> = o.keys().cloned().collect();
                k.sort();
                k
            }),
        )
    };
    for (method, p) in [
        (reqwest::Method::GET, path.clone()),
        (reqwest::Method::DELETE, path.clone()),
        (reqwest::Method::DELETE, format!("{path}?terminate=true")),
        (reqwest::Method::DELETE, unknown.to_owned()),
    ] {
        let (status, body) = call(&app, method.clone(), &p, Some(&b)).await;
        assert_eq!(status, 404, "{method} {p}: {body}");
        assert_eq!(shape(&body), shape(&not_found), "{method} {p}");
    }
    let mut conn = redis_conn(&app).await;
    let revoked: bool = redis::cmd("EXISTS")
        .arg(format!("xenios.revoked.{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!revoked, "user B revoked user A's job");

    // A and the service see it; the service also sees unknown ids as PENDING (Celery).
    for token in [Some(a.as_str()), None] {
        let (status, body) = call(&app, reqwest::Method::GET, &path, token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "PENDING");
    }
    let (status, _) = call(&app, reqwest::Method::GET, unknown, None).await;
    assert_eq!(status, 200);
    let (status, _) = call(&app, reqwest::Method::GET, unknown, Some(&a)).await;
    assert_eq!(status, 404);

    // The owner is in the message header and the job row.
    let raw: Vec<String> = list(&mut conn, "default").await;
    let msg: Value = serde_json::from_str(&raw[0]).unwrap();
    assert_eq!(msg["headers"]["xenios_owner"], "user:user-a");
    app.backend.database().flush_audit().await;
    let row = app
        .backend
        .database()
        .job_record(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.owner.as_deref(), Some("user:user-a"));

    // A revokes their own job.
    let (status, body) = call(&app, reqwest::Method::DELETE, &path, Some(&a)).await;
    assert_eq!(status, 202, "{body}");
    let revoked: bool = redis::cmd("EXISTS")
        .arg(format!("xenios.revoked.{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(revoked);
}

#[tokio::test]
async fn only_catalogued_tasks_callable_by_the_caller_and_within_size_are_accepted() {
    let extra = "docling.extract/extraction/users/2048,reports.rebuild/analytics/service/256";
    let app = app_with(&[
        ("JOB_DIAGNOSTIC_TASKS", "false"),
        ("JOB_EXTRA_TASKS", extra),
    ])
    .await;
    let user = user_token("user-c");
    for (token, task) in [
        (None, "celery.backend_cleanup"),
        (None, "xenios.sleep"),
        (None, "xenios.fail"),
        (None, "no.such.task"),
        (Some(user.as_str()), "celery.backend_cleanup"),
        (Some(user.as_str()), "xenios.sleep"),
        (Some(user.as_str()), "reports.rebuild"),
    ] {
        let (status, body) = post(&app, token, json!({"task": task})).await;
        assert_eq!(status, 422, "{task}: {body}");
        assert_eq!(body["error"]["code"], "unknown_task", "{task}: {body}");
    }
    // Too large for the task's declared limit (far under the global one).
    for (task, size) in [("xenios.echo", 70 * 1024), ("docling.extract", 3000)] {
        let (status, body) = post(
            &app,
            Some(&user),
            json!({"task": task, "args": ["z".repeat(size)]}),
        )
        .await;
        assert_eq!(status, 422, "{task}: {body}");
    }
    // The Python task lands on its declared queue with its owner.
    let (status, body) = post(
        &app,
        Some(&user),
        json!({"task": "docling.extract", "kwargs": {"path": "s3://bucket/doc.pdf"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queue"], "extraction");
    let (status, body) = post(&app, None, json!({"task": "reports.rebuild"})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queue"], "analytics");
    let mut conn = redis_conn(&app).await;
    let raw: Vec<String> = list(&mut conn, "extraction").await;
    assert_eq!(raw.len(), 1);
    let msg: Value = serde_json::from_str(&raw[0]).unwrap();
    assert_eq!(msg["headers"]["task"], "docling.extract");
    assert_eq!(msg["headers"]["xenios_owner"], "user:user-c");
    assert_eq!(msg["headers"]["xenios_user_id"], "user-c");
    let raw: Vec<String> = list(&mut conn, "analytics").await;
    let msg: Value = serde_json::from_str(&raw[0]).unwrap();
    assert_eq!(msg["headers"]["xenios_owner"], "service");

    // Diagnostics exist in development by default, for the service only.
    let dev = app_with(&[]).await;
    let (status, body) = post(&dev, None, json!({"task": "xenios.sleep"})).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post(&dev, Some(&user), json!({"task": "xenios.sleep"})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "unknown_task");
}

#[tokio::test]
async fn no_arguments_reach_postgres_or_result_meta_even_when_retries_run_out() {
    let app = app_with(&[("JOB_MAX_RETRIES", "1")]).await;
    let _worker = ChildWorker::spawn(
        &worker_vars(&app, &[("JOB_MAX_RETRIES", "1")]),
        &["-Q", "default,llm", "-c", "2"],
    );
    let (status, llm) = post(
        &app,
        None,
        json!({"task": "xenios.llm.complete", "kwargs": {"task": "chat", "prompt": "MARKER-prompt"}}),
    )
    .await;
    assert_eq!(status, 202, "{llm}");
    assert_eq!(llm["queue"], "llm");
    let (status, echo) = post(
        &app,
        None,
        json!({"task": "xenios.echo", "args": ["MARKER-echo-arg"], "kwargs": {"k": "MARKER-echo-kwarg"}}),
    )
    .await;
    assert_eq!(status, 202, "{echo}");
    let (status, fail) = post(
        &app,
        None,
        json!({"task": "xenios.fail", "args": ["MARKER-fail-arg"],
               "kwargs": {"retry_until": 5, "countdown": 0, "note": "MARKER-fail-kwarg"}}),
    )
    .await;
    assert_eq!(status, 202, "{fail}");
    let (echo_id, fail_id) = (
        echo["id"].as_str().unwrap().to_owned(),
        fail["id"].as_str().unwrap().to_owned(),
    );
    let done = ready(&app, &echo_id).await;
    assert_eq!(
        done["result"],
        json!(["MARKER-echo-arg"]),
        "the output is the product"
    );
    let answered = ready(&app, llm["id"].as_str().unwrap()).await;
    assert_eq!(answered["state"], "SUCCESS", "{answered}");
    let output = answered["result"]["content"].as_str().unwrap().to_owned();
    let failed = ready(&app, &fail_id).await;
    assert_eq!(failed["state"], "FAILURE", "{failed}");
    assert_eq!(failed["result"]["exc_type"], "MaxRetriesExceededError");

    let mut conn = redis_conn(&app).await;
    for id in [&echo_id, &fail_id] {
        let raw: String = redis::cmd("GET")
            .arg(format!("celery-task-meta-{id}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let meta: Value = serde_json::from_str(&raw).unwrap();
        assert!(
            meta.get("args").is_none() && meta.get("kwargs").is_none(),
            "{raw}"
        );
        assert!(!raw.contains("-kwarg"), "{raw}");
    }
    let raw: String = redis::cmd("GET")
        .arg(format!("celery-task-meta-{fail_id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!raw.contains("MARKER"), "{raw}");

    // Job rows, every column, once the worker's rows are in.
    let client = app.db.client().await;
    let rows = wait_for("terminal job rows", Duration::from_secs(30), || async {
        let rows: Vec<String> = client
            .query(
                "SELECT row_to_json(j)::text FROM ai_backend.job_queue_metadata j \
                 WHERE status IN ('success', 'failure')",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (rows.len() == 3).then_some(rows)
    })
    .await;
    assert!(
        rows.iter().any(|r| r.contains("MaxRetriesExceededError")),
        "{rows:?}"
    );
    for row in &rows {
        assert!(!row.contains("MARKER"), "{row}");
    }
    let logs = wait_for("the inference row", Duration::from_secs(30), || async {
        let logs: Vec<String> = client
            .query(
                "SELECT row_to_json(l)::text FROM ai_backend.inference_logs l",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        (!logs.is_empty()).then_some(logs)
    })
    .await;
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(!logs[0].contains("MARKER"), "{logs:?}");
    if output.len() >= 12 {
        assert!(!logs[0].contains(&output), "{logs:?}");
    }
}
