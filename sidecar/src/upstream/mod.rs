//! Connections to the backplane Redis: where it is ([`Endpoint`]), the handshake, and a framed
//! reader of its replies. The relay's subscriber and control links and each client's
//! pass-through link are all built from these.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

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
    #[error("connection to the backplane failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the backplane closed the connection")]
    Closed,
    #[error("the backplane sent a malformed reply: {0}")]
    Protocol(#[from] ProtocolError),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}: {reason}")]
pub struct EndpointError {
    url: String,
    reason: String,
}

/// A Redis server to connect to, parsed from a `redis://` URL.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl fmt::Display for Endpoint {
    /// The URL without credentials: safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}:{}", self.host, self.port)?;
        if self.db != 0 {
            write!(f, "/{}", self.db)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let fail = |reason: &str| EndpointError {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let info = url
            .into_connection_info()
            .map_err(|e| fail(&e.to_string()))?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            ConnectionAddr::TcpTls { .. } => {
                return Err(fail(
                    "rediss:// (TLS) is not supported by this sidecar version yet; use redis:// inside the cluster network",
                ));
            }
            _ => return Err(fail("expected redis://host:port")),
        };
        let settings = info.redis_settings();
        Ok(Endpoint {
            host,
            port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
        })
    }

    /// Connects and performs the handshake: `HELLO 3` (with credentials) for a RESP3 link,
    /// otherwise `AUTH`; then `SELECT` the URL's database, and name the connection so operators
    /// can tell the sidecar's links apart in `CLIENT LIST`.
    pub async fn connect(
        &self,
        proto: Protocol,
        name: Option<&str>,
    ) -> Result<Link, UpstreamError> {
        let endpoint = self.to_string();
        let connecting = async {
            let stream = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|source| UpstreamError::Connect {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            stream.set_nodelay(true)?;
            let mut link = Link::new(stream);
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
                        endpoint: endpoint.clone(),
                        message: String::from_utf8_lossy(&e).into_owned(),
                    });
                }
            }
            Ok(link)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.to_string()))?
    }
}

/// A command from borrowed strings.
pub fn command(args: &[&str]) -> Command {
    Command::from_args(
        args.iter()
            .map(|a| bytes::Bytes::copy_from_slice(a.as_bytes())),
    )
}

/// Hides the password in a URL for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
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

/// One request/response connection: the handshake and each client's pass-through link.
pub struct Link {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Link {
    fn new(stream: TcpStream) -> Self {
        let (r, w) = stream.into_split();
        // Replies to pass-through commands may be large (HGETALL, LRANGE): only a corrupt stream
        // should hit these.
        Link {
            reader: FrameReader::new(r, Limits::for_upstream(512 << 20)),
            writer: w,
        }
    }

    /// Sends one command and returns its raw reply frame.
    pub async fn forward(&mut self, command: &[u8]) -> Result<Bytes, UpstreamError> {
        self.writer.write_all(command).await?;
        self.reader.next_frame().await
    }

    pub async fn call(&mut self, command: &[u8]) -> Result<Value, UpstreamError> {
        let frame = self.forward(command).await?;
        Ok(value::parse(&frame)?)
    }

    /// Splits into a frame reader and the write half, for the relay's long-lived links.
    pub fn into_parts(self) -> (FrameReader<OwnedReadHalf>, OwnedWriteHalf) {
        (self.reader, self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_never_shows_the_password() {
        let e = Endpoint::parse("redis://:s3cret@backplane.apps.svc:6380/2").unwrap();
        assert_eq!(e.to_string(), "redis://backplane.apps.svc:6380/2");
        assert_eq!(e.password.as_deref(), Some("s3cret"));
        assert!(!format!("{e:?}").contains("s3cret"));
        let err = Endpoint::parse("http://user:s3cret@x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(
            Endpoint::parse("rediss://x:6379")
                .unwrap_err()
                .to_string()
                .contains("TLS")
        );
    }
}
