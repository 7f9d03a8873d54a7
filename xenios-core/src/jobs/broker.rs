//! kombu's Redis transport semantics, so that Python Celery workers and ours share queues.
//!
//! - A queue `q` is the list `q` plus the priority lists `q\x06\x163`, `q\x06\x166`,
//!   `q\x06\x169`; producers LPUSH, consumers pop from the right (FIFO), priority 0 first.
//! - A taken message is recorded in the hash `unacked` (`tag -> [envelope, exchange,
//!   routing_key]`) and the sorted set `unacked_index` (`tag -> time taken`); acking removes
//!   both; `restore_visible` puts back messages older than the visibility timeout, under the
//!   lock `unacked_mutex`, marked `redelivered`. A Python worker restores ours and we
//!   restore theirs.
//!
//! Where we do better than kombu: kombu BRPOPs a message and only then writes `unacked`, so
//! a worker dying between the two loses the message. Here [`TAKE`] pops and records in one
//! Lua script, so a taken message is always either on a queue or in `unacked`. Messages a
//! worker cannot decode go, in the same script or the same transaction, to the dead-letter
//! list [`DEAD_LETTER_KEY`] instead of vanishing. Live workers refresh the `unacked_index`
//! score of what they hold, so a long job or a far ETA is not restored while its worker lives.
//!
//! Every script checks the types of the keys it writes before it changes anything (`unacked`
//! a hash, `unacked_index` a sorted set, queues and the dead-letter list lists; each may also
//! be missing). A key of another type (planted by hand, or by an old producer that used a
//! reserved name as a queue) makes the script return an error and leave every message where
//! it was: a message is never popped unless it can be recorded. The worker logs the error
//! and retries with a backoff; once the key is fixed, the messages run.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Script, Value as RValue};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::jobs::protocol::TaskMessage;

/// Separator of kombu's priority list names.
pub const PRIORITY_SEP: &str = "\x06\x16";
/// kombu's priority steps on Redis.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];
/// Hash of taken, unacknowledged messages.
pub const UNACKED_KEY: &str = "unacked";
/// Sorted set of the times unacknowledged messages were taken.
pub const UNACKED_INDEX_KEY: &str = "unacked_index";
/// Lock of the restore of lost messages.
pub const UNACKED_MUTEX_KEY: &str = "unacked_mutex";
/// Dead-letter list: messages no worker could decode (newest first, at most 10,000).
pub const DEAD_LETTER_KEY: &str = "xenios.dead_letter";
/// Prefix of the binding sets of kombu's virtual exchanges.
pub const BINDING_PREFIX: &str = "_kombu.binding.";

/// The step a priority falls in (kombu rounds down to 0, 3, 6 or 9).
pub fn priority_step(priority: u8) -> u8 {
    PRIORITY_STEPS
        .iter()
        .rev()
        .copied()
        .find(|s| priority >= *s)
        .unwrap_or(0)
}

/// The Redis list holding messages of `queue` at `priority`.
pub fn queue_key(queue: &str, priority: u8) -> String {
    match priority_step(priority) {
        0 => queue.to_owned(),
        step => format!("{queue}{PRIORITY_SEP}{step}"),
    }
}

/// Every list of the given queues, in the order they are served: priority first, then queue
/// order (kombu's BRPOP key order).
pub fn consume_keys(queues: &[String]) -> Vec<(String, String)> {
    PRIORITY_STEPS
        .iter()
        .flat_map(|p| queues.iter().map(move |q| (queue_key(q, *p), q.clone())))
        .collect()
}

/// What a fetch took.
#[derive(Debug, Clone)]
pub enum Taken {
    /// A message, now recorded in `unacked` under `tag`.
    Message {
        /// Delivery tag.
        tag: String,
        /// The envelope.
        raw: String,
    },
    /// A message without a readable delivery tag; moved to the dead-letter list.
    Dead {
        /// The raw message.
        raw: String,
    },
}

/// The Lua helper every script starts with: `want(key, type)` returns an error reply when
/// `key` exists with another type (`nil` when it is fine).
const TYPE_CHECK: &str = r#"
local function want(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= kind and t ~= 'none' then
    return redis.error_reply('XENIOS_WRONGTYPE key `' .. key .. '` is a ' .. t .. ', not a ' .. kind .. '; nothing was changed')
  end
  return nil
end
"#;

/// Pops up to ARGV[1] messages from KEYS[4..] and records them as unacked, atomically.
/// Returns `{pairs, skipped}`: `tag, raw` pairs ('' tag: dead-lettered) and the queue
/// lists skipped because they are not lists.
static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{TYPE_CHECK}
local e = want(KEYS[1], 'zset') or want(KEYS[2], 'hash') or want(KEYS[3], 'list')
if e then return e end
local out = {{}}
local skipped = {{}}
local max = tonumber(ARGV[1])
local n = 0
for i = 4, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'list' and t ~= 'none' then
    skipped[#skipped + 1] = KEYS[i] .. ' is a ' .. t
  end
  while n < max and (t == 'list') do
    local raw = redis.call('RPOP', KEYS[i])
    if not raw then break end
    n = n + 1
    local ok, msg = pcall(cjson.decode, raw)
    local tag, ex, rk
    if ok and type(msg) == 'table' and type(msg.properties) == 'table' then
      tag = msg.properties.delivery_tag
      local di = msg.properties.delivery_info
      if type(di) == 'table' then ex = di.exchange; rk = di.routing_key end
    end
    if type(tag) ~= 'string' or tag == '' then
      redis.call('LPUSH', KEYS[3], raw)
      redis.call('LTRIM', KEYS[3], 0, 9999)
      out[#out + 1] = ''
      out[#out + 1] = raw
    else
      if type(ex) ~= 'string' then ex = '' end
      if type(rk) ~= 'string' then rk = ARGV[i - 1] end
      redis.call('ZADD', KEYS[1], ARGV[2], tag)
      redis.call('HSET', KEYS[2], tag, '[' .. raw .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
      out[#out + 1] = tag
      out[#out + 1] = raw
    end
  end
  if n >= max then break end
end
return {{out, skipped}}
"#
    ))
});

/// Finishes a delivery: optionally stores a result (never over a SUCCESS) and publishes it,
/// optionally pushes a follow-up message (a retry), then acks. All or nothing.
/// KEYS: unacked_index, unacked, result key, push key.
/// ARGV: tag, result JSON ('' = none), result TTL, push payload ('' = none).
static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{TYPE_CHECK}
local e = want(KEYS[1], 'zset') or want(KEYS[2], 'hash') or want(KEYS[3], 'string')
if not e and ARGV[4] ~= '' then e = want(KEYS[4], 'list') end
if e then return e end
local stored = 0
if ARGV[2] ~= '' then
  local cur = redis.call('GET', KEYS[3])
  local done = false
  if cur then
    local ok, meta = pcall(cjson.decode, cur)
    done = ok and type(meta) == 'table' and meta.status == 'SUCCESS'
  end
  if not done then
    redis.call('SETEX', KEYS[3], ARGV[3], ARGV[2])
    redis.call('PUBLISH', KEYS[3], ARGV[2])
    stored = 1
  end
end
if ARGV[4] ~= '' then redis.call('LPUSH', KEYS[4], ARGV[4]) end
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return stored
"#
    ))
});

/// Moves one unacked message back to a queue, if it is still unacked and (when ARGV[3] is
/// set) its score is at most ARGV[3]. KEYS: unacked_index, unacked, target list.
/// ARGV: tag, payload, max score ('' = any), 'R' to RPUSH (consumed next) or 'L' to LPUSH.
static MOVE_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{TYPE_CHECK}
local e = want(KEYS[1], 'zset') or want(KEYS[2], 'hash') or want(KEYS[3], 'list')
if e then return e end
if ARGV[3] ~= '' then
  local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if s and tonumber(s) > tonumber(ARGV[3]) then return 0 end
end
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[4] == 'L' then
  redis.call('LPUSH', KEYS[3], ARGV[2])
else
  redis.call('RPUSH', KEYS[3], ARGV[2])
end
return 1
"#
    ))
});

/// Moves an unacked message to the dead-letter list. KEYS: unacked_index, unacked,
/// dead-letter list. ARGV: tag, raw message.
static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{TYPE_CHECK}
local e = want(KEYS[1], 'zset') or want(KEYS[2], 'hash') or want(KEYS[3], 'list')
if e then return e end
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, 9999)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#
    ))
});

/// Releases a lock only if we hold it.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

pub(crate) fn redis_error(e: redis::RedisError) -> Error {
    crate::redis::error(e)
}

fn now_secs() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Takes up to `max` messages from `keys` (see [`consume_keys`]).
pub async fn take<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &[(String, String)],
    max: usize,
) -> Result<Vec<Taken>> {
    let mut inv = TAKE.prepare_invoke();
    inv.key(UNACKED_INDEX_KEY)
        .key(UNACKED_KEY)
        .key(DEAD_LETTER_KEY)
        .arg(max.max(1))
        .arg(now_secs());
    for (key, queue) in keys {
        inv.key(key).arg(queue);
    }
    let (out, skipped): (Vec<String>, Vec<String>) =
        inv.invoke_async(conn).await.map_err(redis_error)?;
    if out.is_empty() && !skipped.is_empty() {
        // An error, so that the caller backs off instead of polling (and logging) at once.
        return Err(crate::redis::unavailable(format_args!(
            "queue keys that are not lists cannot be taken from: {}",
            skipped.join(", ")
        )));
    }
    for what in skipped {
        tracing::error!(
            key = %what,
            "a queue's key is not a list; its messages cannot be taken until it is fixed"
        );
    }
    let mut taken = Vec::with_capacity(out.len() / 2);
    let mut it = out.into_iter();
    while let (Some(tag), Some(raw)) = (it.next(), it.next()) {
        taken.push(if tag.is_empty() {
            Taken::Dead { raw }
        } else {
            Taken::Message { tag, raw }
        });
    }
    Ok(taken)
}

/// One finished delivery, for [`finish`].
#[derive(Debug, Clone, Default)]
pub struct Finish {
    /// Delivery tag to ack ('' = nothing to ack).
    pub tag: String,
    /// Task id whose result to store.
    pub task_id: String,
    /// Result JSON to store and publish (None = store nothing).
    pub result: Option<String>,
    /// Follow-up message (a retry) and its list.
    pub push: Option<(String, String)>,
}

/// Finishes deliveries in one round trip: results stored and published, retries pushed,
/// messages acked, each atomically.
pub async fn finish<C: ConnectionLike + Send>(
    conn: &mut C,
    items: &[Finish],
    result_ttl: Duration,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let build = || {
        let mut pipe = redis::pipe();
        for f in items {
            pipe.invoke_script(&finish_invocation(f, result_ttl))
                .ignore();
        }
        pipe
    };
    match build().query_async::<()>(conn).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            load_scripts(conn).await?;
            build().query_async::<()>(conn).await.map_err(redis_error)
        }
        Err(e) => Err(redis_error(e)),
    }
}

/// How one item of [`finish_each`] went: Redis' refusal of it, if any.
pub type ItemOutcome = std::result::Result<(), redis::ServerError>;

/// Finishes deliveries in one round trip like [`finish`], but item by item: one item that
/// Redis refuses (a `WRONGTYPE` key, `OOM` at `maxmemory`) fails alone, with its error,
/// and the others are done. Items Redis never ran (`NOSCRIPT` after a restart) are run
/// again once the scripts are loaded; items that ran are never run twice.
/// `Err` means the connection failed: which items ran is unknown.
pub async fn finish_each<C: ConnectionLike + Send>(
    conn: &mut C,
    items: &[Finish],
    result_ttl: Duration,
) -> Result<Vec<ItemOutcome>> {
    let mut outcomes: Vec<ItemOutcome> = vec![Ok(()); items.len()];
    let mut todo: Vec<usize> = (0..items.len()).collect();
    for round in 0..2 {
        if todo.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &i in &todo {
            pipe.invoke_script(&finish_invocation(&items[i], result_ttl));
        }
        let replies: Vec<RValue> = pipe.query_async(conn).await.map_err(redis_error)?;
        let mut noscript = Vec::new();
        for (&i, reply) in todo.iter().zip(replies) {
            outcomes[i] = match reply {
                RValue::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript) => {
                    noscript.push(i);
                    Err(e)
                }
                RValue::ServerError(e) => Err(e),
                _ => Ok(()),
            };
        }
        if !noscript.is_empty() && round == 0 {
            load_scripts(conn).await?;
        }
        todo = noscript;
    }
    Ok(outcomes)
}

fn finish_invocation(f: &Finish, result_ttl: Duration) -> redis::ScriptInvocation<'static> {
    let (push_key, push_raw) = f
        .push
        .as_ref()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .unwrap_or(("", ""));
    let mut inv = FINISH.prepare_invoke();
    inv.key(UNACKED_INDEX_KEY)
        .key(UNACKED_KEY)
        .key(crate::jobs::result::result_key(&f.task_id))
        .key(if push_key.is_empty() {
            UNACKED_KEY
        } else {
            push_key
        })
        .arg(&f.tag)
        .arg(f.result.as_deref().unwrap_or(""))
        .arg(result_ttl.as_secs().max(1))
        .arg(push_raw);
    inv
}

/// Which of `tags` are still unacked (taken and not yet acked).
pub async fn still_unacked<C: ConnectionLike + Send>(
    conn: &mut C,
    tags: &[&str],
) -> Result<Vec<bool>> {
    if tags.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for t in tags {
        pipe.cmd("HEXISTS").arg(UNACKED_KEY).arg(*t);
    }
    pipe.query_async(conn).await.map_err(redis_error)
}

/// Moves an unacked message to the dead-letter list by its tag (when it is still unacked).
pub async fn dead_letter_tag<C: ConnectionLike + Send>(conn: &mut C, tag: &str) -> Result<bool> {
    let entry: Option<String> = redis::cmd("HGET")
        .arg(UNACKED_KEY)
        .arg(tag)
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    match entry {
        Some(entry) => {
            let raw = match serde_json::from_str::<Value>(&entry) {
                Ok(Value::Array(a)) if !a.is_empty() => a[0].to_string(),
                _ => entry,
            };
            dead_letter(conn, tag, &raw).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The queue (routing key) recorded with an unacked message, if any.
pub async fn unacked_routing_key<C: ConnectionLike + Send>(
    conn: &mut C,
    tag: &str,
) -> Result<Option<String>> {
    let entry: Option<String> = redis::cmd("HGET")
        .arg(UNACKED_KEY)
        .arg(tag)
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    Ok(entry
        .and_then(|e| serde_json::from_str::<Value>(&e).ok())
        .and_then(|v| v.get(2).and_then(Value::as_str).map(str::to_owned))
        .filter(|q| !q.is_empty()))
}

/// Loads the scripts (after a Redis restart flushed them), so pipelines can EVALSHA.
pub async fn load_scripts<C: ConnectionLike + Send>(conn: &mut C) -> Result<()> {
    let mut pipe = redis::pipe();
    for s in [&*TAKE, &*FINISH, &*MOVE_BACK, &*DEAD, &*UNLOCK] {
        pipe.load_script(s).ignore();
    }
    pipe.query_async::<()>(conn).await.map_err(redis_error)
}

/// Writes job owners (`key, owner, ttl seconds`), then pushes encoded messages onto their
/// queues, in one round trip.
pub async fn publish_owned<C: ConnectionLike + Send>(
    conn: &mut C,
    owners: &[(String, String, u64)],
    messages: &[(String, String)],
) -> Result<()> {
    if messages.is_empty() && owners.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (key, owner, ttl) in owners {
        pipe.cmd("SET")
            .arg(key)
            .arg(owner)
            .arg("EX")
            .arg((*ttl).max(1))
            .ignore();
    }
    for (key, raw) in messages {
        pipe.cmd("LPUSH").arg(key).arg(raw).ignore();
    }
    pipe.query_async::<()>(conn).await.map_err(redis_error)
}

/// Refreshes the `unacked_index` score of messages this worker still holds, so they are not
/// restored while it lives.
pub async fn touch<C: ConnectionLike + Send>(conn: &mut C, tags: &[String]) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let now = now_secs();
    let mut cmd = redis::cmd("ZADD");
    cmd.arg(UNACKED_INDEX_KEY).arg("XX");
    for t in tags {
        cmd.arg(now).arg(t);
    }
    cmd.query_async::<()>(conn).await.map_err(redis_error)
}

/// Where a message of `exchange`/`routing_key` goes, as kombu's `_lookup`: the routing key
/// itself on the default exchange, else the queues bound to the exchange for that key.
pub async fn lookup<C: ConnectionLike + Send>(
    conn: &mut C,
    exchange: &str,
    routing_key: &str,
) -> Result<Vec<String>> {
    if exchange.is_empty() {
        return Ok(vec![routing_key.to_owned()]);
    }
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{BINDING_PREFIX}{exchange}"))
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    let mut queues: Vec<String> = members
        .iter()
        .filter_map(|m| {
            let mut parts = m.split(PRIORITY_SEP);
            let rk = parts.next()?;
            let _pattern = parts.next()?;
            let queue = parts.next()?;
            (rk == routing_key || rk.is_empty()).then(|| queue.to_owned())
        })
        .collect();
    queues.dedup();
    if queues.is_empty() {
        queues.push(routing_key.to_owned());
    }
    Ok(queues)
}

/// Declares queues as kombu does (a direct exchange named like the queue, bound with the
/// queue name), so Python producers that publish to that exchange reach them. A reserved
/// name ([`crate::jobs::check_queue_name`]) is refused, naming it: a worker consuming
/// `unacked` would destroy the bookkeeping of every other queue.
pub async fn declare_queues<C: ConnectionLike + Send>(
    conn: &mut C,
    queues: &[String],
) -> Result<()> {
    for q in queues {
        crate::jobs::check_queue_name(q)?;
    }
    let mut pipe = redis::pipe();
    for q in queues {
        pipe.cmd("SADD")
            .arg(format!("{BINDING_PREFIX}{q}"))
            .arg(format!("{q}{PRIORITY_SEP}{PRIORITY_SEP}{q}"))
            .ignore();
    }
    pipe.query_async::<()>(conn).await.map_err(redis_error)
}

/// Puts one unacked message back on its queue (`front`: consumed next), marked redelivered.
/// `older_than`: only if its `unacked_index` score is at most this. Returns whether it moved.
pub async fn requeue<C: ConnectionLike + Send>(
    conn: &mut C,
    tag: &str,
    entry: &str,
    front: bool,
    older_than: Option<f64>,
) -> Result<bool> {
    let parsed: Option<(Value, String, String)> = serde_json::from_str::<Value>(entry)
        .ok()
        .and_then(|v| match v {
            Value::Array(mut a) if a.len() == 3 => {
                let rk = a.pop()?.as_str()?.to_owned();
                let ex = a.pop()?.as_str()?.to_owned();
                let msg = a.pop()?;
                msg.is_object().then_some((msg, ex, rk))
            }
            _ => None,
        });
    let (target, payload) = match parsed {
        Some((mut msg, ex, rk)) => {
            if let Some(h) = msg.get_mut("headers").and_then(Value::as_object_mut) {
                h.insert("redelivered".into(), Value::Bool(true));
            }
            if let Some(d) = msg
                .get_mut("properties")
                .and_then(|p| p.get_mut("delivery_info"))
                .and_then(Value::as_object_mut)
            {
                d.insert("redelivered".into(), Value::Bool(true));
            }
            let priority = msg
                .get("properties")
                .and_then(|p| p.get("priority"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(9) as u8;
            let queue = lookup(conn, &ex, &rk)
                .await?
                .into_iter()
                .next()
                .unwrap_or(rk);
            if crate::jobs::check_queue_name(&queue).is_ok() {
                (queue_key(&queue, priority), msg.to_string())
            } else {
                // Its routing key names a reserved key: never push there.
                (DEAD_LETTER_KEY.to_owned(), msg.to_string())
            }
        }
        None => (DEAD_LETTER_KEY.to_owned(), entry.to_owned()),
    };
    let moved: i64 = MOVE_BACK
        .key(UNACKED_INDEX_KEY)
        .key(UNACKED_KEY)
        .key(&target)
        .arg(tag)
        .arg(payload)
        .arg(older_than.map(|s| s.to_string()).unwrap_or_default())
        .arg(if front { "R" } else { "L" })
        .invoke_async(conn)
        .await
        .map_err(redis_error)?;
    Ok(moved == 1)
}

/// Gives back messages held in hand (warm shutdown): each goes to the front of its queue.
pub async fn give_back<C: ConnectionLike + Send>(conn: &mut C, tags: &[String]) -> Result<usize> {
    let mut n = 0;
    for tag in tags {
        let entry: Option<String> = redis::cmd("HGET")
            .arg(UNACKED_KEY)
            .arg(tag)
            .query_async(conn)
            .await
            .map_err(redis_error)?;
        if let Some(entry) = entry
            && requeue(conn, tag, &entry, true, None).await?
        {
            n += 1;
        }
    }
    Ok(n)
}

/// kombu's `restore_visible`: puts back every message taken more than `visibility_timeout`
/// ago and not acked since, under `unacked_mutex`. Returns how many were restored.
pub async fn restore_visible<C: ConnectionLike + Send>(
    conn: &mut C,
    visibility_timeout: Duration,
) -> Result<usize> {
    let (index_type, unacked_type): (String, String) = redis::pipe()
        .cmd("TYPE")
        .arg(UNACKED_INDEX_KEY)
        .cmd("TYPE")
        .arg(UNACKED_KEY)
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    if !matches!(index_type.as_str(), "zset" | "none")
        || !matches!(unacked_type.as_str(), "hash" | "none")
    {
        tracing::error!(
            unacked_index = %index_type, unacked = %unacked_type,
            "cannot restore lost messages: `unacked_index` must be a zset and `unacked` a hash"
        );
        return Ok(0);
    }
    let token = uuid::Uuid::new_v4().to_string();
    let locked: Option<String> = redis::cmd("SET")
        .arg(UNACKED_MUTEX_KEY)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(300_000)
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    if locked.is_none() {
        return Ok(0);
    }
    let result = restore_locked(conn, visibility_timeout).await;
    let _: RValue = UNLOCK
        .key(UNACKED_MUTEX_KEY)
        .arg(&token)
        .invoke_async(conn)
        .await
        .map_err(redis_error)?;
    result
}

async fn restore_locked<C: ConnectionLike + Send>(conn: &mut C, vt: Duration) -> Result<usize> {
    let ceil = now_secs() - vt.as_secs_f64();
    let tags: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
        .arg(UNACKED_INDEX_KEY)
        .arg(ceil)
        .arg(0)
        .arg("LIMIT")
        .arg(0)
        .arg(1000)
        .query_async(conn)
        .await
        .map_err(redis_error)?;
    let mut restored = 0;
    for tag in tags {
        let entry: Option<String> = redis::cmd("HGET")
            .arg(UNACKED_KEY)
            .arg(&tag)
            .query_async(conn)
            .await
            .map_err(redis_error)?;
        match entry {
            Some(entry) => {
                if requeue(conn, &tag, &entry, true, Some(ceil)).await? {
                    tracing::warn!(delivery_tag = %tag, "restored a message whose worker was lost");
                    restored += 1;
                }
            }
            None => {
                let _: RValue = redis::cmd("ZREM")
                    .arg(UNACKED_INDEX_KEY)
                    .arg(&tag)
                    .query_async(conn)
                    .await
                    .map_err(redis_error)?;
            }
        }
    }
    Ok(restored)
}

/// Moves an unacked message that cannot be handled to the dead-letter list, atomically.
pub async fn dead_letter<C: ConnectionLike + Send>(
    conn: &mut C,
    tag: &str,
    raw: &str,
) -> Result<()> {
    let _: i64 = DEAD
        .key(UNACKED_INDEX_KEY)
        .key(UNACKED_KEY)
        .key(DEAD_LETTER_KEY)
        .arg(tag)
        .arg(raw)
        .invoke_async(conn)
        .await
        .map_err(redis_error)?;
    Ok(())
}

/// Encodes a message and names its list, for [`publish`].
pub fn outgoing(message: &TaskMessage) -> (String, String) {
    (
        queue_key(&message.queue, message.priority),
        message.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_lists_follow_kombu() {
        assert_eq!(queue_key("q", 0), "q");
        assert_eq!(queue_key("q", 2), "q");
        assert_eq!(queue_key("q", 3), "q\x06\x163");
        assert_eq!(queue_key("q", 8), "q\x06\x166");
        assert_eq!(queue_key("q", 9), "q\x06\x169");
        let keys: Vec<String> = consume_keys(&["a".into(), "b".into()])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "a",
                "b",
                "a\x06\x163",
                "b\x06\x163",
                "a\x06\x166",
                "b\x06\x166",
                "a\x06\x169",
                "b\x06\x169"
            ]
        );
    }
}
