//! The job queue against real Redis and Postgres: routing, priority, ETA, expiry, retries,
//! time limits, result shapes (checked against captured Celery traffic), malformed input,
//! revoke, the HTTP and CLI surfaces, and the real worker binary killed or stopped mid-job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xenios_tests::cli::run_cli;

use serde_json::{Value, json};
use xenios_core::jobs::TaskMessage;
use xenios_core::jobs::{
    EnqueueRequest, JobState, TaskContext, TaskError, TaskRegistry, Worker, WorkerOptions, tasks,
};
use xenios_core::redis::redis;
use xenios_core::{AiBackend, CorrelationId, RequestContext};
use xenios_tests::jobs_support::{ChildWorker, backend_on, count, vars_for};
use xenios_tests::{API_KEY, TestApp, TestDb, TestRedis, wait_for};

const CELERY_RESULT_KEYS: [&str; 6] = [
    "status",
    "result",
    "traceback",
    "children",
    "date_done",
    "task_id",
];

fn opts(queues: &[&str], concurrency: usize) -> WorkerOptions {
    WorkerOptions {
        queues: queues.iter().map(|q| (*q).to_owned()).collect(),
        concurrency,
        hostname: Some("test@%h".to_owned()),
        prefetch_multiplier: 1,
    }
}

/// A worker with the built-in tasks on `default`, running until the sender is used or dropped.
fn spawn_builtin_worker(
    backend: &AiBackend,
    concurrency: usize,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<xenios_core::Result<xenios_core::jobs::WorkerSummary>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        backend.clone(),
        tasks::builtin_registry(&backend.config().jobs),
        opts(&["default"], concurrency),
    );
    (
        tx,
        tokio::spawn(worker.run(async {
            let _ = rx.await;
        })),
    )
}

fn ctx(id: &str) -> RequestContext {
    RequestContext::new(
        CorrelationId::parse(id).unwrap(),
        xenios_core::auth::Principal::Service,
    )
}

async fn drain(backend: &AiBackend, registry: TaskRegistry, queues: &[&str], c: usize) {
    tokio::time::timeout(
        Duration::from_secs(30),
        Worker::new(backend.clone(), registry, opts(queues, c)).run_until_idle(),
    )
    .await
    .expect("worker did not go idle in time")
    .unwrap();
}

#[tokio::test]
async fn jobs_route_by_prefix_onto_kombu_priority_lists_with_correlation_ids() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let c = ctx("req-route-1");
    let ids: Vec<_> = [
        EnqueueRequest::new("xenios.llm.complete"),
        EnqueueRequest::new("extraction.docling"),
        EnqueueRequest::new("transcription.deepgram"),
        EnqueueRequest::new("analytics.rollup"),
        EnqueueRequest::new("something.else").priority(5),
        EnqueueRequest::new("xenios.echo")
            .queue("custom")
            .priority(9),
    ]
    .into_iter()
    .collect();
    let mut out = Vec::new();
    for r in ids {
        out.push(backend.jobs().enqueue(&c, r).await.unwrap().id);
    }
    let mut conn = redis.conn().await;
    for (key, n) in [
        ("llm", 1),
        ("extraction", 1),
        ("transcription", 1),
        ("analytics", 1),
        ("default", 0),
        ("default\x06\x163", 1),
        ("custom\x06\x169", 1),
    ] {
        assert_eq!(count(&mut conn, key).await, n, "{key:?}");
    }
    let raw: String = redis::cmd("LINDEX")
        .arg("llm")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    let m = TaskMessage::decode(raw.as_bytes()).unwrap();
    assert_eq!(m.id, out[0].as_str());
    assert_eq!(m.correlation_id.as_deref(), Some("req-route-1"));
    assert_eq!(m.queue, "llm");
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["properties"]["delivery_info"]["exchange"], "");
    assert_eq!(v["headers"]["timelimit"], json!([null, null]));
    backend.database().flush_audit().await;
    let row = backend
        .database()
        .job_record(out[0].as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "pending");
    assert_eq!(row.queue, "llm");
    assert_eq!(row.correlation_id.as_deref(), Some("req-route-1"));

    // Bad input is a validation error, never a panic.
    for bad in [
        EnqueueRequest::new(""),
        EnqueueRequest::new("has space"),
        EnqueueRequest::new("x").priority(10),
        EnqueueRequest::new("x").queue("bad queue"),
        EnqueueRequest::new("x").countdown(Duration::from_secs(400 * 24 * 3600)),
        EnqueueRequest::new("x")
            .time_limits(Some(Duration::from_secs(5)), Some(Duration::from_secs(1))),
        EnqueueRequest::new("x")
            .args(vec!["y".repeat(600 * 1024)])
            .unwrap(),
    ] {
        let e = backend.jobs().enqueue(&c, bad).await.unwrap_err();
        assert_eq!(e.kind(), xenios_core::ErrorKind::Validation, "{e}");
    }
    assert!(EnqueueRequest::new("x").args(json!({"a": 1})).is_err());
}

#[tokio::test]
async fn jobs_worker_runs_echo_and_stores_celerys_result_shape_and_job_rows() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let id = backend
        .jobs()
        .enqueue(
            &ctx("req-echo"),
            EnqueueRequest::new("xenios.echo")
                .args((2, "three", [4]))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    drain(
        &backend,
        tasks::builtin_registry(&backend.config().jobs),
        &["default"],
        2,
    )
    .await;
    let mut conn = redis.conn().await;
    let raw: String = redis::cmd("GET")
        .arg(format!("celery-task-meta-{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let meta: Value = serde_json::from_str(&raw).unwrap();
    for k in CELERY_RESULT_KEYS {
        assert!(meta.get(k).is_some(), "{k} missing in {meta}");
    }
    assert_eq!(meta["status"], "SUCCESS");
    assert_eq!(meta["result"], json!([2, "three", [4]]));
    assert_eq!(meta["task_id"], id.as_str());
    assert!(meta["date_done"].as_str().unwrap().ends_with("+00:00"));
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("celery-task-meta-{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 86_000, "{ttl}");
    // Acked: nothing left in kombu's bookkeeping.
    assert_eq!(count(&mut conn, "unacked").await, 0);
    assert_eq!(count(&mut conn, "unacked_index").await, 0);
    let r = backend.jobs().job_result(id.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Success);
    backend.database().flush_audit().await;
    let row = backend
        .database()
        .job_record(id.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "success");
    assert_eq!(row.correlation_id.as_deref(), Some("req-echo"));
    assert!(row.worker.unwrap().starts_with("test@"));
    assert_eq!(row.attempts, 1);
}

#[tokio::test]
async fn jobs_priority_zero_is_served_first_then_fifo() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let c = ctx("req-prio");
    for (label, p) in [
        ("low-a", 9),
        ("mid", 5),
        ("high-a", 0),
        ("low-b", 9),
        ("high-b", 1),
    ] {
        backend
            .jobs()
            .enqueue(
                &c,
                EnqueueRequest::new("t.record")
                    .args((label,))
                    .unwrap()
                    .priority(p),
            )
            .await
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut reg = TaskRegistry::new();
    let s = seen.clone();
    reg.register("t.record", move |_ctx: TaskContext, args: Vec<Value>, _| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(args[0].as_str().unwrap().to_owned());
            Ok(Value::Null)
        }
    });
    let mut o = opts(&["default"], 1);
    o.prefetch_multiplier = 1;
    tokio::time::timeout(
        Duration::from_secs(30),
        Worker::new(backend.clone(), reg, o).run_until_idle(),
    )
    .await
    .expect("worker did not go idle in time")
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["high-a", "high-b", "mid", "low-a", "low-b"]
    );
}

#[tokio::test]
async fn jobs_countdown_waits_and_expired_jobs_are_revoked() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let c = ctx("req-eta");
    let enqueued = chrono::Utc::now();
    let later = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("t.when").countdown(Duration::from_millis(800)),
        )
        .await
        .unwrap()
        .id;
    let expired = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("t.when")
                .expires(chrono::Utc::now() - chrono::Duration::seconds(1)),
        )
        .await
        .unwrap()
        .id;
    let mut reg = TaskRegistry::new();
    reg.register("t.when", |_, _, _| async {
        Ok(json!(chrono::Utc::now().timestamp_millis()))
    });
    drain(&backend, reg, &["default"], 2).await;
    let r = backend.jobs().job_result(later.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Success);
    let ran_at = r.result.as_i64().unwrap();
    assert!(
        ran_at - enqueued.timestamp_millis() >= 790,
        "ran {} ms after enqueue",
        ran_at - enqueued.timestamp_millis()
    );
    let r = backend.jobs().job_result(expired.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Revoked);
    assert_eq!(r.exc_type(), Some("TaskRevokedError"));
}

#[tokio::test]
async fn jobs_retries_are_counted_in_the_message_until_success_or_max() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let c = ctx("req-retry");
    let ok = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("xenios.fail")
                .kwargs(json!({"retry_until": 2, "countdown": 0.05}))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    let exhausted = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("xenios.fail")
                .kwargs(json!({"retry_until": 9, "countdown": 0.05, "max_retries": 1}))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    let failed = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("xenios.fail")
                .kwargs(json!({"message": "bad"}))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    drain(
        &backend,
        tasks::builtin_registry(&backend.config().jobs),
        &["default"],
        2,
    )
    .await;
    let r = backend.jobs().job_result(ok.as_str()).await.unwrap();
    assert_eq!(
        (r.state, r.result.clone(), r.retries),
        (JobState::Success, json!(2), Some(2))
    );
    let r = backend.jobs().job_result(exhausted.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Failure);
    assert_eq!(r.exc_type(), Some("MaxRetriesExceededError"));
    assert_eq!(r.retries, Some(1));
    let r = backend.jobs().job_result(failed.as_str()).await.unwrap();
    assert_eq!(
        r.result,
        json!({"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"})
    );
    assert!(r.traceback.unwrap().contains("ValueError: bad"));
    backend.database().flush_audit().await;
    let row = backend
        .database()
        .job_record(ok.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("success", 3));
    let row = backend
        .database()
        .job_record(failed.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "failure");
    assert!(row.error.unwrap().contains("bad"));
}

#[tokio::test]
async fn jobs_soft_limit_lets_the_handler_clean_up_and_hard_limit_stops_it() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let c = ctx("req-limits");
    let limits = |soft: u64, hard: u64| {
        EnqueueRequest::new("t.slow").time_limits(
            Some(Duration::from_millis(soft)),
            Some(Duration::from_millis(hard)),
        )
    };
    let cleaned = backend
        .jobs()
        .enqueue(&c, limits(200, 5000).args(("cleanup",)).unwrap())
        .await
        .unwrap()
        .id;
    let gave_up = backend
        .jobs()
        .enqueue(&c, limits(200, 5000).args(("give-up",)).unwrap())
        .await
        .unwrap()
        .id;
    let killed = backend
        .jobs()
        .enqueue(&c, limits(200, 400).args(("ignore",)).unwrap())
        .await
        .unwrap()
        .id;
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let mut reg = TaskRegistry::new();
    let d = dropped.clone();
    reg.register("t.slow", move |ctx: TaskContext, args: Vec<Value>, _| {
        let d = d.clone();
        async move {
            let mode = args[0].as_str().unwrap_or("").to_owned();
            match mode.as_str() {
                "cleanup" => {
                    ctx.soft_time_limit().await;
                    Ok(json!("cleaned up"))
                }
                "give-up" => {
                    ctx.soft_time_limit().await;
                    ctx.check_soft_limit()?;
                    Ok(Value::Null)
                }
                _ => {
                    let _guard = SetOnDrop(d);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Err(TaskError::failed("unreachable"))
                }
            }
        }
    });
    drain(&backend, reg, &["default"], 3).await;
    let r = backend.jobs().job_result(cleaned.as_str()).await.unwrap();
    assert_eq!(
        (r.state, r.result),
        (JobState::Success, json!("cleaned up"))
    );
    let r = backend.jobs().job_result(gave_up.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Failure);
    assert_eq!(r.result["exc_type"], "SoftTimeLimitExceeded");
    assert_eq!(r.result["exc_module"], "billiard.exceptions");
    let r = backend.jobs().job_result(killed.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Failure);
    assert_eq!(r.result["exc_type"], "TimeLimitExceeded");
    assert_eq!(r.result["exc_module"], "billiard.exceptions");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler's future was not dropped"
    );
}

#[tokio::test]
async fn jobs_malformed_messages_and_unknown_tasks_are_rejected_without_stopping_the_worker() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let mut conn = redis.conn().await;
    // Not JSON; JSON without a delivery tag; an envelope with an id but a broken body;
    // a pickled body; then an unknown task; then a good job.
    let mut broken = TaskMessage::new("xenios.echo", "default");
    broken.id = "broken-body-1".into();
    let mut v: Value = serde_json::from_str(&broken.encode()).unwrap();
    v["body"] = json!("%%% not base64");
    let mut pickled = TaskMessage::new("xenios.echo", "default");
    pickled.id = "pickled-1".into();
    let mut p: Value = serde_json::from_str(&pickled.encode()).unwrap();
    p["content-type"] = json!("application/x-python-serialize");
    for raw in [
        "\u{1}garbage".to_owned(),
        "{\"hello\": 1}".to_owned(),
        v.to_string(),
        p.to_string(),
    ] {
        let _: () = redis::cmd("LPUSH")
            .arg("default")
            .arg(raw)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let c = ctx("req-bad");
    let unknown = backend
        .jobs()
        .enqueue(&c, EnqueueRequest::new("no.such.task"))
        .await
        .unwrap()
        .id;
    let good = backend
        .jobs()
        .enqueue(&c, EnqueueRequest::new("xenios.echo").args((1,)).unwrap())
        .await
        .unwrap()
        .id;
    drain(
        &backend,
        tasks::builtin_registry(&backend.config().jobs),
        &["default"],
        2,
    )
    .await;
    assert_eq!(
        backend
            .jobs()
            .job_result(good.as_str())
            .await
            .unwrap()
            .state,
        JobState::Success
    );
    let r = backend.jobs().job_result(unknown.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Failure);
    assert_eq!(r.exc_type(), Some("NotRegistered"));
    for id in ["broken-body-1", "pickled-1"] {
        let r = backend.jobs().job_result(id).await.unwrap();
        assert_eq!(r.state, JobState::Failure, "{id}");
        assert_eq!(r.exc_type(), Some("DecodeError"), "{id}");
    }
    // The four undecodable messages, and the unregistered task (dead-lettered too, so that
    // a worker that gains the handler later can be fed it again).
    assert_eq!(count(&mut conn, "xenios.dead_letter").await, 5);
    assert_eq!(count(&mut conn, "unacked").await, 0);
    assert_eq!(count(&mut conn, "default").await, 0);
}

#[tokio::test]
async fn jobs_revoked_jobs_are_skipped_and_wait_result_sees_results_arrive() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let c = ctx("req-revoke");
    let revoked = backend
        .jobs()
        .enqueue(&c, EnqueueRequest::new("xenios.echo"))
        .await
        .unwrap()
        .id;
    backend
        .jobs()
        .revoke(revoked.as_str(), false)
        .await
        .unwrap();
    let (tx, worker) = spawn_builtin_worker(&backend, 2);
    let r = backend
        .jobs()
        .wait_result(revoked.as_str(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Revoked);
    let later = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("xenios.echo").args(("hi",)).unwrap(),
        )
        .await
        .unwrap()
        .id;
    let r = backend
        .jobs()
        .wait_result(later.as_str(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!((r.state, r.result), (JobState::Success, json!(["hi"])));
    // A result that never comes: the wait ends at its deadline with PENDING.
    let r = backend
        .jobs()
        .wait_result("never-enqueued", Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Pending);
    tx.send(()).unwrap();
    worker.await.unwrap().unwrap();
    backend.database().flush_audit().await;
    let row = backend
        .database()
        .job_record(revoked.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "revoked");
}

#[tokio::test]
async fn jobs_http_enqueue_and_get_with_422_on_bad_input() {
    // Callers no longer pick queues or uncatalogued tasks: the Python task is declared by
    // JOB_EXTRA_TASKS and its queue comes from there.
    let app = TestApp::spawn_with(|v| {
        v.insert(
            "JOB_EXTRA_TASKS".into(),
            "python.only.task/extraction/service/1024".into(),
        );
    })
    .await;
    let post = |body: Value| {
        app.client
            .post(app.url("/api/v1/jobs"))
            .header("x-api-key", API_KEY)
            .header("x-request-id", "req-http-jobs")
            .json(&body)
            .send()
    };
    let r = post(json!({"task": "xenios.echo", "args": [1, "a"], "kwargs": {}}))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(body["queue"], "default");
    assert_eq!(body["correlation_id"], "req-http-jobs");
    let r = post(json!({"task": "python.only.task", "priority": 3, "countdown": 5}))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["queue"], "extraction");
    for bad in [
        json!({"task": "xenios.echo", "args": {"not": "a list"}}),
        json!({"task": "xenios.echo", "kwargs": [1]}),
        json!({"task": ""}),
        json!({"task": "x y"}),
        json!({"task": "xenios.echo", "priority": 12}),
        json!({"task": "xenios.echo", "countdown": -1}),
        json!({"task": "xenios.echo", "queue": "no spaces allowed"}),
        json!({"task": "python.only.task", "queue": "extraction"}),
        json!({"task": "xenios.echo", "args": ["z".repeat(600 * 1024)]}),
    ] {
        let r = post(bad.clone()).await.unwrap();
        assert_eq!(r.status(), 422, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "validation_error", "{bad}");
    }
    let r = app.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "PENDING");
    drain(
        &app.backend,
        tasks::builtin_registry(&app.backend.config().jobs),
        &["default"],
        1,
    )
    .await;
    let job: Value = app
        .get(&format!("/api/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "SUCCESS");
    assert_eq!(job["result"], json!([1, "a"]));
    assert_eq!(job["task"], "xenios.echo");
    let r = app.get("/api/v1/jobs/bad%20id").await;
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn jobs_http_delete_revokes_and_terminate_stops_a_running_handler() {
    let app = TestApp::spawn().await;
    let started = Arc::new(tokio::sync::Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let mut reg = TaskRegistry::new();
    let (s, d) = (started.clone(), dropped.clone());
    reg.register("t.forever", move |_ctx: TaskContext, _, _| {
        let (s, d) = (s.clone(), d.clone());
        async move {
            let _guard = SetOnDrop(d);
            s.notify_one();
            std::future::pending::<()>().await;
            Ok(Value::Null)
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        Worker::new(app.backend.clone(), reg, opts(&["default"], 2)).run(async {
            let _ = rx.await;
        }),
    );
    let c = ctx("req-terminate");
    let running = app
        .backend
        .jobs()
        .enqueue(&c, EnqueueRequest::new("t.forever"))
        .await
        .unwrap()
        .id;
    tokio::time::timeout(Duration::from_secs(20), started.notified())
        .await
        .expect("handler did not start");
    let delete = |path: String| {
        app.client
            .delete(app.url(&path))
            .header("x-api-key", API_KEY)
            .send()
    };
    // A plain revoke is accepted too (it flags the id; the running handler goes on).
    let r = delete(format!("/api/v1/jobs/{running}")).await.unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"id": running.as_str(), "revoked": true, "terminate": false})
    );
    let r = delete(format!("/api/v1/jobs/{running}?terminate=true"))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = app
        .backend
        .jobs()
        .wait_result(running.as_str(), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Revoked, "{r:?}");
    assert_eq!(r.result["exc_message"], json!(["terminated"]), "{r:?}");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler was not stopped"
    );
    // Bad ids and parameters are a 4xx, never a 500.
    let r = delete("/api/v1/jobs/bad%20id".to_owned()).await.unwrap();
    assert_eq!(r.status(), 422);
    let r = delete(format!("/api/v1/jobs/{running}?terminate=maybe"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .delete(app.url(&format!("/api/v1/jobs/{running}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    tx.send(()).unwrap();
    let summary = worker.await.unwrap().unwrap();
    assert_eq!(summary.revoked, 1, "{summary:?}");
    app.backend.database().flush_audit().await;
    let row = app
        .backend
        .database()
        .job_record(running.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.status.as_str(), row.error.as_deref()),
        ("revoked", Some("terminated"))
    );
}

#[tokio::test]
async fn jobs_worker_drains_and_stops_promptly_while_postgres_hangs() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    // A Postgres that accepts connections at the TCP level and never answers: every
    // connection attempt of the job-row writer waits out its connect timeout (5 s).
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = xenios_tests::url_via_port(&db.url, blackhole.local_addr().unwrap().port());
    let backend = backend_on(&db, &redis, &[("DATABASE_URL", &url)]).await;
    let c = ctx("req-pg-down");
    let n = 3000;
    let reqs = (0..n).map(|_| EnqueueRequest::new("xenios.noop")).collect();
    let ids = backend.jobs().enqueue_many(&c, reqs).await.unwrap();
    let started = std::time::Instant::now();
    // Before the writer gave up on an unreachable Postgres quickly and the stopping worker
    // bounded its flush, this took minutes (3 attempts x 5 s per batch of 500 rows).
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        Worker::new(
            backend.clone(),
            tasks::builtin_registry(&backend.config().jobs),
            opts(&["default"], 8),
        )
        .run_until_idle(),
    )
    .await
    .expect("the worker hung on Postgres")
    .unwrap();
    assert_eq!(summary.succeeded, n as u64, "{summary:?}");
    let r = backend
        .jobs()
        .job_result(ids[n - 1].as_str())
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Success);
    let stats = backend.database().audit_stats();
    assert_eq!(stats.written, 0, "{stats:?}");
    assert!(stats.failed + stats.dropped > 0, "{stats:?}");
    eprintln!(
        "drained {n} jobs in {:?} with Postgres hanging",
        started.elapsed()
    );
    drop(blackhole);
}

#[tokio::test]
async fn jobs_worker_killed_with_sigkill_mid_job_loses_nothing() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let extra = [("JOB_VISIBILITY_TIMEOUT_SECS", "2")];
    let backend = backend_on(&db, &redis, &extra).await;
    let mut conn = redis.conn().await;
    let mut victim = ChildWorker::spawn(
        &vars_for(&db, &redis, &extra),
        &["-Q", "default", "-c", "2", "-n", "victim@%h"],
    );
    let c = ctx("req-sigkill");
    let id = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("xenios.sleep")
                .kwargs(json!({"seconds": 1.5}))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    wait_for(
        "the victim to take the job",
        Duration::from_secs(20),
        || {
            let mut conn = conn.clone();
            async move {
                (count(&mut conn, "unacked").await == 1 && count(&mut conn, "default").await == 0)
                    .then_some(())
            }
        },
    )
    .await;
    victim.kill();
    // Held in Redis, not only in the dead worker's memory.
    assert_eq!(count(&mut conn, "unacked").await, 1);
    assert_eq!(
        backend.jobs().job_result(id.as_str()).await.unwrap().state,
        JobState::Pending
    );
    let (tx, rescuer) = spawn_builtin_worker(&backend, 2);
    let r = backend
        .jobs()
        .wait_result(id.as_str(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Success, "{r:?}");
    assert!(r.worker.unwrap().starts_with("test@"));
    tx.send(()).unwrap();
    rescuer.await.unwrap().unwrap();
    assert_eq!(count(&mut conn, "unacked").await, 0);
    assert_eq!(count(&mut conn, "default").await, 0);
}

#[tokio::test]
async fn jobs_sigterm_is_a_warm_shutdown_that_finishes_or_gives_back_every_job() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let mut conn = redis.conn().await;
    let mut worker = ChildWorker::spawn(
        &vars_for(&db, &redis, &[]),
        &["-Q", "default", "-c", "1", "-n", "warm@%h"],
    );
    let c = ctx("req-sigterm");
    let slow = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("xenios.sleep")
                .kwargs(json!({"seconds": 1.0}))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    wait_for("the slow job to be taken", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        async move { (count(&mut conn, "unacked").await == 1).then_some(()) }
    })
    .await;
    let mut quick = Vec::new();
    for i in 0..3 {
        quick.push(
            backend
                .jobs()
                .enqueue(&c, EnqueueRequest::new("xenios.echo").args((i,)).unwrap())
                .await
                .unwrap()
                .id,
        );
    }
    // Let the worker reserve what its prefetch allows, then stop it.
    wait_for("reserved jobs", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        async move { (count(&mut conn, "unacked").await >= 2).then_some(()) }
    })
    .await;
    worker.terminate();
    let status = worker.wait(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    // The running job finished; the others are back on the queue, nothing held.
    assert_eq!(
        backend
            .jobs()
            .job_result(slow.as_str())
            .await
            .unwrap()
            .state,
        JobState::Success
    );
    assert_eq!(count(&mut conn, "unacked").await, 0);
    let done = {
        let mut n = 0;
        for id in &quick {
            if backend.jobs().job_result(id.as_str()).await.unwrap().state == JobState::Success {
                n += 1;
            }
        }
        n
    };
    assert_eq!(done + count(&mut conn, "default").await, 3);
    drain(
        &backend,
        tasks::builtin_registry(&backend.config().jobs),
        &["default"],
        1,
    )
    .await;
    for id in &quick {
        assert_eq!(
            backend.jobs().job_result(id.as_str()).await.unwrap().state,
            JobState::Success
        );
    }
}

#[tokio::test]
async fn jobs_cli_enqueue_waits_for_the_result_and_job_prints_it() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let vars = vars_for(&db, &redis, &[]);
    let (tx, worker) = spawn_builtin_worker(&backend, 1);
    let (code, out, err) = run_cli(
        &vars,
        &[
            "enqueue",
            "xenios.echo",
            "--args",
            "[1, \"a\"]",
            "--wait",
            "--timeout",
            "20",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["state"], "SUCCESS");
    assert_eq!(printed["result"], json!([1, "a"]));
    let id = printed["task_id"].as_str().unwrap().to_owned();
    let (code, out, err) = run_cli(&vars, &["job", &id]).await;
    assert_eq!(code, Some(0), "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["task_id"], id.as_str());
    // Bad JSON is refused with exit code 2, nothing enqueued.
    let (code, _, _) = run_cli(&vars, &["enqueue", "xenios.echo", "--args", "{oops"]).await;
    assert_eq!(code, Some(2));
    tx.send(()).unwrap();
    worker.await.unwrap().unwrap();
}
