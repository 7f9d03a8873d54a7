//! [`Auth`]: the handle behind [`crate::AiBackend::auth`]: who is calling, and whether they
//! may call now.

use super::{
    ApiKeyVerifier, AuthError, JwtVerifier, Principal, SharedLimiterStats, SharedRateLimiter,
    bearer_token,
};
use crate::config::Config;
use crate::error::Result;

/// API-key and Supabase token verification and the shared rate limiter, together.
pub struct Auth {
    api_keys: ApiKeyVerifier,
    jwt: JwtVerifier,
    rate_limiter: SharedRateLimiter,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("rate_limiter", &self.rate_limiter.stats())
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub(crate) fn new(config: &Config, http: reqwest::Client) -> Self {
        Self {
            api_keys: ApiKeyVerifier::with_previous(
                &config.api_key,
                config.api_key_previous.as_ref(),
            ),
            jwt: JwtVerifier::new(&config.supabase, http),
            rate_limiter: SharedRateLimiter::new(&config.server.rate_limit, &config.redis),
        }
    }

    /// Checks an `X-API-Key` value in constant time.
    pub fn verify_api_key(&self, presented: Option<&str>) -> Result<()> {
        Ok(self.api_keys.verify(presented)?)
    }

    /// Verifies a Supabase access token (without the `Bearer ` prefix): HS256 against
    /// `SUPABASE_JWT_SECRET`, ES256/RS256 against the project's JWKS.
    pub async fn verify_bearer(&self, token: &str) -> Result<Principal> {
        Ok(self.jwt.verify(token).await?)
    }

    /// Authenticates a call from its raw `X-API-Key` and `Authorization` header values.
    ///
    /// The API key is always required. Without an `Authorization` header the caller is
    /// [`Principal::Service`] (backend to backend); with one, it must be a valid
    /// `Bearer <Supabase JWT>` and the caller is that user: a token that is present but
    /// invalid is refused, never ignored.
    ///
    /// OpenAI-style clients can only send one credential, as `Authorization: Bearer <key>`:
    /// without an `X-API-Key`, a bearer equal to the API key is the service principal.
    pub async fn authenticate(
        &self,
        api_key: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Principal> {
        if let (None, Some(header)) = (api_key, authorization) {
            let token = bearer_token(header)?;
            return match self.api_keys.verify(Some(token)) {
                Ok(()) => Ok(Principal::Service),
                Err(_) => Err(AuthError::MissingApiKey.into()),
            };
        }
        self.api_keys.verify(api_key)?;
        match authorization {
            None => Ok(Principal::Service),
            Some(header) => self.verify_bearer(bearer_token(header)?).await,
        }
    }

    /// Counts one request against the caller's rate limit (`RATE_LIMIT_PER_MINUTE`,
    /// `RATE_LIMIT_BURST`), shared by every replica through Redis (in leases, see
    /// [`SharedRateLimiter`]); [`crate::Error::RateLimited`] with the wait when over it.
    pub async fn check_rate_limit(&self, principal: &Principal) -> Result<()> {
        self.rate_limiter.check(principal).await
    }

    /// Counters of the shared rate limiter (Redis up, leases, fallback checks).
    pub fn rate_limit_stats(&self) -> SharedLimiterStats {
        self.rate_limiter.stats()
    }

    /// Requests accepted with `XENIOS_BACKEND_API_KEY_PREVIOUS` since start.
    pub fn previous_api_key_uses(&self) -> u64 {
        self.api_keys.previous_key_uses()
    }
}
