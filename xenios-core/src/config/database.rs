//! Postgres settings (`DATABASE_*`, `RUN_MIGRATIONS`, `AUDIT_*`).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::reader::Reader;

/// Postgres settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`: a libpq-style URL. May carry a password, hence secret.
    /// `sslmode=require` (Supabase) turns TLS on. Empty when no database is configured
    /// (only [`crate::Config::llm_only_from_env`] allows that).
    pub url: SecretString,
    /// `DATABASE_POOL_SIZE`: most pooled connections held by this process (default 10); the
    /// audit writer holds one more, outside the pool.
    pub pool_size: u32,
    /// `DATABASE_CONNECT_TIMEOUT_MS`: how long a query waits for a pooled connection
    /// (default 5000).
    pub connect_timeout: Duration,
    /// `DATABASE_PREPARED_STATEMENTS`: cache prepared statements per connection (default true).
    /// Set to false behind Supabase's transaction pooler (port 6543), which cannot keep
    /// named statements across transactions.
    pub prepared_statements: bool,
    /// `RUN_MIGRATIONS`: apply embedded migrations when the server starts (default false).
    pub run_migrations: bool,
    /// `AUDIT_QUEUE_CAPACITY`: audit rows held in memory while Postgres is slow or down
    /// (default 10000); beyond it rows are dropped and counted.
    pub audit_queue_capacity: usize,
    /// `AUDIT_BATCH_LINGER_MS`: how long the audit writer gathers rows into one statement
    /// (default 20 ms; 0 writes whatever has queued at once). One insert per request would
    /// cost Postgres CPU, on the same machine, at every request.
    pub audit_batch_linger: Duration,
    /// `AUDIT_STORE_PAYLOADS`: also store prompts and outputs in `inference_logs`
    /// (default false: they may hold personal data).
    pub audit_store_payloads: bool,
}

impl DatabaseConfig {
    /// Reads the section. `storage_optional`: an unset `DATABASE_URL` is left empty (an
    /// LLM-only embedder); otherwise it defaults to a local database in development only.
    pub(super) fn read(r: &mut Reader<'_>, dev: bool, storage_optional: bool) -> Self {
        let database_url = match r.secret("DATABASE_URL") {
            Some(url) => {
                if let Err(e) = url::Url::parse(url.expose_secret()) {
                    // Never echo the URL itself: it may contain a password.
                    r.problems
                        .push(format!("DATABASE_URL: not a valid URL ({e})"));
                }
                url
            }
            None if storage_optional => SecretString::from(""),
            None if dev => SecretString::from("postgres://postgres:postgres@127.0.0.1:5432/xenios"),
            None => {
                r.missing("DATABASE_URL", "required outside development");
                SecretString::from("")
            }
        };
        DatabaseConfig {
            url: database_url,
            pool_size: r.parse("DATABASE_POOL_SIZE", 10u32).max(1),
            connect_timeout: Duration::from_millis(r.parse("DATABASE_CONNECT_TIMEOUT_MS", 5000u64)),
            prepared_statements: r.bool("DATABASE_PREPARED_STATEMENTS", true),
            run_migrations: r.bool("RUN_MIGRATIONS", false),
            audit_queue_capacity: r.parse("AUDIT_QUEUE_CAPACITY", 10_000usize).max(1),
            audit_batch_linger: Duration::from_millis(
                r.parse("AUDIT_BATCH_LINGER_MS", 20u64).min(10_000),
            ),
            audit_store_payloads: r.bool("AUDIT_STORE_PAYLOADS", false),
        }
    }
}
