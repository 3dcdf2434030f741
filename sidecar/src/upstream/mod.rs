//! Connections to the backplane Redis: where it is ([`endpoint`], found through Sentinel when the
//! URL says so, see [`sentinel`]), the handshake, and a framed reader of its replies. The relay's
//! subscriber and control links and the pass-through links ([`pool`] of [`pipeline`]s) are all
//! built from these.

pub mod cluster;
pub mod endpoint;
pub mod pipeline;
pub mod pool;
pub mod routing;
mod sentinel;
pub mod tls;

pub use endpoint::{Addr, Endpoint, Target};
pub use tls::{ReadHalf, Tls, TlsOptions, WriteHalf};

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::resp::{Command, Limits, Protocol, ProtocolError, Value, value};

/// How long establishing a connection (TCP and handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("connecting to {0} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout(String),
    #[error("{endpoint} refused the handshake: {message}")]
    Handshake { endpoint: String, message: String },
    #[error("cannot reach {endpoint}: {reason}")]
    Tls { endpoint: String, reason: String },
    #[error("connection to the backplane failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the backplane closed the connection")]
    Closed,
    #[error("the backplane sent a malformed reply: {0}")]
    Protocol(#[from] ProtocolError),
    #[error(
        "no Sentinel of {endpoint} answered ({failures}); check the hosts and --upstream-password"
    )]
    NoSentinel { endpoint: String, failures: String },
    #[error(
        "no Sentinel of {endpoint} knows a master named {master:?} ({failures}); check the name after the hosts"
    )]
    UnknownMaster {
        endpoint: String,
        master: String,
        failures: String,
    },
    #[error(
        "{addr}, named primary of {endpoint} by its Sentinels or cluster, says it is a {role} (a failover is under way)"
    )]
    NotPrimary {
        endpoint: String,
        addr: Addr,
        role: String,
    },
    #[error(
        "{addr}, a seed of {endpoint}, is not a Redis Cluster node (cluster support disabled): use redis:// or rediss:// for a single server"
    )]
    NotCluster { endpoint: String, addr: Addr },
    #[error(
        "no seed of {endpoint} gave its slot map ({failures}); check the hosts and --upstream-password"
    )]
    NoClusterSeed { endpoint: String, failures: String },
}

impl Endpoint {
    /// Where the primary is right now: the URL's server, or the one the Sentinels name.
    pub async fn resolve(&self) -> Result<Addr, UpstreamError> {
        match &self.target {
            Target::Direct(addr) => Ok(addr.clone()),
            Target::Sentinel {
                sentinels,
                master,
                preferred,
            } => sentinel::primary(self, sentinels, master, preferred).await,
            Target::Cluster {
                seeds,
                shard,
                preferred,
            } => {
                let slot = shard
                    .as_ref()
                    .and_then(|(i, map)| map.first_slot(*i))
                    .unwrap_or(0);
                cluster::primary_of(self, seeds, slot, preferred).await
            }
        }
    }

    /// Resolves and connects: each pass-through link (pooled or dedicated).
    pub async fn connect(
        &self,
        proto: Protocol,
        name: Option<&str>,
    ) -> Result<Link, UpstreamError> {
        let addr = self.resolve().await?;
        self.connect_to(&addr, proto, name).await
    }

    /// Connects to `addr` and performs the handshake: `HELLO 3` (with credentials) for a RESP3
    /// link, otherwise `AUTH`; then `SELECT` the URL's database, and name the connection so
    /// operators can tell the sidecar's links apart in `CLIENT LIST`. Behind Sentinel or in a cluster, also
    /// checks `ROLE`: a demoted primary still accepts `PUBLISH` and `SUBSCRIBE` but would cut
    /// this sidecar off from the fleet, so a replica is refused (the caller re-resolves).
    pub async fn connect_to(
        &self,
        addr: &Addr,
        proto: Protocol,
        name: Option<&str>,
    ) -> Result<Link, UpstreamError> {
        let endpoint = self.to_string();
        let connecting = async {
            let mut link = self.dial(addr).await?;
            let mut handshake: Vec<Command> = Vec::new();
            let user = self.username.clone().unwrap_or_else(|| "default".into());
            match (proto, &self.password) {
                (Protocol::Resp3, Some(pw)) => {
                    handshake.push(command(&["HELLO", "3", "AUTH", &user, pw]))
                }
                (Protocol::Resp3, None) => handshake.push(command(&["HELLO", "3"])),
                (Protocol::Resp2, Some(pw)) => handshake.push(command(&["AUTH", &user, pw])),
                (Protocol::Resp2, None) => {}
            }
            if self.db != 0 {
                handshake.push(command(&["SELECT", &self.db.to_string()]));
            }
            if let Some(name) = name {
                handshake.push(command(&["CLIENT", "SETNAME", name]));
            }
            for command in handshake {
                if let Value::Error(e) = link.call(&command.raw).await? {
                    return Err(UpstreamError::Handshake {
                        endpoint: format!("{endpoint} at {addr}"),
                        message: String::from_utf8_lossy(&e).into_owned(),
                    });
                }
            }
            if self.checks_role() {
                let role = link.call(&command(&["ROLE"]).raw).await?;
                let role = role
                    .as_elements()
                    .and_then(|r| r.first())
                    .and_then(Value::as_bytes)
                    .map(|r| String::from_utf8_lossy(r).into_owned())
                    .unwrap_or_else(|| format!("{role:?}"));
                if role != "master" {
                    return Err(UpstreamError::NotPrimary {
                        endpoint: endpoint.clone(),
                        addr: addr.clone(),
                        role,
                    });
                }
            }
            Ok(link)
        };
        let Ok(connected) = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await else {
            if self.tls.is_some() {
                // A plain server waits for the end of a command line the TLS hello never sends.
                return Err(UpstreamError::Tls {
                    endpoint: format!("{self} at {addr}"),
                    reason: format!(
                        "no TLS answer within {CONNECT_TIMEOUT:?}; is this its TLS port? (redis:// is for plain ports)"
                    ),
                });
            }
            return Err(UpstreamError::ConnectTimeout(format!("{self} at {addr}")));
        };
        connected.map_err(|e| self.name_tls_error(e, addr))
    }

    /// A TLS alert during the handshake's commands (a client certificate refused) is an I/O
    /// error of the first read: named like a failed TLS handshake.
    fn name_tls_error(&self, e: UpstreamError, addr: &Addr) -> UpstreamError {
        let Some(tls) = &self.tls else {
            return e;
        };
        match e {
            UpstreamError::Io(io) => match tls::explain(&io, &tls.checked_name(&addr.host)) {
                Some(reason) => UpstreamError::Tls {
                    endpoint: format!("{self} at {addr}"),
                    reason,
                },
                None => UpstreamError::Io(io),
            },
            other => other,
        }
    }

    /// Opens a connection to `addr`: TCP, then TLS when the URL is `rediss://`.
    pub(crate) async fn dial(&self, addr: &Addr) -> Result<Link, UpstreamError> {
        let at = || format!("{self} at {addr}");
        let stream = TcpStream::connect((addr.host.as_str(), addr.port))
            .await
            .map_err(|source| UpstreamError::Connect {
                endpoint: at(),
                source,
            })?;
        stream.set_nodelay(true)?;
        let (reader, writer) = match &self.tls {
            None => tls::split_plain(stream),
            Some(tls) => {
                let stream = tls.handshake(stream, &addr.host).await.map_err(|reason| {
                    UpstreamError::Tls {
                        endpoint: at(),
                        reason,
                    }
                })?;
                tls::split_tls(stream)
            }
        };
        Ok(Link::new(reader, writer))
    }
}

/// A command from borrowed strings.
pub fn command(args: &[&str]) -> Command {
    Command::from_args(
        args.iter()
            .map(|a| bytes::Bytes::copy_from_slice(a.as_bytes())),
    )
}

/// Reads whole reply frames from a stream. Cancel-safe: a partial frame stays in the buffer, so
/// `next_frame` can sit in a `select!`.
pub struct FrameReader<R> {
    reader: R,
    buf: BytesMut,
    limits: Limits,
}

impl<R: AsyncReadExt + Unpin> FrameReader<R> {
    pub fn new(reader: R, limits: Limits) -> Self {
        FrameReader {
            reader,
            buf: BytesMut::with_capacity(16 * 1024),
            limits,
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The raw bytes of the next reply frame.
    pub async fn next_frame(&mut self) -> Result<Bytes, UpstreamError> {
        loop {
            if let Some(len) = value::frame_len(&self.buf, &self.limits)? {
                return Ok(self.buf.split_to(len).freeze());
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }

    /// The next reply frame, parsed.
    pub async fn next_value(&mut self) -> Result<Value, UpstreamError> {
        let frame = self.next_frame().await?;
        Ok(value::parse(&frame)?)
    }
}

/// One request/response connection: the handshake; pass-through links are [`pipeline`]s built on one.
pub struct Link {
    reader: FrameReader<ReadHalf>,
    writer: WriteHalf,
}

impl Link {
    fn new(r: ReadHalf, w: WriteHalf) -> Self {
        // Replies to pass-through commands may be large (HGETALL, LRANGE): only a corrupt stream
        // should hit these.
        Link {
            reader: FrameReader::new(r, Limits::for_upstream(512 << 20)),
            writer: w,
        }
    }

    /// Sends one command and returns its raw reply frame.
    pub async fn forward(&mut self, command: &[u8]) -> Result<Bytes, UpstreamError> {
        self.writer.send(command).await?;
        self.reader.next_frame().await
    }

    pub async fn call(&mut self, command: &[u8]) -> Result<Value, UpstreamError> {
        let frame = self.forward(command).await?;
        Ok(value::parse(&frame)?)
    }

    /// The server's `run_id` (`INFO server`): tells one server from another across restarts and
    /// failovers, which its address cannot.
    pub async fn server_id(&mut self) -> Result<Bytes, UpstreamError> {
        let info = self.call(&command(&["INFO", "server"]).raw).await?;
        info.as_bytes()
            .or(match &info {
                Value::Other(b) => Some(b),
                _ => None,
            })
            .and_then(|text| {
                text.split(|&b| b == b'\n')
                    .find_map(|line| line.strip_prefix(b"run_id:"))
                    .map(|id| Bytes::copy_from_slice(id.trim_ascii()))
            })
            .ok_or_else(|| {
                UpstreamError::Protocol(ProtocolError(format!(
                    "INFO server has no run_id: {info:?}"
                )))
            })
    }

    /// Splits into a frame reader and the write half, for the relay's long-lived links.
    pub fn into_parts(self) -> (FrameReader<ReadHalf>, WriteHalf) {
        (self.reader, self.writer)
    }
}
