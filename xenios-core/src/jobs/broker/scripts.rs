//! The Lua scripts that make each broker step atomic, and their loading after a restart.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;

use super::redis_error;
use crate::error::Result;

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
pub(super) static TAKE: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static FINISH: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static MOVE_BACK: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static DEAD: LazyLock<Script> = LazyLock::new(|| {
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
pub(super) static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// Loads the scripts (after a Redis restart flushed them), so pipelines can EVALSHA.
pub async fn load_scripts<C: ConnectionLike + Send>(conn: &mut C) -> Result<()> {
    let mut pipe = redis::pipe();
    for s in [&*TAKE, &*FINISH, &*MOVE_BACK, &*DEAD, &*UNLOCK] {
        pipe.load_script(s).ignore();
    }
    pipe.query_async::<()>(conn).await.map_err(redis_error)
}
