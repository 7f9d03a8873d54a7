//! A job's life at its edges, end to end against real Redis and Postgres: a handler that
//! panics, the default retry backoff, a revoke that reaches a job already reserved by a
//! worker, a job outliving the visibility timeout while a second worker watches, and a
//! stored SUCCESS that nothing overwrites. The real `xenios-worker` processes where the
//! case is about processes; the worker runtime in this process where the case needs a
//! handler of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use xenios_core::jobs::{
    EnqueueRequest, JobState, TaskContext, TaskError, TaskRegistry, Worker, WorkerOptions,
};
use xenios_core::redis::redis;
use xenios_core::{AiBackend, CorrelationId, RequestContext};
use xenios_tests::fake_openrouter::{FakeOpenRouter, Replies};
use xenios_tests::faults::HealthFile;
use xenios_tests::jobs_support::{ChildWorker, backend_on, count, vars_for, wait_taken};
use xenios_tests::{TestDb, TestRedis, wait_for};

fn ctx(id: &str) -> RequestContext {
    RequestContext::new(
        CorrelationId::parse(id).unwrap(),
        xenios_core::auth::Principal::Service,
    )
}

fn opts(concurrency: usize) -> WorkerOptions {
    WorkerOptions {
        queues: vec!["default".to_owned()],
        concurrency,
        hostname: Some("lifecycle@%h".to_owned()),
        prefetch_multiplier: 1,
    }
}

async fn drain(backend: &AiBackend, registry: TaskRegistry, concurrency: usize) {
    tokio::time::timeout(
        Duration::from_secs(40),
        Worker::new(backend.clone(), registry, opts(concurrency)).run_until_idle(),
    )
    .await
    .expect("the worker did not go idle in time")
    .expect("the worker stopped with an error");
}

async fn enqueue(backend: &AiBackend, id: &str, req: EnqueueRequest) -> String {
    backend
        .jobs()
        .enqueue(&ctx(id), req)
        .await
        .unwrap()
        .id
        .to_string()
}

#[tokio::test]
async fn a_panicking_handler_fails_its_job_and_the_worker_runs_the_next() {
    let (redis, db) = (TestRedis::new().await, TestDb::new().await);
    let backend = backend_on(&db, &redis, &[]).await;
    let panics = enqueue(&backend, "req-panic-1", EnqueueRequest::new("t.panic")).await;
    let after = enqueue(&backend, "req-panic-2", EnqueueRequest::new("t.after")).await;
    let mut reg = TaskRegistry::new();
    reg.register(
        "t.panic",
        |_: TaskContext, args: Vec<Value>, _| async move {
            if args.is_empty() {
                panic!("boom in the handler");
            }
            Ok(Value::Null)
        },
    );
    reg.register("t.after", |_: TaskContext, _: Vec<Value>, _| async {
        Ok(json!("still here"))
    });
    // One slot: the second job runs on the same worker, after the panic.
    drain(&backend, reg, 1).await;

    let failed = backend.jobs().job_result(&panics).await.unwrap();
    assert_eq!(failed.state, JobState::Failure, "{failed:?}");
    assert_eq!(failed.result["exc_type"], "RuntimeError", "{failed:?}");
    assert!(
        failed.result["exc_message"]
            .to_string()
            .contains("boom in the handler"),
        "{failed:?}"
    );
    let next = backend.jobs().job_result(&after).await.unwrap();
    assert_eq!(next.state, JobState::Success, "{next:?}");
    assert_eq!(next.result, "still here");
    let mut conn = redis.conn().await;
    assert_eq!(count(&mut conn, "unacked").await, 0, "the panic was acked");
    assert_eq!(count(&mut conn, "default").await, 0);
}

#[tokio::test]
async fn a_retry_without_a_countdown_waits_two_to_the_power_of_the_retries_seconds() {
    let (redis, db) = (TestRedis::new().await, TestDb::new().await);
    let backend = backend_on(&db, &redis, &[]).await;
    let id = enqueue(&backend, "req-backoff", EnqueueRequest::new("t.backoff")).await;
    let attempts = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
    let mut reg = TaskRegistry::new();
    let seen = attempts.clone();
    reg.register("t.backoff", move |ctx: TaskContext, _: Vec<Value>, _| {
        seen.lock().unwrap().push((ctx.retries, Instant::now()));
        async move {
            if ctx.retries < 3 {
                Err(TaskError::retry("not yet"))
            } else {
                Ok(json!(ctx.retries))
            }
        }
    });
    drain(&backend, reg, 1).await;

    let r = backend.jobs().job_result(&id).await.unwrap();
    assert_eq!(r.state, JobState::Success, "{r:?}");
    assert_eq!(r.result, 3);
    let attempts = attempts.lock().unwrap().clone();
    let retries: Vec<u32> = attempts.iter().map(|(n, _)| *n).collect();
    assert_eq!(retries, [0, 1, 2, 3]);
    // Retry n (n = 0, 1, 2) comes 2^n s after attempt n: 1 s, 2 s, 4 s. The lower bound is
    // exact (the ETA is set after the attempt ended); the upper one allows a loaded box.
    for (n, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].1 - pair[0].1;
        let want = Duration::from_secs(1 << n);
        assert!(
            gap >= want && gap < want + Duration::from_millis(1500),
            "retry {n}: {gap:?} after the attempt, want 2^{n} s = {want:?}"
        );
    }
}

#[tokio::test]
async fn a_job_revoked_while_reserved_by_a_worker_never_runs() {
    let (redis, db) = (TestRedis::new().await, TestDb::new().await);
    let backend = backend_on(&db, &redis, &[]).await;
    let conn = redis.conn().await;
    // One slot, four prefetched: the second job waits in the worker's hand.
    let _worker = ChildWorker::spawn(
        &vars_for(&db, &redis, &[]),
        &["-Q", "default", "-c", "1", "--prefetch-multiplier", "4"],
    );
    let busy = enqueue(
        &backend,
        "req-reserved-1",
        EnqueueRequest::new("xenios.sleep")
            .kwargs(json!({"seconds": 4}))
            .unwrap(),
    )
    .await;
    wait_taken(
        &conn,
        "default",
        1,
        "the worker to take the first job",
        Duration::from_secs(20),
    )
    .await;
    let reserved = enqueue(
        &backend,
        "req-reserved-2",
        EnqueueRequest::new("xenios.echo")
            .args(("must not run",))
            .unwrap(),
    )
    .await;
    wait_taken(
        &conn,
        "default",
        2,
        "the second job to be reserved",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        backend.jobs().job_result(&busy).await.unwrap().state,
        JobState::Pending,
        "the first job still holds the only slot"
    );
    backend.jobs().revoke(&reserved, false).await.unwrap();

    let r = backend
        .jobs()
        .wait_result(&reserved, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Revoked, "{r:?}");
    assert_eq!(r.result["exc_type"], "TaskRevokedError", "{r:?}");
    let first = backend
        .jobs()
        .wait_result(&busy, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(first.state, JobState::Success, "{first:?}");
    wait_for("nothing held", Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move { (count(&mut conn, "unacked").await == 0).then_some(()) }
    })
    .await;
    assert_eq!(
        backend.jobs().job_result(&reserved).await.unwrap().state,
        JobState::Revoked
    );
}

#[tokio::test]
async fn a_job_outliving_the_visibility_timeout_runs_once_while_another_worker_watches() {
    let (redis, db) = (TestRedis::new().await, TestDb::new().await);
    let upstream = FakeOpenRouter::start(Replies::ok()).await;
    let base = upstream.base_url();
    // Held messages are restored 3 s after their last sign of life; the job takes 10 s.
    let extra = [
        ("JOB_VISIBILITY_TIMEOUT_SECS", "3"),
        ("OPENROUTER_API_KEY", "sk-or-test-key"),
        ("OPENROUTER_BASE_URL", base.as_str()),
        ("LLM_ALLOWED_MODELS", "*"),
        ("LLM_MAX_RETRIES", "0"),
        ("LLM_TIMEOUT_MS", "30000"),
    ];
    let backend = backend_on(&db, &redis, &extra).await;
    let (health_a, health_b) = (HealthFile::new(), HealthFile::new());
    let mut workers = Vec::new();
    for (name, health) in [("a@%h", &health_a), ("b@%h", &health_b)] {
        let mut vars = vars_for(&db, &redis, &extra);
        vars.insert("WORKER_HEALTH_FILE".into(), health.path());
        workers.push(ChildWorker::spawn(
            &vars,
            &["-Q", "llm", "-c", "1", "-n", name],
        ));
    }
    wait_for("both workers up", Duration::from_secs(30), || async {
        (health_a.0.exists() && health_b.0.exists()).then_some(())
    })
    .await;
    let model = "p/hold-10000";
    let id = enqueue(
        &backend,
        "req-lease",
        EnqueueRequest::new("xenios.llm.complete")
            .kwargs(json!({"prompt": "take your time", "models": [model]}))
            .unwrap(),
    )
    .await;
    let r = backend
        .jobs()
        .wait_result(&id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Success, "{r:?}");
    let conn = redis.conn().await;
    // A copy restored and taken by the other worker would still be held (or queued).
    wait_for("nothing held or queued", Duration::from_secs(15), || {
        let mut conn = conn.clone();
        async move {
            (count(&mut conn, "unacked").await == 0 && count(&mut conn, "llm").await == 0)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        upstream.state().count(model),
        1,
        "the job ran more than once: its lease was not refreshed"
    );
    drop(workers);
}

/// A Celery protocol-2 message of `task` with id `id`, built on the captured one.
fn celery_message(id: &str, task: &str, args: Value, kwargs: Value) -> String {
    let path = xenios_tests::workspace_root().join("tests/fixtures/celery/task-message.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let body =
        json!([args, kwargs, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]);
    m["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body.to_string()));
    m["headers"]["id"] = json!(id);
    m["headers"]["root_id"] = json!(id);
    m["headers"]["task"] = json!(task);
    m["headers"]["argsrepr"] = json!(args.to_string());
    m["headers"]["kwargsrepr"] = json!(kwargs.to_string());
    m["properties"]["correlation_id"] = json!(id);
    m["properties"]["delivery_tag"] = json!(uuid::Uuid::new_v4().to_string());
    m["properties"]["delivery_info"]["routing_key"] = json!("default");
    m.to_string()
}

#[tokio::test]
async fn a_stored_success_is_never_overwritten_by_a_later_delivery_of_the_same_job() {
    let (redis, db) = (TestRedis::new().await, TestDb::new().await);
    let backend = backend_on(&db, &redis, &[]).await;
    let mut conn = redis.conn().await;
    let _worker = ChildWorker::spawn(&vars_for(&db, &redis, &[]), &["-Q", "default", "-c", "2"]);
    let id = uuid::Uuid::new_v4().to_string();
    let push = |payload: String| {
        let mut conn = conn.clone();
        async move {
            let _: () = redis::cmd("LPUSH")
                .arg("default")
                .arg(payload)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    let settled = || {
        let conn = conn.clone();
        async move {
            wait_for(
                "the delivery to be concluded",
                Duration::from_secs(20),
                || {
                    let mut conn = conn.clone();
                    async move {
                        (count(&mut conn, "default").await == 0
                            && count(&mut conn, "unacked").await == 0)
                            .then_some(())
                    }
                },
            )
            .await;
        }
    };
    push(celery_message(
        &id,
        "xenios.echo",
        json!(["first"]),
        json!({}),
    ))
    .await;
    let r = backend
        .jobs()
        .wait_result(&id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        (r.state, r.result.clone()),
        (JobState::Success, json!(["first"]))
    );
    settled().await;

    // The same job delivered again (a producer's resend, a restore after a lost ack):
    // it may run, but its outcome is not stored over the SUCCESS...
    push(celery_message(
        &id,
        "xenios.echo",
        json!(["second"]),
        json!({}),
    ))
    .await;
    settled().await;
    push(celery_message(
        &id,
        "xenios.fail",
        json!([]),
        json!({"message": "a late failure"}),
    ))
    .await;
    settled().await;
    // ...nor is a revoke that meets a later copy.
    backend.jobs().revoke(&id, false).await.unwrap();
    push(celery_message(
        &id,
        "xenios.echo",
        json!(["third"]),
        json!({}),
    ))
    .await;
    settled().await;

    let r = backend.jobs().job_result(&id).await.unwrap();
    assert_eq!(r.state, JobState::Success, "{r:?}");
    assert_eq!(r.result, json!(["first"]), "{r:?}");
    let raw: String = redis::cmd("GET")
        .arg(format!("celery-task-meta-{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let meta: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(meta["status"], "SUCCESS", "{meta}");
}
