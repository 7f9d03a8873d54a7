//! The fake provider: answers offline, with behaviour chosen by the model name, so that
//! development needs no key and every fallback rule is testable without a network.
//!
//! A model id containing one of these words behaves so (first match wins):
//! - `fail-connect`: connection refused.
//! - `fail-5xx`: HTTP 503. `fail-429`: HTTP 429 with `Retry-After: 0`.
//! - `fail-400`, `fail-401`, `fail-402`, `fail-403`, `fail-408`: that status.
//! - `fail-mid-stream`: two tokens, then a mid-stream error (complete: a stream error).
//! - `fail-before-token`: the stream opens, then fails before any token.
//! - `slow`: waits 2 s before the first token, 50 ms between tokens.
//!
//! Anything else (including the real ids of the default routes) answers with a short echo of
//! the last user message, one word per token.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::provider::{
    ChunkStream, Provider, ProviderChunk, ProviderError, ProviderErrorKind, ProviderRequest,
    ProviderResponse,
};
use super::types::{Role, Usage};

/// The offline provider. See the module doc for its behaviours.
#[derive(Debug, Clone, Default)]
pub struct FakeProvider;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    Slow,
    FailConnect,
    Status(u16),
    MidStream,
    BeforeToken,
}

fn behaviour(model: &str) -> Behaviour {
    const STATUSES: [(&str, u16); 7] = [
        ("fail-5xx", 503),
        ("fail-429", 429),
        ("fail-400", 400),
        ("fail-401", 401),
        ("fail-402", 402),
        ("fail-403", 403),
        ("fail-408", 408),
    ];
    if model.contains("fail-connect") {
        return Behaviour::FailConnect;
    }
    if let Some((_, s)) = STATUSES.iter().find(|(w, _)| model.contains(w)) {
        return Behaviour::Status(*s);
    }
    if model.contains("fail-mid-stream") {
        Behaviour::MidStream
    } else if model.contains("fail-before-token") {
        Behaviour::BeforeToken
    } else if model.contains("slow") {
        Behaviour::Slow
    } else {
        Behaviour::Ok
    }
}

fn status_error(status: u16) -> ProviderError {
    let err = ProviderError::new(
        ProviderErrorKind::Status(status),
        format!("fake provider answered {status}"),
    );
    if status == 429 {
        err.with_retry_after(Some(Duration::ZERO))
    } else {
        err
    }
}

fn tokens(req: &ProviderRequest) -> Vec<String> {
    let last = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .unwrap_or("");
    let echo: String = last.chars().take(80).collect();
    let text = format!("Fake reply from {} to: {echo}", req.model);
    let words: Vec<&str> = text.split(' ').collect();
    let limit = usize::try_from(req.max_tokens).unwrap_or(usize::MAX).max(1);
    let n = words.len();
    words
        .into_iter()
        .take(limit)
        .enumerate()
        .map(|(i, w)| {
            if i + 1 < n {
                format!("{w} ")
            } else {
                w.to_owned()
            }
        })
        .collect()
}

fn usage(req: &ProviderRequest, completion: usize) -> Usage {
    let prompt: usize = req
        .messages
        .iter()
        .map(|m| m.content.split_whitespace().count())
        .sum();
    let p = u32::try_from(prompt).unwrap_or(u32::MAX);
    let c = u32::try_from(completion).unwrap_or(u32::MAX);
    Usage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: p.saturating_add(c),
        cost_usd: Some(0.0),
        cached_tokens: None,
        reasoning_tokens: None,
    }
}

impl Provider for FakeProvider {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn complete<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>> {
        async move {
            match behaviour(&req.model) {
                Behaviour::FailConnect => Err(ProviderError::new(
                    ProviderErrorKind::Connect,
                    "fake connection refused",
                )),
                Behaviour::Status(s) => Err(status_error(s)),
                Behaviour::MidStream | Behaviour::BeforeToken => Err(ProviderError::new(
                    ProviderErrorKind::MidStream,
                    "fake provider error",
                )),
                b @ (Behaviour::Ok | Behaviour::Slow) => {
                    if b == Behaviour::Slow {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    let t = tokens(req);
                    Ok(ProviderResponse {
                        content: t.concat(),
                        model: Some(req.model.clone()),
                        finish_reason: Some("stop".to_owned()),
                        usage: Some(usage(req, t.len())),
                    })
                }
            }
        }
        .boxed()
    }

    fn stream<'a>(
        &'a self,
        req: &'a ProviderRequest,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move {
            let b = behaviour(&req.model);
            match b {
                Behaviour::FailConnect => {
                    return Err(ProviderError::new(
                        ProviderErrorKind::Connect,
                        "fake connection refused",
                    ));
                }
                Behaviour::Status(s) => return Err(status_error(s)),
                _ => {}
            }
            let t = tokens(req);
            let usage = usage(req, t.len());
            let model = req.model.clone();
            let mut items: Vec<Result<ProviderChunk, ProviderError>> = Vec::new();
            let broken = || {
                Err(ProviderError::new(
                    ProviderErrorKind::MidStream,
                    "fake provider error",
                ))
            };
            match b {
                Behaviour::BeforeToken => items.push(broken()),
                Behaviour::MidStream => {
                    for w in t.iter().take(2) {
                        items.push(Ok(delta(w, &model)));
                    }
                    items.push(broken());
                }
                _ => {
                    for w in &t {
                        items.push(Ok(delta(w, &model)));
                    }
                    items.push(Ok(ProviderChunk {
                        delta: None,
                        model: Some(model.clone()),
                        finish_reason: Some("stop".to_owned()),
                        usage: Some(usage),
                    }));
                }
            }
            let slow = b == Behaviour::Slow;
            let stream = futures::stream::iter(items.into_iter().enumerate()).then(
                move |(i, item)| async move {
                    if slow {
                        let pause = if i == 0 { 2000 } else { 50 };
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    item
                },
            );
            Ok(stream.boxed())
        }
        .boxed()
    }
}

fn delta(text: &str, model: &str) -> ProviderChunk {
    ProviderChunk {
        delta: Some(text.to_owned()),
        model: Some(model.to_owned()),
        finish_reason: None,
        usage: None,
    }
}
