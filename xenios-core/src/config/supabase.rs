//! Supabase Auth settings (`SUPABASE_*`).

use std::time::Duration;

use secrecy::SecretString;

use super::reader::Reader;

/// Supabase Auth settings.
#[derive(Debug, Clone, Default)]
pub struct SupabaseConfig {
    /// `SUPABASE_URL`, e.g. `https://<ref>.supabase.co`.
    pub url: Option<String>,
    /// `SUPABASE_JWT_SECRET`: the legacy HS256 shared secret.
    pub jwt_secret: Option<SecretString>,
    /// `SUPABASE_JWKS_URL`: overrides `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// `SUPABASE_JWKS_CACHE_TTL_SECS`: how long a fetched key set is trusted before it is
    /// fetched again (default and maximum 600: Supabase's own edge caches it 10 minutes).
    pub jwks_cache_ttl: Duration,
    /// `SUPABASE_JWKS_MIN_REFRESH_MS`: least time between two fetches of the key set, so a
    /// flood of tokens with unknown `kid`s cannot turn into a flood of fetches (default 30000).
    pub jwks_min_refresh_interval: Duration,
    /// `SUPABASE_JWKS_TIMEOUT_MS`: deadline of one key-set fetch (default 5000).
    pub jwks_timeout: Duration,
}

impl SupabaseConfig {
    /// The expected `iss` of user tokens, `<SUPABASE_URL>/auth/v1`, when the URL is known.
    pub fn issuer(&self) -> Option<String> {
        self.url.as_ref().map(|u| format!("{u}/auth/v1"))
    }

    /// Where the project's public signing keys are: `SUPABASE_JWKS_URL`, or
    /// `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`, or none (HS256 only).
    pub fn jwks_url(&self) -> Option<String> {
        self.jwks_url.clone().or_else(|| {
            self.issuer()
                .map(|iss| format!("{iss}/.well-known/jwks.json"))
        })
    }
}

/// Largest accepted `SUPABASE_JWKS_CACHE_TTL_SECS`.
pub const MAX_JWKS_CACHE_TTL: Duration = Duration::from_secs(600);

impl SupabaseConfig {
    /// Reads the section; production needs the project URL (issuer and JWKS).
    pub(super) fn read(r: &mut Reader<'_>, prod: bool) -> Self {
        let supabase = SupabaseConfig {
            url: r
                .get("SUPABASE_URL")
                .map(|u| u.trim_end_matches('/').to_owned()),
            jwt_secret: r.secret("SUPABASE_JWT_SECRET"),
            jwks_url: r.get("SUPABASE_JWKS_URL"),
            jwks_cache_ttl: Duration::from_secs(r.parse("SUPABASE_JWKS_CACHE_TTL_SECS", 600u64)),
            jwks_min_refresh_interval: Duration::from_millis(
                r.parse("SUPABASE_JWKS_MIN_REFRESH_MS", 30_000u64),
            ),
            jwks_timeout: Duration::from_millis(r.parse("SUPABASE_JWKS_TIMEOUT_MS", 5000u64)),
        };
        if supabase.jwks_cache_ttl > MAX_JWKS_CACHE_TTL {
            r.problems.push(format!(
                "SUPABASE_JWKS_CACHE_TTL_SECS: at most {} (Supabase rotates keys behind a \
             10-minute cache)",
                MAX_JWKS_CACHE_TTL.as_secs()
            ));
        }
        if supabase.jwks_timeout.is_zero() {
            r.problems
                .push("SUPABASE_JWKS_TIMEOUT_MS: must be greater than 0".to_owned());
        }
        for (name, value) in [
            ("SUPABASE_URL", &supabase.url),
            ("SUPABASE_JWKS_URL", &supabase.jwks_url),
        ] {
            if let Some(v) = value {
                match url::Url::parse(v) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => r
                        .problems
                        .push(format!("{name}: `{v}` is not an http(s) URL")),
                }
            }
        }
        if prod && supabase.url.is_none() {
            r.missing(
                "SUPABASE_URL",
                "production verifies user JWTs against the project's issuer and JWKS",
            );
        }
        if prod && supabase.jwt_secret.is_none() && supabase.url.is_none() {
            r.missing(
                "SUPABASE_JWT_SECRET",
                "production needs the legacy secret or SUPABASE_URL for JWKS",
            );
        }
        supabase
    }
}
