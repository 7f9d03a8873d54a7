//! A canned OpenRouter for tests that need an upstream that simply answers (the behaviours of
//! fallback, retries and broken streams live with their tests in `tests/tests/llm.rs`):
//! a completion is "Hi there", a stream is "Hel" + "lo!", each 2 + 2 tokens. It records what
//! it was sent, so tests assert on the request, not only on the canned answer.

use std::sync::{Arc, Mutex};

use poem::web::{Data, Json};
use poem::{Body, EndpointExt, Response, handler};
use serde_json::{Value, json};

use crate::FakeUpstream;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// The JSON body.
    pub body: Value,
    /// The W3C `traceparent` header, when sent.
    pub traceparent: Option<String>,
}

impl SeenRequest {
    /// The model the request named.
    pub fn model(&self) -> &str {
        self.body["model"].as_str().unwrap_or("")
    }
}

#[derive(Debug, Default)]
struct Seen(Mutex<Vec<SeenRequest>>);

/// The running fake; stops when dropped.
#[derive(Debug)]
pub struct CannedOpenRouter {
    upstream: FakeUpstream,
    seen: Arc<Seen>,
}

impl CannedOpenRouter {
    pub async fn start() -> Self {
        let seen = Arc::new(Seen::default());
        let upstream = FakeUpstream::start(
            poem::Route::new()
                .at("/api/v1/chat/completions", poem::post(chat_completions))
                .data(seen.clone()),
        )
        .await;
        Self { upstream, seen }
    }

    /// The value for `OPENROUTER_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("{}/api/v1", self.upstream.base)
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.0.lock().unwrap().clone()
    }

    /// The newest request.
    pub fn last(&self) -> Option<SeenRequest> {
        self.seen.0.lock().unwrap().last().cloned()
    }
}

fn usage() -> Value {
    json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4})
}

#[handler]
async fn chat_completions(
    req: &poem::Request,
    body: Json<Value>,
    seen: Data<&Arc<Seen>>,
) -> Response {
    let body = body.0;
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let stream = body["stream"] == true;
    seen.0.0.lock().unwrap().push(SeenRequest {
        body,
        traceparent: req.header("traceparent").map(str::to_owned),
    });
    if stream {
        let delta = |t: &str| json!({"id": "g", "model": model, "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]});
        let chunks = [
            delta("Hel"),
            delta("lo!"),
            json!({"id": "g", "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage()}),
        ];
        let mut sse: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        sse.push_str("data: [DONE]\n\n");
        return Response::builder()
            .content_type("text/event-stream")
            .body(Body::from_string(sse));
    }
    Response::builder().content_type("application/json").body(
        json!({
            "id": "g", "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}],
            "usage": usage(),
        })
        .to_string(),
    )
}
