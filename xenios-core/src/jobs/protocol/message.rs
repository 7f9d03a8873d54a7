//! [`TaskMessage`]: one task message in memory, as a producer builds it or a worker decoded
//! it.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

/// One task message, decoded (or about to be encoded).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// Task id (also the result key suffix).
    pub id: String,
    /// Registered task name, e.g. `xenios.echo`.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Callbacks, errbacks, chain and chord (kept so they survive a round trip).
    pub embed: Value,
    /// Queue (the routing key of the default exchange).
    pub queue: String,
    /// Exchange of `delivery_info` (empty: the default exchange).
    pub exchange: String,
    /// Priority 0-9; on Redis 0 is served first (kombu's convention).
    pub priority: u8,
    /// Retries so far.
    pub retries: u32,
    /// Not to be run before.
    pub eta: Option<DateTime<Utc>>,
    /// Not to be run after (then it is revoked as expired).
    pub expires: Option<DateTime<Utc>>,
    /// Hard time limit in seconds, when set by the producer.
    pub hard_time_limit: Option<f64>,
    /// Soft time limit in seconds, when set by the producer.
    pub soft_time_limit: Option<f64>,
    /// Root of the workflow (the task itself when alone).
    pub root_id: Option<String>,
    /// Parent task, when enqueued by a task.
    pub parent_id: Option<String>,
    /// Group id, when part of a group.
    pub group: Option<String>,
    /// Name of the producer process (`gen<pid>@<host>`).
    pub origin: String,
    /// Correlation ID carried in [`crate::jobs::CORRELATION_HEADER`].
    pub correlation_id: Option<String>,
    /// User ID carried in [`crate::jobs::USER_HEADER`].
    pub user_id: Option<String>,
    /// Owner carried in [`crate::jobs::OWNER_HEADER`] (`user:<id>` or `service`).
    pub owner: Option<String>,
    /// Whether the producer asked Celery not to store a result.
    pub ignore_result: bool,
    /// Transport delivery tag (a UUID), the key of the `unacked` bookkeeping.
    pub delivery_tag: String,
    /// `reply_to` property.
    pub reply_to: Option<String>,
    /// Whether kombu restored the message after a lost delivery.
    pub redelivered: bool,
    /// Headers this module does not model, kept for retries.
    pub extra_headers: Map<String, Value>,
}

impl TaskMessage {
    /// A new message for `task` with a fresh id and delivery tag, on `queue`.
    pub fn new(task: impl Into<String>, queue: impl Into<String>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let task: String = task.into();
        // W3C `traceparent` of an `enqueue` span when traces are exported (none otherwise):
        // the header opentelemetry-instrumentation-celery reads too.
        let extra_headers = crate::telemetry::enqueue_headers(&task);
        Self {
            root_id: Some(id.clone()),
            id,
            task,
            args: Vec::new(),
            kwargs: Map::new(),
            embed: default_embed(),
            queue: queue.into(),
            exchange: String::new(),
            priority: 0,
            retries: 0,
            eta: None,
            expires: None,
            hard_time_limit: None,
            soft_time_limit: None,
            parent_id: None,
            group: None,
            origin: super::origin(),
            correlation_id: None,
            user_id: None,
            owner: None,
            ignore_result: false,
            delivery_tag: uuid::Uuid::new_v4().to_string(),
            reply_to: None,
            redelivered: false,
            extra_headers,
        }
    }

    /// The message of the next attempt: same id, one more retry, a new delivery tag.
    pub fn next_attempt(&self, eta: Option<DateTime<Utc>>) -> Self {
        let mut next = self.clone();
        next.retries = self.retries.saturating_add(1);
        next.eta = eta;
        next.delivery_tag = uuid::Uuid::new_v4().to_string();
        next.redelivered = false;
        next
    }

    /// The JSON body `[args, kwargs, embed]`.
    pub fn body(&self) -> Value {
        json!([self.args, self.kwargs, self.embed])
    }
}

/// Callbacks, errbacks, chain and chord, all empty.
pub(super) fn default_embed() -> Value {
    json!({"callbacks": null, "errbacks": null, "chain": null, "chord": null})
}
