//! Interoperability with real Celery 5.6.3, kombu 5.7.0 and Flower 2.2.0 from PyPI
//! (pinned in tests/python/requirements.txt; the venv comes from XENIOS_PYTHON or
//! scripts/py-venv.sh, never skipped).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;
use xenios_tests::process::CommandExt as _;

use serde_json::{Value, json};
use xenios_core::jobs::{
    EnqueueRequest, JobState, TaskContext, TaskRegistry, Worker, WorkerOptions, tasks,
};
use xenios_core::redis::redis;
use xenios_core::{AiBackend, CorrelationId, RequestContext};
use xenios_tests::jobs_support::{
    ChildProcess, ChildWorker, backend_on, count, list, python, python_dir, vars_for, wait_taken,
};
use xenios_tests::{TestDb, TestRedis, free_port, wait_for};

fn ctx(id: &str) -> RequestContext {
    RequestContext::new(
        CorrelationId::parse(id).unwrap(),
        xenios_core::auth::Principal::Service,
    )
}

fn python_cmd(redis: &TestRedis) -> Command {
    let mut cmd = Command::new(python());
    cmd.current_dir(python_dir())
        .env("XENIOS_TEST_BROKER", &redis.url)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Our worker in the test process until the returned sender fires.
fn spawn_worker(
    backend: &AiBackend,
    hostname: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<xenios_core::Result<xenios_core::jobs::WorkerSummary>>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(
        backend.clone(),
        tasks::builtin_registry(&backend.config().jobs),
        WorkerOptions {
            queues: vec!["default".into()],
            concurrency: 2,
            hostname: Some(hostname.to_owned()),
            prefetch_multiplier: 4,
        },
    );
    let handle = tokio::spawn(worker.run(async {
        let _ = rx.await;
    }));
    (tx, handle)
}

/// Runs `celery_interop.py` with `args` to its end and reads the JSON of its last line;
/// `what` names it when it fails.
async fn python_json(redis: &TestRedis, args: &[&str], what: &str) -> Value {
    let mut cmd = python_cmd(redis);
    cmd.arg("celery_interop.py").args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output_within_deadline())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("bad output {stdout:?}: {e}"))
}

async fn python_send(redis: &TestRedis, task: &str, queue: &str, args: Value) -> Value {
    let args = args.to_string();
    python_json(
        redis,
        &["send", task, queue, &args, "30"],
        "python producer",
    )
    .await
}

#[tokio::test]
async fn jobs_interop_python_producer_gets_results_from_our_worker() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let (stop, worker) = spawn_worker(&backend, "rust-interop@%h");
    let ok = python_send(
        &redis,
        "xenios.echo",
        "default",
        json!([2, "three", {"k": [1]}]),
    )
    .await;
    assert_eq!(ok["result"], json!([2, "three", {"k": [1]}]), "{ok}");
    // Our failure comes back as the Python exception Celery rebuilds from its shape.
    let failed = python_send(&redis, "xenios.fail", "default", json!([])).await;
    assert_eq!(failed["error"], "ValueError", "{failed}");
    assert_eq!(failed["message"], "failed on request", "{failed}");
    stop.send(()).unwrap();
    let summary = worker.await.unwrap().unwrap();
    assert_eq!((summary.succeeded, summary.failed), (1, 1));
}

#[tokio::test]
async fn jobs_interop_our_producer_feeds_a_python_celery_worker() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let mut cmd = python_cmd(&redis);
    cmd.args([
        "-m",
        "celery",
        "-A",
        "celery_interop",
        "worker",
        "-Q",
        "pyq",
        "-c",
        "1",
        "-P",
        "solo",
        "-n",
        "py-interop@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "warning",
    ]);
    let _py_worker = ChildProcess::spawn(&mut cmd);
    let c = ctx("req-to-python");
    let add = backend
        .jobs()
        .enqueue(
            &c,
            EnqueueRequest::new("interop.add")
                .args((2, 3))
                .unwrap()
                .queue("pyq"),
        )
        .await
        .unwrap()
        .id;
    let headers = backend
        .jobs()
        .enqueue(&c, EnqueueRequest::new("interop.headers").queue("pyq"))
        .await
        .unwrap()
        .id;
    let r = backend
        .jobs()
        .wait_result(add.as_str(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((r.state, r.result), (JobState::Success, json!(5)));
    let r = backend
        .jobs()
        .wait_result(headers.as_str(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Success, "{r:?}");
    assert_eq!(r.result["correlation_id"], "req-to-python", "{r:?}");
    assert_eq!(r.result["delivery_info"], "pyq", "{r:?}");
}

/// What our worker held when it was SIGKILLed is put back by kombu's own restore (a Python
/// worker's `restore_visible`), and our next worker runs it: the `unacked` entry is kombu's
/// `[envelope, exchange, routing_key]`, filed under the taker's own tag, not the message's.
#[tokio::test]
async fn jobs_interop_kombu_restores_what_our_killed_worker_held() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let mut conn = redis.conn().await;
    let mut victim = ChildWorker::spawn(
        &vars_for(&db, &redis, &[]),
        &["-Q", "default", "-c", "1", "-n", "victim@%h"],
    );
    let id = backend
        .jobs()
        .enqueue(
            &ctx("req-kombu-restore"),
            EnqueueRequest::new("xenios.sleep")
                .kwargs(json!({"seconds": 1.0}))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    wait_taken(
        &conn,
        "default",
        1,
        "the victim to take the job",
        Duration::from_secs(20),
    )
    .await;
    victim.kill();
    let held: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("unacked")
        .query_async(&mut conn)
        .await
        .unwrap();
    let [(tag, entry)] = held.as_slice() else {
        panic!("one unacked entry expected: {held:?}")
    };
    let entry: Value = serde_json::from_str(entry).unwrap();
    assert_eq!(entry[0]["headers"]["id"], id.as_str(), "{entry}");
    assert_eq!((&entry[1], &entry[2]), (&json!(""), &json!("default")));
    assert_ne!(entry[0]["properties"]["delivery_tag"], json!(tag));

    let left = python_json(&redis, &["restore"], "kombu's restore").await;
    assert_eq!(left, json!({"unacked": 0}));
    assert_eq!(count(&mut conn, "unacked_index").await, 0);
    let back: Vec<String> = list(&mut conn, "default").await;
    let [back] = back.as_slice() else {
        panic!("the job is back on its queue, once: {back:?}")
    };
    let back: Value = serde_json::from_str(back).unwrap();
    assert_eq!(back["headers"]["id"], id.as_str());
    assert_eq!(back["headers"]["redelivered"], json!(true));

    let (stop, rescuer) = spawn_worker(&backend, "rescuer@%h");
    let r = backend
        .jobs()
        .wait_result(id.as_str(), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(r.state, JobState::Success, "{r:?}");
    assert!(r.worker.unwrap().starts_with("rescuer@"));
    stop.send(()).unwrap();
    rescuer.await.unwrap().unwrap();
    assert_eq!(count(&mut conn, "unacked").await, 0);
}

#[tokio::test]
async fn jobs_interop_flower_lists_our_worker_and_its_tasks() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let (stop, worker) = spawn_worker(&backend, "rust-flower@%h");
    let port = free_port();
    let mut cmd = python_cmd(&redis);
    cmd.env("FLOWER_UNAUTHENTICATED_API", "true").args([
        "-m",
        "celery",
        "-A",
        "celery_interop",
        "flower",
        "--address=127.0.0.1",
        &format!("--port={port}"),
        "--inspect_timeout=3000",
        "--logging=warning",
    ]);
    let _flower = ChildProcess::spawn(&mut cmd);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // Flower is up and receiving events before we run tasks (events are not replayed).
    wait_for(
        "flower to see our worker's heartbeat",
        Duration::from_secs(60),
        || {
            let http = http.clone();
            let url = format!("{base}/api/workers?status=1");
            async move {
                let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let (name, _) = v
                    .as_object()?
                    .iter()
                    .find(|(k, _)| k.starts_with("rust-flower@"))?;
                (v[name] == json!(true)).then_some(())
            }
        },
    )
    .await;
    let c = ctx("req-flower");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            backend
                .jobs()
                .enqueue(&c, EnqueueRequest::new("xenios.echo").args((i,)).unwrap())
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        let r = backend
            .jobs()
            .wait_result(id.as_str(), Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(r.state, JobState::Success);
    }
    let tasks: Value = wait_for(
        "flower to list our tasks as succeeded",
        Duration::from_secs(30),
        || {
            let http = http.clone();
            let url = format!("{base}/api/tasks");
            let ids = ids.clone();
            async move {
                let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                ids.iter()
                    .all(|id| v[id.as_str()]["state"] == "SUCCESS")
                    .then_some(v)
            }
        },
    )
    .await;
    let t = &tasks[ids[0].as_str()];
    assert_eq!(t["name"], "xenios.echo");
    assert!(
        t["worker"].as_str().unwrap().starts_with("rust-flower@"),
        "{t}"
    );
    // The inspect-based view: stats, active_queues, registered... through our pidbox replies.
    let workers: Value = wait_for(
        "flower's inspect of our worker",
        Duration::from_secs(30),
        || {
            let http = http.clone();
            let url = format!("{base}/api/workers?refresh=1");
            async move {
                let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let (_, w) = v
                    .as_object()?
                    .iter()
                    .find(|(k, _)| k.starts_with("rust-flower@"))?;
                (w.get("registered").is_some()
                    && w.get("active_queues").is_some()
                    && w["stats"]["total"]["xenios.echo"] == 3)
                    .then(|| w.clone())
            }
        },
    )
    .await;
    assert!(
        workers["registered"]
            .as_array()
            .unwrap()
            .contains(&json!("xenios.echo")),
        "{workers}"
    );
    assert_eq!(workers["active_queues"][0]["name"], "default", "{workers}");
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn jobs_interop_celery_remote_control_terminates_limits_and_shuts_down_our_worker() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let worker = Worker::new(
        backend.clone(),
        tasks::builtin_registry(&backend.config().jobs),
        WorkerOptions {
            queues: vec!["default".into()],
            concurrency: 4,
            hostname: Some("rust-ctl@%h".to_owned()),
            prefetch_multiplier: 4,
        },
    );
    let host = worker.hostname();
    // Never stopped from here: only Celery's `shutdown` command ends it.
    let handle = tokio::spawn(worker.run(std::future::pending::<()>()));
    let seen = python_json(&redis, &["control", &host], "python control").await;
    let reply = |k: &str| seen[k][0][&host].clone();

    assert_eq!(seen["active_before_terminate"], true, "{seen}");
    assert!(
        reply("terminate_reply")["ok"]
            .as_str()
            .unwrap()
            .starts_with("terminate: "),
        "{seen}"
    );
    assert_eq!(seen["terminated"]["state"], "REVOKED", "{seen}");
    assert_eq!(seen["terminated"]["error"], "TaskRevokedError", "{seen}");
    assert!(seen["terminate_secs"].as_f64().unwrap() < 30.0, "{seen}");

    assert_eq!(
        reply("time_limit_reply"),
        json!({"ok": "time limits set successfully"})
    );
    assert_eq!(
        reply("time_limit_unknown"),
        json!({"error": "unknown task"})
    );
    assert_eq!(seen["time_limited"]["state"], "FAILURE", "{seen}");
    assert_eq!(
        seen["time_limited"]["error"], "SoftTimeLimitExceeded",
        "{seen}"
    );

    assert_eq!(
        reply("rate_limit_reply"),
        json!({"ok": "new rate limit set successfully"})
    );
    assert!(
        reply("rate_limit_bad")["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid rate limit string"),
        "{seen}"
    );
    // Four tasks at 2/s: the last starts at least 1.5 s after the first (less clock slack).
    assert!(
        seen["rate_limited_span_secs"].as_f64().unwrap() >= 1.3,
        "{seen}"
    );
    assert_eq!(
        reply("rate_limit_off"),
        json!({"ok": "rate limit disabled successfully"})
    );

    // `shutdown` ended the worker warmly.
    let summary = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("worker did not shut down on Celery's shutdown command")
        .unwrap()
        .unwrap();
    assert_eq!(summary.revoked, 1, "{summary:?}");
    assert_eq!(summary.failed, 1, "{summary:?}");
    assert_eq!(summary.succeeded, 4, "{summary:?}");
}

/// A file of the Celery traffic captured from real Celery 5.6.3 (`tests/fixtures/celery`).
fn celery_fixture(name: &str) -> String {
    let path = xenios_tests::workspace_root()
        .join("tests/fixtures/celery")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn a_task_message_captured_from_celery_runs_on_our_worker_as_sent() {
    // The message exactly as Celery's `apply_async` LPUSHed it (protocol 2, base64 body).
    let raw = celery_fixture("task-message.json");
    let captured: Value = serde_json::from_str(&raw).unwrap();
    let id = captured["headers"]["id"].as_str().unwrap().to_owned();
    let queue = captured["properties"]["delivery_info"]["routing_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(captured["headers"]["task"], "tasks.add");

    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    // Celery's default queue is `celery`; our worker serves it for the task's name.
    let routes = format!("tasks.={queue}");
    let backend = backend_on(&db, &redis, &[("JOB_ROUTES", routes.as_str())]).await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("LPUSH")
        .arg(&queue)
        .arg(raw.trim_end())
        .query_async(&mut conn)
        .await
        .unwrap();

    let got = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mut reg = TaskRegistry::new();
    let g = got.clone();
    reg.register(
        "tasks.add",
        move |ctx: TaskContext, args: Vec<Value>, kwargs| {
            let g = g.clone();
            async move {
                *g.lock().unwrap() =
                    Some((ctx.task_id.clone(), args.clone(), Value::Object(kwargs)));
                let sum = args.iter().filter_map(Value::as_i64).sum::<i64>();
                Ok(json!(sum))
            }
        },
    );
    tokio::time::timeout(
        Duration::from_secs(30),
        Worker::new(
            backend.clone(),
            reg,
            WorkerOptions {
                queues: vec![queue.clone()],
                concurrency: 1,
                hostname: Some("fixture@%h".to_owned()),
                prefetch_multiplier: 1,
            },
        )
        .run_until_idle(),
    )
    .await
    .expect("worker did not go idle in time")
    .unwrap();

    let (task_id, args, kwargs) = got.lock().unwrap().clone().expect("tasks.add never ran");
    assert_eq!(task_id, id);
    assert_eq!(args, [json!(2), json!(3)]);
    assert_eq!(kwargs, json!({}));
    let meta: String = redis::cmd("GET")
        .arg(format!("celery-task-meta-{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let meta: Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["status"], "SUCCESS", "{meta}");
    assert_eq!(meta["result"], 5, "{meta}");
    assert_eq!(meta["task_id"], id.as_str(), "{meta}");
}
