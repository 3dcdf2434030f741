//! Everything written to one local connection goes through its outbox, in order: command
//! replies and pub/sub messages share one queue, so a subscribe confirmation always precedes the
//! messages it enables.
//!
//! Memory is bounded per connection: a message that would take the queue past the limit is
//! dropped (counted and logged) rather than buffered, so one slow subscriber cannot exhaust the
//! pod; command replies are never dropped, instead the connection stops reading commands until
//! its queue drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;
use crate::resp::Protocol;

#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Bytes>,
    inner: Arc<Inner>,
}

/// The state the writer task shares; it holds no sender, so the queue closes when the last
/// `Outbox` is dropped.
struct Inner {
    id: u64,
    queued: AtomicUsize,
    limit: usize,
    resp3: AtomicU8,
    dropped: AtomicU64,
    drained: Notify,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// Creates the outbox and spawns the task that writes it to `socket`.
    pub fn spawn(id: u64, socket: OwnedWriteHalf, limit: usize, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Outbox {
            tx,
            inner: Arc::new(Inner {
                id,
                queued: AtomicUsize::new(0),
                limit,
                resp3: AtomicU8::new(0),
                dropped: AtomicU64::new(0),
                drained: Notify::new(),
                metrics,
            }),
        };
        tokio::spawn(write_loop(socket, rx, outbox.inner.clone()));
        outbox
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn protocol(&self) -> Protocol {
        if self.inner.resp3.load(Ordering::Relaxed) == 1 {
            Protocol::Resp3
        } else {
            Protocol::Resp2
        }
    }

    pub fn set_protocol(&self, proto: Protocol) {
        self.inner
            .resp3
            .store(u8::from(proto == Protocol::Resp3), Ordering::Relaxed);
    }

    /// Queues a reply to the connection's own command. Never dropped.
    pub fn reply(&self, frame: Bytes) {
        self.inner.queued.fetch_add(frame.len(), Ordering::Relaxed);
        let _ = self.tx.send(frame);
    }

    /// Queues a pub/sub message; returns false if it was dropped because the connection is not
    /// reading fast enough.
    pub fn message(&self, frame: Bytes) -> bool {
        let len = frame.len();
        let queued = self.inner.queued.load(Ordering::Relaxed);
        if queued + len > self.inner.limit {
            let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.messages_dropped_slow_client.inc();
            // The first drop and then every thousandth: visible without flooding the log.
            if dropped.is_multiple_of(1000) {
                tracing::warn!(
                    client = self.inner.id,
                    queued,
                    limit = self.inner.limit,
                    dropped_so_far = dropped + 1,
                    "dropping pub/sub messages for a local client that is not reading them fast enough (raise --client-buffer-bytes if it is only bursty)"
                );
            }
            return false;
        }
        self.inner.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.send(frame).is_ok()
    }

    /// Waits until the queue is under its limit, so a client that pipelines commands without
    /// reading replies cannot grow it without bound.
    pub async fn writable(&self) {
        loop {
            let drained = self.inner.drained.notified();
            if self.inner.queued.load(Ordering::Relaxed) <= self.inner.limit || self.tx.is_closed()
            {
                return;
            }
            drained.await;
        }
    }
}

async fn write_loop(
    socket: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Inner>,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, socket);
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        let mut written = 0;
        for frame in batch.drain(..) {
            written += frame.len();
            if out.write_all(&frame).await.is_err() {
                return;
            }
        }
        if out.flush().await.is_err() {
            return;
        }
        shared.queued.fetch_sub(written, Ordering::Relaxed);
        shared.drained.notify_waiters();
    }
    // Every sender is gone (the session ended and left every subscription): finish and close.
    let _ = out.shutdown().await;
}
