//! Replies the sidecar produces itself, encoded for the client's protocol the way Redis encodes
//! them: a map is a flat array in RESP2, a push frame is a plain array, and RESP2's two nulls
//! (`$-1` for a missing string, `*-1` for a missing array) are both `_` in RESP3.

use bytes::{BufMut, Bytes, BytesMut};

use super::Protocol;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    /// The whole error line, code included (`ERR ...`, `NOAUTH ...`).
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    NullBulk,
    NullArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    /// Out-of-band data (pub/sub messages and confirmations) in RESP3.
    Push(Vec<Reply>),
    /// Bytes already encoded for this client (a pass-through reply).
    Raw(Bytes),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Simple("OK".into())
    }
    pub fn simple(s: &str) -> Self {
        Reply::Simple(s.into())
    }
    pub fn error(s: impl Into<String>) -> Self {
        Reply::Error(s.into())
    }
    pub fn bulk(b: impl Into<Bytes>) -> Self {
        Reply::Bulk(b.into())
    }
    pub fn bulk_str(s: &str) -> Self {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// `ERR wrong number of arguments for 'cmd' command`, Redis's arity error.
    pub fn wrong_arity(command: &str) -> Self {
        Reply::error(format!(
            "ERR wrong number of arguments for '{command}' command"
        ))
    }

    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Reply::Simple(s) => text_line(out, b'+', s.as_bytes()),
            Reply::Error(s) => text_line(out, b'-', s.as_bytes()),
            Reply::Integer(i) => line(out, b':', i.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Reply::NullBulk if resp3 => out.put_slice(b"_\r\n"),
            Reply::NullBulk => out.put_slice(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::NullArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => aggregate(out, b'*', items, proto),
            Reply::Push(items) => aggregate(out, if resp3 { b'>' } else { b'*' }, items, proto),
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Raw(b) => out.put_slice(b),
        }
    }

    /// The reply as bytes for one protocol.
    pub fn to_bytes(&self, proto: Protocol) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(proto, &mut out);
        out.freeze()
    }
}

fn line(out: &mut BytesMut, kind: u8, body: &[u8]) {
    out.put_u8(kind);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

/// A status or error line. Its text often quotes what a client sent (`unknown subcommand 'x'`),
/// so line breaks become spaces, as Redis does: one reply is always exactly one frame, and a
/// client cannot make the sidecar answer with replies it did not make.
fn text_line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.put_u8(kind);
    out.reserve(text.len() + 2);
    for part in text.split_inclusive(|&b| b == b'\r' || b == b'\n') {
        match part.split_last() {
            Some((&(b'\r' | b'\n'), rest)) => {
                out.put_slice(rest);
                out.put_u8(b' ');
            }
            _ => out.put_slice(part),
        }
    }
    out.put_slice(b"\r\n");
}

fn aggregate(out: &mut BytesMut, kind: u8, items: &[Reply], proto: Protocol) {
    line(out, kind, items.len().to_string().as_bytes());
    for item in items {
        item.encode(proto, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::*;

    #[test]
    fn encodes_like_redis_in_both_protocols() {
        let push = Reply::Push(vec![
            Reply::bulk_str("subscribe"),
            Reply::bulk_str("a"),
            Reply::Integer(1),
        ]);
        assert_eq!(
            &push.to_bytes(Resp2)[..],
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
        );
        assert_eq!(
            &push.to_bytes(Resp3)[..],
            b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
        );
        let map = Reply::Map(vec![(Reply::bulk_str("proto"), Reply::Integer(3))]);
        assert_eq!(&map.to_bytes(Resp2)[..], b"*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(&map.to_bytes(Resp3)[..], b"%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(&Reply::NullBulk.to_bytes(Resp2)[..], b"$-1\r\n");
        assert_eq!(&Reply::NullArray.to_bytes(Resp2)[..], b"*-1\r\n");
        assert_eq!(&Reply::NullArray.to_bytes(Resp3)[..], b"_\r\n");
    }

    /// Found by the fuzzer: `CLIENT "x\r\n+OK"` made `-ERR unknown subcommand 'x` and then a
    /// second reply, `+OK'. Try CLIENT HELP.`, that the sidecar never sent.
    #[test]
    fn line_breaks_in_status_and_error_texts_become_spaces() {
        let e = Reply::error("ERR unknown subcommand 'x\r\n+OK'. Try CLIENT HELP.");
        for proto in [Resp2, Resp3] {
            assert_eq!(
                &e.to_bytes(proto)[..],
                b"-ERR unknown subcommand 'x  +OK'. Try CLIENT HELP.\r\n"
            );
        }
        assert_eq!(&Reply::simple("a\nb\r").to_bytes(Resp2)[..], b"+a b \r\n");
        assert_eq!(&Reply::simple("OK").to_bytes(Resp2)[..], b"+OK\r\n");
    }
}
