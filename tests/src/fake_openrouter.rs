//! A fake OpenRouter on port 0 that records EVERY request it is sent (body and the headers
//! the backend must set), so tests assert on what was sent, not only on what came back.
//!
//! Its behaviour is chosen by the model name, as TensorZero's dummy provider does:
//!
//! | model contains | answer |
//! |---|---|
//! | `fail-400` ... `fail-503` | that HTTP status with an OpenRouter error body |
//! | `secret-402` | 402 whose message is [`SECRET_TEXT`] (must never reach a client) |
//! | `always-429`, `long-429` | 429 with `Retry-After: 0` / `30` |
//! | `flaky-429` | 429 (`Retry-After: 1`) on the first call only |
//! | `slow`, `late` | answers after 5 s / 1.5 s |
//! | `hold-<ms>` | answers after `<ms>` milliseconds |
//! | `midstream-before` | a stream whose first event is an error chunk |
//! | `midstream-after` | a stream with one token, then an error chunk |
//! | `secret-mid` | a stream with the tokens, then an error chunk carrying [`SECRET_TEXT`] |
//! | `drip` | a stream of 500 tokens 20 ms apart (for cancellation) |
//! | anything else | the [`Replies`]: one completion, or the tokens streamed |
//!
//! A model can also be taken down and brought back at run time ([`FakeOpenRouter::set_down`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use poem::web::{Data, Json};
use poem::{Body, EndpointExt, Response, handler};
use serde_json::{Value, json};

use crate::FakeUpstream;

/// Text a provider might put in an error body: never for a client's eyes.
pub const SECRET_TEXT: &str = "Insufficient credits: balance $0.12 on key sk-or-v1-LEAKME-0000";
/// The part of [`SECRET_TEXT`] tests look for in answers.
pub const SECRET_MARK: &str = "LEAKME";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The JSON body.
    pub body: Value,
    /// The `X-Request-ID` header (the correlation ID), when sent.
    pub request_id: Option<String>,
    /// The `Authorization` header, when sent.
    pub authorization: Option<String>,
    /// The W3C `traceparent` header, when sent.
    pub traceparent: Option<String>,
}

impl SeenRequest {
    /// The model the request named.
    pub fn model(&self) -> &str {
        self.body["model"].as_str().unwrap_or("")
    }

    /// The messages as sent, in order, as (role, content); content that is not a string
    /// (OpenAI content parts must have been flattened) shows as its JSON.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.body["messages"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let content = match &m["content"] {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (m["role"].as_str().unwrap_or("").to_owned(), content)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `max_tokens` as sent.
    pub fn max_tokens(&self) -> Option<u64> {
        self.body["max_tokens"].as_u64()
    }
}

/// What the fake answers for an ordinary model.
#[derive(Debug, Clone)]
pub struct Replies {
    /// The content of a completion.
    pub text: String,
    /// The deltas of a stream.
    pub tokens: Vec<String>,
    /// The `usage` object of both.
    pub usage: Value,
    /// Send OpenRouter's `: OPENROUTER PROCESSING` comment lines between stream events.
    pub comments: bool,
    /// The pause between stream events.
    pub pause: Duration,
}

impl Replies {
    /// "Hello world!" (streamed as "Hello", " world", "!"), 7 + 3 tokens costing $0.00042,
    /// with comment lines and 5 ms between events.
    pub fn hello_world() -> Self {
        Self {
            text: "Hello world!".into(),
            tokens: vec!["Hello".into(), " world".into(), "!".into()],
            usage: json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "cost": 0.00042}),
            comments: true,
            pause: Duration::from_millis(5),
        }
    }

    /// "ok" (streamed as "o", "k"), 6 + 4 tokens, no comments, no pauses.
    pub fn ok() -> Self {
        Self {
            text: "ok".into(),
            tokens: vec!["o".into(), "k".into()],
            usage: json!({"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}),
            comments: false,
            pause: Duration::ZERO,
        }
    }

    /// A completion "Hi there", a stream "Hel" + "lo!", each 2 + 2 tokens.
    pub fn canned() -> Self {
        Self {
            text: "Hi there".into(),
            tokens: vec!["Hel".into(), "lo!".into()],
            usage: json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}),
            comments: false,
            pause: Duration::ZERO,
        }
    }
}

/// What the fake saw, and its switches.
#[derive(Debug)]
pub struct State {
    replies: Replies,
    /// Every request, oldest first.
    pub requests: Mutex<Vec<SeenRequest>>,
    /// Models that answer 503 (switchable at run time).
    pub down: Mutex<HashSet<String>>,
    /// Requests per model.
    pub counts: Mutex<HashMap<String, usize>>,
    /// Set when a `drip` stream's connection was closed by the client.
    pub disconnected: AtomicBool,
    /// Tokens a `drip` stream has sent.
    pub dripped: AtomicUsize,
}

impl State {
    /// The models of every request, in order.
    pub fn models_seen(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.model().to_owned())
            .collect()
    }

    /// The newest request.
    pub fn last(&self) -> Option<SeenRequest> {
        self.requests.lock().unwrap().last().cloned()
    }

    /// Requests that named `model`.
    pub fn count(&self, model: &str) -> usize {
        self.counts.lock().unwrap().get(model).copied().unwrap_or(0)
    }
}

/// The running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeOpenRouter {
    upstream: FakeUpstream,
    state: Arc<State>,
}

impl FakeOpenRouter {
    /// Starts the fake answering ordinary models with `replies`.
    pub async fn start(replies: Replies) -> Self {
        let state = Arc::new(State {
            replies,
            requests: Mutex::default(),
            down: Mutex::default(),
            counts: Mutex::default(),
            disconnected: AtomicBool::new(false),
            dripped: AtomicUsize::new(0),
        });
        let upstream = FakeUpstream::start(
            poem::Route::new()
                .at("/api/v1/chat/completions", poem::post(chat_completions))
                .data(state.clone()),
        )
        .await;
        Self { upstream, state }
    }

    /// Starts the fake with [`Replies::canned`].
    pub async fn canned() -> Self {
        Self::start(Replies::canned()).await
    }

    /// The value for `OPENROUTER_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("{}/api/v1", self.upstream.base)
    }

    /// What it saw and its switches.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The newest request.
    pub fn last(&self) -> Option<SeenRequest> {
        self.state.last()
    }

    /// How many requests it received.
    pub fn len(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// True before the first request.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The models of every request, in order.
    pub fn models(&self) -> Vec<String> {
        self.state.models_seen()
    }

    /// Takes `model` down (503) or brings it back.
    pub fn set_down(&self, model: &str, down: bool) {
        let mut set = self.state.down.lock().unwrap();
        if down {
            set.insert(model.to_owned());
        } else {
            set.remove(model);
        }
    }
}

fn error_response(status: u16, message: &str, retry_after: Option<&str>) -> Response {
    let mut r = Response::builder()
        .status(poem::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/json");
    if let Some(after) = retry_after {
        r = r.header("Retry-After", after);
    }
    r.body(json!({"error": {"code": status, "message": message}}).to_string())
}

fn sse(chunks: Vec<String>, pause: Duration, state: Option<Arc<State>>) -> Response {
    struct Guard(Option<Arc<State>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(s) = &self.0 {
                s.disconnected.store(true, Ordering::SeqCst);
            }
        }
    }
    let guard = Guard(state);
    let stream = futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, c)| {
        let counter = guard.0.clone();
        async move {
            if i > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if let Some(s) = counter {
                s.dripped.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, std::io::Error>(c)
        }
    });
    Response::builder()
        .content_type("text/event-stream")
        .body(Body::from_bytes_stream(stream))
}

const COMMENT: &str = ": OPENROUTER PROCESSING\n\n";

fn chunk(model: &str, content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "gen-1", "model": model, "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": null}]})
    )
}

fn final_chunks(model: &str, usage: &Value) -> Vec<String> {
    vec![
        format!(
            "data: {}\n\n",
            json!({"id": "gen-1", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        ),
        format!(
            "data: {}\n\n",
            json!({"id": "gen-1", "model": model, "choices": [], "usage": usage})
        ),
        "data: [DONE]\n\n".to_owned(),
    ]
}

fn error_chunk(message: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "gen-1", "error": {"code": "server_error", "message": message}, "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]})
    )
}

#[handler]
async fn chat_completions(
    req: &poem::Request,
    body: Json<Value>,
    state: Data<&Arc<State>>,
) -> Response {
    let state: Arc<State> = state.0.clone();
    let body = body.0;
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    state.requests.lock().unwrap().push(SeenRequest {
        body,
        request_id: req.header("x-request-id").map(str::to_owned),
        authorization: req.header("authorization").map(str::to_owned),
        traceparent: req.header("traceparent").map(str::to_owned),
    });
    let n = {
        let mut counts = state.counts.lock().unwrap();
        let c = counts.entry(model.clone()).or_default();
        *c += 1;
        *c
    };
    if state.down.lock().unwrap().contains(&model) {
        return error_response(503, "model down", None);
    }
    if model.contains("secret-402") {
        return error_response(402, SECRET_TEXT, None);
    }
    for (word, status) in [
        ("fail-400", 400),
        ("fail-401", 401),
        ("fail-402", 402),
        ("fail-403", 403),
        ("fail-408", 408),
        ("fail-500", 500),
        ("fail-502", 502),
        ("fail-503", 503),
    ] {
        if model.contains(word) {
            return error_response(status, &format!("{word} says no"), None);
        }
    }
    if model.contains("always-429") {
        return error_response(429, "rate limited", Some("0"));
    }
    if model.contains("long-429") {
        return error_response(429, "rate limited for a while", Some("30"));
    }
    if model.contains("flaky-429") && n == 1 {
        return error_response(429, "rate limited", Some("1"));
    }
    if model.contains("slow") {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if model.contains("late") {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    if let Some(ms) = model.split_once("hold-").and_then(|(_, rest)| {
        rest.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
            .ok()
    }) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let replies = &state.replies;
    if !stream {
        return Response::builder().content_type("application/json").body(
            json!({
                "id": "gen-1",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": replies.text}, "finish_reason": "stop"}],
                "usage": replies.usage,
            })
            .to_string(),
        );
    }
    let mut chunks = Vec::new();
    if replies.comments {
        chunks.push(COMMENT.to_owned());
    }
    if model.contains("midstream-before") {
        chunks.push(error_chunk("provider disconnected"));
        return sse(chunks, Duration::ZERO, None);
    }
    if model.contains("midstream-after") {
        chunks.push(chunk(&model, "partial"));
        chunks.push(COMMENT.to_owned());
        chunks.push(error_chunk("provider disconnected"));
        return sse(chunks, Duration::from_millis(10), None);
    }
    if model.contains("drip") {
        for i in 0..500 {
            chunks.push(chunk(&model, &format!("t{i} ")));
        }
        chunks.extend(final_chunks(&model, &replies.usage));
        return sse(chunks, Duration::from_millis(20), Some(state));
    }
    for t in &replies.tokens {
        chunks.push(chunk(&model, t));
        if replies.comments {
            chunks.push(COMMENT.to_owned());
        }
    }
    if model.contains("secret-mid") {
        chunks.push(error_chunk(SECRET_TEXT));
        return sse(chunks, replies.pause, None);
    }
    chunks.extend(final_chunks(&model, &replies.usage));
    sse(chunks, replies.pause, None)
}
