//! OpenRouter settings (`OPENROUTER_*`).

use secrecy::SecretString;

use super::reader::Reader;

/// OpenRouter settings.
#[derive(Debug, Clone)]
pub struct OpenRouterConfig {
    /// `OPENROUTER_API_KEY`. Without it (development only) the built-in fake LLM is used.
    pub api_key: Option<SecretString>,
    /// `OPENROUTER_BASE_URL` (default `https://openrouter.ai/api/v1`).
    pub base_url: String,
}

impl OpenRouterConfig {
    /// Reads the section; production never falls back to the fake LLM.
    pub(super) fn read(r: &mut Reader<'_>, prod: bool) -> Self {
        let openrouter = OpenRouterConfig {
            api_key: r.secret("OPENROUTER_API_KEY"),
            base_url: r
                .get("OPENROUTER_BASE_URL")
                .unwrap_or_else(|| "https://openrouter.ai/api/v1".to_owned())
                .trim_end_matches('/')
                .to_owned(),
        };
        if url::Url::parse(&openrouter.base_url).is_err() {
            r.problems.push(format!(
                "OPENROUTER_BASE_URL: `{}` is not a valid URL",
                openrouter.base_url
            ));
        }
        if prod && openrouter.api_key.is_none() {
            r.missing(
                "OPENROUTER_API_KEY",
                "production never falls back to the fake LLM",
            );
        }
        openrouter
    }
}
