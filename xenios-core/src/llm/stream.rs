//! Streamed calls: open a stream on the first model that yields a first token (with the
//! route's retries and fallback), then forward its chunks as [`StreamEvent`]s. Once a token
//! reached the caller a stream is never restarted: a later failure ends it with an error
//! event carrying a [`StreamErrorCode`].

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::audit::{self, ResponsePayload};
use super::engine::{Llm, Routed};
use super::error::{LlmError, StreamErrorCode, failures_text};
use super::provider::{
    ChunkStream, ProviderChunk, ProviderError, ProviderErrorKind, ProviderRequest,
};
use super::types::{CompletionRequest, StreamEvent, StreamSummary};
use crate::context::RequestContext;
use crate::db::models::InferenceStatus;
use crate::error::{Error, Result};

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
    /// Opens a stream on one model and reads up to its first token, all within the
    /// time-to-first-token deadline.
    async fn open(&self, preq: &ProviderRequest) -> std::result::Result<Opened, ProviderError> {
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
            Some(Err(e)) => Err(e.into()),
            None => Err(Error::Internal("the stream task ended early".to_owned())),
        }
    }

    async fn run_stream(
        self,
        ctx: RequestContext,
        req: CompletionRequest,
        tx: mpsc::Sender<std::result::Result<StreamEvent, LlmError>>,
    ) {
        let plan = self.plan(&req);
        self.inner.metrics.call();
        self.inner.metrics.stream();
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
                let _ = tx.send(Err(err)).await;
                return;
            }
        };
        let ttft = guard.started.elapsed();
        let fallback_used = index > 0;
        if fallback_used {
            self.inner.metrics.fallback();
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
        let ttft_ms = Some(audit::millis_u64(ttft));
        if let Some(e) = failure {
            self.inner.metrics.error();
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
                row.ttft_ms = Some(audit::millis_i32(ttft));
                row.error = Some(logged);
                audit::usage_into_row(row, &usage);
                if store {
                    row.response_payload = audit::payload(&ResponsePayload::partial(&content));
                }
            });
            let code = if e.kind == ProviderErrorKind::Timeout {
                StreamErrorCode::UpstreamTimeout
            } else {
                StreamErrorCode::UpstreamStreamFailed
            };
            let _ = tx.send(Ok(StreamEvent::Error { code, message })).await;
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
            latency_ms: audit::millis_u64(guard.started.elapsed()),
            ttft_ms,
        };
        let failures_text = failures_text(req.task, failures);
        guard.finish(InferenceStatus::Success, |row| {
            row.model_used = Some(model_used);
            row.fallback_used = fallback_used;
            row.ttft_ms = Some(audit::millis_i32(ttft));
            row.error = failures_text;
            audit::usage_into_row(row, &usage);
            if store {
                row.response_payload =
                    audit::payload(&ResponsePayload::done(&content, finish_reason.as_deref()));
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
    rx: mpsc::Receiver<std::result::Result<StreamEvent, LlmError>>,
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
                    code: e.stream_code(),
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
