//! The LLM task on the worker: a routed completion through the LLM layer, carrying the job's
//! correlation ID into the `inference_logs` row.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::json;
use xenios_core::jobs::{EnqueueRequest, JobState, Worker, WorkerOptions, tasks};
use xenios_core::{AiBackend, CorrelationId, RequestContext};
use xenios_tests::jobs_support::backend_on;
use xenios_tests::{TestDb, TestRedis};

async fn drain_llm_queue(backend: &AiBackend) {
    let opts = WorkerOptions {
        queues: vec!["llm".to_owned()],
        concurrency: 2,
        hostname: Some("llm-test@%h".to_owned()),
        prefetch_multiplier: 1,
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        Worker::new(
            backend.clone(),
            tasks::builtin_registry(&backend.config().jobs),
            opts,
        )
        .run_until_idle(),
    )
    .await
    .expect("worker did not go idle in time")
    .unwrap();
}

#[tokio::test]
async fn llm_task_runs_a_routed_completion_and_logs_it_under_the_jobs_correlation_id() {
    let redis = TestRedis::new().await;
    let db = TestDb::new().await;
    let backend = backend_on(&db, &redis, &[]).await;
    let ctx = RequestContext::new(
        CorrelationId::parse("req-llm-job").unwrap(),
        xenios_core::auth::Principal::Service,
    );
    let ok = backend
        .jobs()
        .enqueue(
            &ctx,
            EnqueueRequest::new("xenios.llm.complete")
                .kwargs(json!({"task": "session_summary", "prompt": "Summarise the session"}))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    let bad = backend
        .jobs()
        .enqueue(
            &ctx,
            EnqueueRequest::new("xenios.llm.complete")
                .kwargs(json!({"task": "no_such_task", "prompt": "x"}))
                .unwrap(),
        )
        .await
        .unwrap()
        .id;
    // Routed by prefix to the llm queue: a worker on that queue alone takes both.
    drain_llm_queue(&backend).await;

    let r = backend.jobs().job_result(ok.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Success, "{:?}", r.result);
    assert!(!r.result["content"].as_str().unwrap().is_empty());
    assert_eq!(r.result["model_requested"], "anthropic/claude-opus-4.5");
    assert_eq!(r.result["fallback_used"], false);

    let r = backend.jobs().job_result(bad.as_str()).await.unwrap();
    assert_eq!(r.state, JobState::Failure);
    assert_eq!(r.result["exc_type"], "ValueError");
    assert!(
        r.result["exc_message"].to_string().contains("task"),
        "{}",
        r.result
    );

    backend.database().flush_audit().await;
    let rows = backend
        .database()
        .inference_logs_for("req-llm-job")
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].task_type, "session_summary");
    assert_eq!(rows[0].status, "success");
}
