//! Task rate limits set at run time (the `rate_limit` control command).

use std::time::Duration;

/// The longest interval between two runs a rate limit may ask for.
const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// A task rate limit (Celery's `rate_limit` strings: `10/s`, `100/m`, `1000/h`, `5`).
pub(crate) struct RateLimit {
    /// The string it was set from, for `inspect`.
    pub(crate) spec: String,
    pub(super) limiter: governor::DefaultDirectRateLimiter,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("spec", &self.spec)
            .finish()
    }
}

/// Why a Celery rate (`10/s`, `100/m`, `1000/h`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RateSpecError {
    #[error("unknown rate unit in {0:?} (use s, m or h)")]
    Unit(String),
    #[error("{0:?} is not a rate such as 10/s, 100/m or 1000/h")]
    NotARate(String),
    #[error("{0:?} is not a positive rate")]
    Negative(String),
    #[error("{0:?} is too fast a rate")]
    TooFast(String),
}

impl RateLimit {
    /// Parses a Celery rate (as kombu's `rate()`): `None` for `0` (no limit).
    pub(crate) fn parse(spec: &str) -> std::result::Result<Option<Self>, RateSpecError> {
        let s = spec.trim();
        let (ops, per) = match s.split_once('/') {
            Some((ops, unit)) => {
                let per = match unit.trim().chars().next() {
                    Some('s') => 1.0,
                    Some('m') => 60.0,
                    Some('h') => 3600.0,
                    _ => return Err(RateSpecError::Unit(s.to_owned())),
                };
                (ops.trim(), per)
            }
            None => (s, 1.0),
        };
        let ops: f64 = ops
            .parse()
            .map_err(|_| RateSpecError::NotARate(s.to_owned()))?;
        if !ops.is_finite() || ops < 0.0 {
            return Err(RateSpecError::Negative(s.to_owned()));
        }
        if ops == 0.0 {
            return Ok(None);
        }
        // A tiny rate (`1e-300/s`) is clamped to the slowest we keep, one per day.
        let period =
            Duration::try_from_secs_f64(per / ops).map_or(MAX_PERIOD, |p| p.min(MAX_PERIOD));
        let quota = governor::Quota::with_period(period)
            .ok_or_else(|| RateSpecError::TooFast(s.to_owned()))?;
        Ok(Some(Self {
            spec: s.to_owned(),
            limiter: governor::RateLimiter::direct(quota),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn rate_limits_parse_like_kombus_rate() {
        for (spec, enabled) in [
            ("10/s", true),
            ("100/m", true),
            ("1000/h", true),
            ("5", true),
            ("0.5/sec", true),
            ("0", false),
            ("0/m", false),
            ("1e-300/s", true),
            ("0.00001/h", true),
        ] {
            let parsed = RateLimit::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(parsed.is_some(), enabled, "{spec}");
        }
        for bad in ["fast", "10/d", "-1/s", "NaN", "", "1e300/s"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }
}
