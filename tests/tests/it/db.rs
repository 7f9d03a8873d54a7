//! Postgres: migrations, the audit writer, typed queries, shared tables, TLS, and the
//! server's behaviour while Postgres is away — all against a real Postgres.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use xenios_core::db::models::{
    ExtractionCacheEntry, InferenceStatus, JobStateChange, NewInferenceLog,
};
use xenios_core::jobs::JobState;
use xenios_core::{AiBackend, Config};
use xenios_tests::{
    TcpProxy, TestApp, TestDb, TestRedis, pg_addr, test_vars, url_via_port, wait_for,
};

async fn backend(db: &TestDb, redis: &TestRedis, extra: &[(&str, &str)]) -> AiBackend {
    let mut vars = test_vars(db, &redis.url);
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    AiBackend::builder(Config::from_map(&vars).unwrap())
        .build()
        .await
        .unwrap()
}

async fn tables_in(db: &TestDb, schema: &str) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Migrations under `migrations/` (the owner column of job rows made it three).
const MIGRATIONS: usize = 3;

fn pgvector_available(rows: &[tokio_postgres::Row]) -> bool {
    !rows.is_empty()
}

#[tokio::test]
async fn migrating_twice_is_a_no_op_and_public_is_untouched() {
    let (db, redis) = (TestDb::empty().await, TestRedis::new().await);
    let b = backend(&db, &redis, &[]).await;
    let first = b.database().migrate().await.unwrap();
    assert_eq!(first.len(), MIGRATIONS, "{first:?}");
    assert!(b.database().migrate().await.unwrap().is_empty());
    assert!(b.database().pending_migrations().await.unwrap().is_empty());

    let ours = tables_in(&db, "ai_backend").await;
    for t in [
        "__diesel_schema_migrations",
        "extraction_cache",
        "inference_logs",
        "job_queue_metadata",
    ] {
        assert!(ours.contains(&t.to_owned()), "{t} missing: {ours:?}");
    }
    assert!(
        tables_in(&db, "public").await.is_empty(),
        "migrations touched public"
    );

    // embeddings exists exactly when pgvector can be installed.
    let client = db.client().await;
    let available = client
        .query(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        ours.contains(&"embeddings".to_owned()),
        pgvector_available(&available)
    );
}

#[tokio::test]
async fn pgvector_embeddings_table_takes_vectors_and_answers_cosine_queries() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let available = client
        .query(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'",
            &[],
        )
        .await
        .unwrap();
    if !pgvector_available(&available)
        && xenios_tests::skip("pgvector is not installed in the test Postgres")
    {
        return;
    }
    let ours = tables_in(&db, "ai_backend").await;
    assert!(ours.contains(&"embeddings".to_owned()), "{ours:?}");
    // The extension lives in ai_backend (or Supabase's `extensions`): its operators too.
    client
        .batch_execute("SET search_path = ai_backend, extensions, public")
        .await
        .unwrap();
    let vector = |hot: usize| {
        let v: Vec<String> = (0..1536)
            .map(|i| if i == hot { "1" } else { "0" }.to_owned())
            .collect();
        format!("[{}]", v.join(","))
    };
    for (i, hot) in [(0, 0), (1, 1)] {
        client
            .execute(
                &format!(
                    "INSERT INTO ai_backend.embeddings (id, source_type, source_id, chunk_index, content, embedding)
                     VALUES (gen_random_uuid(), 'note', 'n1', {i}, 'chunk {i}', '{}')",
                    vector(hot)
                ),
                &[],
            )
            .await
            .unwrap();
    }
    let nearest: String = client
        .query_one(
            &format!(
                "SELECT content FROM ai_backend.embeddings ORDER BY embedding <=> '{}' LIMIT 1",
                vector(1)
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nearest, "chunk 1");
}

#[tokio::test]
async fn concurrent_migrators_take_turns() {
    let (db, redis) = (TestDb::empty().await, TestRedis::new().await);
    let a = backend(&db, &redis, &[]).await;
    let b = backend(&db, &redis, &[]).await;
    let (ra, rb) = tokio::join!(a.database().migrate(), b.database().migrate());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // Exactly one of them applied the migrations; neither failed.
    assert_eq!(ra.len() + rb.len(), MIGRATIONS, "{ra:?} {rb:?}");
    assert!(ra.is_empty() || rb.is_empty());
    let applied: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM ai_backend.__diesel_schema_migrations",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, MIGRATIONS as i64);
}

#[tokio::test]
async fn the_last_migration_rolls_back_and_reapplies() {
    let (db, redis) = (TestDb::empty().await, TestRedis::new().await);
    let b = backend(&db, &redis, &[]).await;
    b.database().migrate().await.unwrap();
    assert_eq!(
        b.database().revert_last_migration().await.unwrap(),
        ["20261202000001"]
    );
    assert_eq!(b.database().pending_migrations().await.unwrap().len(), 1);
    assert_eq!(
        b.database().revert_last_migration().await.unwrap(),
        ["20261125000002"]
    );
    assert_eq!(
        b.database().revert_last_migration().await.unwrap(),
        ["20261125000001"]
    );
    assert!(
        !tables_in(&db, "ai_backend")
            .await
            .contains(&"inference_logs".to_owned())
    );
    assert_eq!(b.database().migrate().await.unwrap().len(), MIGRATIONS);
    assert!(
        tables_in(&db, "ai_backend")
            .await
            .contains(&"inference_logs".to_owned())
    );
}

#[tokio::test]
async fn inference_logs_round_trip_through_the_background_writer() {
    let (db, redis) = (TestDb::new().await, TestRedis::new().await);
    let b = backend(&db, &redis, &[]).await;
    let user = uuid::Uuid::new_v4();
    let mut ok = NewInferenceLog::new(
        "chat",
        "anthropic/claude-sonnet-4",
        InferenceStatus::Success,
    );
    ok.model_used = Some("openai/gpt-4o-mini".into());
    ok.fallback_used = true;
    ok.prompt_tokens = Some(12);
    ok.completion_tokens = Some(30);
    ok.total_tokens = Some(42);
    ok.cost_usd = Some(0.00021);
    ok.latency_ms = 812;
    ok.ttft_ms = Some(120);
    ok.streaming = true;
    ok.correlation_id = Some("corr-db-1".into());
    ok.user_id = Some(user);
    let mut failed = NewInferenceLog::new(
        "session_summary",
        "anthropic/claude-opus-4.5",
        InferenceStatus::Error,
    );
    failed.error = Some("all models failed".into());
    failed.correlation_id = Some("corr-db-1".into());
    failed.created_at = ok.created_at + chrono::Duration::milliseconds(1);
    b.database().audit().inference(ok.clone());
    b.database().audit().inference(failed);
    b.database().flush_audit().await;

    let rows = b.database().inference_logs_for("corr-db-1").await.unwrap();
    assert_eq!(rows.len(), 2);
    let r = &rows[0];
    assert_eq!(r.id, ok.id);
    assert_eq!(r.task_type, "chat");
    assert_eq!(r.model_used.as_deref(), Some("openai/gpt-4o-mini"));
    assert!(r.fallback_used && r.streaming);
    assert_eq!(
        (r.prompt_tokens, r.completion_tokens, r.total_tokens),
        (Some(12), Some(30), Some(42))
    );
    assert_eq!(r.cost_usd, Some(0.00021));
    assert_eq!((r.latency_ms, r.ttft_ms), (812, Some(120)));
    assert_eq!(r.user_id, Some(user));
    assert!(r.request_payload.is_none() && r.response_payload.is_none());
    assert_eq!(rows[1].status, "error");
    assert_eq!(rows[1].error.as_deref(), Some("all models failed"));
    let stats = b.database().audit_stats();
    assert_eq!((stats.written, stats.dropped, stats.failed), (2, 0, 0));
}

#[tokio::test]
async fn job_rows_follow_state_changes_and_never_move_backwards() {
    let (db, redis) = (TestDb::new().await, TestRedis::new().await);
    let b = backend(&db, &redis, &[]).await;
    // Postgres keeps microseconds.
    let t0 = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let at = |ms: i64| t0 + chrono::Duration::milliseconds(ms);
    let user = uuid::Uuid::new_v4();

    let mut pending = JobStateChange::new("job-1", "xenios.echo", "default", JobState::Pending);
    pending.at = at(0);
    pending.args_digest = Some("sha256:abc".into());
    pending.correlation_id = Some("corr-job".into());
    pending.user_id = Some(user);
    b.database().audit().job(pending);
    b.database().flush_audit().await;
    let r = b.database().job_record("job-1").await.unwrap().unwrap();
    assert_eq!((r.status.as_str(), r.attempts), ("pending", 0));
    assert_eq!(r.user_id, Some(user));

    let mut started = JobStateChange::new("job-1", "xenios.echo", "default", JobState::Started);
    started.at = at(10);
    started.worker = Some("celery@w1".into());
    started.attempts = 1;
    b.database().audit().job(started);
    b.database().flush_audit().await;
    let r = b.database().job_record("job-1").await.unwrap().unwrap();
    assert_eq!(r.status, "started");
    assert_eq!(r.started_at, Some(at(10)));
    assert_eq!(r.worker.as_deref(), Some("celery@w1"));

    let mut done = JobStateChange::new("job-1", "xenios.echo", "default", JobState::Success);
    done.at = at(20);
    // A stale "started" arriving after success must not reopen the job.
    let mut stale = JobStateChange::new("job-1", "xenios.echo", "default", JobState::Started);
    stale.at = at(30);
    b.database().audit().job(done);
    b.database().flush_audit().await;
    b.database().audit().job(stale);
    b.database().flush_audit().await;
    let r = b.database().job_record("job-1").await.unwrap().unwrap();
    assert_eq!(r.status, "success");
    assert_eq!(r.finished_at, Some(at(20)));
    assert_eq!(r.args_digest.as_deref(), Some("sha256:abc"));
    assert_eq!(r.correlation_id.as_deref(), Some("corr-job"));
    assert!(b.database().job_record("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn extraction_cache_round_trip_with_expiry() {
    let (db, redis) = (TestDb::new().await, TestRedis::new().await);
    let b = backend(&db, &redis, &[]).await;
    let hash = "a".repeat(64);
    let mut entry = ExtractionCacheEntry {
        content_hash: hash.clone(),
        extractor: "docling".into(),
        extractor_version: "2.1".into(),
        result: json!({"pages": 3, "text": "hello"}),
        created_at: Utc::now(),
        expires_at: None,
    };
    b.database().store_extraction(&entry).await.unwrap();
    let got = b
        .database()
        .cached_extraction(&hash, "docling", "2.1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.result, json!({"pages": 3, "text": "hello"}));
    assert!(
        b.database()
            .cached_extraction(&hash, "docling", "2.2")
            .await
            .unwrap()
            .is_none()
    );

    entry.result = json!({"pages": 4});
    entry.expires_at = Some(Utc::now() - chrono::Duration::seconds(1));
    b.database().store_extraction(&entry).await.unwrap();
    assert!(
        b.database()
            .cached_extraction(&hash, "docling", "2.1")
            .await
            .unwrap()
            .is_none()
    );

    entry.content_hash = "not-a-hash".into();
    let err = b.database().store_extraction(&entry).await.unwrap_err();
    assert_eq!(err.kind(), xenios_core::ErrorKind::Validation);
}

#[tokio::test]
async fn reads_a_shared_public_table_by_id() {
    let (db, redis) = (TestDb::new().await, TestRedis::new().await);
    // The app owns public.profiles; the test plays the app and creates it.
    let client = db.client().await;
    let id = uuid::Uuid::new_v4();
    client
        .batch_execute(
            "CREATE TABLE public.profiles (id uuid PRIMARY KEY, email text, full_name text,
             role text, created_at timestamptz NOT NULL DEFAULT now(), avatar_url text)",
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO public.profiles (id, email, full_name, role) VALUES ($1, 'c@x.io', 'Coach C', 'coach')",
            &[&id],
        )
        .await
        .unwrap();
    let b = backend(&db, &redis, &[]).await;
    let p = b.database().profile(id).await.unwrap().unwrap();
    assert_eq!(p.id, id);
    assert_eq!(p.email.as_deref(), Some("c@x.io"));
    assert_eq!(p.full_name.as_deref(), Some("Coach C"));
    assert_eq!(p.role.as_deref(), Some("coach"));
    assert!(
        b.database()
            .profile(uuid::Uuid::new_v4())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn tls_with_sslmode_require_and_no_prepared_statements() {
    let (db, redis) = (TestDb::new().await, TestRedis::new().await);
    let ssl_on: String = db
        .client()
        .await
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get(0);
    let url = db.url.replace("sslmode=disable", "sslmode=require");
    let b = backend(
        &db,
        &redis,
        &[
            ("DATABASE_URL", &url),
            ("DATABASE_PREPARED_STATEMENTS", "false"),
        ],
    )
    .await;
    if ssl_on != "on" {
        // A server without TLS must refuse sslmode=require, as libpq does.
        assert!(!b.readiness().await.ready);
        if xenios_tests::skip("the test Postgres has ssl=off: only the refusal was checked") {
            return;
        }
    }
    b.database().migrate().await.unwrap();
    wait_for("readiness over TLS", Duration::from_secs(20), || async {
        b.readiness().await.ready.then_some(())
    })
    .await;
    assert!(b.database().job_record("x").await.unwrap().is_none());
    let encrypted: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = current_database() AND a.application_name = 'xenios-tests' AND s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "no TLS connection from the backend");
}

#[tokio::test]
async fn server_keeps_serving_while_postgres_is_down_and_recovers() {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let pg = pg_addr();
    let mut proxy = TcpProxy::start(pg).await;
    let mut vars = test_vars(&db, &redis.url);
    vars.insert("DATABASE_URL".into(), url_via_port(&db.url, proxy.port));
    let app = TestApp::spawn_on(db, Some(redis), vars).await;
    app.wait_ready_status(200, Duration::from_secs(20)).await;

    proxy.cut();
    let body = app.wait_ready_status(503, Duration::from_secs(15)).await;
    let pg_c = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "postgres")
        .unwrap()
        .clone();
    assert_eq!(pg_c["status"], "unhealthy");
    // What does not need Postgres keeps working.
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(app.get("/api/v1/status").await.status(), 200);
    // A call that needs it fails cleanly as "unavailable".
    let err = app.backend.database().job_record("x").await.unwrap_err();
    assert_eq!(err.kind(), xenios_core::ErrorKind::Unavailable);

    proxy.restore().await;
    app.wait_ready_status(200, Duration::from_secs(20)).await;
    assert!(
        app.backend
            .database()
            .job_record("x")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn audit_writer_is_bounded_and_counts_what_it_loses() {
    let db = TestDb::new().await;
    let redis = TestRedis::new().await;
    let pg = pg_addr();
    let mut proxy = TcpProxy::start(pg).await;
    let url = url_via_port(&db.url, proxy.port);
    let b = backend(
        &db,
        &redis,
        &[
            ("DATABASE_URL", &url),
            ("AUDIT_QUEUE_CAPACITY", "4"),
            ("DATABASE_CONNECT_TIMEOUT_MS", "200"),
        ],
    )
    .await;
    proxy.cut();
    // Far more rows than the queue holds, while Postgres is unreachable: the calls return at
    // once, the overflow is dropped and counted, and the rest fail after bounded retries.
    let started = std::time::Instant::now();
    for i in 0..50 {
        let mut row = NewInferenceLog::new("chat", "m", InferenceStatus::Success);
        row.correlation_id = Some(format!("lost-{i}"));
        b.database().audit().inference(row);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "enqueueing blocked"
    );
    b.database().flush_audit().await;
    let s = b.database().audit_stats();
    assert!(s.dropped > 0, "{s:?}");
    assert_eq!(s.queued + s.dropped, 50, "{s:?}");
    assert_eq!(s.written, 0, "{s:?}");
    assert_eq!(s.failed, s.queued, "{s:?}");

    proxy.restore().await;
    let mut row = NewInferenceLog::new("chat", "m", InferenceStatus::Success);
    row.correlation_id = Some("after-restore".into());
    b.database().audit().inference(row);
    b.database().flush_audit().await;
    assert_eq!(
        b.database()
            .inference_logs_for("after-restore")
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn server_runs_migrations_at_start_when_configured() {
    let db = TestDb::empty().await;
    let redis = TestRedis::new().await;
    let mut vars = test_vars(&db, &redis.url);
    vars.insert("RUN_MIGRATIONS".into(), "true".into());
    vars.insert("PORT".into(), xenios_tests::free_port().to_string());
    let config = Config::from_map(&vars).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(xenios_server::serve(config, async move {
        let _ = rx.await;
    }));
    wait_for(
        "migrations applied by the server",
        Duration::from_secs(30),
        || async {
            tables_in(&db, "ai_backend")
                .await
                .contains(&"inference_logs".to_owned())
                .then_some(())
        },
    )
    .await;
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

/// One inference row and one job row, `tag` in both, queued and flushed.
async fn audit_both(b: &AiBackend, tag: &str) {
    let mut row = NewInferenceLog::new("chat", "m", InferenceStatus::Success);
    row.correlation_id = Some(tag.to_owned());
    b.database().audit().inference(row);
    b.database().audit().job(JobStateChange::new(
        tag,
        "xenios.noop",
        "default",
        JobState::Success,
    ));
    b.database().flush_audit().await;
}

/// Whether both rows of [`audit_both`] are stored.
async fn both_stored(b: &AiBackend, tag: &str) -> bool {
    let logs = b.database().inference_logs_for(tag).await;
    let job = b.database().job_record(tag).await;
    matches!((logs, job), (Ok(l), Ok(Some(j))) if l.len() == 1 && j.status == "success")
}

#[tokio::test]
async fn faults_audit_rows_are_written_again_after_postgres_is_sigkilled_and_restarted() {
    // The audit writer keeps a connection of its own, with its two statements prepared on
    // it. A real Postgres server is killed under it (SIGKILL to the postmaster and every
    // backend) and started again: the writer must notice its connection is gone, open a
    // new one, prepare again, and write the rows queued after the restart.
    let redis = TestRedis::new().await;
    let mut pg = xenios_tests::faults::PrivatePostgres::start().await;
    let mut vars = xenios_tests::test_vars_without_database(&redis.url);
    vars.insert("DATABASE_URL".into(), pg.url());
    let b = AiBackend::builder(Config::from_map(&vars).unwrap())
        .build()
        .await
        .unwrap();
    b.database().migrate().await.unwrap();
    // Twice before the fault: the second batch runs on the kept connection.
    for tag in ["before-1", "before-2"] {
        audit_both(&b, tag).await;
        assert!(
            both_stored(&b, tag).await,
            "{:?}",
            b.database().audit_stats()
        );
    }

    pg.kill();
    pg.start_again().await;

    let mut n = 0;
    wait_for(
        "audit rows written after Postgres restarted",
        Duration::from_secs(60),
        || {
            n += 1;
            let tag = format!("after-{n}");
            let b = b.clone();
            async move {
                audit_both(&b, &tag).await;
                both_stored(&b, &tag).await.then_some(())
            }
        },
    )
    .await;
    // The rows from before the kill survived it (committed), and nothing was dropped.
    assert!(both_stored(&b, "before-1").await);
    let s = b.database().audit_stats();
    assert_eq!(s.dropped, 0, "{s:?}");
    assert!(s.written >= 6, "{s:?}");
}
