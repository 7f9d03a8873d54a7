//! The consumer's side: taking messages (recorded as unacked in the same step), finishing
//! them (result, retry and ack at once), and keeping the ones in hand from being restored.

use std::time::Duration;

use redis::Value as RValue;
use redis::aio::ConnectionLike;

use super::scripts::{FINISH, TAKE, load_scripts};
use super::{DEAD_LETTER_KEY, UNACKED_INDEX_KEY, UNACKED_KEY, now_secs, redis_error};
use crate::error::Result;

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
