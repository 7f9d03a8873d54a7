//! # xenios-server
//!
//! The HTTP shell over [`xenios_core::AiBackend`], on poem + poem-openapi.
//!
//! ## Layout
//! - [`api`]: the routes, one `#[OpenApi]` impl per area; doc comments become the OpenAPI
//!   descriptions served at `/openapi.json` and `/docs`.
//! - [`middleware`]: correlation IDs, access log, body size limit, authentication (API key
//!   and Supabase bearer token) and rate limits.
//! - [`api::security`]: how handlers get the authenticated caller ([`api::security::Caller`]).
//! - [`api::document`]: what the served document adds to poem-openapi's (core's limits,
//!   security, event streams); committed as `openapi.json`, checked by `tests/tests/contract.rs`.
//! - [`error`]: the one place that turns errors into `{"error": {...}}` responses.
//!
//! [`serve`] is what `main` calls; [`run`] takes a bound listener so tests can use port 0.

#![warn(missing_docs)]

pub mod api;
pub mod error;
pub mod middleware;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::middleware::Cors;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, EndpointExt, Route, Server};
use poem_openapi::OpenApiService;
use xenios_core::config::CorsPolicy;
use xenios_core::{AiBackend, Config};

use crate::api::health::HealthApi;
use crate::api::jobs::JobsApi;
use crate::api::llm::LlmApi;
use crate::api::me::MeApi;
use crate::api::openai::OpenAiApi;
use crate::api::status::StatusApi;

/// The routes, as one tuple of poem-openapi APIs.
pub type Apis = (HealthApi, StatusApi, MeApi, LlmApi, OpenAiApi, JobsApi);

/// Builds the OpenAPI service (routes plus their document).
pub fn openapi(backend: &AiBackend) -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        (
            HealthApi {
                backend: backend.clone(),
            },
            StatusApi {
                backend: backend.clone(),
            },
            MeApi {
                backend: backend.clone(),
            },
            LlmApi {
                backend: backend.clone(),
            },
            OpenAiApi {
                backend: backend.clone(),
            },
            JobsApi {
                backend: backend.clone(),
            },
        ),
        "Xenios AI Backend",
        xenios_core::backend::VERSION,
    )
    .description("AI-heavy work for the Xenios coaching platform: LLM routing, jobs, auth.")
}

/// The OpenAPI document served at `/openapi.json` (and committed as `openapi.json`).
pub fn document(backend: &AiBackend) -> String {
    api::document::finish(&openapi(backend).spec(), &api::document::Facts::of(backend))
}

/// The whole HTTP application, with middleware, for a backend.
pub fn app(backend: &AiBackend) -> impl Endpoint + 'static {
    let api = openapi(backend);
    let raw = api.spec();
    let document = api::document::finish(&raw, &api::document::Facts::of(backend));
    // Swagger UI embeds the document it shows: the finished one, in place of poem's.
    let docs_html = api.swagger_ui_html().replacen(&raw, &document, 1);
    let allowed = middleware::allowed_methods(&document);
    let spec = poem::endpoint::make_sync(move |_| {
        poem::Response::builder()
            .content_type("application/json")
            .body(document.clone())
    });
    let docs = poem::endpoint::make_sync(move |_| poem::web::Html(docs_html.clone()));
    // No configured origin: no CORS layer at all, so no `Access-Control-Allow-Origin` is ever
    // sent (poem's Cors with an empty list would reflect any origin).
    let policy = backend.config().server.cors();
    let cross_origin = policy.is_some();
    let cors = policy.map(cors).unwrap_or_default();
    let auth_backend = backend.clone();
    let max_body = backend.config().server.max_body_bytes;
    // Outermost first: correlation ID and access log, CORS (answers preflights before any
    // auth, and decorates error bodies too), JSON error bodies, body size limit, then
    // authentication and rate limits.
    Route::new()
        .nest("/", api)
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .around(move |ep, req| middleware::authenticate(auth_backend.clone(), ep, req))
        .around(move |ep, req| middleware::body_limit(max_body, ep, req))
        .around(middleware::error_bodies)
        .around(move |ep, req| middleware::allow_header(allowed.clone(), ep, req))
        .with_if(cross_origin, cors)
        .around(middleware::correlation)
}

/// poem's CORS layer for core's policy (an empty origin list is any origin to poem).
fn cors(policy: CorsPolicy) -> Cors {
    let mut cors = Cors::new()
        .allow_methods(policy.methods.iter().copied())
        .allow_headers(policy.headers.iter().copied())
        .expose_headers(policy.expose_headers.iter().copied())
        .max_age(i32::try_from(policy.max_age.as_secs()).unwrap_or(i32::MAX));
    for origin in &policy.origins {
        cors = cors.allow_origin(origin.as_str());
    }
    cors
}

/// Serves the application on an already-bound listener, on the caller's runtime, until
/// `shutdown` resolves, then stops accepting, lets in-flight requests finish (at most
/// `SHUTDOWN_TIMEOUT_SECS`) and returns. Tests and embedders use it; the binary serves
/// from a thread per core instead ([`serve`]).
pub async fn run(
    backend: AiBackend,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    serve_listener(Arc::new(app(&backend)), listener, shutdown, &backend).await?;
    finish(backend).await;
    Ok(())
}

/// One listener served until `shutdown`, in-flight requests given `SHUTDOWN_TIMEOUT_SECS`.
async fn serve_listener(
    app: Arc<impl Endpoint + 'static>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    backend: &AiBackend,
) -> std::io::Result<()> {
    let acceptor = NoDelay(TcpAcceptor::from_tokio(listener)?);
    let timeout = backend.config().server.shutdown_timeout;
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(timeout))
        .await
}

/// After the last request: writes the queued audit rows and closes the pools.
async fn finish(backend: AiBackend) {
    tracing::info!("server stopped; flushing audit rows and closing pools");
    // In-flight requests (at most SHUTDOWN_TIMEOUT_SECS, default 20) plus this flush fit the
    // orchestrator's grace period (compose: 30 s); rows still queued after it are counted as
    // dropped, as when Postgres is down.
    backend
        .shutdown(xenios_core::jobs::worker::AUDIT_FLUSH_TIMEOUT)
        .await;
    drop(backend);
}

/// The backend the server runs, from `config`: logs the configuration's warnings, builds it
/// (a bad setting fails here, not on first use) and applies the migration policy. [`serve`]
/// starts with it, and so do the integration tests.
pub async fn start(config: Config) -> xenios_core::Result<AiBackend> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let backend = AiBackend::builder(config).build().await?;
    backend.prepare().await?;
    Ok(backend)
}

/// Builds the backend from `config` ([`start`]), binds `HOST:PORT` once per serving thread
/// (`SERVER_THREADS`, one per core by default) and serves until `shutdown`.
///
/// # Threads
/// Each serving thread runs a current-thread Tokio runtime with a listening socket of its
/// own on the same port (`SO_REUSEPORT`: the kernel spreads new connections over them), and
/// a connection, its requests and their upstream LLM calls (a client per thread, see
/// `xenios_core::llm::upstream`) stay on that thread. With one multi-thread runtime a call
/// was passed between the workers and every hand-over woke another thread: measured with
/// `scripts/bench-me.sh`, serving per core answers 12-15% more requests. The runtime that
/// calls `serve` keeps the backend's own tasks (audit writer, pools, event sender).
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let bind = config.bind_address();
    let threads = config.server.serving_threads();
    let backend = start(config).await?;
    let listeners = bind_per_thread(&bind, threads).await?;
    tracing::info!(
        environment = %backend.config().environment,
        startup_ms = started.elapsed().as_millis() as u64,
        "xenios-server started"
    );
    serve_per_thread(backend, listeners, shutdown).await?;
    Ok(())
}

/// `threads` listening sockets on `bind`, all on one port (`PORT=0`: the port the first got).
async fn bind_per_thread(
    bind: &str,
    threads: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr = tokio::net::lookup_host(bind).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{bind}` has no address"),
        )
    })?;
    let v4 = addr.is_ipv4();
    let new_socket = move || {
        if v4 {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
    };
    // SO_REUSEPORT would let a second server (of the same user) share a port that is
    // already taken, and each would get some of the connections. A plain bind first fails
    // as a single listener would: the port is in use.
    if addr.port() != 0 {
        let probe = new_socket()?;
        probe.set_reuseaddr(true)?;
        probe
            .bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    }
    let mut listeners = Vec::with_capacity(threads);
    for _ in 0..threads.max(1) {
        let socket = new_socket()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(addr)?;
        // Registered with no runtime yet: each serving thread registers its own.
        let listener = socket.listen(LISTEN_BACKLOG)?.into_std()?;
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The listen backlog of each socket (tokio's own default).
const LISTEN_BACKLOG: u32 = 1024;

/// How long a serving thread's runtime waits for its blocking tasks at the end.
const RUNTIME_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves each listener from a thread of its own until `shutdown` (or until one of them
/// fails: then all stop), then writes the audit rows and lets the threads end.
async fn serve_per_thread(
    backend: AiBackend,
    listeners: Vec<std::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    use futures::StreamExt;

    let addr = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Before the threads start: poem logs a `listening` line of its own per thread.
    tracing::info!(%addr, threads = listeners.len(), "listening");
    let app = Arc::new(app(&backend));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    // A thread's runtime also drives connections (Postgres, Redis) its requests opened, which
    // other threads may be using: no runtime ends before every server has stopped.
    let (release, released) = tokio::sync::watch::channel(false);
    let mut ended = futures::stream::FuturesUnordered::new();
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (done, end) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        let (app, backend) = (app.clone(), backend.clone());
        let (stopping, released) = (stopping.clone(), released.clone());
        let thread = std::thread::Builder::new()
            .name(format!("xenios-http-{i}"))
            .spawn(move || serving_thread(listener, app, backend, stopping, released, done))?;
        threads.push(thread);
        ended.push(end);
    }
    let mut result = Ok(());
    let mut account = |r: Result<std::io::Result<()>, _>| {
        let r = r.unwrap_or_else(|_| Err(std::io::Error::other("a serving thread panicked")));
        if let Err(e) = r {
            tracing::error!(error = %e, "a serving thread failed: stopping");
            if result.is_ok() {
                result = Err(e);
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        Some(r) = ended.next() => account(r),
    }
    let _ = stop.send(true);
    while let Some(r) = ended.next().await {
        account(r);
    }
    finish(backend).await;
    let _ = release.send(true);
    // The runtimes end (their connections with them) once released; waiting for the threads
    // is a blocking join, kept off this runtime.
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    result
}

/// One serving thread: a current-thread runtime serving `listener` until `stopping` turns
/// true, reporting the outcome on `done`, then driving its tasks on until `released`.
fn serving_thread(
    listener: std::net::TcpListener,
    app: Arc<impl Endpoint + 'static>,
    backend: AiBackend,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    mut released: tokio::sync::watch::Receiver<bool>,
    done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let stop = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let served = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => serve_listener(app, listener, stop, &backend).await,
            Err(e) => Err(e),
        };
        // The last answers' audit rows, handed over by tasks of this runtime, before the
        // final flush (on the main runtime) that `done` lets start.
        xenios_core::deferred::run_pending().await;
        let _ = done.send(served);
        let _ = released.wait_for(|r| *r).await;
    });
    // Dropping a runtime waits for its blocking tasks (reqwest's DNS lookups run there) for
    // as long as they take; a stuck one must not hold up the exit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
}

/// poem's TCP acceptor with `TCP_NODELAY` on every connection: without it, Nagle's algorithm
/// holds a small write (an SSE token after the response head) until the previous one is
/// acknowledged. poem has no switch for it.
struct NoDelay(TcpAcceptor);

impl Acceptor for NoDelay {
    type Io = tokio::net::TcpStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.0.local_addr()
    }

    async fn accept(&mut self) -> std::io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let accepted = self.0.accept().await?;
        if let Err(e) = accepted.0.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        Ok(accepted)
    }
}
