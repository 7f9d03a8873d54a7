//! What this build is: the service's name, its version and the commit it was built from,
//! as `/api/v1/status`, error reports and trace resources name them.

/// Name reported by `/api/v1/status`, error reports and traces.
pub const SERVICE_NAME: &str = "xenios-ai-backend";
/// Version of this build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Git commit of this build (`unknown` when built outside a checkout without `GIT_COMMIT`).
pub const GIT_COMMIT: &str = env!("XENIOS_GIT_COMMIT");
