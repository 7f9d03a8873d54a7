//! The consumer's side: taking messages (recorded as unacked in the same step), finishing
//! them (result, retry and ack at once), and keeping the ones in hand from being restored.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionLike;

use super::scripts::{FINISH, TAKE};
use super::{UNACKED_INDEX_KEY, UNACKED_KEY, now_secs, redis_error};
use crate::error::{Component, Error, Result};

/// A message a fetch took, now recorded in `unacked` under `tag`.
#[derive(Debug, Clone)]
pub struct Taken {
    /// The delivery tag this take gave it (unique to this delivery; see [`take`]).
    pub tag: String,
    /// The envelope, as it was on the queue.
    pub raw: String,
}

/// Prefix of the delivery tags of this process: random, so that two workers never share one.
static TAG_PREFIX: LazyLock<String> =
    LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_owned());
/// Takes made by this process, a part of every tag.
static TAKES: AtomicU64 = AtomicU64::new(0);

/// Takes up to `max` messages from `keys` (see [`consume_keys`]), each recorded in
/// `unacked` in the same step under a new tag `<process>.<take>.<i>`: the taker's own, not
/// the message's `properties.delivery_tag`, so that Redis need not decode the message to
/// find it (see `scripts::TAKE`).
///
/// [`consume_keys`]: super::consume_keys
pub async fn take<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &[(String, String)],
    max: usize,
) -> Result<Vec<Taken>> {
    let prefix = format!("{}.{}.", *TAG_PREFIX, TAKES.fetch_add(1, Ordering::Relaxed));
    let mut inv = TAKE.prepare_invoke();
    inv.key(UNACKED_INDEX_KEY)
        .key(UNACKED_KEY)
        .arg(max.max(1))
        .arg(now_secs())
        .arg(&prefix);
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
    Ok(out
        .into_iter()
        .zip(1..)
        .map(|(raw, i)| Taken {
            tag: format!("{prefix}{i}"),
            raw,
        })
        .collect())
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
/// messages acked, each atomically. Any item Redis refuses makes the whole call an error
/// (the other items are done).
pub async fn finish<C: ConnectionLike + Send>(
    conn: &mut C,
    items: &[Finish],
    result_ttl: Duration,
) -> Result<()> {
    match finish_each(conn, items, result_ttl)
        .await?
        .into_iter()
        .find_map(std::result::Result::err)
    {
        None => Ok(()),
        Some(refused) => Err(refused.into()),
    }
}

/// Redis' refusal of one item of [`finish_each`] (a `WRONGTYPE` key, `OOM` at
/// `maxmemory`): the item was left as it was.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        let code = r.0.split_whitespace().next().unwrap_or_default();
        if crate::redis::is_wrong_type(code.trim_end_matches(':')) {
            Error::Inconsistent {
                component: Component::Redis,
                message: r.0.clone(),
                source: Box::new(r),
            }
        } else {
            Error::unavailable_from(Component::Redis, r)
        }
    }
}

/// How one item of [`finish_each`] went.
pub type ItemOutcome = std::result::Result<(), Refused>;

/// Finishes deliveries in one round trip (one run of `scripts::FINISH`), item by item: one
/// item that Redis refuses fails alone, with its error, and the others are done. A script
/// Redis lost (`NOSCRIPT` after a restart) ran nothing and is loaded and run again.
/// `Err` means the connection failed or Redis did not run the script: which items ran is
/// then unknown to the caller.
pub async fn finish_each<C: ConnectionLike + Send>(
    conn: &mut C,
    items: &[Finish],
    result_ttl: Duration,
) -> Result<Vec<ItemOutcome>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let mut inv = FINISH.prepare_invoke();
    inv.key(UNACKED_INDEX_KEY)
        .key(UNACKED_KEY)
        .arg(result_ttl.as_secs().max(1));
    for f in items {
        let result_key = crate::jobs::result::result_key(&f.task_id);
        let (push_key, push_raw) = match &f.push {
            Some((key, raw)) => (key.clone(), raw.as_str()),
            // Any key will do: the script reads it only when there is something to push.
            None => (result_key.clone(), ""),
        };
        inv.key(result_key)
            .key(push_key)
            .arg(&f.tag)
            .arg(f.result.as_deref().unwrap_or(""))
            .arg(push_raw);
    }
    match inv.invoke_async::<Vec<String>>(conn).await {
        Ok(replies) if replies.len() == items.len() => Ok(replies
            .into_iter()
            .map(|r| {
                if r.is_empty() {
                    Ok(())
                } else {
                    Err(Refused(r))
                }
            })
            .collect()),
        Ok(replies) => Err(crate::redis::unavailable(format_args!(
            "the finish script answered {} items of {}",
            replies.len(),
            items.len()
        ))),
        // `unacked` or `unacked_index` of the wrong type: the script changed nothing, and
        // every item is refused with its message.
        Err(e) if e.code() == Some("XENIOS_WRONGTYPE") => {
            Ok(vec![Err(Refused(e.to_string())); items.len()])
        }
        Err(e) => Err(redis_error(e)),
    }
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
