//! The Redis protocol: what the sidecar reads from applications and upstream, and what it writes.
//!
//! - [`request`] decodes commands from local clients (multibulk and inline), under [`Limits`];
//! - [`value`] finds and parses reply frames coming back from upstream Redis (RESP2 and RESP3);
//! - [`reply`] builds and encodes the replies the sidecar itself produces, in either protocol.
//!
//! Nothing here does I/O: the functions take buffers and return frames, so they are fuzzed and
//! unit-tested byte for byte.

pub mod reply;
pub mod request;
pub mod value;

pub use reply::Reply;
pub use request::Command;
pub use value::Value;

/// The protocol a connection speaks; `HELLO` switches it, `RESET` returns to RESP2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// Bounds on what a peer may make the sidecar buffer. Redis's own limits are far looser
/// (512 MB bulks); a sidecar shares the pod's memory with the application, so it is stricter and
/// names the setting in the error.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string.
    pub max_bulk: usize,
    /// Most elements in one array, map, set or push.
    pub max_elements: usize,
    /// Deepest nesting of aggregates (requests are flat; replies such as XREAD nest a few levels).
    pub max_depth: usize,
}

impl Limits {
    /// Limits for replies from upstream Redis, which the sidecar trusts more than local input but
    /// must still not let a corrupt stream exhaust memory.
    pub fn for_upstream(max_bulk: usize) -> Self {
        Limits {
            max_bulk,
            max_elements: 64 << 20,
            max_depth: 64,
        }
    }
}

/// Bytes that cannot be a frame. The connection cannot be resynchronised after one, so the
/// caller replies with the message (as Redis does) and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    /// The `-ERR Protocol error: ...` reply Redis sends before closing the connection.
    pub fn reply(&self) -> Reply {
        Reply::error(format!("ERR {self}"))
    }
}

/// Writes an aggregate of bulk strings: `*` for commands and RESP2 messages, `>` for RESP3 pushes.
/// Lengths are formatted straight into the buffer (no temporary strings on the hot path).
pub fn write_bulks<P: AsRef<[u8]>>(out: &mut bytes::BytesMut, marker: u8, parts: &[P]) {
    use bytes::BufMut;
    use std::fmt::Write;
    let size: usize = parts.iter().map(|p| p.as_ref().len() + 16).sum();
    out.reserve(size + 16);
    out.put_u8(marker);
    let _ = write!(out, "{}\r\n", parts.len());
    for part in parts {
        let part = part.as_ref();
        let _ = write!(out, "${}\r\n", part.len());
        out.put_slice(part);
        out.put_slice(b"\r\n");
    }
}

/// Redis accepts at most this many bytes of an inline command or a length header before a line
/// ends (`PROTO_INLINE_MAX_SIZE`).
pub const INLINE_MAX: usize = 64 * 1024;

/// Finds `\r\n` from `from`, returning the index of `\r`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.windows(2).position(|w| w == b"\r\n").map(|i| from + i)
}

/// Parses a decimal integer the way Redis's `string2ll` does: optional `-`, digits only, no `+`,
/// no leading zeros except "0", no overflow.
pub(crate) fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, body) = match digits.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, digits),
    };
    if body.is_empty() || body.len() > 19 || (body.len() > 1 && body[0] == b'0') {
        return None;
    }
    let mut v: i64 = 0;
    for &d in body {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    if neg {
        if v == 0 {
            return None;
        }
        Some(-v)
    } else {
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_like_redis() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b"01",
            b"1a",
            b" 1",
            b"-0",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }
}
