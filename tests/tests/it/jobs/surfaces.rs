//! The HTTP and CLI surfaces of the queue: enqueue, read, revoke, terminate, wait.

use super::*;

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
