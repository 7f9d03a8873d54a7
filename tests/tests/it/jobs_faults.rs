//! The job queue under faults, with real processes: Redis SIGKILLed and restarted under HTTP
//! enqueues, the network between worker and Redis cut, a poisoned finish batch, Redis at
//! `maxmemory`, absurd time limits and control commands, a shutdown deadline, a worker on a
//! queue it cannot serve, a worker started before Redis, and the worker's health check.
//! Redis is killed or reconfigured only when it is a private `redis-server` the test started
//! itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xenios_core::jobs::{EnqueueRequest, TaskError, Worker, WorkerOptions, tasks};
use xenios_core::redis::redis;
use xenios_core::{AiBackend, CorrelationId, RequestContext};
use xenios_tests::faults::{DurableRedis, HealthFile, run_worker};
use xenios_tests::jobs_support::{ChildWorker, backend_on, count, list, wait_taken};
use xenios_tests::{
    API_KEY, RedisProcess, TcpProxy, TestApp, TestDb, TestRedis, test_vars, url_via_port, wait_for,
};

fn ctx() -> RequestContext {
    RequestContext::new(
        CorrelationId::parse("faults-test").unwrap(),
        xenios_core::auth::Principal::Service,
    )
}

/// Runs the built-in tasks until the queues are empty, failing with `what` after 30 s.
async fn drain_builtin(backend: &AiBackend, what: &str) {
    tokio::time::timeout(
        Duration::from_secs(30),
        Worker::new(
            backend.clone(),
            tasks::builtin_registry(&backend.config().jobs),
            opts(2),
        )
        .run_until_idle(),
    )
    .await
    .expect(what)
    .unwrap();
}

fn opts(concurrency: usize) -> WorkerOptions {
    WorkerOptions {
        queues: vec!["default".to_owned()],
        concurrency,
        hostname: Some("faults@%h".to_owned()),
        prefetch_multiplier: 4,
    }
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The stored status of a job, if any.
async fn status(c: &mut redis::aio::MultiplexedConnection, id: &str) -> Option<String> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(format!("celery-task-meta-{id}"))
        .query_async(c)
        .await
        .ok()?;
    let v: Value = serde_json::from_str(&raw?).ok()?;
    v["status"].as_str().map(str::to_owned)
}

/// Waits until every job of `ids` has a stored result; returns their statuses.
async fn wait_results(url: &str, ids: &[String], deadline: Duration) -> Vec<String> {
    let url = url.to_owned();
    wait_for("a result for every accepted job", deadline, || {
        let url = url.clone();
        async move {
            let mut c = redis::Client::open(url.as_str())
                .ok()?
                .get_multiplexed_async_connection()
                .await
                .ok()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(status(&mut c, id).await?);
            }
            Some(out)
        }
    })
    .await
}

async fn post_job(app: &TestApp, body: Value) -> Result<(u16, Value), reqwest::Error> {
    let r = app
        .client
        .post(app.url("/api/v1/jobs"))
        .header("x-api-key", API_KEY)
        .json(&body)
        .timeout(Duration::from_secs(15))
        .send()
        .await?;
    let code = r.status().as_u16();
    Ok((code, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_redis_sigkilled_and_restarted_under_http_enqueues_loses_no_accepted_job() {
    let mut redis = DurableRedis::start().await;
    let db = TestDb::new().await;
    let health = HealthFile::new();
    let mut vars = test_vars(&db, &redis.url());
    vars.insert("WORKER_HEALTH_FILE".into(), health.path());
    // A take whose reply the SIGKILL swallowed is restored after this, not after an hour.
    vars.insert("JOB_VISIBILITY_TIMEOUT_SECS".into(), "8".into());
    vars.insert("RATE_LIMIT_PER_MINUTE".into(), "1000000".into());
    vars.insert("RATE_LIMIT_BURST".into(), "100000".into());
    let app = Arc::new(TestApp::spawn_on(db, None, vars.clone()).await);
    let _worker = ChildWorker::spawn(&vars, &["-Q", "default", "-c", "8"]);

    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (app, accepted, refused, stop) =
            (app.clone(), accepted.clone(), refused.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = json!({"task": "xenios.echo", "args": [p, i]});
                match post_job(&app, body).await {
                    Ok((202, b)) => accepted
                        .lock()
                        .unwrap()
                        .push(b["id"].as_str().unwrap().to_owned()),
                    Ok((503, b)) => {
                        assert_eq!(b["error"]["code"], "queue_unavailable", "{b}");
                        refused.fetch_add(1, Ordering::Relaxed);
                        // Do not spin on a refused enqueue.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok((code, b)) => panic!("enqueue answered {code}: {b}"),
                    Err(e) => panic!("enqueue failed: {e}"),
                }
            }
        }));
    }
    let n_accepted = || accepted.lock().unwrap().len();
    wait_for(
        "jobs accepted before the kill",
        Duration::from_secs(20),
        || async { (n_accepted() >= 50).then_some(()) },
    )
    .await;
    redis.kill();
    wait_for(
        "enqueues refused while Redis is down",
        Duration::from_secs(20),
        || async { (refused.load(Ordering::Relaxed) >= 3).then_some(()) },
    )
    .await;
    let before_restart = n_accepted();
    redis.start_again().await;
    let restarted = Instant::now();
    wait_for(
        "enqueues accepted after the restart",
        Duration::from_secs(20),
        || async { (n_accepted() >= before_restart + 50).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let ids = accepted.lock().unwrap().clone();
    let statuses = wait_results(&redis.url(), &ids, Duration::from_secs(45)).await;
    assert!(statuses.iter().all(|s| s == "SUCCESS"), "{statuses:?}");
    eprintln!(
        "accepted {}, refused {}, all results {:?} after the restart",
        ids.len(),
        refused.load(Ordering::Relaxed),
        restarted.elapsed()
    );
    let mut c = conn(&redis.url()).await;
    assert_eq!(count(&mut c, "default").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_network_cut_for_10s_between_worker_and_redis_then_the_queue_drains() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let target: std::net::SocketAddr = {
        let u = url::Url::parse(&redis.url).unwrap();
        format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(6379))
            .parse()
            .unwrap()
    };
    let mut proxy = TcpProxy::start(target).await;
    let health = HealthFile::new();
    let mut vars = test_vars(&db, &url_via_port(&redis.url, proxy.port));
    vars.insert("WORKER_HEALTH_FILE".into(), health.path());
    let _worker = ChildWorker::spawn(&vars, &["-Q", "default", "-c", "4"]);
    let enqueue = |n: usize| {
        let backend = backend.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                let req = EnqueueRequest::new("xenios.echo").args(json!([i])).unwrap();
                ids.push(
                    backend
                        .jobs()
                        .enqueue(&ctx(), req)
                        .await
                        .unwrap()
                        .id
                        .into_string(),
                );
            }
            ids
        }
    };
    let first = enqueue(5).await;
    wait_results(&redis.url, &first, Duration::from_secs(30)).await;

    proxy.cut();
    let during = enqueue(20).await;
    // The outage itself lasts 10 s (the scenario, not a wait for a condition).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut c = redis.conn().await;
    assert_eq!(
        count(&mut c, "default").await,
        20,
        "nothing drains while cut"
    );
    proxy.restore().await;
    let back = Instant::now();
    let statuses = wait_results(&redis.url, &during, Duration::from_secs(15)).await;
    assert!(statuses.iter().all(|s| s == "SUCCESS"), "{statuses:?}");
    eprintln!("drained {:?} after the network came back", back.elapsed());
    assert!(
        back.elapsed() < Duration::from_secs(10),
        "draining resumed only after {:?}",
        back.elapsed()
    );
}

/// `CONFIG SET maxmemory` on the test's private Redis ("1": every write refused, "0": none).
async fn set_maxmemory(c: &mut redis::aio::MultiplexedConnection, bytes: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .query_async(c)
        .await
        .unwrap();
}

#[tokio::test]
async fn faults_a_poisoned_item_never_blocks_the_rest_of_its_finish_batch() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let retried = Arc::new(AtomicUsize::new(0));
    let mut registry = tasks::builtin_registry(&backend.config().jobs);
    let r = retried.clone();
    registry.register("test.retry_once", move |ctx, _, _| {
        let r = r.clone();
        async move {
            if ctx.retries == 0 {
                r.fetch_add(1, Ordering::Relaxed);
                Err(TaskError::retry_in("once", Duration::ZERO))
            } else {
                Ok(json!("second time"))
            }
        }
    });
    let mut ids = Vec::new();
    for i in 0..30 {
        let req = EnqueueRequest::new("xenios.echo").args(json!([i])).unwrap();
        ids.push(
            backend
                .jobs()
                .enqueue(&ctx(), req)
                .await
                .unwrap()
                .id
                .into_string(),
        );
    }
    let retry_id = backend
        .jobs()
        .enqueue(&ctx(), EnqueueRequest::new("test.retry_once"))
        .await
        .unwrap()
        .id
        .into_string();
    // The result key of one job is a list: storing its result fails with WRONGTYPE.
    let poisoned = ids[7].clone();
    let mut c = redis.conn().await;
    let _: () = redis::cmd("LPUSH")
        .arg(format!("celery-task-meta-{poisoned}"))
        .arg("not a result")
        .query_async(&mut c)
        .await
        .unwrap();
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        Worker::new(backend.clone(), registry, opts(8)).run_until_idle(),
    )
    .await
    .expect("a poisoned item wedged the worker")
    .unwrap();
    for id in ids.iter().filter(|id| **id != poisoned) {
        assert_eq!(status(&mut c, id).await.as_deref(), Some("SUCCESS"), "{id}");
    }
    assert_eq!(status(&mut c, &retry_id).await.as_deref(), Some("SUCCESS"));
    assert_eq!(retried.load(Ordering::Relaxed), 1, "the retry ran once");
    assert_eq!(summary.succeeded, 31, "{summary:?}");
    // The poisoned delivery is not left unacked (nor retried forever): it is dead-lettered.
    assert_eq!(count(&mut c, "unacked").await, 0);
    assert_eq!(count(&mut c, "default").await, 0);
    let dead: Vec<String> = list(&mut c, "xenios.dead_letter").await;
    assert!(
        dead.iter().any(|d| d.contains(&poisoned)),
        "the poisoned delivery is dead-lettered: {dead:?}"
    );
    assert_eq!(summary.dead_lettered, 1, "{summary:?}");
}

#[tokio::test]
async fn faults_redis_at_maxmemory_refuses_enqueues_with_503_and_wedges_nothing() {
    let redis = RedisProcess::start().await;
    let db = TestDb::new().await;
    let mut vars = test_vars(&db, &redis.url());
    vars.insert("JOB_VISIBILITY_TIMEOUT_SECS".into(), "1".into());
    let app = TestApp::spawn_on(db, None, vars).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (code, b) = post_job(&app, json!({"task": "xenios.echo", "args": [i]}))
            .await
            .unwrap();
        assert_eq!(code, 202, "{b}");
        ids.push(b["id"].as_str().unwrap().to_owned());
    }
    let mut c = conn(&redis.url()).await;
    set_maxmemory(&mut c, "1").await;
    let (code, b) = post_job(&app, json!({"task": "xenios.echo", "args": ["oom"]}))
        .await
        .unwrap();
    assert_eq!(code, 503, "{b}");
    assert_eq!(b["error"]["code"], "queue_unavailable", "{b}");
    drain_builtin(&app.backend, "a full Redis wedged the worker").await;
    set_maxmemory(&mut c, "0").await;
    let (code, b) = post_job(&app, json!({"task": "xenios.echo", "args": ["after"]}))
        .await
        .unwrap();
    assert_eq!(code, 202, "{b}");
    ids.push(b["id"].as_str().unwrap().to_owned());
    // Whatever could not be stored meanwhile is still unacked and is restored now.
    drain_builtin(&app.backend, "worker did not go idle").await;
    let statuses = wait_results(&redis.url(), &ids, Duration::from_secs(10)).await;
    assert!(statuses.iter().all(|s| s == "SUCCESS"), "{statuses:?}");
}

/// Publishes a raw envelope on the default queue.
async fn push_raw(c: &mut redis::aio::MultiplexedConnection, v: &Value) {
    let _: () = redis::cmd("LPUSH")
        .arg("default")
        .arg(v.to_string())
        .query_async(c)
        .await
        .unwrap();
}

#[tokio::test]
async fn faults_absurd_time_limits_and_control_commands_are_clamped_never_a_panic() {
    static PANICKED: AtomicBool = AtomicBool::new(false);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        default_hook(info);
    }));
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[("JOB_MAX_TIME_LIMIT_SECS", "1")]).await;
    let mut registry = tasks::builtin_registry(&backend.config().jobs);
    registry.register("test.quick", |_, _, _| async { Ok(json!("ok")) });
    let mut c = redis.conn().await;
    let message = |task: &str, timelimit: Value| {
        let m = backend
            .jobs()
            .job_message(&ctx(), EnqueueRequest::new(task))
            .unwrap();
        let mut v: Value = serde_json::from_str(&m.encode()).unwrap();
        v["headers"]["timelimit"] = timelimit;
        (m.id, v)
    };
    let mut quick = Vec::new();
    for tl in [
        json!([1e20, 1e9]),
        json!([1e300, -1e300]),
        json!([-5, -1]),
        json!(["NaN", "inf"]),
        json!([0, 0]),
    ] {
        let (id, v) = message("test.quick", tl);
        push_raw(&mut c, &v).await;
        quick.push(id);
    }
    // A hard limit of 1e9 s would never fire: it is cut to JOB_MAX_TIME_LIMIT_SECS (1 s).
    let m = backend
        .jobs()
        .job_message(
            &ctx(),
            EnqueueRequest::new("xenios.sleep")
                .kwargs(json!({"seconds": 20}))
                .unwrap(),
        )
        .unwrap();
    let mut sv: Value = serde_json::from_str(&m.encode()).unwrap();
    sv["headers"]["timelimit"] = json!([1e9, null]);
    let slow = m.id.clone();
    push_raw(&mut c, &sv).await;

    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(backend.clone(), registry, opts(4)).run(async {
        let _ = rx.await;
    }));
    let mut statuses = wait_results(&redis.url, &quick, Duration::from_secs(20)).await;
    assert!(statuses.iter().all(|s| s == "SUCCESS"), "{statuses:?}");
    let started = Instant::now();
    statuses = wait_results(
        &redis.url,
        std::slice::from_ref(&slow),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        statuses,
        ["FAILURE"],
        "the clamped hard limit stopped the handler"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // Control commands with absurd values: `1e-300/s` and a 1e20 s time limit.
    let channel = format!("/{}.celery.pidbox", redis.db);
    for (method, args) in [
        (
            "rate_limit",
            json!({"task_name": "test.quick", "rate_limit": "1e-300/s"}),
        ),
        (
            "time_limit",
            json!({"task_name": "test.quick", "hard": 1e20, "soft": 1e19}),
        ),
        (
            "time_limit",
            json!({"task_name": "xenios.echo", "hard": -1}),
        ),
    ] {
        let req = xenios_tests::jobs_support::control_request(method, args);
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(req)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    // The worker still runs jobs afterwards (the commands were handled, not fatal).
    let after = backend
        .jobs()
        .enqueue(
            &ctx(),
            EnqueueRequest::new("xenios.echo").args(json!([1])).unwrap(),
        )
        .await
        .unwrap()
        .id
        .into_string();
    let statuses = wait_results(&redis.url, &[after], Duration::from_secs(20)).await;
    assert_eq!(statuses, ["SUCCESS"]);
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!PANICKED.load(Ordering::SeqCst), "something panicked");
}

#[tokio::test]
async fn faults_a_60s_job_running_at_shutdown_is_back_in_its_queue_within_the_deadline() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let health = HealthFile::new();
    let mut vars = test_vars(&db, &redis.url);
    vars.insert("WORKER_SHUTDOWN_TIMEOUT_SECS".into(), "2".into());
    vars.insert("WORKER_HEALTH_FILE".into(), health.path());
    let mut worker = ChildWorker::spawn(&vars, &["-Q", "default", "-c", "1"]);
    let req = EnqueueRequest::new("xenios.sleep")
        .kwargs(json!({"seconds": 60}))
        .unwrap();
    let id = backend
        .jobs()
        .enqueue(&ctx(), req)
        .await
        .unwrap()
        .id
        .into_string();
    let mut c = redis.conn().await;
    wait_taken(
        &c,
        "default",
        1,
        "the worker to take the job",
        Duration::from_secs(20),
    )
    .await;
    let stopping = Instant::now();
    worker.terminate();
    let exit = worker.wait(Duration::from_secs(20));
    let took = stopping.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        took >= Duration::from_secs(2),
        "it waited for the job: {took:?}"
    );
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert_eq!(count(&mut c, "unacked").await, 0);
    let queued: Vec<String> = list(&mut c, "default").await;
    assert_eq!(queued.len(), 1);
    assert!(queued[0].contains(&id));
    assert_eq!(status(&mut c, &id).await, None, "no result stored for it");
    assert!(!health.0.exists(), "a stopped worker leaves no health file");
}

#[tokio::test]
async fn faults_a_worker_on_a_queue_none_of_its_tasks_routes_to_refuses_to_start() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let vars = test_vars(&db, &redis.url);
    let out = run_worker(&vars, &["-Q", "default,extraction"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("extraction"), "{stderr}");
    assert!(
        !stderr.contains("default,"),
        "only the unhandled queue is named: {stderr}"
    );
    let mut c = redis.conn().await;
    assert_eq!(count(&mut c, "extraction").await, 0);
}

#[tokio::test]
async fn faults_worker_check_is_healthy_while_running_and_not_after_redis_is_gone() {
    let mut redis = RedisProcess::start().await;
    let db = TestDb::new().await;
    let health = HealthFile::new();
    let mut vars: HashMap<String, String> = test_vars(&db, &redis.url());
    vars.insert("WORKER_HEALTH_FILE".into(), health.path());
    vars.insert("WORKER_REDIS_GIVE_UP_SECS".into(), "3".into());
    assert!(
        !run_worker(&vars, &["--check"]).status.success(),
        "no worker yet"
    );
    let mut worker = ChildWorker::spawn(&vars, &["-Q", "default"]);
    wait_for("a healthy worker", Duration::from_secs(30), || async {
        run_worker(&vars, &["--check"])
            .status
            .success()
            .then_some(())
    })
    .await;
    redis.stop();
    let exit = worker.wait(Duration::from_secs(30));
    assert!(!exit.success(), "a worker without Redis gives up: {exit:?}");
    let out = run_worker(&vars, &["--check"]);
    assert!(!out.status.success());
    // A heartbeat older than WORKER_HEALTH_MAX_AGE_SECS is unhealthy too.
    std::fs::write(&health.0, "stale").unwrap();
    vars.insert("WORKER_HEALTH_MAX_AGE_SECS".into(), "1".into());
    wait_for("the heartbeat to age", Duration::from_secs(10), || async {
        (!run_worker(&vars, &["--check"]).status.success()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn faults_every_log_line_of_a_job_names_its_task_and_correlation_id() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let health = HealthFile::new();
    let mut vars = test_vars(&db, &redis.url);
    vars.insert("WORKER_HEALTH_FILE".into(), health.path());
    let child = std::process::Command::new(xenios_tests::jobs_support::worker_bin())
        .args(["-Q", "default", "-c", "1"])
        .envs(&vars)
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .current_dir(std::env::temp_dir())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let req = EnqueueRequest::new("xenios.fail")
        .kwargs(json!({"message": "boom"}))
        .unwrap();
    let id = backend
        .jobs()
        .enqueue(&ctx(), req)
        .await
        .unwrap()
        .id
        .into_string();
    let statuses = wait_results(
        &redis.url,
        std::slice::from_ref(&id),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(statuses, ["FAILURE"]);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || {
        xenios_tests::process::wait_output_within(child, xenios_tests::process::DEADLINE)
    })
    .await
    .unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "task failed")
        .unwrap_or_else(|| panic!("no 'task failed' line in: {logs}"));
    let span = &line["span"];
    assert_eq!(span["name"], "job", "{line}");
    assert_eq!(span["task_id"], id.as_str(), "{line}");
    assert_eq!(span["task"], "xenios.fail", "{line}");
    assert_eq!(span["correlation_id"], "faults-test", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_a_worker_started_before_redis_waits_for_it_then_drains() {
    // Redis is down when the worker starts (a container that comes up first, a Redis still
    // restarting): the worker must wait for it, not exit.
    let mut redis = DurableRedis::start().await;
    redis.kill();
    let db = TestDb::new().await;
    let vars = test_vars(&db, &redis.url());
    let log = std::env::temp_dir().join(format!("xenios-worker-{}.log", uuid::Uuid::new_v4()));
    let mut worker = ChildWorker::spawn_logging_to(&vars, &["-Q", "default", "-c", "2"], &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(
        "the worker retrying to take while Redis is down",
        Duration::from_secs(30),
        || async { read_log().contains("cannot take messages").then_some(()) },
    )
    .await;
    assert!(
        worker.is_running(),
        "the worker exited while Redis was down:\n{}",
        read_log()
    );

    redis.start_again().await;
    let config = xenios_core::Config::from_map(&vars).unwrap();
    let backend = AiBackend::builder(config).build().await.unwrap();
    let job = backend
        .jobs()
        .enqueue(
            &ctx(),
            EnqueueRequest::new("xenios.echo")
                .args(["late redis"])
                .unwrap(),
        )
        .await
        .unwrap();
    let statuses = wait_results(
        &redis.url(),
        &[job.id.as_str().to_owned()],
        Duration::from_secs(30),
    )
    .await;
    worker.kill();
    let _ = std::fs::remove_file(&log);
    assert_eq!(statuses, ["SUCCESS"]);
}

/// The task events of `envelope` (a kombu message published on `celeryev`): one event, or
/// the list of a `task.multi` batch.
fn task_events(envelope: &[u8]) -> Vec<Value> {
    use base64::Engine as _;
    let Ok(env) = serde_json::from_slice::<Value>(envelope) else {
        return Vec::new();
    };
    let body = env["body"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    match body {
        Some(Value::Array(events)) => events,
        Some(event) => vec![event],
        None => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_task_events_flow_again_after_redis_is_sigkilled_and_restarted() {
    // The event batcher publishes through the worker's Redis pool: after Redis dies and
    // comes back, Flower must see the events of new jobs again.
    let mut redis = DurableRedis::start().await;
    let db = TestDb::new().await;
    let mut vars = test_vars(&db, &redis.url());
    vars.insert("JOB_TASK_EVENTS".into(), "true".into());
    let mut worker = ChildWorker::spawn(&vars, &["-Q", "default", "-c", "2"]);
    let config = xenios_core::Config::from_map(&vars).unwrap();
    let backend = AiBackend::builder(config).build().await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();

    // Events of a job before the fault and of one after it, each seen on `celeryev`.
    for phase in ["before", "after"] {
        if phase == "after" {
            redis.kill();
            redis.start_again().await;
        }
        let mut pubsub = wait_for(
            "a subscription to the event channels",
            Duration::from_secs(30),
            || async {
                let mut p = client.get_async_pubsub().await.ok()?;
                p.psubscribe("/0.celeryev/*").await.ok()?;
                Some(p)
            },
        )
        .await;
        let job = wait_for("an enqueue", Duration::from_secs(30), || async {
            backend
                .jobs()
                .enqueue(
                    &ctx(),
                    EnqueueRequest::new("xenios.echo").args([phase]).unwrap(),
                )
                .await
                .ok()
        })
        .await;
        let mut messages = pubsub.on_message();
        let seen = tokio::time::timeout(Duration::from_secs(30), async {
            use futures::StreamExt as _;
            while let Some(msg) = messages.next().await {
                if task_events(msg.get_payload_bytes())
                    .iter()
                    .any(|e| e["type"] == "task-succeeded" && e["uuid"] == job.id.as_str())
                {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            seen,
            Ok(true),
            "no task-succeeded event for the job {phase} the restart"
        );
    }
    worker.kill();
}
