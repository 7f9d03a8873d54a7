//! LLM orchestration: per-task routing, retries, fallback, streaming and the audit log.
//!
//! ## Layout
//! - [`types`]: what callers send and get back ([`CompletionRequest`], [`Completion`],
//!   [`StreamEvent`]).
//! - [`routing`]: the [`Task`] routing table and [`LlmConfig`] (timeouts, retries).
//! - [`provider`]: the [`Provider`] trait and [`ProviderError`] with the fallback rules.
//! - [`openrouter`]: the real provider. [`fake`]: the offline one, driven by model names.
//! - [`input`]: the rules for requests from outside: roles, OpenAI content parts, whether
//!   an OpenAI `model` is a task or a model id.
//! - [`policy`]: who may choose models and `max_tokens`. [`budget`]: per-user daily token
//!   budgets in Redis.
//! - this module: [`Llm`], the engine that applies routes, timeouts, retries and fallback
//!   to any provider and writes one `inference_logs` row per call.
//!
//! ## Rules
//! Models of a route are tried in order. A retryable failure (connect error, timeout, 408,
//! 429, 5xx, a stream broken before its first token) is retried on the same model with
//! exponential backoff and jitter, honouring `Retry-After`, at most `LLM_MAX_RETRIES` times
//! and within `LLM_RETRY_BUDGET_MS` of waiting; then the next model is tried. 400, 401, 402
//! and 403 stop at once. Once a token reached the caller a stream is never restarted: a later
//! failure ends it with an error event.

pub mod budget;
pub mod fake;
pub mod input;
pub mod openrouter;
pub mod policy;
pub mod provider;
pub mod routing;
pub mod types;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures::{Stream, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;

pub use self::budget::{TokenBudget, TokenUsage};
pub use self::fake::FakeProvider;
pub use self::openrouter::OpenRouterProvider;
pub use self::provider::{
    ChunkStream, Provider, ProviderChunk, ProviderError, ProviderErrorKind, ProviderRequest,
    ProviderResponse,
};
pub use self::routing::{LlmConfig, Route, RoutingTable, Task};
pub use self::types::{
    Completion, CompletionRequest, Message, Role, StreamEvent, StreamSummary, Usage,
};

use crate::context::RequestContext;
use crate::db::audit::AuditWriter;
use crate::db::models::{InferenceStatus, NewInferenceLog};
use crate::error::{Error, Result};

/// One model's failure within a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFailure {
    /// The model.
    pub model: String,
    /// Its last error.
    pub error: ProviderError,
    /// How many times it was tried.
    pub attempts: u32,
}

/// A call that no model could serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmError {
    /// The task of the call.
    pub task: Task,
    /// Each model's failure, in the order tried.
    pub failures: Vec<ModelFailure>,
    /// True when a non-retryable answer (400/401/402/403) stopped the call before the
    /// remaining models were tried.
    pub refused: bool,
}

impl LlmError {
    /// True when every model failed by timing out.
    pub fn is_timeout(&self) -> bool {
        !self.failures.is_empty()
            && self
                .failures
                .iter()
                .all(|f| f.error.kind == ProviderErrorKind::Timeout)
    }
}

impl LlmError {
    /// The message a client may see: the task, each model tried in order with the kind of its
    /// failure (HTTP status, timeout...) and its attempts, but never the provider's error
    /// body. [`fmt::Display`] has the full text, for logs and audit rows.
    pub fn public_message(&self) -> String {
        self.render(true)
    }

    fn render(&self, public: bool) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if self.refused {
            let _ = write!(
                out,
                "the upstream refused the {} request (not retried, no fallback): ",
                self.task
            );
        } else {
            let _ = write!(out, "all models failed for task {}: ", self.task);
        }
        for (i, fail) in self.failures.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            let error = if public {
                fail.error.public_summary()
            } else {
                fail.error.to_string()
            };
            let _ = write!(
                out,
                "{}) {}: {} ({} attempt{})",
                i + 1,
                fail.model,
                error,
                fail.attempts,
                if fail.attempts == 1 { "" } else { "s" }
            );
        }
        out
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for LlmError {}

/// Counters of the engine, for `/metrics`.
#[derive(Debug, Default)]
pub struct LlmMetrics {
    calls: AtomicU64,
    streams: AtomicU64,
    fallbacks: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
}

/// Upper bounds (ms) of the latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [u64; 10] =
    [50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000];

/// A copy of the engine's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmMetricsSnapshot {
    /// Calls (complete and stream).
    pub calls: u64,
    /// Of which streamed.
    pub streams: u64,
    /// Calls answered by a fallback model.
    pub fallbacks: u64,
    /// Retries of a model.
    pub retries: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS_MS`].
    pub latency_buckets: Vec<u64>,
    /// Calls measured.
    pub latency_count: u64,
    /// Sum of latencies in ms.
    pub latency_sum_ms: u64,
}

impl LlmMetrics {
    fn observe(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        for (bound, bucket) in LATENCY_BUCKETS_MS.iter().zip(&self.latency_buckets) {
            if ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LlmMetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LlmMetricsSnapshot {
            calls: l(&self.calls),
            streams: l(&self.streams),
            fallbacks: l(&self.fallbacks),
            retries: l(&self.retries),
            errors: l(&self.errors),
            latency_buckets: self.latency_buckets.iter().map(l).collect(),
            latency_count: l(&self.latency_count),
            latency_sum_ms: l(&self.latency_sum_ms),
        }
    }
}

/// The engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Llm {
    inner: Arc<LlmInner>,
}

#[derive(Debug)]
struct LlmInner {
    provider: Arc<dyn Provider>,
    config: LlmConfig,
    store_payloads: bool,
    audit: AuditWriter,
    metrics: LlmMetrics,
    budget: Option<TokenBudget>,
}

/// What one call will do: models in order and sampling settings.
struct Plan {
    models: Vec<String>,
    temperature: f32,
    max_tokens: u32,
}

/// Retry state of one call: the backoff of the current model and the waiting budget.
struct Retrier<'a> {
    config: &'a LlmConfig,
    backoff: backon::ExponentialBackoff,
    waited: Duration,
}

impl<'a> Retrier<'a> {
    fn new(config: &'a LlmConfig) -> Self {
        Self {
            config,
            backoff: Self::backoff(config),
            waited: Duration::ZERO,
        }
    }

    fn backoff(config: &LlmConfig) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(config.retry_base_delay)
            .with_max_delay(config.retry_max_delay)
            .with_max_times(usize::try_from(config.max_retries).unwrap_or(usize::MAX))
            .build()
    }

    /// Starts over for the next model (the waiting budget is per call).
    fn next_model(&mut self) {
        self.backoff = Self::backoff(self.config);
    }

    /// How long to wait before trying the same model again, or None to move on.
    ///
    /// A timeout or a broken stream moves on at once: the model may have been generating
    /// (and billing) all along, and asking it again would likely pay for the same slow
    /// answer twice.
    fn delay(&mut self, err: &ProviderError) -> Option<Duration> {
        if !err.is_retryable()
            || matches!(
                err.kind,
                ProviderErrorKind::Timeout | ProviderErrorKind::MidStream
            )
        {
            return None;
        }
        let mut delay = self.backoff.next()?;
        if let Some(after) = err.retry_after {
            if after > self.config.retry_max_delay {
                return None;
            }
            delay = delay.max(after);
        }
        if self.waited + delay > self.config.retry_budget {
            return None;
        }
        self.waited += delay;
        Some(delay)
    }
}

/// Writes the audit row of a call exactly once: explicitly when the call ends, or as
/// `cancelled` when the call is dropped first (caller gone, stream aborted).
struct AuditGuard {
    audit: AuditWriter,
    row: Option<NewInferenceLog>,
    started: Instant,
}

impl AuditGuard {
    fn finish(&mut self, status: InferenceStatus, fill: impl FnOnce(&mut NewInferenceLog)) {
        if let Some(mut row) = self.row.take() {
            row.status = status.as_str().to_owned();
            row.latency_ms = millis_i32(self.started.elapsed());
            fill(&mut row);
            self.audit.inference(row);
        }
    }
}

impl Drop for AuditGuard {
    fn drop(&mut self) {
        self.finish(InferenceStatus::Cancelled, |_| {});
    }
}

fn millis_i32(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn usage_into_row(row: &mut NewInferenceLog, u: &Usage) {
    let i = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
    row.prompt_tokens = i(u.prompt_tokens);
    row.completion_tokens = i(u.completion_tokens);
    row.total_tokens = i(u.total_tokens);
    row.cost_usd = u.cost_usd;
}

/// The model that answered a call, and the failures of those tried before it.
struct Routed<T> {
    /// Position of the model in the route (0: no fallback).
    index: usize,
    model: String,
    value: T,
    failures: Vec<ModelFailure>,
}

/// The earlier models' failures of a call that succeeded, for its audit row.
fn failures_text(task: Task, failures: Vec<ModelFailure>) -> Option<String> {
    (!failures.is_empty()).then(|| {
        LlmError {
            task,
            failures,
            refused: false,
        }
        .to_string()
    })
}

/// The result of opening a stream: the chunks, plus what was read before the first token.
struct Opened {
    model: String,
    /// When the attempt's request was sent.
    started: tokio::time::Instant,
    chunks: ChunkStream,
    first: ProviderChunk,
    /// True when the stream ended before any token (an empty answer).
    ended: bool,
}

impl Llm {
    /// An engine over `provider` writing audit rows to `audit`.
    pub fn new(
        provider: Arc<dyn Provider>,
        config: LlmConfig,
        audit: AuditWriter,
        store_payloads: bool,
    ) -> Self {
        Self::with_budget(provider, config, audit, store_payloads, None)
    }

    /// [`Llm::new`] with per-user daily token budgets: every call whose principal is a user is
    /// checked against `budget` first and charged its usage at the end.
    pub fn with_budget(
        provider: Arc<dyn Provider>,
        config: LlmConfig,
        audit: AuditWriter,
        store_payloads: bool,
        budget: Option<TokenBudget>,
    ) -> Self {
        Self {
            inner: Arc::new(LlmInner {
                provider,
                config,
                store_payloads,
                audit,
                metrics: LlmMetrics::default(),
                budget,
            }),
        }
    }

    /// The per-user daily token budget, when one is configured.
    pub fn budget(&self) -> Option<&TokenBudget> {
        self.inner.budget.as_ref()
    }

    /// The checks every call passes before any upstream request: the caller's choices
    /// ([`policy::authorize`]), the request's shape, and the user's token budget.
    async fn admit(&self, ctx: &RequestContext, req: &CompletionRequest) -> Result<()> {
        policy::authorize(&ctx.principal, req, &self.inner.config)?;
        req.validate()?;
        if let (Some(budget), Some(user)) = (&self.inner.budget, ctx.user_id()) {
            budget.check(user).await?;
        }
        Ok(())
    }

    /// Adds a call's usage to the user's budget (best effort: a Redis failure is logged).
    async fn charge(&self, ctx: &RequestContext, usage: &Usage) {
        let (Some(budget), Some(user)) = (&self.inner.budget, ctx.user_id()) else {
            return;
        };
        let tokens = if usage.total_tokens > 0 {
            u64::from(usage.total_tokens)
        } else {
            u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens)
        };
        if let Err(e) = budget.charge(user, tokens).await {
            tracing::warn!(error = %e, tokens, "cannot charge the user's token budget");
        }
    }

    /// The provider's name (`openrouter`, `fake`).
    pub fn provider_name(&self) -> &'static str {
        self.inner.provider.name()
    }

    /// The settings, routing table included.
    pub fn config(&self) -> &LlmConfig {
        &self.inner.config
    }

    /// A copy of the counters.
    pub fn metrics(&self) -> LlmMetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    fn plan(&self, req: &CompletionRequest) -> Plan {
        let route = self.inner.config.routes.route(req.task);
        Plan {
            models: req.models.clone().unwrap_or_else(|| route.models.clone()),
            temperature: req.temperature.unwrap_or(route.temperature),
            max_tokens: req.max_tokens.unwrap_or(route.max_tokens),
        }
    }

    fn guard(
        &self,
        ctx: &RequestContext,
        req: &CompletionRequest,
        plan: &Plan,
        streaming: bool,
    ) -> AuditGuard {
        let requested = plan.models.first().cloned().unwrap_or_default();
        let mut row =
            NewInferenceLog::new(req.task.as_str(), requested, InferenceStatus::Cancelled);
        row.streaming = streaming;
        row.correlation_id = Some(ctx.correlation_id.as_str().to_owned());
        row.user_id = ctx.user_id().and_then(|u| uuid::Uuid::parse_str(u).ok());
        if self.inner.store_payloads {
            row.request_payload = Some(json!({
                "messages": req.messages,
                "models": plan.models,
                "temperature": plan.temperature,
                "max_tokens": plan.max_tokens,
            }));
        }
        AuditGuard {
            audit: self.inner.audit.clone(),
            row: Some(row),
            started: Instant::now(),
        }
    }

    fn provider_request(
        &self,
        ctx: &RequestContext,
        req: &CompletionRequest,
        plan: &Plan,
        model: &str,
    ) -> ProviderRequest {
        ProviderRequest {
            model: model.to_owned(),
            messages: req.messages.clone(),
            temperature: plan.temperature,
            max_tokens: plan.max_tokens,
            correlation_id: ctx.correlation_id.as_str().to_owned(),
        }
    }

    fn failed(&self, guard: &mut AuditGuard, err: &LlmError) {
        self.inner.metrics.errors.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.observe(guard.started.elapsed());
        tracing::warn!(task = %err.task, error = %err, "LLM call failed");
        let text = err.to_string();
        guard.finish(InferenceStatus::Error, |row| row.error = Some(text));
    }

    /// One complete (non-streaming) call along the task's route.
    pub async fn complete(
        &self,
        ctx: &RequestContext,
        req: CompletionRequest,
    ) -> Result<Completion> {
        self.admit(ctx, &req).await?;
        let plan = self.plan(&req);
        self.inner.metrics.calls.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.guard(ctx, &req, &plan, false);
        let config = &self.inner.config;
        // A whole answer is awaited here, not a first token: LLM_TIMEOUT_MS bounds it.
        let attempt_timeout = config.total_timeout;
        let provider = &self.inner.provider;
        let routed = self
            .along_route(ctx, &req, &plan, |preq| async move {
                match tokio::time::timeout(attempt_timeout, provider.complete(&preq)).await {
                    Ok(r) => r,
                    Err(_) => Err(ProviderError::new(
                        ProviderErrorKind::Timeout,
                        format!("no answer within {} ms", attempt_timeout.as_millis()),
                    )),
                }
            })
            .await;
        let Routed {
            index,
            model,
            value: resp,
            failures,
        } = match routed {
            Ok(r) => r,
            Err(err) => {
                self.failed(&mut guard, &err);
                return Err(err.into());
            }
        };
        let usage = resp.usage.unwrap_or_default();
        let completion = Completion {
            content: resp.content,
            model_used: resp.model.unwrap_or(model),
            model_requested: plan.models[0].clone(),
            fallback_used: index > 0,
            finish_reason: resp.finish_reason,
            usage,
            latency_ms: millis_u64(guard.started.elapsed()),
        };
        if completion.fallback_used {
            self.inner.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.metrics.observe(guard.started.elapsed());
        self.charge(ctx, &completion.usage).await;
        let store = self.inner.store_payloads;
        let failures_text = failures_text(req.task, failures);
        guard.finish(InferenceStatus::Success, |row| {
            row.model_used = Some(completion.model_used.clone());
            row.fallback_used = completion.fallback_used;
            usage_into_row(row, &completion.usage);
            row.error = failures_text;
            if store {
                row.response_payload = Some(json!({
                    "content": completion.content,
                    "finish_reason": completion.finish_reason,
                }));
            }
        });
        Ok(completion)
    }

    /// Tries the plan's models in order with the retry and fallback rules of this module:
    /// `call` is one attempt on one model. Returns the first success, with the failures of
    /// the models before it, or every failure in order.
    async fn along_route<T, F, Fut>(
        &self,
        ctx: &RequestContext,
        req: &CompletionRequest,
        plan: &Plan,
        mut call: F,
    ) -> std::result::Result<Routed<T>, LlmError>
    where
        F: FnMut(Arc<ProviderRequest>) -> Fut,
        Fut: Future<Output = std::result::Result<T, ProviderError>>,
    {
        let mut retrier = Retrier::new(&self.inner.config);
        let mut failures = Vec::new();
        for (index, model) in plan.models.iter().enumerate() {
            retrier.next_model();
            let preq = Arc::new(self.provider_request(ctx, req, plan, model));
            let mut attempts = 0u32;
            loop {
                attempts += 1;
                let e = match call(Arc::clone(&preq)).await {
                    Ok(value) => {
                        return Ok(Routed {
                            index,
                            model: model.clone(),
                            value,
                            failures,
                        });
                    }
                    Err(e) => e,
                };
                tracing::debug!(%model, attempt = attempts, error = %e, "model call failed");
                if let Some(delay) = retrier.delay(&e) {
                    self.inner.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    continue;
                }
                let stop = !e.allows_fallback();
                failures.push(ModelFailure {
                    model: model.clone(),
                    error: e,
                    attempts,
                });
                if stop {
                    return Err(LlmError {
                        task: req.task,
                        failures,
                        refused: true,
                    });
                }
                break;
            }
        }
        Err(LlmError {
            task: req.task,
            failures,
            refused: false,
        })
    }

    /// Opens a stream on one model and reads up to its first token, all within the
    /// time-to-first-token deadline.
    async fn open(&self, preq: &ProviderRequest) -> Result<Opened, ProviderError> {
        let config = &self.inner.config;
        let ttft = config.ttft_timeout.min(config.total_timeout);
        let started = tokio::time::Instant::now();
        let opening = async {
            let mut chunks = self.inner.provider.stream(preq).await?;
            let mut first = ProviderChunk::default();
            loop {
                match chunks.next().await {
                    Some(Ok(c)) => {
                        if let Some(token) = first.merge(c) {
                            first.delta = Some(token);
                            return Ok((chunks, first, false));
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Ok((chunks, first, true)),
                }
            }
        };
        match tokio::time::timeout(ttft, opening).await {
            Ok(Ok((chunks, first, ended))) => Ok(Opened {
                model: preq.model.clone(),
                started,
                chunks,
                first,
                ended,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProviderError::new(
                ProviderErrorKind::Timeout,
                format!("no first token within {} ms", ttft.as_millis()),
            )),
        }
    }

    /// A streamed call along the task's route. Resolves once the first token arrived (or the
    /// stream ended empty); fails like [`Llm::complete`] when no model produced one. Dropping
    /// the returned stream cancels the upstream request.
    pub async fn stream(&self, ctx: &RequestContext, req: CompletionRequest) -> Result<LlmStream> {
        self.admit(ctx, &req).await?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(self.clone().run_stream(ctx.clone(), req, tx));
        let mut stream = LlmStream {
            first: None,
            rx,
            task,
        };
        match stream.rx.recv().await {
            Some(Ok(event)) => {
                stream.first = Some(event);
                Ok(stream)
            }
            Some(Err(e)) => Err(e),
            None => Err(Error::Internal("the stream task ended early".to_owned())),
        }
    }

    async fn run_stream(
        self,
        ctx: RequestContext,
        req: CompletionRequest,
        tx: mpsc::Sender<Result<StreamEvent>>,
    ) {
        let plan = self.plan(&req);
        self.inner.metrics.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.metrics.streams.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.guard(&ctx, &req, &plan, true);
        let config = &self.inner.config;
        let routed = self
            .along_route(&ctx, &req, &plan, |preq| {
                let this = self.clone();
                async move { this.open(&preq).await }
            })
            .await;
        let Routed {
            index,
            value: mut o,
            failures,
            ..
        } = match routed {
            Ok(r) => r,
            Err(err) => {
                self.failed(&mut guard, &err);
                let _ = tx.send(Err(err.into())).await;
                return;
            }
        };
        let ttft = guard.started.elapsed();
        let fallback_used = index > 0;
        if fallback_used {
            self.inner.metrics.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        // LLM_TIMEOUT_MS bounds the attempt end to end: counted from its request, not from
        // its first token.
        let deadline = o.started + config.total_timeout;
        let mut content = String::new();
        let store = self.inner.store_payloads;
        let mut failure: Option<ProviderError> = None;
        // `meta` gathers the model, usage and finish reason as chunks bring them; `token` is
        // the text to forward next, starting with the one `open` read.
        let mut meta = std::mem::take(&mut o.first);
        let mut token = meta.delta.take();
        let mut ended = o.ended;
        loop {
            if let Some(d) = token.take() {
                if store {
                    content.push_str(&d);
                }
                if tx
                    .send(Ok(StreamEvent::Delta { content: d }))
                    .await
                    .is_err()
                {
                    // The caller went away: the guard logs `cancelled`.
                    return;
                }
            }
            if ended {
                break;
            }
            match tokio::time::timeout_at(deadline, o.chunks.next()).await {
                Ok(Some(Ok(c))) => token = meta.merge(c),
                Ok(Some(Err(e))) => {
                    failure = Some(e);
                    ended = true;
                }
                Ok(None) => ended = true,
                Err(_) => {
                    failure = Some(ProviderError::new(
                        ProviderErrorKind::Timeout,
                        format!(
                            "stream not finished within {} ms",
                            config.total_timeout.as_millis()
                        ),
                    ));
                    ended = true;
                }
            }
        }
        let ProviderChunk {
            model: model_used,
            usage,
            finish_reason,
            ..
        } = meta;
        // Close the upstream before reporting.
        drop(o.chunks);
        let model_used = model_used.unwrap_or(o.model);
        let usage = usage.unwrap_or_default();
        let ttft_ms = Some(millis_u64(ttft));
        if let Some(e) = failure {
            self.inner.metrics.errors.fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.observe(guard.started.elapsed());
            tracing::warn!(task = %req.task, model = %model_used, error = %e, "stream failed after its first token");
            self.charge(&ctx, &usage).await;
            // The client sees the model and the kind of failure; the provider's text stays in
            // the log and the audit row.
            let message = format!("{model_used}: {}", e.public_summary());
            let logged = format!("{model_used}: {e}");
            guard.finish(InferenceStatus::Error, |row| {
                row.model_used = Some(model_used.clone());
                row.fallback_used = fallback_used;
                row.ttft_ms = Some(millis_i32(ttft));
                row.error = Some(logged);
                usage_into_row(row, &usage);
                if store {
                    row.response_payload = Some(json!({"content": content, "partial": true}));
                }
            });
            let code = if e.kind == ProviderErrorKind::Timeout {
                "upstream_timeout"
            } else {
                "upstream_stream_failed"
            };
            let _ = tx
                .send(Ok(StreamEvent::Error {
                    code: code.to_owned(),
                    message,
                }))
                .await;
            return;
        }
        self.inner.metrics.observe(guard.started.elapsed());
        self.charge(&ctx, &usage).await;
        let summary = StreamSummary {
            model_used: model_used.clone(),
            model_requested: plan.models[0].clone(),
            fallback_used,
            finish_reason: finish_reason.clone(),
            usage: usage.clone(),
            latency_ms: millis_u64(guard.started.elapsed()),
            ttft_ms,
        };
        let failures_text = failures_text(req.task, failures);
        guard.finish(InferenceStatus::Success, |row| {
            row.model_used = Some(model_used);
            row.fallback_used = fallback_used;
            row.ttft_ms = Some(millis_i32(ttft));
            row.error = failures_text;
            usage_into_row(row, &usage);
            if store {
                row.response_payload =
                    Some(json!({"content": content, "finish_reason": finish_reason}));
            }
        });
        let _ = tx.send(Ok(StreamEvent::Done(summary))).await;
    }
}

/// A streamed completion: [`StreamEvent::Delta`]s, then one [`StreamEvent::Done`] or
/// [`StreamEvent::Error`]. Dropping it cancels the upstream request (and logs the call as
/// `cancelled` unless it already ended).
#[derive(Debug)]
pub struct LlmStream {
    first: Option<StreamEvent>,
    rx: mpsc::Receiver<Result<StreamEvent>>,
    task: tokio::task::JoinHandle<()>,
}

impl Stream for LlmStream {
    type Item = StreamEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamEvent>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(first));
        }
        self.rx.poll_recv(cx).map(|item| {
            item.map(|r| {
                r.unwrap_or_else(|e| StreamEvent::Error {
                    code: e.code().to_owned(),
                    message: e.public_message(),
                })
            })
        })
    }
}

impl Drop for LlmStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_retries: u32, base_ms: u64, max_ms: u64, budget_ms: u64) -> LlmConfig {
        LlmConfig {
            max_retries,
            retry_base_delay: Duration::from_millis(base_ms),
            retry_max_delay: Duration::from_millis(max_ms),
            retry_budget: Duration::from_millis(budget_ms),
            ..LlmConfig::default()
        }
    }

    fn status(s: u16) -> ProviderError {
        ProviderError::new(ProviderErrorKind::Status(s), "x")
    }

    #[test]
    fn timeouts_and_broken_streams_move_to_the_next_model_at_once() {
        let config = config(3, 1, 10, 60_000);
        let mut r = Retrier::new(&config);
        for kind in [ProviderErrorKind::Timeout, ProviderErrorKind::MidStream] {
            assert_eq!(r.delay(&ProviderError::new(kind, "x")), None, "{kind:?}");
        }
        assert!(r.delay(&status(503)).is_some());
        assert!(
            r.delay(&ProviderError::new(ProviderErrorKind::Connect, "x"))
                .is_some()
        );
    }

    #[test]
    fn retries_are_bounded_in_count_and_grow_within_the_maximum() {
        let config = config(3, 100, 1000, 60_000);
        let mut r = Retrier::new(&config);
        let delays: Vec<Duration> = std::iter::from_fn(|| r.delay(&status(503))).collect();
        assert_eq!(delays.len(), 3, "{delays:?}");
        for d in &delays {
            assert!(
                *d >= Duration::from_millis(100) && *d <= Duration::from_millis(1000),
                "{delays:?}"
            );
        }
        // The next model starts with a fresh count.
        r.next_model();
        assert!(r.delay(&status(503)).is_some());
    }

    #[test]
    fn refusals_are_never_retried() {
        let config = config(3, 10, 1000, 60_000);
        let mut r = Retrier::new(&config);
        for s in [400, 401, 402, 403, 404] {
            assert_eq!(r.delay(&status(s)), None, "{s}");
        }
        let invalid = ProviderError::new(ProviderErrorKind::InvalidResponse, "x");
        assert_eq!(r.delay(&invalid), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_wait() {
        let config = config(3, 10, 2000, 60_000);
        let mut r = Retrier::new(&config);
        let asked = status(429).with_retry_after(Some(Duration::from_millis(1500)));
        let d = r.delay(&asked).unwrap();
        assert!(d >= Duration::from_millis(1500), "{d:?}");
        // Longer than LLM_RETRY_MAX_DELAY_MS: move on instead of waiting.
        let too_long = status(429).with_retry_after(Some(Duration::from_secs(30)));
        assert_eq!(r.delay(&too_long), None);
    }

    #[test]
    fn the_waiting_budget_spans_every_model_of_a_call() {
        // 10 retries allowed, but at most 1 s of waiting in the whole call.
        let config = config(10, 400, 400, 1000);
        let mut r = Retrier::new(&config);
        let mut waited = Duration::ZERO;
        while let Some(d) = r.delay(&status(503)) {
            waited += d;
        }
        assert!(waited <= Duration::from_millis(1000), "{waited:?}");
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        // The budget is per call: a fresh model does not refill it.
        r.next_model();
        let more: Duration = std::iter::from_fn(|| r.delay(&status(503))).sum();
        assert!(
            waited + more <= Duration::from_millis(1000),
            "{waited:?} + {more:?}"
        );
    }
}
