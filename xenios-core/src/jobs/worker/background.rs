//! Background loops: keyspace notifications and pidbox requests (`listen`), and the
//! heartbeat that refreshes held messages and restores those of lost workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use redis::aio::ConnectionLike;

use crate::jobs::broker::{self, redis_error};
use crate::jobs::events::{HEARTBEAT_FREQ, worker_fields};
use crate::jobs::pidbox;

use super::state::Shared;

/// Turns on keyspace notifications for lists, when the server allows CONFIG.
pub(super) async fn enable_notifications<C: ConnectionLike + Send>(c: &mut C) -> bool {
    let current: std::result::Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(c)
        .await;
    let flags = match current {
        Ok(v) => v.get(1).cloned().unwrap_or_default(),
        Err(e) => {
            tracing::info!(error = %e, "no CONFIG access: polling queues every 50 ms");
            return false;
        }
    };
    let has_k = flags.contains('K');
    let has_l = flags.contains('l') || flags.contains('A');
    if has_k && has_l {
        return true;
    }
    let mut wanted = flags.clone();
    if !has_k {
        wanted.push('K');
    }
    if !has_l {
        wanted.push('l');
    }
    let set: std::result::Result<(), _> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async(c)
        .await;
    match set {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "cannot enable keyspace notifications: polling every 50 ms");
            false
        }
    }
}

/// Keyspace notifications (wake the fetcher) and pidbox requests, on a dedicated connection
/// that is opened again (with backoff, at most 1 s apart) whenever it drops.
pub(super) async fn listen(shared: Arc<Shared>, client: redis::Client) {
    use futures::StreamExt;
    let pidbox_channel = crate::jobs::events::fanout_channel(shared.redis_db, "celery.pidbox", "");
    let subscribe = || async {
        let mut pubsub = client.get_async_pubsub().await?;
        for q in &shared.queues {
            pubsub
                .psubscribe(format!("__keyspace@{}__:{q}*", shared.redis_db))
                .await?;
        }
        pubsub.subscribe(&pidbox_channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    loop {
        let subscribed = subscribe
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(1))
                    .with_jitter()
                    .without_max_times(),
            )
            .sleep(tokio::time::sleep)
            .notify(|e, after| {
                tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "cannot subscribe; retrying");
            })
            .await;
        let Ok(pubsub) = subscribed else { continue };
        // Anything pushed while we were not listening.
        shared.wake.notify_one();
        let mut stream = pubsub.into_on_message();
        while let Some(msg) = stream.next().await {
            let channel = msg.get_channel_name();
            if channel == pidbox_channel {
                let payload = msg.get_payload_bytes().to_vec();
                let shared = shared.clone();
                tokio::spawn(async move { pidbox::handle(&shared, &payload).await });
            } else if matches!(msg.get_payload_bytes(), b"lpush" | b"rpush") {
                shared.wake.notify_one();
            }
        }
        tracing::warn!("pub/sub connection lost; reconnecting");
    }
}

/// Every 2 s: a `worker-heartbeat` event, a refresh of the messages held (so they are not
/// restored while this worker lives), and now and then a restore of lost workers' messages.
/// Each Redis step recovers on its own at the next tick when Redis is back.
pub(super) async fn heartbeat_loop(shared: Arc<Shared>) {
    let vt = shared.jobs().visibility_timeout;
    let restore_every = (vt / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut last_restore = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(HEARTBEAT_FREQ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (active, tags) = {
            let hand = shared.hand();
            let tags: Vec<String> = hand
                .reserved
                .keys()
                .chain(hand.active.keys())
                .chain(hand.scheduled.keys())
                .cloned()
                .collect();
            (hand.active.len(), tags)
        };
        shared
            .events
            .send_now(
                "worker-heartbeat",
                worker_fields(active, shared.processed()),
            )
            .await;
        let mut c = shared.link.conn();
        let alive = if tags.is_empty() {
            redis::cmd("PING")
                .query_async::<()>(&mut c)
                .await
                .map_err(redis_error)
        } else {
            broker::touch(&mut c, &tags).await
        };
        if let Err(e) = shared.link.track(alive) {
            tracing::warn!(error = %e, "cannot refresh held messages");
            continue;
        }
        if last_restore.elapsed() >= restore_every {
            last_restore = Instant::now();
            match broker::restore_visible(&mut c, vt).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(restored = n, "restored messages of lost workers");
                    shared.wake.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "restore of lost messages failed"),
            }
        }
    }
}
