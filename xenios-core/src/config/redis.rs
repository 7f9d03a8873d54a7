//! Redis settings (`REDIS_URL`, `REDIS_POOL_SIZE`).

use secrecy::{ExposeSecret, SecretString};

use super::reader::Reader;

/// Redis settings.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `REDIS_URL`, e.g. `redis://127.0.0.1:6379/0`. May carry a password, hence secret.
    /// Empty when no Redis is configured (only [`crate::Config::llm_only_from_env`] allows that).
    pub url: SecretString,
    /// `REDIS_POOL_SIZE`: most connections held by this process (default 16).
    pub pool_size: u32,
}

impl RedisConfig {
    /// Reads the section. `storage_optional`: an unset `REDIS_URL` is left empty (an
    /// LLM-only embedder); otherwise it defaults to a local Redis in development only.
    pub(super) fn read(r: &mut Reader<'_>, dev: bool, storage_optional: bool) -> Self {
        let redis_url = match r.secret("REDIS_URL") {
            Some(url) => {
                match url::Url::parse(url.expose_secret()) {
                    Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "unix") => {}
                    Ok(u) => r.problems.push(format!(
                        "REDIS_URL: scheme `{}` is not redis, rediss or unix",
                        u.scheme()
                    )),
                    Err(e) => r.problems.push(format!("REDIS_URL: not a valid URL ({e})")),
                }
                url
            }
            None if storage_optional => SecretString::from(""),
            None if dev => SecretString::from("redis://127.0.0.1:6379/0"),
            None => {
                r.missing("REDIS_URL", "required outside development");
                SecretString::from("")
            }
        };
        RedisConfig {
            url: redis_url,
            pool_size: r.parse("REDIS_POOL_SIZE", 16u32).max(1),
        }
    }
}
