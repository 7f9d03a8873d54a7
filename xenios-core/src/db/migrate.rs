//! Embedded diesel migrations for schema `ai_backend`.
//!
//! Migrations are compiled into the binaries, run under a Postgres advisory lock (two
//! processes starting at once take turns; the second finds nothing to do), and keep diesel's
//! bookkeeping table in `ai_backend`, so nothing is ever created in `public`.

use diesel::connection::SimpleConnection;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::connect::{self, ConnectOptions};
use super::error::DbError;

/// The migrations under `migrations/`, embedded at build time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Key of the advisory lock held while migrating ("xenios" in ASCII).
const LOCK_KEY: i64 = 0x78_65_6e_69_6f_73;

type Wrapper = AsyncConnectionWrapper<AsyncPgConnection>;

/// What to do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    /// Apply every pending migration.
    Run,
    /// Revert the most recent migration.
    RevertLast,
    /// List pending migrations without applying them.
    Pending,
}

/// Runs `action` on a fresh connection and returns the versions it touched.
pub(crate) async fn execute(
    url: String,
    options: ConnectOptions,
    action: Action,
) -> Result<Vec<String>, DbError> {
    let failed = |step: &'static str| {
        move |e: Box<dyn std::error::Error + Send + Sync>| DbError::Migration { step, source: e }
    };
    let conn = connect::establish(&url, &options)
        .await
        .map_err(|e| failed("cannot connect")(Box::new(e)))?;
    tokio::task::spawn_blocking(move || {
        let mut conn: Wrapper = Wrapper::from(conn);
        // Take the lock first (CREATE SCHEMA itself races), then make ai_backend the only
        // schema in the path so diesel's bookkeeping table lands there.
        conn.batch_execute(&format!(
            "SELECT pg_advisory_lock({LOCK_KEY}); \
             CREATE SCHEMA IF NOT EXISTS ai_backend; \
             SET search_path TO ai_backend;"
        ))
        .map_err(|e| failed("cannot prepare the session")(Box::new(e)))?;
        let result = match action {
            Action::Run => conn
                .run_pending_migrations(MIGRATIONS)
                .map(|v| v.iter().map(ToString::to_string).collect()),
            Action::RevertLast => conn
                .revert_last_migration(MIGRATIONS)
                .map(|v| vec![v.to_string()]),
            Action::Pending => conn
                .pending_migrations(MIGRATIONS)
                .map(|v| v.iter().map(|m| m.name().to_string()).collect()),
        }
        .map_err(failed("cannot migrate"));
        // Closing the session would release the lock too; unlock explicitly anyway.
        let _ = conn.batch_execute(&format!("SELECT pg_advisory_unlock({LOCK_KEY})"));
        result
    })
    .await
    .map_err(|e| failed("migration task failed")(Box::new(e)))?
}
