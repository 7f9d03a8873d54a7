//! Putting messages back (warm shutdown, lost workers past the visibility timeout) or aside
//! (the dead-letter list), each move atomic.

use std::time::Duration;

use redis::Value as RValue;
use redis::aio::ConnectionLike;
use serde_json::Value;

use super::scripts::{DEAD, MOVE_BACK, UNLOCK};
use super::{
    DEAD_LETTER_KEY, UNACKED_INDEX_KEY, UNACKED_KEY, UNACKED_MUTEX_KEY, lookup, now_secs,
    queue_key, redis_error,
};
use crate::error::Result;

/// The `unacked` entry of `tag` (`[envelope, exchange, routing_key]` as JSON), if any.
async fn unacked_entry<C: ConnectionLike + Send>(
    conn: &mut C,
    tag: &str,
) -> Result<Option<String>> {
    redis::cmd("HGET")
        .arg(UNACKED_KEY)
        .arg(tag)
        .query_async(conn)
        .await
        .map_err(redis_error)
}

/// Moves an unacked message to the dead-letter list by its tag (when it is still unacked).
pub async fn dead_letter_tag<C: ConnectionLike + Send>(conn: &mut C, tag: &str) -> Result<bool> {
    let entry = unacked_entry(conn, tag).await?;
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
    let entry = unacked_entry(conn, tag).await?;
    Ok(entry
        .and_then(|e| serde_json::from_str::<Value>(&e).ok())
        .and_then(|v| v.get(2).and_then(Value::as_str).map(str::to_owned))
        .filter(|q| !q.is_empty()))
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
        let entry = unacked_entry(conn, tag).await?;
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
        let entry = unacked_entry(conn, &tag).await?;
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
