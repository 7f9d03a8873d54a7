//! Per-caller rate limits shared by every replica, through Redis, in leases.
//!
//! Each caller has one token bucket in Redis (`xenios:ratelimit:<user:id|service>`, a hash of
//! `tokens` and `ts`) refilled at `RATE_LIMIT_PER_MINUTE` up to `RATE_LIMIT_BURST`, on Redis's
//! own clock. A process does not ask Redis for every request: [`LEASE_SCRIPT`] takes up to N
//! tokens at once (a *lease*) and the process spends them locally. N starts at 1 for a caller
//! that is quiet, doubles each time a lease is used up within [`LEASE_TTL`], and is capped by
//! `RATE_LIMIT_LEASE` and a quarter of the burst, so a busy caller costs one Redis round trip
//! per N requests and a quiet one wastes nothing. Tokens a process has leased but not spent
//! within [`LEASE_TTL`] are dropped, never given back: replicas together never let through more
//! than the bucket holds, at worst slightly fewer.
//!
//! A process has at most one lease in flight per caller. Requests that find the caller's
//! tokens used up while a lease is on its way wait for it to land, all woken together, and the
//! next lease also covers every request then waiting, so a crowd of one caller's requests costs
//! one round trip, not one lease each (leases of their own would empty the bucket with tokens
//! nobody spends). When Redis answers that the bucket is empty, the process refuses that
//! caller locally until the time Redis gave for the next token.
//!
//! When Redis does not answer (within `RATE_LIMIT_REDIS_TIMEOUT_MS`), the process falls back to
//! its in-process limiter ([`RateLimiter`], the same quota per process) and leaves Redis alone
//! for [`RETRY_REDIS_AFTER`] before trying again; `/metrics` shows it
//! ([`SharedLimiterStats`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::{Principal, RateLimiter};
use crate::config::{RateLimitConfig, RedisConfig};
use crate::error::Error;
use crate::redis::redis;
use crate::redis::redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Why the shared bucket could not be asked (the limiter then falls back to the in-process
/// one).
#[derive(Debug, thiserror::Error)]
enum LeaseError {
    /// `REDIS_URL` gave no connection.
    #[error("REDIS_URL cannot be used")]
    NoConnection,
    /// Redis refused or failed the script.
    #[error("{0}")]
    Redis(#[source] redis::RedisError),
    /// Redis did not answer in time.
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// How long leased tokens stay spendable.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How long the limiter uses only the in-process limiter after Redis failed.
pub const RETRY_REDIS_AFTER: Duration = Duration::from_secs(1);
/// Forget idle callers every this many checks.
const SWEEP_EVERY: u64 = 4096;

/// Takes up to ARGV[3] tokens from the bucket KEYS[1] (refilled at ARGV[1] tokens per ms up
/// to ARGV[2]); returns `{granted, ms until one token is available}`.
const LEASE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
end
local granted = math.min(want, math.floor(tokens))
if granted < 0 then granted = 0 end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
local wait = 0
if granted == 0 then
  wait = math.ceil((1 - tokens) / rate)
end
return {granted, wait}
";

/// What a caller is limited by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Service,
}

impl Key {
    fn redis_key(&self) -> String {
        match self {
            Key::User(id) => format!("xenios:ratelimit:user:{id}"),
            Key::Service => "xenios:ratelimit:service".to_owned(),
        }
    }
}

/// The tokens this process holds for one caller.
#[derive(Debug)]
struct Lease {
    tokens: u32,
    expires: Instant,
    size: u32,
    /// Redis said the bucket is empty: refuse locally until then.
    empty_until: Option<Instant>,
    flight: Arc<Flight>,
}

impl Lease {
    fn new(now: Instant) -> Self {
        Self {
            tokens: 0,
            expires: now,
            size: 0,
            empty_until: None,
            flight: Arc::default(),
        }
    }
}

/// The one lease in flight for a caller: the request that sets `leasing` asks Redis; the
/// others wait for `landed` and look at the caller's tokens again.
#[derive(Debug, Default)]
struct Flight {
    leasing: AtomicBool,
    landed: tokio::sync::Notify,
    /// Requests waiting for the lease in flight, so that the next lease covers them too.
    waiting: AtomicU32,
}

/// Held by the request asking Redis; when it is done or dropped (a cancelled request), the
/// waiters are woken, all at once.
struct Leading<'a>(&'a Flight);

impl<'a> Leading<'a> {
    fn try_new(flight: &'a Flight) -> Option<Self> {
        flight
            .leasing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self(flight))
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.leasing.store(false, Ordering::Release);
        self.0.landed.notify_waiters();
    }
}

/// Counts a request among those waiting for a lease, until it is woken or dropped (a
/// cancelled request must not inflate later leases).
struct Waiting<'a>(&'a AtomicU32);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request found in its caller's lease.
enum Local {
    /// It took a token.
    Spent,
    /// Redis said the bucket is empty; refused for this long.
    Empty(Duration),
    /// No token: lease (at least this many), through this flight.
    Lease(u32, Arc<Flight>),
}

/// Counters of the shared limiter, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SharedLimiterStats {
    /// False while the limiter uses the in-process fallback because Redis failed.
    pub redis_up: bool,
    /// Leases taken from Redis (round trips).
    pub leases: u64,
    /// Checks decided by the in-process limiter because Redis failed.
    pub fallback_checks: u64,
    /// Times Redis failed (error or timeout).
    pub redis_failures: u64,
}

/// Rate limits shared by every replica through Redis, with an in-process fallback.
pub struct SharedRateLimiter {
    config: RateLimitConfig,
    /// Reconnects by itself after Redis restarts (`None`: `REDIS_URL` unusable).
    conn: Option<ConnectionManager>,
    script: redis::Script,
    leases: Mutex<HashMap<Key, Lease>>,
    local: RateLimiter,
    max_lease: u32,
    timeout: Duration,
    down_until: Mutex<Option<Instant>>,
    redis_up: AtomicBool,
    lease_count: AtomicU64,
    fallback_checks: AtomicU64,
    redis_failures: AtomicU64,
    checks: AtomicU64,
}

impl std::fmt::Debug for SharedRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRateLimiter")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedRateLimiter {
    /// A limiter on the Redis of `redis` (no connection is made until the first check).
    pub fn new(config: &RateLimitConfig, redis: &RedisConfig) -> Self {
        // Lazy: nothing is dialled until the first lease; a lease never waits longer than
        // RATE_LIMIT_REDIS_TIMEOUT_MS for a connection or an answer.
        let conn = redis::Client::open(redis.url.expose_secret())
            .ok()
            .and_then(|client| {
                let settings = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.redis_timeout))
                    .set_response_timeout(Some(config.redis_timeout))
                    .set_number_of_retries(0);
                ConnectionManager::new_lazy_with_config(client, settings).ok()
            });
        let max_lease = config.lease.clamp(1, (config.burst / 4).max(1));
        Self {
            config: *config,
            conn,
            script: redis::Script::new(LEASE_SCRIPT),
            leases: Mutex::new(HashMap::new()),
            local: RateLimiter::new(config),
            max_lease,
            timeout: config.redis_timeout,
            down_until: Mutex::new(None),
            redis_up: AtomicBool::new(true),
            lease_count: AtomicU64::new(0),
            fallback_checks: AtomicU64::new(0),
            redis_failures: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        }
    }

    /// A copy of the counters.
    pub fn stats(&self) -> SharedLimiterStats {
        SharedLimiterStats {
            redis_up: self.redis_up.load(Ordering::Relaxed),
            leases: self.lease_count.load(Ordering::Relaxed),
            fallback_checks: self.fallback_checks.load(Ordering::Relaxed),
            redis_failures: self.redis_failures.load(Ordering::Relaxed),
        }
    }

    /// Counts one request of `principal`; [`Error::RateLimited`] (with the time until the
    /// next request would be accepted) when the caller is over its limit across all
    /// replicas. Costs no Redis round trip while the process holds leased tokens.
    pub async fn check(&self, principal: &Principal) -> Result<(), Error> {
        if self.config.per_minute == 0 {
            return Ok(());
        }
        let key = match principal {
            Principal::System => return Ok(()),
            Principal::Service => Key::Service,
            Principal::User(u) => Key::User(u.user_id.clone()),
        };
        if self.redis_resting() {
            return self.fallback(principal);
        }
        loop {
            let flight = match self.take_local(&key, Instant::now()) {
                Local::Spent => return Ok(()),
                Local::Empty(wait) => return Err(Error::RateLimited { retry_after: wait }),
                Local::Lease(_, flight) => flight,
            };
            if let Some(_leading) = Leading::try_new(&flight) {
                // The last lease may have landed since the look above.
                let now = Instant::now();
                let grow = match self.take_local(&key, now) {
                    Local::Spent => return Ok(()),
                    Local::Empty(wait) => return Err(Error::RateLimited { retry_after: wait }),
                    Local::Lease(grow, _) => grow,
                };
                // The usual lease (this request's token and those for the requests to come)
                // and a token for each request waiting, which are spent at once, never left
                // to lapse.
                let waiting = flight.waiting.load(Ordering::Relaxed);
                let want = grow.saturating_add(waiting).min(self.config.burst.max(1));
                return self.lease_and_take(principal, key, want, now).await;
            }
            // A lease is in flight: wait for it to land (registered before looking, so that
            // a landing in between is not missed), then look at the tokens again.
            {
                let _waiting = Waiting::new(&flight.waiting);
                let landed = flight.landed.notified();
                tokio::pin!(landed);
                landed.as_mut().enable();
                if flight.leasing.load(Ordering::Acquire) {
                    landed.await;
                }
            }
            // The lease failed: the crowd that waited for it must not try Redis in turn,
            // each after the other's timeout.
            if self.redis_resting() {
                return self.fallback(principal);
            }
        }
    }

    /// Whether Redis failed less than [`RETRY_REDIS_AFTER`] ago (the in-process limiter
    /// decides meanwhile).
    fn redis_resting(&self) -> bool {
        lock(&self.down_until).is_some_and(|until| Instant::now() < until)
    }

    /// Spends one of the caller's leased tokens if the process holds one.
    fn take_local(&self, key: &Key, now: Instant) -> Local {
        let mut leases = lock(&self.leases);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            // An entry whose lease is in flight or awaited stays: its waiters need its gate.
            leases.retain(|_, l| {
                l.expires > now
                    || l.empty_until.is_some_and(|t| t > now)
                    || Arc::strong_count(&l.flight) > 1
            });
        }
        let l = match leases.get_mut(key) {
            Some(l) => l,
            None => leases.entry(key.clone()).or_insert_with(|| Lease::new(now)),
        };
        if l.expires > now && l.tokens > 0 {
            l.tokens -= 1;
            return Local::Spent;
        }
        if let Some(until) = l.empty_until {
            if until > now {
                return Local::Empty(until - now);
            }
            l.empty_until = None;
        }
        // Used up while still fresh: the caller is busy, lease more next time.
        let grow = if l.expires > now {
            l.size.saturating_mul(2).clamp(1, self.max_lease)
        } else {
            1
        };
        Local::Lease(grow, Arc::clone(&l.flight))
    }

    /// Leases `want` tokens for `key`, spends one, keeps the rest.
    async fn lease_and_take(
        &self,
        principal: &Principal,
        key: Key,
        want: u32,
        now: Instant,
    ) -> Result<(), Error> {
        match self.lease(&key, want).await {
            Ok((granted, _)) if granted > 0 => {
                self.lease_count.fetch_add(1, Ordering::Relaxed);
                let mut leases = lock(&self.leases);
                let l = leases.entry(key).or_insert_with(|| Lease::new(now));
                if l.expires <= now {
                    l.tokens = 0;
                }
                l.tokens += granted - 1;
                l.expires = now + LEASE_TTL;
                l.size = want.min(self.max_lease);
                l.empty_until = None;
                Ok(())
            }
            Ok((_, wait_ms)) => {
                self.lease_count.fetch_add(1, Ordering::Relaxed);
                let retry_after = Duration::from_millis(wait_ms.max(1));
                let mut leases = lock(&self.leases);
                let l = leases.entry(key).or_insert_with(|| Lease::new(now));
                l.empty_until = Some(Instant::now() + retry_after);
                Err(Error::RateLimited { retry_after })
            }
            Err(e) => {
                self.redis_failures.fetch_add(1, Ordering::Relaxed);
                if self.redis_up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "rate limits: Redis unreachable, using the in-process limiter");
                }
                *lock(&self.down_until) = Some(Instant::now() + RETRY_REDIS_AFTER);
                self.fallback(principal)
            }
        }
    }

    fn fallback(&self, principal: &Principal) -> Result<(), Error> {
        self.fallback_checks.fetch_add(1, Ordering::Relaxed);
        self.local.check(principal)
    }

    async fn lease(&self, key: &Key, want: u32) -> Result<(u32, u64), LeaseError> {
        let attempt = async {
            let mut conn = self.conn.clone().ok_or(LeaseError::NoConnection)?;
            let rate = f64::from(self.config.per_minute) / 60_000.0;
            let (granted, wait): (i64, i64) = self
                .script
                .key(key.redis_key())
                .arg(rate)
                .arg(self.config.burst)
                .arg(want)
                .invoke_async(&mut conn)
                .await
                .map_err(LeaseError::Redis)?;
            Ok::<_, LeaseError>((
                u32::try_from(granted.max(0)).unwrap_or(0),
                u64::try_from(wait.max(0)).unwrap_or(0),
            ))
        };
        let result = tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| LeaseError::Timeout(self.timeout))??;
        if !self.redis_up.swap(true, Ordering::Relaxed) {
            tracing::info!("rate limits: Redis reachable again, limits are shared again");
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use secrecy::SecretString;

    use super::{Key, SharedRateLimiter};
    use crate::auth::Principal;
    use crate::config::{RateLimitConfig, RedisConfig};

    fn flight_state(limiter: &SharedRateLimiter) -> (bool, u32) {
        let leases = super::lock(&limiter.leases);
        leases.get(&Key::Service).map_or((false, 0), |l| {
            (
                l.flight.leasing.load(super::Ordering::Acquire),
                l.flight.waiting.load(super::Ordering::Relaxed),
            )
        })
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// However large `RATE_LIMIT_LEASE` is, one lease takes at most a quarter of the burst,
    /// and at least one token.
    #[tokio::test]
    async fn a_lease_is_capped_by_a_quarter_of_the_burst() {
        let redis = RedisConfig {
            url: SecretString::from("redis://127.0.0.1:1/0"),
            pool_size: 1,
        };
        for (lease, burst, cap) in [(u32::MAX, 60, 15), (64, 1000, 64), (0, 60, 1), (64, 2, 1)] {
            let config = RateLimitConfig {
                per_minute: 60,
                burst,
                lease,
                redis_timeout: Duration::from_millis(300),
            };
            let limiter = SharedRateLimiter::new(&config, &redis);
            assert_eq!(limiter.max_lease, cap, "lease {lease}, burst {burst}");
        }
    }

    /// The request asking Redis is cancelled (its caller went away) while others wait for
    /// its lease: they must go on, not wait for a landing that never comes.
    #[tokio::test]
    async fn waiters_go_on_when_the_request_asking_redis_is_cancelled() {
        // A "Redis" that takes connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let config = RateLimitConfig {
            per_minute: 60,
            burst: 10,
            lease: 8,
            redis_timeout: Duration::from_millis(300),
        };
        let redis = RedisConfig {
            url: SecretString::from(format!("redis://{addr}/0")),
            pool_size: 1,
        };
        let limiter = Arc::new(SharedRateLimiter::new(&config, &redis));
        let check = |l: &Arc<SharedRateLimiter>| {
            let l = Arc::clone(l);
            tokio::spawn(async move { l.check(&Principal::Service).await })
        };
        let leading = check(&limiter);
        until("a lease in flight", || flight_state(&limiter).0).await;
        let waiters: Vec<_> = (0..3).map(|_| check(&limiter)).collect();
        until("three waiting", || flight_state(&limiter).1 == 3).await;
        leading.abort();
        // One of them asks Redis in turn, gets no answer within the timeout, and the three
        // are decided by the in-process limiter.
        for w in waiters {
            let done = tokio::time::timeout(Duration::from_secs(30), w).await;
            assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
        }
        let stats = limiter.stats();
        assert_eq!(
            (stats.redis_up, stats.redis_failures, stats.fallback_checks),
            (false, 1, 3),
            "{stats:?}"
        );
        silent.abort();
    }
}
