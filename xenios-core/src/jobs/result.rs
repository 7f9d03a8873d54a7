//! Celery's Redis result backend: `celery-task-meta-<id>`, written with SETEX and PUBLISHed
//! on a channel of the same name in one step (a Python `AsyncResult.get()` waits on the
//! channel, not by polling). A stored SUCCESS is never overwritten (see
//! `jobs::broker`'s finish script). Failures use Celery's exception shape
//! `{"exc_type", "exc_message": [...], "exc_module"}` so Python re-raises them.
//!
//! A stored result holds the job's output, never its input: of Celery's `result_extended`
//! fields it keeps `name`, `worker`, `retries` and `queue` but not `args`/`kwargs`, and a
//! failure text quoting the arguments (Celery's `MaxRetriesExceededError` does) has the
//! quote cut out. Anyone holding a task id can read its result, and the arguments may be a
//! user's document or prompt.

use crate::jobs::JobState;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::jobs::protocol::{TaskMessage, args_repr, iso, kwargs_repr};

/// The result key of a task.
pub fn result_key(task_id: &str) -> String {
    format!("celery-task-meta-{task_id}")
}

/// A stored task result, as Celery stores it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobResult {
    /// Task id.
    pub task_id: String,
    /// State.
    pub state: JobState,
    /// The return value (SUCCESS) or the exception `{exc_type, exc_message, exc_module}`.
    pub result: Value,
    /// Traceback text of a failure.
    pub traceback: Option<String>,
    /// When it finished.
    pub date_done: Option<DateTime<Utc>>,
    /// Task name, when the writer stored extended results (ours do).
    pub name: Option<String>,
    /// Attempts before this result.
    pub retries: Option<u64>,
    /// Worker that wrote it.
    pub worker: Option<String>,
    /// Queue it ran from.
    pub queue: Option<String>,
}

impl JobResult {
    /// Parses a stored `celery-task-meta-*` value.
    pub fn parse(task_id: &str, raw: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(raw).ok()?;
        let o = v.as_object()?;
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(Self {
            task_id: s("task_id").unwrap_or_else(|| task_id.to_owned()),
            state: JobState::from_celery(o.get("status").and_then(Value::as_str).unwrap_or("")),
            result: o.get("result").cloned().unwrap_or(Value::Null),
            traceback: s("traceback"),
            date_done: s("date_done").and_then(|d| crate::jobs::protocol::parse_time(&d)),
            name: s("name"),
            retries: o.get("retries").and_then(Value::as_u64),
            worker: s("worker"),
            queue: s("queue"),
        })
    }

    /// A result for an id nothing is stored for.
    pub fn pending(task_id: &str) -> Self {
        Self {
            task_id: task_id.to_owned(),
            state: JobState::Pending,
            result: Value::Null,
            traceback: None,
            date_done: None,
            name: None,
            retries: None,
            worker: None,
            queue: None,
        }
    }

    /// The exception type of a failure (`exc_type`), if any.
    pub fn exc_type(&self) -> Option<&str> {
        self.result.get("exc_type").and_then(Value::as_str)
    }
}

/// A Python exception as Celery serializes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PyException {
    /// Module, e.g. `builtins` or `billiard.exceptions`.
    pub module: String,
    /// Class name, e.g. `ValueError`.
    pub kind: String,
    /// The message (Celery stores the exception's args).
    pub message: String,
}

impl PyException {
    /// An exception of `module.kind` with `message`.
    pub fn new(module: &str, kind: &str, message: impl Into<String>) -> Self {
        Self {
            module: module.to_owned(),
            kind: kind.to_owned(),
            message: message.into(),
        }
    }

    /// Celery's JSON shape.
    pub fn to_json(&self) -> Value {
        json!({"exc_type": self.kind, "exc_message": [self.message], "exc_module": self.module})
    }

    /// `Kind('message')`, as in task-failed events.
    pub fn repr(&self) -> String {
        format!(
            "{}({})",
            self.kind,
            crate::jobs::protocol::py_repr(&Value::String(self.message.clone()))
        )
    }

    /// A one-frame traceback text in Python's layout (Flower and logs show it).
    pub fn traceback(&self, task: &str) -> String {
        let qualified = if self.module == "builtins" {
            self.kind.clone()
        } else {
            format!("{}.{}", self.module, self.kind)
        };
        format!(
            "Traceback (most recent call last):\n  File \"<rust>\", in {task}\n{qualified}: {}\n",
            self.message
        )
    }
}

/// How a failure text quotes a job's arguments (` args:[...] kwargs:{...}`, as in Celery's
/// `MaxRetriesExceededError`): the text [`meta`] and the job rows cut out.
pub fn args_quote(message: &TaskMessage) -> String {
    format!(
        " args:{} kwargs:{}",
        args_repr(&message.args),
        kwargs_repr(&message.kwargs)
    )
}

/// Builds the stored JSON of a result (Celery's meta with the `result_extended` fields
/// that are not the job's input; see the module doc).
pub fn meta(
    message: &TaskMessage,
    state: JobState,
    result: &Value,
    traceback: Option<&str>,
    worker: &str,
) -> String {
    let quote =
        (state == JobState::Failure || state == JobState::Retry).then(|| args_quote(message));
    let cut = |text: &str| match &quote {
        Some(q) if text.contains(q.as_str()) => text.replace(q.as_str(), ""),
        _ => text.to_owned(),
    };
    let mut result = result.clone();
    if quote.is_some()
        && let Some(Value::Array(texts)) = result.get_mut("exc_message")
    {
        for t in texts.iter_mut() {
            if let Value::String(s) = t {
                *s = cut(s);
            }
        }
    }
    let traceback = traceback.map(cut);
    let mut m = json!({
        "status": state.as_str(),
        "result": result,
        "traceback": traceback,
        "children": [],
        "date_done": iso(Utc::now()),
        "name": message.task,
        "worker": worker,
        "retries": message.retries,
        "queue": message.queue,
        "task_id": message.id,
    });
    if let Some(p) = &message.parent_id {
        m["parent_id"] = json!(p);
    }
    if let Some(g) = &message.group {
        m["group_id"] = json!(g);
    }
    m.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_has_celerys_keys_and_parses_back() {
        let mut m = TaskMessage::new("xenios.echo", "default");
        m.args = vec![json!(1)];
        let raw = meta(&m, JobState::Success, &json!([1]), None, "w@h");
        let v: Value = serde_json::from_str(&raw).unwrap();
        for k in [
            "status",
            "result",
            "traceback",
            "children",
            "date_done",
            "task_id",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(
            v.get("args").is_none() && v.get("kwargs").is_none(),
            "{raw}"
        );
        let r = JobResult::parse(&m.id, &raw).unwrap();
        assert_eq!(r.state, JobState::Success);
        assert_eq!(r.result, json!([1]));
        assert!(r.date_done.is_some());
        let e = PyException::new("billiard.exceptions", "TimeLimitExceeded", "600");
        assert_eq!(
            e.to_json(),
            json!({"exc_type": "TimeLimitExceeded", "exc_message": ["600"], "exc_module": "billiard.exceptions"})
        );
        assert_eq!(e.repr(), "TimeLimitExceeded('600')");
    }

    #[test]
    fn failure_texts_lose_the_quoted_arguments() {
        let mut m = TaskMessage::new("t.x", "default");
        m.args = vec![json!("secret-arg")];
        m.kwargs.insert("k".into(), json!("secret-kwarg"));
        let text = format!("Can't retry t.x[{}]{}: upstream down", m.id, args_quote(&m));
        let e = PyException::new("celery.exceptions", "MaxRetriesExceededError", text);
        let tb = e.traceback(&m.task);
        let raw = meta(&m, JobState::Failure, &e.to_json(), Some(&tb), "w@h");
        assert!(!raw.contains("secret"), "{raw}");
        assert!(raw.contains("upstream down"), "{raw}");
    }
}
