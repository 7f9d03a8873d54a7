//! The rules for LLM requests that arrive from outside (the native API and the
//! OpenAI-compatible one): roles, message content, and whether an OpenAI `model` names a
//! task or a model.

use serde_json::Value;

use super::{Message, Role, Task};
use crate::error::{Error, Result};

/// Turns `(role, text)` pairs from a request into messages. Roles are `system`, `user`,
/// `assistant`, and OpenAI's `developer` (as `system`); any other is
/// [`Error::Validation`] naming the message's index.
pub fn messages<I>(messages: I) -> Result<Vec<Message>>
where
    I: IntoIterator<Item = (String, String)>,
{
    messages
        .into_iter()
        .enumerate()
        .map(|(i, (role, text))| {
            let role = Role::parse(&role).ok_or_else(|| {
                Error::Validation(format!(
                    "messages[{i}].role: `{}` is not system, user, assistant or developer",
                    role.chars().take(32).collect::<String>()
                ))
            })?;
            Ok(Message::new(role, text))
        })
        .collect()
}

/// The text of an OpenAI message's `content` (message `i`): a string, or the `text` of its
/// content parts joined (other parts, such as images, are skipped); absent or null is empty.
pub fn openai_content(content: Option<Value>, i: usize) -> Result<String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("")),
        Some(_) => Err(Error::Validation(format!(
            "messages[{i}].content: expected a string or text parts"
        ))),
    }
}

/// What an OpenAI `model` asks for: a task name (`chat`, `session_summary`...) runs that
/// task's route with fallback; anything else is a model id, run alone with the `chat`
/// defaults (whether the caller may choose a model is checked when the call runs).
pub fn task_or_model(model: String) -> (Task, Option<Vec<String>>) {
    match model.parse::<Task>() {
        Ok(task) => (task, None),
        Err(_) => (Task::Chat, Some(vec![model])),
    }
}

/// A task name from a request; [`Error::Validation`] for an unknown one.
pub fn task(name: &str) -> Result<Task> {
    name.parse()
        .map_err(|e: super::routing::UnknownTaskName| Error::Validation(format!("task: {e}")))
}
