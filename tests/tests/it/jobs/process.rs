//! The real worker binary under faults: Postgres hanging, SIGKILL mid-job, SIGTERM's warm
//! shutdown.

use super::*;

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
    wait_taken(
        &conn,
        "default",
        1,
        "the victim to take the job",
        Duration::from_secs(20),
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
