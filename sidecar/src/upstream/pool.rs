//! The pass-through links to one backplane shard: a fixed number of pooled [`Pipeline`]s per
//! protocol (RESP2 and RESP3 links are apart, so every reply is encoded as its client expects),
//! shared by every local client for commands that carry no connection state, and dedicated links
//! lent to one client at a time for commands that do (see `session::passthrough` for which).
//!
//! Links are opened on first use and replaced when lost. A dedicated link whose state has ended
//! cleanly (EXEC, a blocking command answered, `SELECT 0`) comes back to a small idle stash, so a
//! client looping on `XREAD BLOCK` does not reconnect for every read.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use super::pipeline::Pipeline;
use super::{Endpoint, UpstreamError};
use crate::metrics::{LinkKind, Metrics};
use crate::resp::Protocol;

pub struct Pool {
    endpoint: Endpoint,
    resp2: Vec<tokio::sync::Mutex<Option<Pipeline>>>,
    resp3: Vec<tokio::sync::Mutex<Option<Pipeline>>>,
    next: AtomicUsize,
    idle: Mutex<Vec<(Protocol, Pipeline)>>,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub fn new(endpoint: Endpoint, size: usize, metrics: Arc<Metrics>) -> Self {
        let slots = || {
            (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect()
        };
        Pool {
            endpoint,
            resp2: slots(),
            resp3: slots(),
            next: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// A pooled link in `proto`: the next one in turn, (re)connected if need be.
    pub async fn pooled(&self, proto: Protocol) -> Result<Pipeline, UpstreamError> {
        let slots = match proto {
            Protocol::Resp2 => &self.resp2,
            Protocol::Resp3 => &self.resp3,
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed) % slots.len();
        let mut slot = match slots[start].try_lock() {
            Ok(slot) => slot,
            Err(_) => {
                // Another client is (re)connecting this one: take any live link meanwhile.
                if let Some(link) = slots.iter().find_map(|s| {
                    s.try_lock()
                        .ok()
                        .and_then(|g| g.as_ref().filter(|l| l.is_alive()).cloned())
                }) {
                    return Ok(link);
                }
                slots[start].lock().await
            }
        };
        if let Some(link) = slot.as_ref().filter(|l| l.is_alive()) {
            return Ok(link.clone());
        }
        let link = self.open(proto, LinkKind::Pool).await?;
        *slot = Some(link.clone());
        Ok(link)
    }

    /// A link for one client alone: an idle one from the stash, or a new one.
    pub async fn dedicated(&self, proto: Protocol) -> Result<Pipeline, UpstreamError> {
        let stashed = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|(_, l)| l.is_alive());
            idle.iter()
                .position(|(p, _)| *p == proto)
                .map(|i| idle.swap_remove(i).1)
        };
        match stashed {
            Some(link) => Ok(link),
            None => self.open(proto, LinkKind::Dedicated).await,
        }
    }

    /// Takes back a dedicated link whose connection state is the pool's again (database, user,
    /// no transaction, nothing in flight); beyond the stash's size it is closed.
    pub fn give_back(&self, proto: Protocol, link: Pipeline) {
        if !link.is_alive() || link.load() > 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.resp2.len() {
            idle.push((proto, link));
        }
    }

    /// A link to the node at `addr` (a Redis Cluster named it in a redirection), with this
    /// pool's credentials and TLS settings.
    pub async fn open_to(
        &self,
        addr: &super::Addr,
        proto: Protocol,
    ) -> Result<Pipeline, UpstreamError> {
        let link = self.endpoint.connect_to(addr, proto, None).await?;
        Ok(Pipeline::start(
            link,
            self.metrics.upstream_links(LinkKind::Dedicated),
        ))
    }

    async fn open(&self, proto: Protocol, kind: LinkKind) -> Result<Pipeline, UpstreamError> {
        let link = self.endpoint.connect(proto, None).await?;
        Ok(Pipeline::start(link, self.metrics.upstream_links(kind)))
    }
}
