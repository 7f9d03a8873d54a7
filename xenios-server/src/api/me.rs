//! `/api/v1/me`: who the backend thinks is calling. Proves the auth wiring end to end.

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use xenios_core::AiBackend;

use super::ApiTags;
use super::security::Caller;
use crate::error::ApiError;

/// The `/me` route.
#[derive(Debug)]
pub struct MeApi {
    /// The engine.
    pub backend: AiBackend,
}

/// The caller's context.
///
/// For a user: `{"principal": "user", "user_id", "role", "email", "session_id", "aal",
/// "is_anonymous", "correlation_id"}`. For an API-key-only (backend-to-backend) call:
/// `{"principal": "service", "correlation_id"}`, the user fields absent.
#[derive(Debug, Object)]
pub struct MeBody {
    /// `user` (a signed-in Supabase user) or `service` (API key only).
    pub principal: String,
    /// The user's UUID (`sub`).
    #[oai(skip_serializing_if_is_none)]
    pub user_id: Option<String>,
    /// The token's `role`, usually `authenticated`.
    #[oai(skip_serializing_if_is_none)]
    pub role: Option<String>,
    /// The user's email, when the token has one.
    #[oai(skip_serializing_if_is_none)]
    pub email: Option<String>,
    /// The Supabase session ID.
    #[oai(skip_serializing_if_is_none)]
    pub session_id: Option<String>,
    /// Authenticator assurance level, `aal1` or `aal2`.
    #[oai(skip_serializing_if_is_none)]
    pub aal: Option<String>,
    /// True for anonymous sign-ins.
    #[oai(skip_serializing_if_is_none)]
    pub is_anonymous: Option<bool>,
    /// For a user: LLM tokens spent today (UTC).
    #[oai(skip_serializing_if_is_none)]
    pub tokens_used_today: Option<u64>,
    /// For a user: the daily token limit (`LLM_USER_DAILY_TOKENS`, 0: none).
    #[oai(skip_serializing_if_is_none)]
    pub daily_token_limit: Option<u64>,
    /// This request's correlation ID.
    pub correlation_id: String,
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Auth")]
impl MeApi {
    /// The caller's context: the signed-in user's claims (user_id, role, email, session_id,
    /// aal, is_anonymous) with today's LLM token use and limit, or `{"principal": "service"}`
    /// for API-key-only calls.
    #[oai(path = "/me", method = "get")]
    async fn me(&self, caller: Caller) -> poem::Result<Json<MeBody>> {
        let ctx = caller.context();
        let me = self.backend.whoami(ctx).await.map_err(ApiError::from)?;
        let user = me.user;
        Ok(Json(MeBody {
            principal: me.principal.to_owned(),
            user_id: user.as_ref().map(|u| u.user_id.clone()),
            role: user.as_ref().map(|u| u.role.clone()),
            email: user.as_ref().and_then(|u| u.email.clone()),
            session_id: user.as_ref().and_then(|u| u.session_id.clone()),
            aal: user.as_ref().and_then(|u| u.aal.clone()),
            is_anonymous: user.as_ref().map(|u| u.is_anonymous),
            tokens_used_today: me.tokens.map(|t| t.used),
            daily_token_limit: me.tokens.map(|t| t.limit),
            correlation_id: ctx.correlation_id.to_string(),
        }))
    }
}
