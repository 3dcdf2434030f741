//! One local application connection: reads commands, answers the ones the sidecar owns
//! (connection and pub/sub commands, see [`commands`]), and passes every other command through
//! to the backplane on this connection's own upstream link, so transactions, `WATCH` and
//! blocking commands behave exactly as on Redis.

pub mod commands;

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
use crate::upstream::{Endpoint, Link};

/// Connection ids, as `CLIENT ID` reports them.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What every session shares.
pub struct Context {
    pub relay: Arc<Relay>,
    pub upstream: Option<Endpoint>,
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
    db: i64,
    subs: Subscriptions,
    /// This connection's pass-through link, opened on the first command that needs it.
    passthrough: Option<Link>,
    /// Inside MULTI every command goes upstream, so EXEC runs them together.
    in_multi: bool,
}

/// Serves one connection until it closes, the client quits, or the sidecar shuts down.
pub async fn serve(stream: TcpStream, ctx: Arc<Context>, shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let (reader, writer) = stream.into_split();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let outbox = Outbox::spawn(id, writer, ctx.client_buffer_bytes, ctx.metrics.clone());
    let session = Session {
        id,
        authenticated: ctx.password.is_none(),
        ctx,
        outbox,
        proto: Protocol::Resp2,
        name: None,
        lib_name: None,
        lib_ver: None,
        db: 0,
        subs: Subscriptions::default(),
        passthrough: None,
        in_multi: false,
    };
    let span = tracing::debug_span!("client", id, ?peer);
    session.run(reader, shutdown).instrument(span).await;
}

impl Session {
    async fn run(mut self, mut reader: OwnedReadHalf, mut shutdown: watch::Receiver<bool>) {
        tracing::debug!("connected");
        // Twice the largest bulk: room for one full argument plus the rest of its command.
        let max_buffered = self.ctx.limits.max_bulk.saturating_mul(2).max(1 << 20);
        let mut buf = BytesMut::with_capacity(16 * 1024);
        'conn: loop {
            loop {
                match decode(&mut buf, &self.ctx.limits, self.authenticated) {
                    Ok(Decoded::Command(command)) => {
                        if self.handle(command).await == Flow::Close {
                            break 'conn;
                        }
                        self.outbox.writable().await;
                    }
                    Ok(Decoded::Skipped) => {}
                    Ok(Decoded::Incomplete { needed }) => {
                        if needed > max_buffered {
                            self.protocol_error(&format!("request of at least {needed} bytes is over the sidecar's limit of {max_buffered} (twice --max-bulk-bytes)"));
                            break 'conn;
                        }
                        buf.reserve(needed.saturating_sub(buf.len()));
                        break;
                    }
                    Err(e) => {
                        self.protocol_error(&e.0);
                        break 'conn;
                    }
                }
            }
            tokio::select! {
                read = reader.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => break 'conn,
                    Ok(_) => {}
                },
                _ = shutdown.changed() => break 'conn,
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
