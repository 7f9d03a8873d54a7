//! The queue's rules with an in-process worker: routing, priority, ETA, expiry, retries, time
//! limits, Celery's result shape, malformed messages, revoke.

use super::*;

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
