//! Per-user daily token budgets (`LLM_USER_DAILY_TOKENS`), counted in Redis.
//!
//! One counter per user per UTC day, `xenios:llm:tokens:<day>:<user id>` (`<day>`: days since
//! the Unix epoch), increased by the total tokens each call actually used, as its upstream
//! reported them, and expiring an hour after its day ends. A call is refused
//! ([`Error::BudgetExceeded`], with the time to the next UTC midnight) once the counter has
//! reached the limit; the call that crosses it is not cut short, so a user can overspend by
//! at most one call's `max_tokens` (which the route caps).
//!
//! The engine checks and charges every call whose principal is a user, whatever the transport
//! (HTTP, a job carrying the user's id). Other code that spends tokens on a user's behalf
//! calls [`TokenBudget::check`] and [`TokenBudget::charge`] itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::redis::{RedisPool, redis, unavailable as redis_error};

const DAY_SECS: u64 = 86_400;

/// A user's spending today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenUsage {
    /// Tokens spent since the last UTC midnight.
    pub used: u64,
    /// The daily limit (0: no budget).
    pub limit: u64,
}

/// The daily token budget of every user.
#[derive(Clone)]
pub struct TokenBudget {
    redis: RedisPool,
    limit: u64,
}

impl std::fmt::Debug for TokenBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBudget")
            .field("limit", &self.limit)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Time from `now` (Unix seconds) to the next UTC midnight.
pub fn until_utc_midnight(now: u64) -> Duration {
    Duration::from_secs(DAY_SECS - now % DAY_SECS)
}

fn key(user_id: &str, now: u64) -> String {
    format!("xenios:llm:tokens:{}:{user_id}", now / DAY_SECS)
}

impl TokenBudget {
    /// A budget of `limit` tokens per user per UTC day (0 turns it off).
    pub fn new(redis: RedisPool, limit: u64) -> Self {
        Self { redis, limit }
    }

    /// The daily limit (0: no budget).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Today's spending of `user_id`.
    pub async fn usage(&self, user_id: &str) -> Result<TokenUsage> {
        let mut conn = self.redis.get().await.map_err(redis_error)?;
        let used: Option<u64> = redis::cmd("GET")
            .arg(key(user_id, now_secs()))
            .query_async(&mut *conn)
            .await
            .map_err(redis_error)?;
        Ok(TokenUsage {
            used: used.unwrap_or(0),
            limit: self.limit,
        })
    }

    /// `Ok` while `user_id` has tokens left today, else [`Error::BudgetExceeded`]. Without a
    /// budget, `Ok` without asking Redis. Redis down refuses (503): the budget fails closed.
    pub async fn check(&self, user_id: &str) -> Result<()> {
        if self.limit == 0 {
            return Ok(());
        }
        let usage = self.usage(user_id).await?;
        if usage.used >= self.limit {
            return Err(Error::BudgetExceeded {
                limit: self.limit,
                retry_after: until_utc_midnight(now_secs()),
            });
        }
        Ok(())
    }

    /// Adds `tokens` to today's spending of `user_id` and returns the new total. Without a
    /// budget, does nothing and returns 0.
    pub async fn charge(&self, user_id: &str, tokens: u64) -> Result<u64> {
        if self.limit == 0 || tokens == 0 {
            return Ok(0);
        }
        let now = now_secs();
        let expires_at = (now / DAY_SECS + 1) * DAY_SECS + 3600;
        let mut conn = self.redis.get().await.map_err(redis_error)?;
        let (total, _): (u64, i64) = redis::pipe()
            .atomic()
            .cmd("INCRBY")
            .arg(key(user_id, now))
            .arg(tokens)
            .cmd("EXPIREAT")
            .arg(key(user_id, now))
            .arg(expires_at)
            .query_async(&mut *conn)
            .await
            .map_err(redis_error)?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midnight_is_the_end_of_the_utc_day() {
        assert_eq!(until_utc_midnight(0), Duration::from_secs(DAY_SECS));
        assert_eq!(until_utc_midnight(DAY_SECS - 1), Duration::from_secs(1));
        assert_eq!(
            until_utc_midnight(DAY_SECS * 3 + 100).as_secs(),
            DAY_SECS - 100
        );
        assert_ne!(key("u", DAY_SECS - 1), key("u", DAY_SECS));
    }
}
