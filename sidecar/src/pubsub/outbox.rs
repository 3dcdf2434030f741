//! Everything written to one local connection goes through its outbox, in order: command
//! replies and pub/sub messages share one queue, so a subscribe confirmation always precedes the
//! messages it enables.
//!
//! Memory is bounded per connection: a message that would take the queue past the limit is
//! dropped (counted and logged) rather than buffered, so one slow subscriber cannot exhaust the
//! pod; command replies are never dropped, instead the connection stops reading commands until
//! its queue drains.
//!
//! The fan-out path is cheap: queueing a frame is a push of a shared [`Bytes`] (a reference
//! count, no copy, no allocation once the queue has grown) under a short lock, and only the push
//! that finds the queue empty wakes the writer. The writer takes the whole queue at once, lets
//! go of the lock, and writes it with vectored writes, so a burst of messages costs one wake-up
//! and a few system calls, not one of each per message. No lock is held across a write.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::resp::Protocol;

/// Frames handed to one vectored write (Linux takes up to 1024).
const WRITE_SLICES: usize = 64;

/// One local connection's write queue. Clones share it; when the last clone is dropped the
/// writer sends what is queued and closes the connection.
#[derive(Clone)]
pub(crate) struct Outbox {
    handle: Arc<Handle>,
}

/// Closes the queue when the last [`Outbox`] goes (the writer task holds only [`Shared`]).
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

struct Shared {
    id: u64,
    limit: usize,
    resp3: AtomicU8,
    /// Bytes queued and not yet written.
    queued: AtomicUsize,
    dropped: AtomicU64,
    queue: Mutex<Queue>,
    /// Wakes the writer: notified by the push that finds the queue empty, and on close.
    wake: Notify,
    /// Wakes sessions waiting in [`Outbox::writable`].
    drained: Notify,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Queue {
    frames: Vec<Bytes>,
    /// Every `Outbox` is gone: write what is left and close.
    closed: bool,
    /// The connection failed: nothing queued from now on can be written.
    writer_gone: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves only a Vec of frames behind: still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame`; false if the connection is gone.
    fn push(&self, frame: Bytes) -> bool {
        let len = frame.len();
        let was_empty = {
            let mut q = self.lock();
            if q.writer_gone {
                return false;
            }
            let was_empty = q.frames.is_empty();
            q.frames.push(frame);
            was_empty
        };
        self.queued.fetch_add(len, Ordering::Relaxed);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }
}

impl Outbox {
    /// Creates the outbox and spawns the task that writes it to `socket`.
    pub(crate) fn spawn(
        id: u64,
        socket: OwnedWriteHalf,
        limit: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shared = Arc::new(Shared {
            id,
            limit,
            resp3: AtomicU8::new(0),
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            drained: Notify::new(),
            metrics,
        });
        tokio::spawn(write_loop(socket, shared.clone()));
        Outbox {
            handle: Arc::new(Handle { shared }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    pub(crate) fn id(&self) -> u64 {
        self.shared().id
    }

    pub(crate) fn protocol(&self) -> Protocol {
        if self.shared().resp3.load(Ordering::Relaxed) == 1 {
            Protocol::Resp3
        } else {
            Protocol::Resp2
        }
    }

    pub(crate) fn set_protocol(&self, proto: Protocol) {
        self.shared()
            .resp3
            .store(u8::from(proto == Protocol::Resp3), Ordering::Relaxed);
    }

    /// Queues a reply to the connection's own command. Never dropped.
    pub(crate) fn reply(&self, frame: Bytes) {
        self.shared().push(frame);
    }

    /// Queues a pub/sub message; returns false if it was dropped because the connection is not
    /// reading fast enough (or is gone).
    pub(crate) fn message(&self, frame: Bytes) -> bool {
        let shared = self.shared();
        let len = frame.len();
        let queued = shared.queued.load(Ordering::Relaxed);
        if queued + len > shared.limit {
            let dropped = shared.dropped.fetch_add(1, Ordering::Relaxed);
            shared.metrics.messages_dropped_slow_client.inc();
            // The first drop and then every thousandth: visible without flooding the log.
            if dropped.is_multiple_of(1000) {
                tracing::warn!(
                    client = shared.id,
                    queued,
                    limit = shared.limit,
                    dropped_so_far = dropped + 1,
                    "dropping pub/sub messages for a local client that is not reading them fast enough (raise --client-buffer-bytes if it is only bursty)"
                );
            }
            return false;
        }
        shared.push(frame)
    }

    /// Waits until the queue is under its limit, so a client that pipelines commands without
    /// reading replies cannot grow it without bound.
    pub(crate) async fn writable(&self) {
        let shared = self.shared();
        loop {
            let drained = shared.drained.notified();
            if shared.queued.load(Ordering::Relaxed) <= shared.limit || shared.lock().writer_gone {
                return;
            }
            drained.await;
        }
    }
}

async fn write_loop(mut socket: OwnedWriteHalf, shared: Arc<Shared>) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    loop {
        let closed = {
            let mut q = shared.lock();
            std::mem::swap(&mut q.frames, &mut batch);
            q.closed
        };
        if batch.is_empty() {
            if closed {
                break;
            }
            shared.wake.notified().await;
            continue;
        }
        let written: usize = batch.iter().map(Bytes::len).sum();
        let ok = write_all(&mut socket, &mut batch).await;
        batch.clear();
        shared.queued.fetch_sub(written, Ordering::Relaxed);
        shared.drained.notify_waiters();
        if !ok {
            let mut q = shared.lock();
            q.writer_gone = true;
            let left: usize = q.frames.drain(..).map(|f| f.len()).sum();
            drop(q);
            shared.queued.fetch_sub(left, Ordering::Relaxed);
            shared.drained.notify_waiters();
            return;
        }
    }
    // Every outbox is gone (the session ended and left every subscription): close.
    let _ = socket.shutdown().await;
}

/// Writes every frame, in order, a vectored write of up to [`WRITE_SLICES`] frames at a time;
/// false if the connection failed. Consumes the frames' contents (partial writes advance them).
async fn write_all(socket: &mut OwnedWriteHalf, frames: &mut [Bytes]) -> bool {
    let mut first = 0;
    while first < frames.len() {
        let n = {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(&frames[first..]) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            match socket.write_vectored(&slices[..count]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            }
        };
        let mut left = n;
        while left > 0 {
            let frame = &mut frames[first];
            let take = left.min(frame.len());
            frame.advance(take);
            left -= take;
            if frame.is_empty() {
                first += 1;
            }
        }
        // Skip empty frames, which a vectored write cannot advance past on its own.
        while first < frames.len() && frames[first].is_empty() {
            first += 1;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair(limit: usize) -> (Outbox, TcpStream, Arc<Metrics>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, write) = server.into_split();
        let metrics = Arc::new(Metrics::default());
        (
            Outbox::spawn(7, write, limit, metrics.clone()),
            client,
            metrics,
        )
    }

    #[tokio::test]
    async fn frames_arrive_in_order_and_the_last_clone_closes() {
        let (outbox, mut client, _) = pair(1 << 20).await;
        let other = outbox.clone();
        let mut expected = Vec::new();
        for i in 0..10_000 {
            let frame = Bytes::from(format!("frame {i};"));
            expected.extend_from_slice(&frame);
            if i % 2 == 0 {
                outbox.reply(frame);
            } else {
                assert!(other.message(frame));
            }
        }
        outbox.reply(Bytes::new());
        drop(outbox);
        drop(other);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
            .await
            .expect("closed after the last frame")
            .unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn messages_over_the_limit_are_dropped_and_counted_replies_never() {
        // The client never reads: the kernel's socket buffers fill, then the queue.
        let (outbox, _client, metrics) = pair(64 * 1024).await;
        let frame = Bytes::from(vec![b'x'; 16 * 1024]);
        let mut dropped = 0u64;
        for i in 0..20_000 {
            if !outbox.message(frame.clone()) {
                dropped += 1;
            }
            if i % 4 == 0 {
                // Lets the writer move what it can into the socket.
                tokio::task::yield_now().await;
            }
        }
        assert!(dropped > 0, "a client that does not read loses messages");
        assert_eq!(metrics.messages_dropped_slow_client.get(), dropped);
        let before = outbox.shared().queued.load(Ordering::Relaxed);
        outbox.reply(frame.clone());
        assert_eq!(
            outbox.shared().queued.load(Ordering::Relaxed),
            before + frame.len(),
            "a reply is queued even over the limit"
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(200), outbox.writable())
                .await
                .is_err(),
            "and the session stops reading commands"
        );
    }
}
