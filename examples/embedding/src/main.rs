//! Embedding `xenios-core` in another Rust service, without the HTTP server: build the
//! engine from the environment, complete, stream, run a job of your own on an in-process
//! worker, verify a user's token, and shut down cleanly (audit rows flushed).
//!
//! `cargo run -p xenios-embedding-example` against the development stack. Each step prints
//! one line on stdout; any failure exits non-zero with the reason on stderr.
//!
//! Variables, besides the backend's own (`.env.example`): `EXAMPLE_USER_TOKEN`, a Supabase
//! access token to verify. Without it, when `SUPABASE_JWT_SECRET` is set, the example signs
//! one itself (HS256, as Supabase's legacy secret does) to show the call.

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use xenios_core::jobs::catalog::TaskDecl;
use xenios_core::jobs::{
    EnqueueRequest, JobState, TaskContext, TaskError, TaskRegistry, Worker, WorkerOptions,
};
use xenios_core::llm::{CompletionRequest, Message, StreamEvent, Task};
use xenios_core::{AiBackend, Config, RequestContext};

/// The queue this service's own jobs go to (the worker below consumes only it).
const QUEUE: &str = "example";

/// A job handler of this service: upper-cases its first argument.
async fn shout(
    _: TaskContext,
    args: Vec<Value>,
    _: Map<String, Value>,
) -> Result<Value, TaskError> {
    let text = args.first().and_then(Value::as_str).unwrap_or_default();
    Ok(Value::String(text.to_uppercase()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = xenios_core::telemetry::init(&config);
    let backend = match AiBackend::builder(config).build().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot build the backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&backend).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example failed: {e}");
            // Whatever was audited so far still reaches Postgres.
            backend
                .database()
                .flush_audit_within(Duration::from_secs(5))
                .await;
            ExitCode::FAILURE
        }
    }
}

async fn run(backend: &AiBackend) -> Result<(), Box<dyn std::error::Error>> {
    backend.database().migrate().await?;
    // Calls made on behalf of this service; a request handler would build a context from
    // the caller's correlation ID and principal instead.
    let ctx = RequestContext::system();

    // 1. A completion along the `chat` route (retries and fallback included).
    let req = CompletionRequest::new(Task::Chat, vec![Message::user("Say hello.")]);
    let c = backend.llm().complete(&ctx, req).await?;
    println!("complete: {} [{}]", c.content, c.model_used);

    // 2. The same, streamed: tokens as they arrive, then a summary.
    let req = CompletionRequest::new(Task::Chat, vec![Message::user("Say hello again.")]);
    let mut events = backend.llm().stream(&ctx, req).await?;
    let mut text = String::new();
    while let Some(event) = events.next().await {
        match event {
            StreamEvent::Delta { content } => text.push_str(&content),
            StreamEvent::Done(summary) => {
                println!("stream: {text} [{}]", summary.model_used);
            }
            StreamEvent::Error { message, .. } => return Err(message.into()),
        }
    }

    // 3. A job of this service's own, run by a worker inside this process.
    let mut registry = TaskRegistry::new();
    // Declared on this service's own queue, which the worker below consumes; `internal`: no
    // HTTP caller may enqueue it.
    registry.register(TaskDecl::internal("example.shout").on_queue(QUEUE), shout);
    let options = WorkerOptions {
        queues: vec![QUEUE.to_owned()],
        concurrency: 2,
        ..WorkerOptions::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(backend.clone(), registry, options).run(async {
        let _ = stopped.await;
    }));
    let id = backend
        .jobs()
        .enqueue(
            &ctx,
            EnqueueRequest::new("example.shout")
                .args(json!(["hello from a job"]))?
                .queue(QUEUE),
        )
        .await?
        .id;
    let result = backend
        .jobs()
        .wait_result(id.as_str(), Duration::from_secs(30))
        .await?;
    if result.state != JobState::Success {
        return Err(format!("job {id} ended {}", result.state.as_str()).into());
    }
    println!("job: {} {}", result.state.as_str(), result.result);

    // 4. A Supabase user's access token, verified as the server does for `Authorization`.
    match user_token(backend) {
        Some(token) => {
            let principal = backend.auth().verify_bearer(&token).await?;
            println!("token: user {}", principal.user_id().unwrap_or("(none)"));
        }
        None => println!("token: skipped (no EXAMPLE_USER_TOKEN or SUPABASE_JWT_SECRET)"),
    }

    // 5. A clean shutdown: the worker finishes what it runs, audit rows are written.
    let _ = stop.send(());
    worker.await??;
    let flushed = backend
        .database()
        .flush_audit_within(Duration::from_secs(10))
        .await;
    let stats = backend.database().audit_stats();
    println!(
        "shutdown: audit rows written {}, dropped {}, all flushed {flushed}",
        stats.written, stats.dropped
    );
    Ok(())
}

/// `EXAMPLE_USER_TOKEN`, or a token signed with `SUPABASE_JWT_SECRET` for a made-up user.
fn user_token(backend: &AiBackend) -> Option<String> {
    if let Ok(token) = std::env::var("EXAMPLE_USER_TOKEN") {
        return Some(token);
    }
    let supabase = &backend.config().supabase;
    let secret = supabase.jwt_secret.as_ref()?;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "sub": "6f1c2a9e-3b7d-4c55-9a51-0f3e8b2d7c41",
        "aud": "authenticated",
        "role": "authenticated",
        "iss": supabase.issuer().unwrap_or_else(|| "example".to_owned()),
        "iat": now,
        "exp": now + 300,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
    .ok()
}
