//! Per-caller rate limits (GCRA, from `governor`), in process memory.
//!
//! A signed-in user is limited by user ID, whichever device or session they use; calls made
//! with the API key alone share the service's bucket; the backend's own work
//! ([`Principal::System`]) is never limited. Limits are per process: the server uses
//! [`super::SharedRateLimiter`], which shares them across replicas through Redis and falls
//! back to this one when Redis is unreachable.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use super::Principal;
use crate::config::RateLimitConfig;
use crate::error::Error;

/// Forget idle callers every this many checks, so the map does not grow without bound.
const SWEEP_EVERY: u64 = 4096;

/// What a caller is limited by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKey {
    User(String),
    Service,
}

/// Keyed rate limiter over [`Principal`]s.
pub struct RateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<RateKey>>,
    checks: AtomicU64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("enabled", &self.limiter.is_some())
            .field("callers", &self.limiter.as_ref().map(|l| l.len()))
            .finish()
    }
}

impl RateLimiter {
    /// A limiter with the configured quota; `per_minute == 0` turns limiting off.
    pub fn new(config: &RateLimitConfig) -> Self {
        let limiter = NonZeroU32::new(config.per_minute).map(|rate| {
            let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
            DefaultKeyedRateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
        });
        Self {
            limiter,
            checks: AtomicU64::new(0),
        }
    }

    /// Counts one request of `principal`; [`Error::RateLimited`] (with the time until the
    /// next request would be accepted) when it is over its limit.
    pub fn check(&self, principal: &Principal) -> Result<(), Error> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = match principal {
            Principal::System => return Ok(()),
            Principal::Service => RateKey::Service,
            Principal::User(u) => RateKey::User(u.user_id.clone()),
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&key)
            .map_err(|not_until| Error::RateLimited {
                retry_after: not_until.wait_time_from(limiter.clock().now()),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::UserContext;

    fn user(id: &str) -> Principal {
        Principal::User(UserContext {
            user_id: id.into(),
            role: "authenticated".into(),
            email: None,
            session_id: None,
            aal: None,
            is_anonymous: false,
        })
    }

    #[test]
    fn each_caller_has_its_own_bucket() {
        let l = RateLimiter::new(&RateLimitConfig::new(6, 2));
        for p in [user("a"), user("b"), Principal::Service] {
            assert!(l.check(&p).is_ok());
            assert!(l.check(&p).is_ok());
            let err = l.check(&p).unwrap_err();
            let after = err.retry_after().unwrap();
            // 6 per minute: one every 10 s.
            assert!(
                after.as_secs_f64() > 5.0 && after.as_secs_f64() <= 10.0,
                "{after:?}"
            );
        }
        for _ in 0..10 {
            assert!(l.check(&Principal::System).is_ok());
        }
    }

    #[test]
    fn zero_turns_limiting_off() {
        let l = RateLimiter::new(&RateLimitConfig::new(0, 0));
        for _ in 0..1000 {
            assert!(l.check(&user("a")).is_ok());
        }
    }
}
