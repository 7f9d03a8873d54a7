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

/// Serves the application on an already-bound listener until `shutdown` resolves, then stops
/// accepting, lets in-flight requests finish (at most `SHUTDOWN_TIMEOUT_SECS`) and returns.
pub async fn run(
    backend: AiBackend,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = NoDelay(TcpAcceptor::from_tokio(listener)?);
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().map(ToString::to_string))
        .unwrap_or_default();
    tracing::info!(%addr, "listening");
    let timeout = backend.config().server.shutdown_timeout;
    let app = app(&backend);
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(timeout))
        .await?;
    tracing::info!("server stopped; flushing audit rows and closing pools");
    // In-flight requests (at most SHUTDOWN_TIMEOUT_SECS, default 20) plus this flush fit the
    // orchestrator's grace period (compose: 30 s); rows still queued after it are counted as
    // dropped, as when Postgres is down.
    backend
        .shutdown(xenios_core::jobs::worker::AUDIT_FLUSH_TIMEOUT)
        .await;
    drop(backend);
    Ok(())
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

/// Builds the backend from `config` ([`start`]), binds `HOST:PORT` and serves until
/// `shutdown`.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let bind = config.bind_address();
    let backend = start(config).await?;
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    tracing::info!(
        environment = %backend.config().environment,
        startup_ms = started.elapsed().as_millis() as u64,
        "xenios-server started"
    );
    run(backend, listener, shutdown).await?;
    Ok(())
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
