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

/// Pops up to ARGV[1] messages from KEYS[3..] and records them as unacked, atomically.
/// ARGV: the most to take, the time taken (the `unacked_index` score), the tag prefix,
/// then per queue list its queue name. Returns `{raws, skipped}`: the messages taken, the
/// i-th (from 1) recorded under the tag `prefix .. i`, and the queue lists skipped because
/// they are not lists.
///
/// The tag is the taker's, not the message's `properties.delivery_tag`: finding that one
/// means decoding the message in Lua, which was half of this script's time in Redis (about
/// 7 of 13 µs per message), and the worker decodes every message anyway. Nothing else reads
/// the field name: kombu's `restore_visible` (ours and a Python worker's) walks
/// `unacked_index` and puts back what the hash holds under each tag. The entry is kombu's
/// `[envelope, exchange, routing_key]` with the anonymous exchange and the queue the
/// message was taken from, so a restore puts it back on that very queue. A message that is
/// not `{...}` is kept as a JSON string, so that the entry stays JSON for kombu's restore
/// (which cannot parse an entry that is not, but drops a payload it cannot restore); the
/// worker dead-letters such a message as soon as it fails to decode it.
///
/// A list gives up to the messages still wanted in one `RPOP key count`, and every message
/// taken is recorded with one `ZADD` and one `HSET`: a batch of B messages costs
/// `4 + 2 x lists` commands, not `3 x B`.
pub(super) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{TYPE_CHECK}
local e = want(KEYS[1], 'zset') or want(KEYS[2], 'hash')
if e then return e end
local out = {{}}
local skipped = {{}}
local scores = {{}}
local entries = {{}}
local max = tonumber(ARGV[1])
local at = ARGV[2]
local prefix = ARGV[3]
local n = 0
for i = 3, #KEYS do
  if n >= max then break end
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'list' and t ~= 'none' then
    skipped[#skipped + 1] = KEYS[i] .. ' is a ' .. t
  elseif t == 'list' then
    local popped = redis.call('RPOP', KEYS[i], max - n)
    if popped then
      local tail = ',"",' .. cjson.encode(ARGV[i + 1]) .. ']'
      for _, raw in ipairs(popped) do
        n = n + 1
        local tag = prefix .. n
        scores[2 * n - 1] = at
        scores[2 * n] = tag
        entries[2 * n - 1] = tag
        if string.byte(raw, 1) == 123 and string.byte(raw, -1) == 125 then
          entries[2 * n] = '[' .. raw .. tail
        else
          entries[2 * n] = '[' .. cjson.encode(raw) .. tail
        end
        out[n] = raw
      end
    end
  end
end
if n > 0 then
  redis.call('ZADD', KEYS[1], unpack(scores))
  redis.call('HSET', KEYS[2], unpack(entries))
end
return {{out, skipped}}
"#
    ))
});

/// Finishes a batch of deliveries, each on its own: for item i, optionally stores a result
/// (never over a SUCCESS) and publishes it, optionally pushes a follow-up message (a
/// retry), then acks it. An item Redis refuses (its result key or push list of another
/// type, `OOM` at `maxmemory`) is left as it was and the others go on.
///
/// KEYS: unacked_index, unacked, then per item its result key and its push list.
/// ARGV: result TTL, then per item its tag ('' = nothing to ack), result JSON ('' = none)
/// and push payload ('' = none).
/// Returns one string per item: '' when done, else Redis' refusal.
///
/// Why an item is all or nothing: its result key's type is read by the `GET` it needs
/// anyway, its push list's type is checked before anything is written, and Redis refuses a
/// script's write for `OOM` only while the script has written nothing, so a refused item
/// has written nothing. The acks of the batch are one `ZREM` and one `HDEL` at the end.
pub(super) static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{TYPE_CHECK}
local e = want(KEYS[1], 'zset') or want(KEYS[2], 'hash')
if e then return e end
local ttl = ARGV[1]
local out = {{}}
local acks = {{}}
local refused = function(r) return type(r) == 'table' and r.err end
for i = 1, (#KEYS - 2) / 2 do
  local rkey, pkey = KEYS[2 * i + 1], KEYS[2 * i + 2]
  local tag, result, push = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local err = false
  if push ~= '' then
    local t = redis.call('TYPE', pkey)['ok']
    if t ~= 'list' and t ~= 'none' then
      err = 'XENIOS_WRONGTYPE key `' .. pkey .. '` is a ' .. t .. ', not a list; nothing was changed'
    end
  end
  if not err and result ~= '' then
    local cur = redis.pcall('GET', rkey)
    if refused(cur) then
      err = cur.err
    else
      local done = false
      if cur then
        local ok, meta = pcall(cjson.decode, cur)
        done = ok and type(meta) == 'table' and meta.status == 'SUCCESS'
      end
      if not done then
        local r = redis.pcall('SETEX', rkey, ttl, result)
        if refused(r) then
          err = r.err
        else
          redis.call('PUBLISH', rkey, result)
        end
      end
    end
  end
  if not err and push ~= '' then
    local r = redis.pcall('LPUSH', pkey, push)
    if refused(r) then err = r.err end
  end
  if err then
    out[i] = err
  else
    out[i] = ''
    if tag ~= '' then acks[#acks + 1] = tag end
  end
end
if #acks > 0 then
  redis.call('ZREM', KEYS[1], unpack(acks))
  redis.call('HDEL', KEYS[2], unpack(acks))
end
return out
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
