//! When the engine asks the same model again: exponential backoff with jitter (`backon`),
//! `Retry-After` honoured up to the longest wait, and one waiting budget per call.

use std::time::Duration;

use super::provider::{ProviderError, ProviderErrorKind};
use super::routing::LlmConfig;

/// The backoff of one model: `LLM_RETRY_BASE_MS` doubled each retry with jitter, at most
/// `LLM_RETRY_MAX_DELAY_MS` apart and `LLM_MAX_RETRIES` times.
pub(crate) fn backoff(config: &LlmConfig) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(config.retry_base_delay)
        .with_max_delay(config.retry_max_delay)
        .with_max_times(usize::try_from(config.max_retries).unwrap_or(usize::MAX))
}

/// Whether `err` may be retried on the same model at all.
///
/// A timeout or a broken stream moves on at once: the model may have been generating (and
/// billing) all along, and asking it again would likely pay for the same slow answer twice.
pub(crate) fn should_retry(err: &ProviderError) -> bool {
    err.is_retryable()
        && !matches!(
            err.kind,
            ProviderErrorKind::Timeout | ProviderErrorKind::MidStream
        )
}

/// The waiting budget of one call (`LLM_RETRY_BUDGET_MS`), shared by every model of it.
#[derive(Debug)]
pub(crate) struct RetryBudget<'a> {
    config: &'a LlmConfig,
    waited: Duration,
}

impl<'a> RetryBudget<'a> {
    pub(crate) fn new(config: &'a LlmConfig) -> Self {
        Self {
            config,
            waited: Duration::ZERO,
        }
    }

    /// The wait before the next attempt given the backoff's `next` delay (None: the backoff
    /// is spent), or None to move on to the next model: a `Retry-After` longer than the
    /// longest wait, or a wait beyond the call's budget.
    pub(crate) fn adjust(
        &mut self,
        err: &ProviderError,
        next: Option<Duration>,
    ) -> Option<Duration> {
        let mut delay = next?;
        if let Some(after) = err.retry_after {
            if after > self.config.retry_max_delay {
                return None;
            }
            delay = delay.max(after);
        }
        if self.waited + delay > self.config.retry_budget {
            return None;
        }
        self.waited += delay;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder;

    use super::*;

    /// One model's retries as `backon` runs them: `should_retry`, then the backoff's next
    /// delay through `adjust`.
    struct Model<'b, 'a> {
        budget: &'b mut RetryBudget<'a>,
        backoff: backon::ExponentialBackoff,
    }

    impl Model<'_, '_> {
        fn delay(&mut self, err: &ProviderError) -> Option<Duration> {
            if !should_retry(err) {
                return None;
            }
            let next = self.backoff.next();
            self.budget.adjust(err, next)
        }
    }

    fn model<'b, 'a>(budget: &'b mut RetryBudget<'a>, config: &LlmConfig) -> Model<'b, 'a> {
        Model {
            budget,
            backoff: backoff(config).build(),
        }
    }

    fn config(max_retries: u32, base_ms: u64, max_ms: u64, budget_ms: u64) -> LlmConfig {
        LlmConfig {
            max_retries,
            retry_base_delay: Duration::from_millis(base_ms),
            retry_max_delay: Duration::from_millis(max_ms),
            retry_budget: Duration::from_millis(budget_ms),
            ..LlmConfig::default()
        }
    }

    fn status(s: u16) -> ProviderError {
        ProviderError::new(ProviderErrorKind::Status(s), "x")
    }

    #[test]
    fn timeouts_and_broken_streams_move_to_the_next_model_at_once() {
        let config = config(3, 1, 10, 60_000);
        let mut budget = RetryBudget::new(&config);
        let mut r = model(&mut budget, &config);
        for kind in [ProviderErrorKind::Timeout, ProviderErrorKind::MidStream] {
            assert_eq!(r.delay(&ProviderError::new(kind, "x")), None, "{kind:?}");
        }
        assert!(r.delay(&status(503)).is_some());
        assert!(
            r.delay(&ProviderError::new(ProviderErrorKind::Connect, "x"))
                .is_some()
        );
    }

    #[test]
    fn retries_are_bounded_in_count_and_grow_within_the_maximum() {
        let config = config(3, 100, 1000, 60_000);
        let mut budget = RetryBudget::new(&config);
        let mut r = model(&mut budget, &config);
        let delays: Vec<Duration> = std::iter::from_fn(|| r.delay(&status(503))).collect();
        assert_eq!(delays.len(), 3, "{delays:?}");
        for d in &delays {
            assert!(
                *d >= Duration::from_millis(100) && *d <= Duration::from_millis(1000),
                "{delays:?}"
            );
        }
        // The next model starts with a fresh count.
        let mut r = model(&mut budget, &config);
        assert!(r.delay(&status(503)).is_some());
    }

    #[test]
    fn refusals_are_never_retried() {
        let config = config(3, 10, 1000, 60_000);
        let mut budget = RetryBudget::new(&config);
        let mut r = model(&mut budget, &config);
        for s in [400, 401, 402, 403, 404] {
            assert_eq!(r.delay(&status(s)), None, "{s}");
        }
        let invalid = ProviderError::new(ProviderErrorKind::InvalidResponse, "x");
        assert_eq!(r.delay(&invalid), None);
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_longest_wait() {
        let config = config(3, 10, 2000, 60_000);
        let mut budget = RetryBudget::new(&config);
        let mut r = model(&mut budget, &config);
        let asked = status(429).with_retry_after(Some(Duration::from_millis(1500)));
        let d = r.delay(&asked).unwrap();
        assert!(d >= Duration::from_millis(1500), "{d:?}");
        // Longer than LLM_RETRY_MAX_DELAY_MS: move on instead of waiting.
        let too_long = status(429).with_retry_after(Some(Duration::from_secs(30)));
        assert_eq!(r.delay(&too_long), None);
    }

    #[test]
    fn the_waiting_budget_spans_every_model_of_a_call() {
        // 10 retries allowed, but at most 1 s of waiting in the whole call.
        let config = config(10, 400, 400, 1000);
        let mut budget = RetryBudget::new(&config);
        let mut r = model(&mut budget, &config);
        let mut waited = Duration::ZERO;
        while let Some(d) = r.delay(&status(503)) {
            waited += d;
        }
        assert!(waited <= Duration::from_millis(1000), "{waited:?}");
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        // The budget is per call: a fresh model does not refill it.
        let mut r = model(&mut budget, &config);
        let more: Duration = std::iter::from_fn(|| r.delay(&status(503))).sum();
        assert!(
            waited + more <= Duration::from_millis(1000),
            "{waited:?} + {more:?}"
        );
    }
}
