//! `/api/v1/me`: who the backend thinks is calling. Proves the auth wiring end to end.

use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};
use xenios_core::AiBackend;
use xenios_core::auth::Principal;

use super::ApiTags;
use super::security::Caller;
use crate::error::{Errors, MeErrors};

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
#[oai(skip_serializing_if_is_none, example)]
pub struct MeBody {
    /// Who is calling.
    pub principal: PrincipalKind,
    /// The user's UUID (`sub`).
    pub user_id: Option<String>,
    /// The token's `role`, usually `authenticated`.
    pub role: Option<String>,
    /// The user's email, when the token has one.
    pub email: Option<String>,
    /// The Supabase session ID.
    pub session_id: Option<String>,
    /// Authenticator assurance level, `aal1` or `aal2`.
    pub aal: Option<String>,
    /// True for anonymous sign-ins.
    pub is_anonymous: Option<bool>,
    /// For a user: LLM tokens spent today (UTC).
    pub tokens_used_today: Option<u64>,
    /// For a user: the daily token limit (`LLM_USER_DAILY_TOKENS`, 0: none).
    pub daily_token_limit: Option<u64>,
    /// This request's correlation ID.
    pub correlation_id: String,
}

/// The kind of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A signed-in Supabase user (API key and bearer token).
    User,
    /// A backend-to-backend call (API key only).
    Service,
    /// The backend itself.
    System,
}

impl poem_openapi::types::Example for MeBody {
    fn example() -> Self {
        MeBody {
            principal: PrincipalKind::User,
            user_id: Some("5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b".to_owned()),
            role: Some("authenticated".to_owned()),
            email: Some("coach@example.com".to_owned()),
            session_id: Some("c0ffee00-1234-4abc-8def-0123456789ab".to_owned()),
            aal: Some("aal1".to_owned()),
            is_anonymous: Some(false),
            tokens_used_today: Some(1200),
            daily_token_limit: Some(200_000),
            correlation_id: "9b2f0c1e-5d7a-4c1b-8f3e-2a6d4e8b1c90".to_owned(),
        }
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Auth")]
impl MeApi {
    /// The caller's context: the signed-in user's claims (user_id, role, email, session_id,
    /// aal, is_anonymous) with today's LLM token use and limit, or `{"principal": "service"}`
    /// for API-key-only calls.
    #[oai(path = "/me", method = "get")]
    async fn me(&self, caller: Caller) -> Result<Json<MeBody>, Errors<MeErrors>> {
        let ctx = caller.context()?;
        let me = self.backend.whoami(ctx).await?;
        let user = me.user;
        Ok(Json(MeBody {
            principal: match &ctx.principal {
                Principal::User(_) => PrincipalKind::User,
                Principal::System => PrincipalKind::System,
                _ => PrincipalKind::Service,
            },
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
