//! The finisher: stores results, pushes retries and acks, in batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::jobs::broker::{self, Finish};

use super::state::Shared;

pub(super) async fn finisher_loop(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Finish>) {
    let mut batch = Vec::with_capacity(256);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let ttl = shared.jobs().result_expires;
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut c = shared.conn.clone();
            match broker::finish(&mut c, &batch, ttl).await {
                Ok(()) => break,
                Err(e) => {
                    // Results are never dropped: the messages stay unacked meanwhile.
                    tracing::error!(error = %e, n = batch.len(), "cannot store results; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        let n = batch.len() as u64;
        batch.clear();
        if shared.pending_finishes.fetch_sub(n, Ordering::AcqRel) == n {
            shared.finisher_idle.notify_waiters();
        }
    }
}
