//! [`Llm`], the engine: admits a call, plans its route, walks the route's models with the
//! retry and fallback rules, and accounts for the call (metrics, token budget, audit row).
//! Streaming lives in [`super::stream`].

use std::future::Future;
use std::sync::Arc;

use backon::Retryable;

use super::audit::{self, AuditGuard, RequestPayload, ResponsePayload};
use super::budget::TokenBudget;
use super::error::{LlmError, ModelFailure, failures_text};
use super::policy;
use super::provider::{Provider, ProviderError, ProviderErrorKind, ProviderRequest};
use super::retry::{self, RetryBudget};
use super::routing::LlmConfig;
use super::types::{Completion, CompletionRequest, Usage};
use crate::context::RequestContext;
use crate::db::audit::AuditWriter;
use crate::db::models::{InferenceStatus, NewInferenceLog};
use crate::error::Result;
use crate::metrics::LlmMetrics;

/// The engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Llm {
    pub(super) inner: Arc<LlmInner>,
}

#[derive(Debug)]
pub(super) struct LlmInner {
    pub(super) provider: Arc<dyn Provider>,
    pub(super) config: LlmConfig,
    pub(super) store_payloads: bool,
    audit: AuditWriter,
    pub(super) metrics: LlmMetrics,
    budget: Option<TokenBudget>,
}

/// What one call will do: models in order and sampling settings.
pub(super) struct Plan {
    pub(super) models: Vec<String>,
    pub(super) temperature: f32,
    pub(super) max_tokens: u32,
}

/// The model that answered a call, and the failures of those tried before it.
pub(super) struct Routed<T> {
    /// Position of the model in the route (0: no fallback).
    pub(super) index: usize,
    pub(super) model: String,
    pub(super) value: T,
    pub(super) failures: Vec<ModelFailure>,
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
    pub(super) async fn admit(&self, ctx: &RequestContext, req: &CompletionRequest) -> Result<()> {
        policy::authorize(&ctx.principal, req, &self.inner.config)?;
        req.validate()?;
        if let (Some(budget), Some(user)) = (&self.inner.budget, ctx.user_id()) {
            budget.check(user).await?;
        }
        Ok(())
    }

    /// Adds a call's usage to the user's budget (best effort: a Redis failure is logged).
    pub(super) async fn charge(&self, ctx: &RequestContext, usage: &Usage) {
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

    /// The engine's counters, for [`crate::metrics::render`].
    pub fn metrics(&self) -> &LlmMetrics {
        &self.inner.metrics
    }

    pub(super) fn plan(&self, req: &CompletionRequest) -> Plan {
        let route = self.inner.config.routes.route(req.task);
        Plan {
            models: req.models.clone().unwrap_or_else(|| route.models.clone()),
            temperature: req.temperature.unwrap_or(route.temperature),
            max_tokens: req.max_tokens.unwrap_or(route.max_tokens),
        }
    }

    pub(super) fn guard(
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
            row.request_payload = audit::payload(&RequestPayload {
                messages: &req.messages,
                models: &plan.models,
                temperature: plan.temperature,
                max_tokens: plan.max_tokens,
            });
        }
        AuditGuard::new(self.inner.audit.clone(), row)
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

    pub(super) fn failed(&self, guard: &mut AuditGuard, err: &LlmError) {
        self.inner.metrics.error();
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
        self.inner.metrics.call();
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
            latency_ms: audit::millis_u64(guard.started.elapsed()),
        };
        if completion.fallback_used {
            self.inner.metrics.fallback();
        }
        self.inner.metrics.observe(guard.started.elapsed());
        self.charge(ctx, &completion.usage).await;
        let store = self.inner.store_payloads;
        let failures_text = failures_text(req.task, failures);
        guard.finish(InferenceStatus::Success, |row| {
            row.model_used = Some(completion.model_used.clone());
            row.fallback_used = completion.fallback_used;
            audit::usage_into_row(row, &completion.usage);
            row.error = failures_text;
            if store {
                row.response_payload = audit::payload(&ResponsePayload::done(
                    &completion.content,
                    completion.finish_reason.as_deref(),
                ));
            }
        });
        Ok(completion)
    }

    /// Tries the plan's models in order with the retry and fallback rules of [`super`]:
    /// `call` is one attempt on one model, retried by `backon` ([`retry`]). Returns the first
    /// success, with the failures of the models before it, or every failure in order.
    pub(super) async fn along_route<T, F, Fut>(
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
        let config = &self.inner.config;
        let metrics = &self.inner.metrics;
        let mut budget = RetryBudget::new(config);
        let mut failures = Vec::new();
        for (index, model) in plan.models.iter().enumerate() {
            let preq = Arc::new(self.provider_request(ctx, req, plan, model));
            let mut attempts = 0u32;
            let result = (|| {
                attempts += 1;
                call(Arc::clone(&preq))
            })
            .retry(retry::backoff(config))
            .sleep(tokio::time::sleep)
            .when(retry::should_retry)
            .adjust(|e, next| budget.adjust(e, next))
            .notify(|e, delay| {
                metrics.retry();
                tracing::debug!(%model, error = %e, ?delay, "model call failed, retrying");
            })
            .await;
            let e = match result {
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
            tracing::debug!(%model, attempts, error = %e, "model call failed");
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
        }
        Err(LlmError {
            task: req.task,
            failures,
            refused: false,
        })
    }
}
