//! One upstream link shared by many callers, pipelined: commands are written in the order they
//! are sent, and because Redis answers a connection's commands in order, the n-th reply frame
//! belongs to the n-th command written. Each command carries its [`Sink`], the place its reply
//! goes (a local client's outbox, a caller waiting for it, or nowhere).
//!
//! Two tasks per link: a writer that batches whatever is queued into one write, and a reader that
//! hands each frame to the sink at the head of the queue. When the link is lost, every command
//! written and not yet answered is answered with an error saying it may or may not have run, and
//! every command not yet written with an error saying it was not run — in order, so a client that
//! reads its replies in order still reads one reply per command.
//!
//! This module owns the wire of one link; which link a command takes is decided by the session
//! (see `session::passthrough`) and [`super::pool`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Link, UpstreamError};
use crate::resp::{Protocol, Reply};

/// Where a local client's pass-through replies go: the session implements it over its outbox.
pub trait Recipient: Send + Sync {
    /// One reply frame, already encoded in the client's protocol (errors made here are simple
    /// errors, the same bytes in RESP2 and RESP3). `silent` replies are counted but not written
    /// (`CLIENT REPLY OFF|SKIP`).
    fn deliver(&self, frame: Bytes, silent: bool);

    /// A Redis Cluster's `-MOVED` or `-ASK` answer to `command`, sent with `follow`: the
    /// recipient runs it again where the cluster says and delivers that reply in its place.
    fn redirected(&self, command: Bytes, frame: Bytes, silent: bool, proto: Protocol) {
        let _ = (command, proto);
        self.deliver(frame, silent);
    }
}

/// Where one command's reply goes.
pub enum Sink {
    /// To a local client, in order with its other replies.
    Client {
        to: Arc<dyn Recipient>,
        silent: bool,
        /// On a Redis Cluster, for a command that holds no connection state: the protocol of
        /// the link, in which a redirected command is run again (see [`Recipient::redirected`]).
        follow: Option<Protocol>,
    },
    /// To a caller that reads the reply before deciding what comes next (MULTI, SELECT, AUTH):
    /// `Ok(frame)`, or `Err(error frame)` when the link was lost.
    Caller(oneshot::Sender<Result<Bytes, Bytes>>),
    /// Nowhere (a `HELLO` the session sends to keep a link in the client's protocol).
    Discard,
}

impl Sink {
    fn reply(self, command: Bytes, frame: Bytes) {
        match self {
            Sink::Client {
                to,
                silent,
                follow: Some(proto),
            } if is_redirect(&frame) => to.redirected(command, frame, silent, proto),
            Sink::Client { to, silent, .. } => to.deliver(frame, silent),
            Sink::Caller(tx) => {
                let _ = tx.send(Ok(frame));
            }
            Sink::Discard => {}
        }
    }

    fn fail(self, frame: Bytes) {
        match self {
            Sink::Client { to, silent, .. } => to.deliver(frame, silent),
            Sink::Caller(tx) => {
                let _ = tx.send(Err(frame));
            }
            Sink::Discard => {}
        }
    }
}

struct Call {
    raw: Bytes,
    sink: Sink,
}

/// Commands written and waiting for their replies, oldest first; `lost` once the link is gone.
#[derive(Default)]
struct Pending {
    queue: VecDeque<(Bytes, Sink)>,
    lost: bool,
}

struct State {
    /// Sinks are answered under this lock, by the reader in order or on loss all at once, so a
    /// loss can never overtake a reply that was already read.
    pending: Mutex<Pending>,
    alive: AtomicBool,
    /// Commands sent and not yet answered, for picking the least busy link.
    load: AtomicUsize,
    stop_writer: Notify,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the link; keep serving.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the link lost and answers everything written with "may or may not have run".
    fn lose(&self, why: &str) {
        let mut pending = self.lock();
        if !pending.lost {
            pending.lost = true;
            for (raw, sink) in pending.queue.drain(..) {
                self.load.fetch_sub(1, Ordering::Relaxed);
                sink.fail(in_flight_error(&raw, why));
            }
        }
        // Set after the queue is answered: whoever sees the link dead also sees those answers.
        self.alive.store(false, Ordering::Release);
        drop(pending);
        self.stop_writer.notify_one();
    }
}

/// A handle to a pipelined link; clones share it. The link closes when the last handle is
/// dropped and every queued command has been written.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::UnboundedSender<Call>,
    state: Arc<State>,
}

impl Pipeline {
    /// Takes over a connected link. `open` counts it (by kind) until it closes.
    pub fn start(link: Link, open: Gauge) -> Self {
        let (reader, mut writer) = link.into_parts();
        let (tx, mut rx) = mpsc::unbounded_channel::<Call>();
        let state = Arc::new(State {
            pending: Mutex::new(Pending::default()),
            alive: AtomicBool::new(true),
            load: AtomicUsize::new(0),
            stop_writer: Notify::new(),
        });
        open.inc();
        let reading = state.clone();
        tokio::spawn(async move {
            let mut reader = reader;
            let why = loop {
                match reader.next_frame().await {
                    // Nothing asked for a push on a request link (no SUBSCRIBE or tracking is ever
                    // sent on one); it must not be taken for a reply.
                    Ok(frame) if frame.first() == Some(&b'>') => {}
                    Ok(frame) => {
                        let mut pending = reading.lock();
                        match pending.queue.pop_front() {
                            Some((command, sink)) => {
                                reading.load.fetch_sub(1, Ordering::Relaxed);
                                sink.reply(command, frame);
                            }
                            None => {
                                break "the backplane sent a reply nothing asked for".to_owned();
                            }
                        }
                    }
                    Err(e) => break e.to_string(),
                }
            };
            reading.lose(&why);
            open.dec();
        });
        let writing = state.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            let mut out = Vec::with_capacity(16 * 1024);
            let why = loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, 256) => if n == 0 { break None },
                    () = writing.stop_writer.notified() => break None,
                }
                {
                    let mut pending = writing.lock();
                    if pending.lost {
                        drop(pending);
                        for call in batch.drain(..) {
                            writing.load.fetch_sub(1, Ordering::Relaxed);
                            call.sink
                                .fail(not_run_error(&call.raw, "the link was lost"));
                        }
                        break None;
                    }
                    for call in batch.drain(..) {
                        out.extend_from_slice(&call.raw);
                        pending.queue.push_back((call.raw, call.sink));
                    }
                }
                if let Err(e) = writer.send(&out).await {
                    break Some(UpstreamError::Io(e).to_string());
                }
                out.clear();
                // One large value must not pin its size on the link for good.
                if out.capacity() > 1 << 20 {
                    out.shrink_to(16 * 1024);
                }
            };
            if let Some(why) = why {
                writing.lose(&why);
            }
            // Whatever is still queued was never written.
            rx.close();
            while let Ok(call) = rx.try_recv() {
                writing.load.fetch_sub(1, Ordering::Relaxed);
                call.sink.fail(not_run_error(
                    &call.raw,
                    "the backplane connection was lost",
                ));
            }
            let _ = writer.shutdown().await;
        });
        Pipeline { tx, state }
    }

    /// Queues a command; its reply goes to `sink`. A dead link hands both back, unanswered:
    /// the command was not sent.
    pub fn send(&self, raw: Bytes, sink: Sink) -> Result<(), (Bytes, Sink)> {
        if !self.is_alive() {
            return Err((raw, sink));
        }
        self.state.load.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Call { raw, sink }).map_err(|e| {
            self.state.load.fetch_sub(1, Ordering::Relaxed);
            (e.0.raw, e.0.sink)
        })
    }

    /// Sends a command and waits for its reply frame (`Err`: the link was lost, as an error frame).
    pub async fn call(&self, raw: Bytes) -> Result<Bytes, Bytes> {
        let (tx, rx) = oneshot::channel();
        let name = name_of(&raw);
        if let Err((raw, _)) = self.send(raw, Sink::Caller(tx)) {
            return Err(not_run_error(&raw, "the backplane connection was lost"));
        }
        rx.await.unwrap_or_else(|_| {
            Err(Reply::error(format!(
                "ERR switchboard: lost the backplane connection while running '{name}'; it may or may not have run: the link closed"
            ))
            .to_bytes(crate::resp::Protocol::Resp2))
        })
    }

    pub fn is_alive(&self) -> bool {
        self.state.alive.load(Ordering::Acquire)
    }

    /// Commands sent on this link and not yet answered.
    pub fn load(&self) -> usize {
        self.state.load.load(Ordering::Relaxed)
    }
}

/// A Redis Cluster redirection: `-MOVED <slot> <host:port>` or `-ASK <slot> <host:port>`.
pub fn is_redirect(frame: &[u8]) -> bool {
    frame.starts_with(b"-MOVED ") || frame.starts_with(b"-ASK ")
}

/// The command's name, for error texts (`GET`, `BLPOP`), read from its multibulk encoding.
pub(crate) fn name_of(raw: &[u8]) -> String {
    let mut lines = raw.split(|&b| b == b'\n').skip(2);
    let name = lines.next().unwrap_or_default();
    let name = name.strip_suffix(b"\r").unwrap_or(name);
    String::from_utf8_lossy(&name[..name.len().min(64)]).to_ascii_lowercase()
}

/// The reply to a command that was written to a link that was then lost before it answered.
pub fn in_flight_error(raw: &[u8], why: &str) -> Bytes {
    Reply::error(format!(
        "ERR switchboard: lost the backplane connection while running '{}'; it may or may not have run: {why}",
        name_of(raw)
    ))
    .to_bytes(crate::resp::Protocol::Resp2)
}

/// The reply to a command that never reached the backplane.
pub fn not_run_error(raw: &[u8], why: &str) -> Bytes {
    Reply::error(format!(
        "ERR switchboard: '{}' was not run: {why}",
        name_of(raw)
    ))
    .to_bytes(crate::resp::Protocol::Resp2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_name_the_command() {
        let raw = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
        assert_eq!(name_of(raw), "get");
        let e = in_flight_error(raw, "closed");
        assert!(e.starts_with(b"-ERR switchboard: lost the backplane connection while running 'get'; it may or may not have run"), "{e:?}");
        assert!(not_run_error(raw, "x").ends_with(b"'get' was not run: x\r\n"));
        assert_eq!(name_of(b""), "");
    }
}
