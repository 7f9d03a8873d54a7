//! Who may choose what in an LLM call.
//!
//! Routes are the product's cost decisions, so callers bend them only within limits:
//! - a signed-in user never names models (`models`, or an OpenAI `model` that is not a task):
//!   403 `model_choice_forbidden`;
//! - the service (and the backend itself) may name at most [`MAX_MODELS_PER_CALL`] models
//!   (422 above), each in `LLM_ALLOWED_MODELS` (403 `model_not_allowed` otherwise);
//! - `max_tokens` may lower the route's value, never raise it (422 above it).
//!
//! [`authorize`] applies these rules; the engine calls it on every call, whatever the
//! transport (HTTP, jobs, CLI).

use super::routing::LlmConfig;
use super::types::CompletionRequest;
use crate::auth::Principal;
use crate::error::{Error, Result};

pub use crate::config::llm::ModelAllowList;

/// Most models one call may name.
pub const MAX_MODELS_PER_CALL: usize = 5;

/// Checks what `principal` chose in `req` against the rules of this module.
pub fn authorize(principal: &Principal, req: &CompletionRequest, config: &LlmConfig) -> Result<()> {
    let route = config.routes.route(req.task);
    if let Some(max) = req.max_tokens
        && max > route.max_tokens
    {
        return Err(Error::Validation(format!(
            "max_tokens: {max} is above the `{}` route's limit of {}",
            req.task, route.max_tokens
        )));
    }
    let Some(models) = &req.models else {
        return Ok(());
    };
    if let Principal::User(_) = principal {
        return Err(Error::Forbidden {
            code: "model_choice_forbidden",
            message: "users cannot choose models: name a task (e.g. `chat`) and its route \
                      picks them"
                .to_owned(),
        });
    }
    if models.len() > MAX_MODELS_PER_CALL {
        return Err(Error::Validation(format!(
            "models: at most {MAX_MODELS_PER_CALL} models per call, got {}",
            models.len()
        )));
    }
    if let Some(m) = models.iter().find(|m| !config.allowed_models.allows(m)) {
        return Err(Error::Forbidden {
            code: "model_not_allowed",
            message: format!(
                "model `{}` is not in LLM_ALLOWED_MODELS",
                m.chars().take(200).collect::<String>()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserContext;
    use crate::llm::{Message, Task};

    fn req(models: Option<&[&str]>, max_tokens: Option<u32>) -> CompletionRequest {
        CompletionRequest {
            models: models.map(|m| m.iter().map(|s| (*s).to_owned()).collect()),
            max_tokens,
            ..CompletionRequest::new(Task::Chat, vec![Message::user("hi")])
        }
    }

    fn user() -> Principal {
        Principal::User(UserContext {
            user_id: "u".into(),
            role: "authenticated".into(),
            email: None,
            session_id: None,
            aal: None,
            is_anonymous: false,
        })
    }

    #[test]
    fn users_never_choose_models_and_the_service_only_allowed_ones() {
        let config = LlmConfig::default();
        let route_model = config.routes.route(Task::Chat).models[0].clone();
        let err = authorize(&user(), &req(Some(&[&route_model]), None), &config).unwrap_err();
        assert_eq!(err.code(), "model_choice_forbidden");
        assert!(authorize(&user(), &req(None, None), &config).is_ok());
        assert!(
            authorize(
                &Principal::Service,
                &req(Some(&[&route_model]), None),
                &config
            )
            .is_ok()
        );
        let err = authorize(
            &Principal::Service,
            &req(Some(&["openai/o1-pro"]), None),
            &config,
        )
        .unwrap_err();
        assert_eq!(err.code(), "model_not_allowed");
        let six = ["a/1", "a/2", "a/3", "a/4", "a/5", "a/6"];
        let err = authorize(&Principal::System, &req(Some(&six), None), &config).unwrap_err();
        assert_eq!(err.code(), "validation_error");
    }

    #[test]
    fn max_tokens_only_lowers_the_route() {
        let config = LlmConfig::default();
        let limit = config.routes.route(Task::Chat).max_tokens;
        assert!(authorize(&user(), &req(None, Some(limit)), &config).is_ok());
        assert!(authorize(&user(), &req(None, Some(1)), &config).is_ok());
        let err = authorize(&Principal::Service, &req(None, Some(limit + 1)), &config).unwrap_err();
        assert_eq!(err.code(), "validation_error");
    }

    #[test]
    fn allow_list_parsing() {
        let l = ModelAllowList::parse("anthropic/*, openai/gpt-4o-mini").unwrap();
        assert!(l.allows("anthropic/claude-opus-4.5"));
        assert!(l.allows("openai/gpt-4o-mini"));
        assert!(!l.allows("openai/o1-pro"));
        assert!(ModelAllowList::parse("*").unwrap().allows("x/y"));
        assert!(ModelAllowList::parse(" , ").is_err());
        assert!(ModelAllowList::parse("a b").is_err());
        assert!(ModelAllowList::parse("a*b*").is_err());
    }
}
