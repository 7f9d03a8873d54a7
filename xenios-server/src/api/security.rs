//! How handlers get the caller, and how the OpenAPI document describes authentication.
//!
//! The real checks happen once, in [`crate::middleware::authenticate`], for every
//! `/api/*` and `/v1/*` request: it verifies `X-API-Key` and the optional bearer token, applies
//! the rate limit and stores a [`RequestContext`] in the request. The security schemes here
//! only take that context back out, and declare both schemes (`ApiKeyAuth`, `BearerAuth`) in
//! the OpenAPI document so that `/docs` can send them.
//!
//! A handler that serves any authenticated caller takes a [`Caller`]; one that needs a user
//! calls [`Caller::require_user`] (401 without a bearer token) or
//! [`Caller::require_registered_user`] (also 403 for anonymous sign-ins):
//!
//! ```ignore
//! async fn mine(&self, caller: Caller) -> Result<Json<Thing>, ApiError> {
//!     let user = caller.require_user()?;
//!     ...
//! }
//! ```

use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::{ApiKey, Bearer};
use xenios_core::RequestContext;
use xenios_core::auth::UserContext;

use crate::error::ApiError;

/// `X-API-Key`: the backend's shared key, required on every `/api/v1` call.
#[derive(Debug, SecurityScheme)]
#[oai(
    rename = "ApiKeyAuth",
    ty = "api_key",
    key_name = "X-API-Key",
    key_in = "header",
    checker = "context_of_api_key"
)]
pub struct ApiKeyAuth(pub RequestContext);

/// `Authorization: Bearer <Supabase access token>`: the signed-in user, optional unless the
/// route needs a user. Always sent together with `X-API-Key`.
#[derive(Debug, SecurityScheme)]
#[oai(
    rename = "BearerAuth",
    ty = "bearer",
    bearer_format = "JWT",
    checker = "context_of_bearer"
)]
pub struct BearerAuth(pub RequestContext);

async fn context_of_api_key(req: &Request, _key: ApiKey) -> Option<RequestContext> {
    req.extensions().get::<RequestContext>().cloned()
}

async fn context_of_bearer(req: &Request, _token: Bearer) -> Option<RequestContext> {
    req.extensions().get::<RequestContext>().cloned()
}

/// The authenticated caller of an authenticated route: a user (API key and bearer token) or
/// the service (API key only).
#[derive(Debug, SecurityScheme)]
pub enum Caller {
    /// The request carried a bearer token (and the API key).
    User(BearerAuth),
    /// The request carried the API key only.
    Service(ApiKeyAuth),
    /// No context from the authentication layer: a route outside the authenticated paths or
    /// a middleware order gone wrong. [`Caller::context`] fails closed with a 500 (logged
    /// once by the error layer), never a guessed principal. (The document's security comes
    /// from the two schemes above: `api::document` leaves this one out.)
    #[oai(fallback)]
    Missing,
}

impl Caller {
    /// The request context: correlation ID and principal; a 500 without one.
    pub fn context(&self) -> Result<&RequestContext, ApiError> {
        match self {
            Caller::User(BearerAuth(ctx)) | Caller::Service(ApiKeyAuth(ctx)) => Ok(ctx),
            Caller::Missing => Err(ApiError(xenios_core::Error::Internal(
                "a handler was reached without an auth context".to_owned(),
            ))),
        }
    }

    /// The signed-in user; 401 `missing_token` for API-key-only calls.
    pub fn require_user(&self) -> Result<&UserContext, ApiError> {
        Ok(self.context()?.require_user()?)
    }

    /// The signed-in, non-anonymous user; 401 without one, 403 for an anonymous sign-in.
    pub fn require_registered_user(&self) -> Result<&UserContext, ApiError> {
        Ok(self.context()?.require_registered_user()?)
    }
}
