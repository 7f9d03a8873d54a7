//! An embedder that only routes LLM calls: an `AiBackend` built with no `DATABASE_URL` and
//! no `REDIS_URL` completes and streams against a fake OpenRouter, drops and counts its audit
//! rows, answers what needs Postgres or Redis with a clear error at once (never a hang), and
//! shuts down at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use xenios_core::auth::Principal;
use xenios_core::db::NO_DATABASE;
use xenios_core::jobs::EnqueueRequest;
use xenios_core::llm::{CompletionRequest, Message, StreamEvent, Task};
use xenios_core::{AiBackend, Config, CorrelationId, Error, RequestContext};
use xenios_tests::fake_openrouter::FakeOpenRouter;
use xenios_tests::wait_for;

/// What "at once" means below: far below any connect timeout (5 s by default).
const PROMPTLY: Duration = Duration::from_secs(1);

/// Only the LLM variables: no DATABASE_URL, no REDIS_URL, production rules.
fn llm_vars(upstream: &FakeOpenRouter) -> HashMap<String, String> {
    [
        ("ENVIRONMENT", "production"),
        ("XENIOS_BACKEND_API_KEY", "an-embedder-api-key-0123456789"),
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("OPENROUTER_API_KEY", "sk-or-llm-only"),
        ("OPENROUTER_BASE_URL", &upstream.base_url()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn service() -> RequestContext {
    RequestContext::new(CorrelationId::generate(), Principal::Service)
}

/// Runs `call` and checks it fails within [`PROMPTLY`] as `component` being unavailable.
async fn fails_promptly<T: std::fmt::Debug>(
    what: &str,
    component: &str,
    call: impl std::future::Future<Output = xenios_core::Result<T>>,
) -> String {
    let started = Instant::now();
    let outcome = tokio::time::timeout(PROMPTLY, call)
        .await
        .unwrap_or_else(|_| panic!("{what} still waiting after {PROMPTLY:?}"));
    match outcome {
        Err(e) if e.component().map(|c| c.as_str()) == Some(component) => {
            assert!(started.elapsed() < PROMPTLY, "{what}");
            e.to_string()
        }
        other => panic!("{what}: expected {component} unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_llm_only_backend_needs_no_database_or_redis() {
    let upstream = FakeOpenRouter::canned().await;
    let vars = llm_vars(&upstream);
    // The server's way of reading the configuration still requires both stores.
    let err = Config::from_map(&vars).unwrap_err().to_string();
    assert!(
        err.contains("DATABASE_URL") && err.contains("REDIS_URL"),
        "{err}"
    );
    let config = Config::llm_only_from_lookup(&|name| vars.get(name).cloned()).unwrap();
    let backend = AiBackend::builder(config).build().await.unwrap();
    assert!(!backend.has_database() && !backend.has_redis());
    assert!(!backend.has_database());

    // LLM calls by the service work, completed and streamed.
    let c = backend
        .llm()
        .complete(
            &service(),
            CompletionRequest::new(Task::Chat, vec![Message::user("Say hello.")]),
        )
        .await
        .unwrap();
    assert_eq!(c.content, "Hi there");
    let mut events = backend
        .llm()
        .stream(
            &service(),
            CompletionRequest::new(Task::Chat, vec![Message::user("Again.")]),
        )
        .await
        .unwrap();
    let mut text = String::new();
    let mut done = false;
    while let Some(event) = events.next().await {
        match event {
            StreamEvent::Delta { content } => text.push_str(&content),
            StreamEvent::Done(_) => done = true,
            StreamEvent::Error { message, .. } => panic!("stream failed: {message}"),
        }
    }
    assert_eq!((text.as_str(), done), ("Hello!", true));
    backend
        .auth()
        .check_rate_limit(&Principal::Service)
        .await
        .unwrap();

    // Their audit rows were dropped and counted, none queued for a database.
    let stats = wait_for("two dropped audit rows", Duration::from_secs(10), || {
        let s = backend.database().audit_stats();
        async move { (s.dropped >= 2).then_some(s) }
    })
    .await;
    assert_eq!((stats.queued, stats.written, stats.failed), (0, 0, 0));
    assert_eq!(stats.dropped, 2, "{stats:?}");

    // Readiness: both stores not configured, which is not "down".
    let readiness = tokio::time::timeout(PROMPTLY, backend.readiness())
        .await
        .unwrap();
    assert!(readiness.ready, "{readiness:?}");
    let names: Vec<(&str, bool)> = readiness
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.configured))
        .collect();
    assert_eq!(names, [("postgres", false), ("redis", false)]);

    // What needs Postgres or Redis says so at once.
    let message = fails_promptly("migrate", "postgres", backend.database().migrate()).await;
    assert_eq!(message, format!("postgres unavailable: {NO_DATABASE}"));
    fails_promptly(
        "job_record",
        "postgres",
        backend.database().job_record("t1"),
    )
    .await;
    fails_promptly(
        "profile",
        "postgres",
        backend.database().profile(uuid::Uuid::new_v4()),
    )
    .await;
    fails_promptly(
        "enqueue",
        "redis",
        backend
            .jobs()
            .enqueue(&service(), EnqueueRequest::new("xenios.echo")),
    )
    .await;
    fails_promptly("job_result", "redis", backend.jobs().job_result("t1")).await;

    // Shutting down: nothing to flush, so nothing to wait for.
    let started = Instant::now();
    assert!(
        backend
            .database()
            .flush_audit_within(Duration::from_secs(5))
            .await
    );
    assert!(started.elapsed() < PROMPTLY);
    assert_eq!(backend.database().audit_stats().dropped, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_database_and_redis_ignore_configured_urls_and_refuse_budgets() {
    let upstream = FakeOpenRouter::canned().await;
    let mut vars = llm_vars(&upstream);
    // Addresses nothing answers: a connection attempt would hang until its timeout.
    vars.insert(
        "DATABASE_URL".into(),
        "postgres://u:p@10.255.255.1:5432/x".into(),
    );
    vars.insert("REDIS_URL".into(), "redis://10.255.255.1:6379/0".into());
    vars.insert("DATABASE_CONNECT_TIMEOUT_MS".into(), "30000".into());
    let config = Config::from_map(&vars).unwrap();
    let backend = AiBackend::builder(config.clone())
        .without_database()
        .without_redis()
        .build()
        .await
        .unwrap();
    assert!(!backend.has_database() && !backend.has_redis());
    let c = backend
        .llm()
        .complete(
            &service(),
            CompletionRequest::new(Task::Chat, vec![Message::user("Hi")]),
        )
        .await
        .unwrap();
    assert_eq!(c.content, "Hi there");
    fails_promptly("migrate", "postgres", backend.database().migrate()).await;
    fails_promptly(
        "pending_migrations",
        "postgres",
        backend.database().pending_migrations(),
    )
    .await;
    fails_promptly(
        "enqueue",
        "redis",
        backend
            .jobs()
            .enqueue(&service(), EnqueueRequest::new("xenios.echo")),
    )
    .await;
    let readiness = tokio::time::timeout(PROMPTLY, backend.readiness())
        .await
        .unwrap();
    assert!(readiness.ready, "{readiness:?}");
    assert!(
        backend
            .database()
            .flush_audit_within(Duration::from_secs(5))
            .await
    );
    assert_eq!(backend.database().audit_stats().dropped, 1);

    // Daily user budgets live in Redis: without it the build refuses, rather than letting
    // users spend without a limit.
    let mut budgeted = vars.clone();
    budgeted.insert("LLM_USER_DAILY_TOKENS".into(), "1000".into());
    let config = Config::from_map(&budgeted).unwrap();
    let err = AiBackend::builder(config)
        .without_redis()
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation(m) if m.contains("LLM_USER_DAILY_TOKENS")),
        "{err:?}"
    );
}
