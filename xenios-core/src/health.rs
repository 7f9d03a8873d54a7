//! Health and readiness of the backend's dependencies.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Component;

/// Health of one dependency.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ComponentHealth {
    /// Which dependency.
    pub name: Component,
    /// True when it answered within the deadline (or is not configured).
    pub healthy: bool,
    /// False when the backend was built without it (an embedder that only routes LLM
    /// calls): it is then never probed and does not make the backend unready.
    pub configured: bool,
    /// Round-trip time of the probe, in milliseconds.
    pub latency_ms: u64,
    /// What went wrong, when it did.
    pub error: Option<String>,
}

/// Health of all dependencies.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Readiness {
    /// True when every component is healthy.
    pub ready: bool,
    /// Each component's health.
    pub components: Vec<ComponentHealth>,
}

impl ComponentHealth {
    /// A component the backend was built without.
    pub fn not_configured(name: Component) -> Self {
        Self {
            name,
            healthy: true,
            configured: false,
            latency_ms: 0,
            error: None,
        }
    }
}

impl Readiness {
    /// Builds a readiness report from component results.
    pub fn from_components(components: Vec<ComponentHealth>) -> Self {
        Self {
            ready: components.iter().all(|c| c.healthy),
            components,
        }
    }
}

/// Runs one probe with a deadline and records its outcome.
pub(crate) async fn probe<F, E>(name: Component, deadline: Duration, check: F) -> ComponentHealth
where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(deadline, check).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let error = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} ms", deadline.as_millis())),
    };
    ComponentHealth {
        name,
        healthy: error.is_none(),
        configured: true,
        latency_ms,
        error,
    }
}

/// A memory figure of a process in KiB from `/proc/<pid>/status` (Linux): `field` is e.g.
/// `VmRSS` (resident now) or `VmHWM` (peak resident). `None` elsewhere or when unknown.
/// `pid` None is this process.
pub fn proc_status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::proc_status_kib;

    #[test]
    fn reads_memory_figures_of_this_process() {
        let rss = proc_status_kib(None, "VmRSS").unwrap_or(0);
        let peak = proc_status_kib(Some(std::process::id()), "VmHWM").unwrap_or(0);
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
        assert_eq!(proc_status_kib(None, "NoSuchField"), None);
        assert_eq!(proc_status_kib(Some(u32::MAX), "VmRSS"), None);
    }
}
