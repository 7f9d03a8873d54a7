//! Tests of reading the configuration.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn development_has_local_defaults() {
    let c = Config::from_map(&vars(&[])).unwrap();
    assert_eq!(c.environment, Environment::Development);
    assert_eq!(c.server.port, 8000);
    assert_eq!(c.server.host, "0.0.0.0");
    assert_eq!(c.log_format, LogFormat::Pretty);
    assert_eq!(c.api_key.expose_secret(), DEV_API_KEY);
    assert!(c.uses_fake_llm());
}

#[test]
fn production_reports_every_missing_variable_at_once() {
    let err = Config::from_map(&vars(&[("ENVIRONMENT", "production")])).unwrap_err();
    let text = err.to_string();
    for name in [
        "DATABASE_URL",
        "REDIS_URL",
        "XENIOS_BACKEND_API_KEY",
        "SUPABASE_URL",
        "SUPABASE_JWT_SECRET",
        "OPENROUTER_API_KEY",
    ] {
        assert!(text.contains(name), "{name} not named in: {text}");
    }
    assert_eq!(err.problems.len(), 6, "{text}");
}

#[test]
fn production_refuses_wildcard_cors_and_never_echoes_secrets() {
    let err = Config::from_map(&vars(&[
        ("ENVIRONMENT", "production"),
        ("DATABASE_URL", "postgres://u:hunter2hunter2@db/x"),
        ("REDIS_URL", "redis://r:6379"),
        ("XENIOS_BACKEND_API_KEY", "short-secret"),
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("OPENROUTER_API_KEY", "sk-or-very-secret"),
        ("CORS_ORIGINS", "*"),
    ]))
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("CORS_ORIGINS"), "{text}");
    assert!(text.contains("XENIOS_BACKEND_API_KEY: too short"), "{text}");
    assert!(!text.contains("hunter2"));
    assert!(!text.contains("short-secret"));
    assert!(!text.contains("sk-or-very-secret"));
}

#[test]
fn malformed_values_are_named() {
    let err = Config::from_map(&vars(&[
        ("PORT", "eighty"),
        ("LOG_FORMAT", "xml"),
        ("ENVIRONMENT", "qa"),
        ("DATABASE_PREPARED_STATEMENTS", "maybe"),
    ]))
    .unwrap_err();
    let text = err.to_string();
    for name in [
        "PORT",
        "LOG_FORMAT",
        "ENVIRONMENT",
        "DATABASE_PREPARED_STATEMENTS",
    ] {
        assert!(text.contains(name), "{name} not named in: {text}");
    }
}

#[test]
fn supabase_issuer_and_jwks_url_derive_from_the_project_url() {
    let c = Config::from_map(&vars(&[("SUPABASE_URL", "https://abc.supabase.co/")])).unwrap();
    assert_eq!(
        c.supabase.issuer().as_deref(),
        Some("https://abc.supabase.co/auth/v1")
    );
    assert_eq!(
        c.supabase.jwks_url().as_deref(),
        Some("https://abc.supabase.co/auth/v1/.well-known/jwks.json")
    );
    assert_eq!(c.supabase.jwks_cache_ttl, Duration::from_secs(600));
    let c = Config::from_map(&vars(&[
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("SUPABASE_JWKS_URL", "http://127.0.0.1:9/jwks"),
    ]))
    .unwrap();
    assert_eq!(
        c.supabase.jwks_url().as_deref(),
        Some("http://127.0.0.1:9/jwks")
    );
    assert!(
        Config::from_map(&vars(&[]))
            .unwrap()
            .supabase
            .jwks_url()
            .is_none()
    );
}

#[test]
fn jwks_cache_ttl_and_rate_limits_are_bounded() {
    let err = Config::from_map(&vars(&[
        ("SUPABASE_JWKS_CACHE_TTL_SECS", "601"),
        ("RATE_LIMIT_BURST", "0"),
    ]))
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("SUPABASE_JWKS_CACHE_TTL_SECS"), "{text}");
    assert!(text.contains("RATE_LIMIT_BURST"), "{text}");
    let c = Config::from_map(&vars(&[
        ("RATE_LIMIT_PER_MINUTE", "0"),
        ("RATE_LIMIT_BURST", "0"),
    ]))
    .unwrap();
    assert_eq!(c.server.rate_limit.per_minute, 0);
    // Hostile lease sizes: 0 is one token at a time; more than a u32, or not a number, is
    // refused at start with the variable named.
    let c = Config::from_map(&vars(&[("RATE_LIMIT_LEASE", "0")])).unwrap();
    assert_eq!(c.server.rate_limit.lease, 1);
    for bad in ["4294967296", "-1", "lots", "1e3"] {
        let err = Config::from_map(&vars(&[("RATE_LIMIT_LEASE", bad)])).unwrap_err();
        assert!(err.to_string().contains("RATE_LIMIT_LEASE"), "{bad}: {err}");
    }
}

#[test]
fn abuse_limits_are_read_and_checked_with_the_rest() {
    let err = Config::from_map(&vars(&[
        ("ENVIRONMENT", "staging"),
        ("DATABASE_URL", "postgres://u@db/x"),
        ("REDIS_URL", "redis://r:6379"),
        ("XENIOS_BACKEND_API_KEY", "k"),
        ("CORS_ORIGINS", "*"),
        ("LLM_ALLOWED_MODELS", "a b"),
        ("LLM_USER_DAILY_TOKENS", "lots"),
    ]))
    .unwrap_err();
    let text = err.to_string();
    for name in [
        "CORS_ORIGINS",
        "LLM_ALLOWED_MODELS",
        "LLM_USER_DAILY_TOKENS",
    ] {
        assert!(text.contains(name), "{name} not named in: {text}");
    }
    let c = Config::from_map(&vars(&[
        ("XENIOS_BACKEND_API_KEY_PREVIOUS", "old-key"),
        ("LLM_USER_DAILY_TOKENS", "5000"),
        ("RATE_LIMIT_LEASE", "4"),
    ]))
    .unwrap();
    assert_eq!(
        c.api_key_previous.as_ref().map(|k| k.expose_secret()),
        Some("old-key")
    );
    assert_eq!(c.llm.user_daily_tokens, 5000);
    assert_eq!(c.server.rate_limit.lease, 4);
    assert!(!format!("{c:?}").contains("old-key"));
    let c = Config::from_map(&vars(&[])).unwrap();
    assert_eq!(c.server.rate_limit.lease, 64);
}

#[test]
fn llm_only_configs_need_no_database_or_redis_in_any_environment() {
    let prod = vars(&[
        ("ENVIRONMENT", "production"),
        ("XENIOS_BACKEND_API_KEY", "a-production-key-of-length"),
        ("SUPABASE_URL", "https://abc.supabase.co"),
        ("OPENROUTER_API_KEY", "sk-or-key"),
    ]);
    let text = Config::from_map(&prod).unwrap_err().to_string();
    assert!(
        text.contains("DATABASE_URL") && text.contains("REDIS_URL"),
        "{text}"
    );
    let c = Config::llm_only_from_lookup(&|name| prod.get(name).cloned()).unwrap();
    assert!(c.database.url.expose_secret().is_empty());
    assert!(c.redis.url.expose_secret().is_empty());
    // No development defaults either: unset means no store.
    let c = Config::llm_only_from_lookup(&|_| None).unwrap();
    assert!(c.database.url.expose_secret().is_empty());
    assert!(c.redis.url.expose_secret().is_empty());
    // A set URL is still checked, and used.
    let err = Config::llm_only_from_lookup(&|name| {
        (name == "REDIS_URL").then(|| "http://nope".to_owned())
    })
    .unwrap_err();
    assert!(err.to_string().contains("REDIS_URL"), "{err}");
    let c = Config::llm_only_from_lookup(&|name| {
        (name == "DATABASE_URL").then(|| "postgres://u@db/x".to_owned())
    })
    .unwrap();
    assert_eq!(c.database.url.expose_secret(), "postgres://u@db/x");
}

#[test]
fn secrets_are_redacted_in_debug() {
    let c = Config::from_map(&vars(&[("OPENROUTER_API_KEY", "sk-or-topsecret")])).unwrap();
    let debug = format!("{c:?}");
    assert!(!debug.contains("sk-or-topsecret"));
    assert!(!debug.contains(DEV_API_KEY));
}

#[test]
fn server_threads_default_to_one_per_core_and_are_bounded() {
    let c = Config::from_map(&vars(&[])).unwrap();
    assert_eq!(c.server.threads, 0);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    assert_eq!(c.server.serving_threads(), cores);
    let c = Config::from_map(&vars(&[("SERVER_THREADS", "3")])).unwrap();
    assert_eq!(c.server.serving_threads(), 3);
    for hostile in ["257", "100000000", "-1", "two", "18446744073709551616"] {
        let err = Config::from_map(&vars(&[("SERVER_THREADS", hostile)])).unwrap_err();
        assert!(
            err.to_string().contains("SERVER_THREADS"),
            "{hostile}: {err}"
        );
    }
}
