//! A test-side RESP2/RESP3 reader, independent of the sidecar's own codec so that a bug there
//! cannot hide itself: it finds where one reply frame ends, parses a frame into a tree for the few
//! normalisations the oracle needs, writes the tree back byte for byte, and prints bytes legibly.

/// One parsed frame. Every variant keeps its type byte so [`Value::encode`] reproduces the input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// `+ - : _ , # (` — a type byte and the rest of the line.
    Line(u8, Vec<u8>),
    /// `$ ! =` — a type byte and the payload; `None` is `$-1`.
    Bulk(u8, Option<Vec<u8>>),
    /// `* ~ > % |` — a type byte and the elements (a map's keys and values interleaved);
    /// `None` is `*-1`.
    Aggregate(u8, Option<Vec<Value>>),
}

impl Value {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Line(t, line) => {
                out.push(*t);
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            Value::Bulk(t, None) => {
                out.push(*t);
                out.extend_from_slice(b"-1\r\n");
            }
            Value::Bulk(t, Some(data)) => {
                out.push(*t);
                out.extend_from_slice(format!("{}\r\n", data.len()).as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            Value::Aggregate(t, None) => {
                out.push(*t);
                out.extend_from_slice(b"-1\r\n");
            }
            Value::Aggregate(t, Some(items)) => {
                let n = if matches!(t, b'%' | b'|') {
                    items.len() / 2
                } else {
                    items.len()
                };
                out.push(*t);
                out.extend_from_slice(format!("{n}\r\n").as_bytes());
                for item in items {
                    item.encode_into(out);
                }
            }
        }
    }

    /// The payload of a bulk or simple string, for reading a confirmation's channel name.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Line(_, line) => Some(line),
            Value::Bulk(_, Some(data)) => Some(data),
            _ => None,
        }
    }
}

/// Length of the first complete frame in `buf`: `Ok(None)` when more bytes are needed, `Err` when
/// the bytes cannot be RESP at all (the server sent garbage — a test failure, not a wait).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, String> {
    Ok(parse_at(buf, 0)?.map(|(_, end)| end))
}

/// Parses exactly one frame that fills `buf`.
pub fn parse(buf: &[u8]) -> Result<Value, String> {
    match parse_at(buf, 0)? {
        Some((value, end)) if end == buf.len() => Ok(value),
        Some((_, end)) => Err(format!(
            "{} trailing bytes after the frame",
            buf.len() - end
        )),
        None => Err(format!("incomplete frame: {}", show(buf))),
    }
}

fn parse_at(buf: &[u8], pos: usize) -> Result<Option<(Value, usize)>, String> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(rel) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buf[pos + 1..pos + rel];
    let after = pos + rel + 2;
    let length = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| format!("bad length {:?} after {:?}", show(line), kind as char))
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
            Ok(Some((Value::Line(kind, line.to_vec()), after)))
        }
        b'$' | b'!' | b'=' => {
            let n = length()?;
            if n < 0 {
                return Ok(Some((Value::Bulk(kind, None), after)));
            }
            let end = after + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(format!("bulk of {n} bytes not followed by CRLF"));
            }
            Ok(Some((
                Value::Bulk(kind, Some(buf[after..end].to_vec())),
                end + 2,
            )))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = length()?;
            if n < 0 {
                return Ok(Some((Value::Aggregate(kind, None), after)));
            }
            let count = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut items = Vec::with_capacity(count as usize);
            let mut at = after;
            for _ in 0..count {
                match parse_at(buf, at)? {
                    Some((item, end)) => {
                        items.push(item);
                        at = end;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Value::Aggregate(kind, Some(items)), at)))
        }
        other => Err(format!(
            "not a RESP type byte: {:?} at {pos} in {}",
            other as char,
            show(buf)
        )),
    }
}

/// Encodes a command as a RESP multibulk, the way client libraries send it.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Bytes as a Rust-escaped string (`\r\n` visible), for assertion messages and reports.
pub fn show(bytes: &[u8]) -> String {
    const LIMIT: usize = 600;
    let mut out = String::new();
    for &b in bytes.iter().take(LIMIT) {
        out.extend(std::ascii::escape_default(b).map(char::from));
    }
    if bytes.len() > LIMIT {
        out.push_str(&format!("…(+{} bytes)", bytes.len() - LIMIT));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_need_all_their_bytes() {
        let samples: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR x\r\n",
            b":-3\r\n",
            b"_\r\n",
            b",1.5\r\n",
            b"#t\r\n",
            b"(123\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"$0\r\n\r\n",
            b"$4\r\na\r\nb\r\n",
            b"!3\r\nerr\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"%1\r\n+k\r\n*1\r\n~1\r\n_\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\np\r\n",
            b"|1\r\n+a\r\n+b\r\n",
        ];
        for sample in samples {
            assert_eq!(
                frame_len(sample),
                Ok(Some(sample.len())),
                "{}",
                show(sample)
            );
            assert_eq!(parse(sample).unwrap().encode(), sample.to_vec());
            for cut in 0..sample.len() {
                assert_eq!(
                    frame_len(&sample[..cut]),
                    Ok(None),
                    "{}",
                    show(&sample[..cut])
                );
            }
        }
        assert!(frame_len(b"?x\r\n").is_err());
        assert_eq!(frame_len(b"+A\r\n+B\r\n"), Ok(Some(4)));
    }
}
