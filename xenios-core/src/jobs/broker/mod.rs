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
//! Lua script, so a taken message is always either on a queue or in `unacked`. The tag it
//! is recorded under is the taker's own (see [`take`]), and its routing key the queue it
//! came from. Messages a worker cannot decode go from `unacked`, in one script, to the
//! dead-letter list [`DEAD_LETTER_KEY`] instead of vanishing. Live workers refresh the
//! `unacked_index` score of what they hold, so a long job or a far ETA is not restored
//! while its worker lives.
//!
//! Every script checks the types of the keys it writes before it changes anything (`unacked`
//! a hash, `unacked_index` a sorted set, queues and the dead-letter list lists; each may also
//! be missing). A key of another type (planted by hand, or by an old producer that used a
//! reserved name as a queue) makes the script return an error and leave every message where
//! it was: a message is never popped unless it can be recorded. Finishing goes item by item
//! within one script run: an item whose result key or retry list has the wrong type is
//! refused alone (see `scripts::FINISH`). The worker logs the error
//! and retries with a backoff; once the key is fixed, the messages run.
//!
//! One concept per file: the Lua scripts ([`scripts`]), taking and finishing deliveries
//! ([`deliver`]), routing and publishing ([`route`]), and putting messages back or aside
//! ([`restore`]). This file holds the key names every part shares.

mod deliver;
mod restore;
mod route;
mod scripts;

pub use deliver::{Finish, Taken, finish, finish_each, still_unacked, take, touch};
pub use restore::{dead_letter, dead_letter_tag, give_back, restore_visible, unacked_routing_key};
pub use route::{declare_queues, lookup, publish_owned};
pub use scripts::load_scripts;

use crate::error::Error;
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

pub(crate) fn redis_error(e: redis::RedisError) -> Error {
    crate::redis::error(e)
}

fn now_secs() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Encodes a message and names its list, for [`publish_owned`].
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
