//! One local application connection: reads commands, parses each once ([`command`]), answers
//! the ones the sidecar owns (connection and pub/sub commands, see [`commands`]), and passes
//! every other command through to the backplane ([`passthrough`]): pipelined on links shared by
//! every client when the command carries no connection state, on a link of its own while it does
//! (transactions, `WATCH`, blocking commands, another database or user), so they behave exactly
//! as on Redis.

pub mod command;
pub mod commands;
pub mod passthrough;
mod redirect;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::watch;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::pubsub::{Outbox, Subscriptions};
use crate::relay::Relay;
use crate::resp::request::{Decoded, decode};
use crate::resp::{Limits, Protocol};
use crate::upstream::routing::Routes;

use self::command::ReplyMode;
use self::passthrough::{Passthrough, Port};

/// Connection ids, as `CLIENT ID` reports them.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What every session shares.
pub struct Context {
    pub relay: Arc<Relay>,
    /// Pass-through links of every shard, and which one a command takes (shard 0, or on a
    /// Redis Cluster the primary of its key's slot); `None` when embedded.
    pub routes: Option<Arc<Routes>>,
    /// Pass-through commands one client may have unanswered before its reads pause.
    pub max_in_flight: usize,
    /// How long a command that cannot reach the backplane waits for it (a failover).
    pub passthrough_wait: std::time::Duration,
    pub password: Option<String>,
    pub channel_prefix: Bytes,
    pub limits: Limits,
    pub client_buffer_bytes: usize,
    pub metrics: Arc<Metrics>,
}

/// Whether to keep reading after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

pub struct Session {
    id: u64,
    ctx: Arc<Context>,
    outbox: Outbox,
    proto: Protocol,
    authenticated: bool,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    subs: Subscriptions,
    /// Which upstream link this connection's pass-through commands take, and its state there.
    pass: Passthrough,
    /// `CLIENT REPLY`: replies are dropped here, so every link still answers every command.
    reply_mode: ReplyMode,
    input: Input,
}

/// The connection's read side: what it sent and has not been handled yet.
pub(crate) struct Input {
    reader: OwnedReadHalf,
    buf: BytesMut,
    shutdown: watch::Receiver<bool>,
    /// The client closed its side; what it sent before is still answered.
    eof: bool,
}

/// The client is gone or the sidecar is stopping.
pub(crate) struct Gone;

impl Input {
    /// Reads whatever the client sent next.
    async fn fill(&mut self) -> Result<(), Gone> {
        if self.eof {
            return Err(Gone);
        }
        tokio::select! {
            read = self.reader.read_buf(&mut self.buf) => match read {
                Ok(0) | Err(_) => {
                    self.eof = true;
                    Err(Gone)
                }
                Ok(_) => Ok(()),
            },
            _ = self.shutdown.changed() => Err(Gone),
        }
    }
}

/// Serves one connection until it closes, the client quits, or the sidecar shuts down.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let (reader, writer) = stream.into_split();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let outbox = Outbox::spawn(id, writer, ctx.client_buffer_bytes, ctx.metrics.clone());
    let pass = Passthrough::new(Port::new(
        outbox.clone(),
        ctx.relay.clone(),
        ctx.routes.clone(),
        ctx.metrics.clone(),
    ));
    let session = Session {
        id,
        authenticated: ctx.password.is_none(),
        ctx,
        outbox,
        proto: Protocol::Resp2,
        name: None,
        lib_name: None,
        lib_ver: None,
        subs: Subscriptions::default(),
        pass,
        reply_mode: ReplyMode::On,
        input: Input {
            reader,
            buf: BytesMut::with_capacity(16 * 1024),
            shutdown,
            eof: false,
        },
    };
    let span = tracing::debug_span!("client", id, ?peer);
    session.run().instrument(span).await;
}

impl Session {
    async fn run(mut self) {
        tracing::debug!("connected");
        // Twice the largest bulk: room for one full argument plus the rest of its command.
        let max_buffered = self.ctx.limits.max_bulk.saturating_mul(2).max(1 << 20);
        'conn: loop {
            loop {
                match decode(&mut self.input.buf, &self.ctx.limits, self.authenticated) {
                    Ok(Decoded::Command(command)) => {
                        if self.handle(command).await == Flow::Close {
                            break 'conn;
                        }
                        self.outbox.writable().await;
                    }
                    Ok(Decoded::Skipped) => {}
                    Ok(Decoded::Incomplete { needed }) => {
                        if needed > max_buffered {
                            if self.settle().await.is_err() {
                                break 'conn;
                            }
                            self.protocol_error(&format!("request of at least {needed} bytes is over the sidecar's limit of {max_buffered} (twice --max-bulk-bytes)"));
                            break 'conn;
                        }
                        let buf = &mut self.input.buf;
                        buf.reserve(needed.saturating_sub(buf.len()));
                        break;
                    }
                    Err(e) => {
                        // After the replies to what came before it, as Redis would.
                        if self.settle().await.is_ok() {
                            self.protocol_error(&e.0);
                        }
                        break 'conn;
                    }
                }
            }
            if self.input.fill().await.is_err() {
                break 'conn;
            }
        }
        self.close().await;
        tracing::debug!("closed");
    }

    fn protocol_error(&mut self, message: &str) {
        self.ctx.metrics.protocol_errors.inc();
        tracing::warn!(
            client = self.id,
            error = message,
            "closing a local connection that sent a malformed or oversized command"
        );
        let e = crate::resp::ProtocolError(message.to_owned());
        self.outbox.reply(e.reply().to_bytes(self.proto));
    }

    /// Leaves every subscription; dropping the outbox then lets its writer flush and close.
    async fn close(&mut self) {
        let relay = self.ctx.relay.clone();
        relay.leave_all(&self.outbox, &mut self.subs).await;
    }
}
