//! `/api/v1/me`: who the backend thinks is calling. Proves the auth wiring end to end.

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use xenios_core::auth::Principal;

use super::ApiTags;
use super::security::Caller;

/// The `/me` route.
#[derive(Debug)]
pub struct MeApi;

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
    /// This request's correlation ID.
    pub correlation_id: String,
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Auth")]
impl MeApi {
    /// The caller's context: the signed-in user's claims (user_id, role, email, session_id,
    /// aal, is_anonymous) or `{"principal": "service"}` for API-key-only calls.
    #[oai(path = "/me", method = "get")]
    async fn me(&self, caller: Caller) -> Json<MeBody> {
        let ctx = caller.context();
        let correlation_id = ctx.correlation_id.to_string();
        Json(match &ctx.principal {
            Principal::User(u) => MeBody {
                principal: "user".to_owned(),
                user_id: Some(u.user_id.clone()),
                role: Some(u.role.clone()),
                email: u.email.clone(),
                session_id: u.session_id.clone(),
                aal: u.aal.clone(),
                is_anonymous: Some(u.is_anonymous),
                correlation_id,
            },
            other => MeBody {
                principal: match other {
                    Principal::System => "system",
                    _ => "service",
                }
                .to_owned(),
                user_id: None,
                role: None,
                email: None,
                session_id: None,
                aal: None,
                is_anonymous: None,
                correlation_id,
            },
        })
    }
}
