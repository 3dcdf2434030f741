//! Reply frames from upstream Redis, RESP2 and RESP3.
//!
//! [`frame_len`] finds where the next whole frame ends without allocating (pass-through replies
//! are forwarded as those exact bytes); [`parse`] turns a complete frame into a [`Value`] for the
//! few connections whose replies the sidecar reads itself (its subscriber and control links).

use bytes::Bytes;

use super::{Limits, ProtocolError, find_crlf, parse_int};

/// A parsed reply. Strings stay as bytes: payloads are binary (msgpack, pickle).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Bytes),
    /// RESP2 `$-1` / `*-1` and RESP3 `_`.
    Null,
    Array(Vec<Value>),
    Push(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// The other RESP3 scalars (double, boolean, big number, verbatim), kept as their text.
    Other(Bytes),
}

impl Value {
    /// The value as bytes, for string-like replies.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Simple(b) | Value::Bulk(b) => Some(b),
            _ => None,
        }
    }

    /// Elements of an array or push frame.
    pub fn as_elements(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) | Value::Push(v) => Some(v),
            _ => None,
        }
    }
}

fn err(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// The length of the complete frame at the start of `buf`, or `None` if more bytes are needed.
/// Iterative, so a deeply nested frame cannot overflow the stack before `max_depth` rejects it.
pub fn frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    // Elements still to read, per open aggregate.
    let mut pending: Vec<usize> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some(eol) = find_crlf(buf, pos + 1) else {
            return Ok(None);
        };
        let header = &buf[pos + 1..eol];
        pos = eol + 2;
        let children = match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => 0,
            b'$' | b'!' | b'=' => {
                let len = parse_int(header).ok_or_else(|| err("invalid bulk length in reply"))?;
                if len >= 0 {
                    let len = len as usize;
                    if len > limits.max_bulk {
                        return Err(err(format!(
                            "upstream bulk of {len} bytes is over the limit of {}",
                            limits.max_bulk
                        )));
                    }
                    if buf.len() < pos + len + 2 {
                        return Ok(None);
                    }
                    pos += len + 2;
                } else if len != -1 {
                    return Err(err("invalid bulk length in reply"));
                }
                0
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n =
                    parse_int(header).ok_or_else(|| err("invalid aggregate length in reply"))?;
                if n < -1 {
                    return Err(err("invalid aggregate length in reply"));
                }
                let n = n.max(0) as usize;
                if n > limits.max_elements {
                    return Err(err(format!(
                        "upstream aggregate of {n} elements is over the limit of {}",
                        limits.max_elements
                    )));
                }
                // Maps and attributes hold pairs; an attribute also precedes one more frame.
                match kind {
                    b'%' => n * 2,
                    b'|' => n * 2 + 1,
                    _ => n,
                }
            }
            other => return Err(err(format!("unknown reply type byte {:?}", other as char))),
        };
        if children > 0 {
            if pending.len() >= limits.max_depth {
                return Err(err("reply nested too deeply"));
            }
            pending.push(children);
            continue;
        }
        // A leaf completed: close every aggregate it completes.
        loop {
            match pending.last_mut() {
                None => return Ok(Some(pos)),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    pending.pop();
                }
            }
        }
    }
}

/// Parses one complete frame (as found by [`frame_len`]); attributes are skipped.
pub fn parse(frame: &Bytes) -> Result<Value, ProtocolError> {
    let mut pos = 0;
    let value = parse_at(frame, &mut pos)?;
    Ok(value)
}

fn parse_at(buf: &Bytes, pos: &mut usize) -> Result<Value, ProtocolError> {
    let kind = *buf.get(*pos).ok_or_else(|| err("truncated reply"))?;
    let eol = find_crlf(buf, *pos + 1).ok_or_else(|| err("truncated reply"))?;
    let header = buf.slice(*pos + 1..eol);
    *pos = eol + 2;
    let int = |h: &Bytes| parse_int(h).ok_or_else(|| err("invalid length in reply"));
    Ok(match kind {
        b'+' => Value::Simple(header),
        b'-' => Value::Error(header),
        b':' => Value::Integer(int(&header)?),
        b'_' => Value::Null,
        b',' | b'#' | b'(' => Value::Other(header),
        b'$' | b'!' | b'=' => {
            let len = int(&header)?;
            if len < 0 {
                return Ok(Value::Null);
            }
            let start = *pos;
            let end = start + len as usize;
            if buf.len() < end + 2 {
                return Err(err("truncated reply"));
            }
            *pos = end + 2;
            let data = buf.slice(start..end);
            match kind {
                b'$' => Value::Bulk(data),
                b'!' => Value::Error(data),
                _ => Value::Other(data),
            }
        }
        b'*' | b'~' | b'>' => {
            let n = int(&header)?;
            if n < 0 {
                return Ok(Value::Null);
            }
            let items = (0..n)
                .map(|_| parse_at(buf, pos))
                .collect::<Result<Vec<_>, _>>()?;
            if kind == b'>' {
                Value::Push(items)
            } else {
                Value::Array(items)
            }
        }
        b'%' => {
            let n = int(&header)?.max(0);
            let mut pairs = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let k = parse_at(buf, pos)?;
                let v = parse_at(buf, pos)?;
                pairs.push((k, v));
            }
            Value::Map(pairs)
        }
        b'|' => {
            let n = int(&header)?.max(0);
            for _ in 0..n * 2 {
                parse_at(buf, pos)?;
            }
            parse_at(buf, pos)?
        }
        other => return Err(err(format!("unknown reply type byte {:?}", other as char))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk: 1024,
        max_elements: 64,
        max_depth: 4,
    };

    #[test]
    fn finds_the_end_of_every_reply_type() {
        let frames: [&[u8]; 12] = [
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":-3\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"$3\r\na\r\n\r\n",
            b"_\r\n",
            b",1.5\r\n",
            b"%1\r\n$1\r\na\r\n*2\r\n:1\r\n#t\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$0\r\n\r\n",
            b"|1\r\n+k\r\n+v\r\n:7\r\n",
            b"=8\r\ntxt:abcd\r\n",
        ];
        for f in frames {
            let mut with_tail = f.to_vec();
            with_tail.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(
                frame_len(&with_tail, &LIMITS),
                Ok(Some(f.len())),
                "{:?}",
                String::from_utf8_lossy(f)
            );
            for cut in 0..f.len() {
                assert_eq!(
                    frame_len(&f[..cut], &LIMITS),
                    Ok(None),
                    "cut {cut} of {f:?}"
                );
            }
        }
    }

    #[test]
    fn parses_pubsub_frames() {
        let raw = Bytes::from_static(
            b"*4\r\n$8\r\npmessage\r\n$2\r\na*\r\n$2\r\nab\r\n$2\r\n\x00\xff\r\n",
        );
        let v = parse(&raw).unwrap();
        let items = v.as_elements().unwrap();
        assert_eq!(items[3], Value::Bulk(Bytes::from_static(b"\x00\xff")));
        let attr = Bytes::from_static(b"|1\r\n+k\r\n+v\r\n:7\r\n");
        assert_eq!(parse(&attr).unwrap(), Value::Integer(7));
    }

    #[test]
    fn limits_reject_hostile_replies() {
        assert!(frame_len(b"$99999\r\n", &LIMITS).is_err());
        assert!(frame_len(b"*65\r\n", &LIMITS).is_err());
        assert!(frame_len(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", &LIMITS).is_err());
        assert!(frame_len(b"?\r\n", &LIMITS).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(Some(n)) = frame_len(&input, &LIMITS) {
                let _ = parse(&Bytes::copy_from_slice(&input[..n]));
            }
        }
    }
}
