//! HTTP routes. Each maps onto one [`xenios_core::AiBackend`] call.

pub mod health;
pub mod jobs;
pub mod status;

use poem_openapi::Tags;

/// OpenAPI tags.
#[derive(Debug, Tags)]
pub enum ApiTags {
    /// Liveness and readiness probes (no authentication).
    Health,
    /// Service information.
    Status,
    /// Celery-compatible jobs.
    Jobs,
}
