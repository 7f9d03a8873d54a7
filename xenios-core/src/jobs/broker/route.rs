//! The producer's side: kombu's exchange lookup and queue declaration, and publishing.

use redis::aio::ConnectionLike;

use super::{BINDING_PREFIX, PRIORITY_SEP, redis_error};
use crate::error::Result;

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
