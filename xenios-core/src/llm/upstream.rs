//! The HTTP client(s) upstream LLM calls go through: one per thread by default.
//!
//! A reqwest client keeps its idle connections in one pool, and each connection is driven
//! by a task on the runtime that opened it. When `xenios-server` serves from one
//! current-thread runtime per core, a shared pool hands a connection opened on one core to
//! a request on another, and every read and write of that call then wakes the first core
//! (measured: the gain of the per-core runtimes was lost). [`Upstream::per_thread`] gives
//! each thread a client of its own, built with the same settings, so a call stays on the
//! thread that serves it.

use std::time::Duration;

use thread_local::ThreadLocal;

use crate::backend::upstream_http_client;
use crate::error::Result;

/// Where [`super::OpenRouterProvider`] gets its client.
#[derive(Debug)]
pub enum Upstream {
    /// One client for every thread (an embedder's own client, shared as given).
    Shared(reqwest::Client),
    /// A client per thread, each built by [`upstream_http_client`].
    PerThread(Box<PerThread>),
}

/// Clients built lazily, one per thread that makes a call.
#[derive(Debug)]
pub struct PerThread {
    connect_timeout: Duration,
    /// Built up front (so a client that cannot be built fails at start), and used by any
    /// thread whose own client cannot be built.
    first: reqwest::Client,
    clients: ThreadLocal<reqwest::Client>,
}

impl Upstream {
    /// One client per thread, each with `connect_timeout` (`LLM_CONNECT_TIMEOUT_MS`).
    pub fn per_thread(connect_timeout: Duration) -> Result<Self> {
        Ok(Self::PerThread(Box::new(PerThread {
            connect_timeout,
            first: upstream_http_client(connect_timeout)?,
            clients: ThreadLocal::new(),
        })))
    }

    /// The client of calls not tied to a serving thread (the JWKS): the embedder's, or the
    /// first one built.
    pub fn shared(&self) -> &reqwest::Client {
        match self {
            Self::Shared(c) => c,
            Self::PerThread(p) => &p.first,
        }
    }

    /// The client for a call made on the current thread.
    pub fn client(&self) -> &reqwest::Client {
        match self {
            Self::Shared(c) => c,
            Self::PerThread(p) => p.clients.get_or(|| {
                // Building a client fails only when the TLS backend cannot start, and `first`
                // proved at start that it can; should it fail later, calls share `first`.
                upstream_http_client(p.connect_timeout).unwrap_or_else(|_| p.first.clone())
            }),
        }
    }
}

impl From<reqwest::Client> for Upstream {
    fn from(client: reqwest::Client) -> Self {
        Self::Shared(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_gets_its_own_client_and_keeps_it() {
        let up = Upstream::per_thread(Duration::from_secs(1)).unwrap();
        let here = std::ptr::from_ref(up.client());
        assert!(
            std::ptr::eq(here, up.client()),
            "the same client on the same thread"
        );
        let there = std::thread::scope(|s| {
            s.spawn(|| std::ptr::from_ref(up.client()) as usize)
                .join()
                .unwrap()
        });
        assert_ne!(
            here as usize, there,
            "another thread has a client of its own"
        );
    }

    #[test]
    fn a_shared_client_is_used_by_every_thread() {
        let up = Upstream::from(reqwest::Client::new());
        let here = std::ptr::from_ref(up.client()) as usize;
        let there = std::thread::scope(|s| {
            s.spawn(|| std::ptr::from_ref(up.client()) as usize)
                .join()
                .unwrap()
        });
        assert_eq!(here, there);
    }
}
