//! Commands from local clients: RESP multibulk (`*2\r\n$4\r\nPING\r\n...`) and inline
//! (`PING\r\n`), decoded as Redis's `processMultibulkBuffer` / `processInlineBuffer` do, with the
//! same error texts, plus the sidecar's own size limits.
//!
//! `decode` is a check-then-split parser: it scans the buffer without copying, and only once a
//! whole command is present splits it off, so arguments are zero-copy slices of one `Bytes`.

use bytes::{Bytes, BytesMut};

use super::{INLINE_MAX, Limits, ProtocolError, find_crlf, parse_int};

/// One command: its arguments, and the exact bytes it arrived as (forwarded unchanged upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub args: Vec<Bytes>,
    /// The multibulk encoding of the command (inline commands are re-encoded).
    pub raw: Bytes,
}

impl Command {
    /// The command name, lower-cased, as Redis matches it.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.args[0]).to_ascii_lowercase()
    }

    /// Builds a command from arguments (used for commands the sidecar sends itself).
    pub fn from_args<I, A>(args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<Bytes>,
    {
        let args: Vec<Bytes> = args.into_iter().map(Into::into).collect();
        let raw = encode(&args);
        Command { args, raw }
    }
}

/// Encodes arguments as a multibulk command.
pub fn encode(args: &[Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    super::write_bulks(&mut out, b'*', args);
    out.freeze()
}

/// What a decode step found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole command, removed from the buffer.
    Command(Command),
    /// Bytes Redis silently skips (`*0`, a negative count, an empty inline line), removed.
    Skipped,
    /// Not enough bytes yet; nothing removed. `needed` is a hint for the buffer's capacity.
    Incomplete { needed: usize },
}

/// Decodes the next command from `buf`. `authenticated` is false only while a local password is
/// set and not yet given; Redis then refuses large frames before authentication (so does this).
pub fn decode(
    buf: &mut BytesMut,
    limits: &Limits,
    authenticated: bool,
) -> Result<Decoded, ProtocolError> {
    match buf.first() {
        None => Ok(Decoded::Incomplete { needed: 1 }),
        Some(b'*') => decode_multibulk(buf, limits, authenticated),
        Some(_) => decode_inline(buf, limits),
    }
}

fn err(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

fn too_many_args(count: usize, limits: &Limits) -> ProtocolError {
    err(format!(
        "invalid multibulk length ({count} arguments is over the sidecar's limit of {}; raise --max-args / SWITCHBOARD_MAX_ARGS)",
        limits.max_elements
    ))
}

fn too_big_bulk(len: usize, limits: &Limits) -> ProtocolError {
    err(format!(
        "invalid bulk length ({len} bytes is over the sidecar's limit of {}; raise --max-bulk-bytes / SWITCHBOARD_MAX_BULK_BYTES)",
        limits.max_bulk
    ))
}

fn decode_multibulk(
    buf: &mut BytesMut,
    limits: &Limits,
    authenticated: bool,
) -> Result<Decoded, ProtocolError> {
    let Some(eol) = find_crlf(buf, 1) else {
        if buf.len() > INLINE_MAX {
            return Err(err("too big mbulk count string"));
        }
        return Ok(Decoded::Incomplete {
            needed: buf.len() + 1,
        });
    };
    let count = parse_int(&buf[1..eol])
        .filter(|n| *n <= i64::from(i32::MAX))
        .ok_or_else(|| err("invalid multibulk length"))?;
    if count <= 0 {
        let _ = buf.split_to(eol + 2);
        return Ok(Decoded::Skipped);
    }
    let count = count as usize;
    if !authenticated && count > 10 {
        return Err(err("unauthenticated multibulk length"));
    }
    if count > limits.max_elements {
        return Err(too_many_args(count, limits));
    }

    let mut ranges = Vec::with_capacity(count.min(1024));
    let mut pos = eol + 2;
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(Decoded::Incomplete { needed: pos + 1 }),
            Some(b'$') => {}
            Some(&other) => {
                return Err(err(format!("expected '$', got '{}'", other as char)));
            }
        }
        let Some(eol) = find_crlf(buf, pos + 1) else {
            if buf.len() - pos > INLINE_MAX {
                return Err(err("too big bulk count string"));
            }
            return Ok(Decoded::Incomplete {
                needed: buf.len() + 1,
            });
        };
        let len = parse_int(&buf[pos + 1..eol])
            .filter(|n| *n >= 0)
            .ok_or_else(|| err("invalid bulk length"))? as usize;
        if !authenticated && len > 16384 {
            return Err(err("unauthenticated bulk length"));
        }
        if len > limits.max_bulk {
            return Err(too_big_bulk(len, limits));
        }
        let start = eol + 2;
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(Decoded::Incomplete { needed: end + 2 });
        }
        // Redis does not check the terminator's bytes; it only skips two of them. So do we.
        ranges.push(start..end);
        pos = end + 2;
    }
    let raw = buf.split_to(pos).freeze();
    let args = ranges.into_iter().map(|r| raw.slice(r)).collect();
    Ok(Decoded::Command(Command { args, raw }))
}

fn decode_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Decoded, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > INLINE_MAX {
            return Err(err("too big inline request"));
        }
        return Ok(Decoded::Incomplete {
            needed: buf.len() + 1,
        });
    };
    let line = buf.split_to(nl + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = split_args(line).ok_or_else(|| err("unbalanced quotes in request"))?;
    if args.is_empty() {
        return Ok(Decoded::Skipped);
    }
    // Redis bounds inline commands by their line alone; the sidecar's limits hold for every
    // command however it was sent (the line can be longer than `INLINE_MAX` when it arrives
    // in one read).
    if args.len() > limits.max_elements {
        return Err(too_many_args(args.len(), limits));
    }
    if let Some(arg) = args.iter().find(|a| a.len() > limits.max_bulk) {
        return Err(too_big_bulk(arg.len(), limits));
    }
    Ok(Decoded::Command(Command::from_args(args)))
}

/// Splits an inline command line as Redis's `sdssplitargs` does: white space separates, `"..."`
/// understands `\n \r \t \b \a \\ \" \xHH`, `'...'` understands only `\'`, and a closing quote
/// must be followed by white space or the end of the line. `None` means unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    let is_space = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t' | 0x0b | 0x0c);
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let Some(&c) = line.get(i) else {
                if in_double || in_single {
                    return None;
                }
                break;
            };
            if in_double {
                if c == b'\\' && i + 3 < line.len() && line[i + 1] == b'x' {
                    let hex = |b: u8| (b as char).to_digit(16);
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        cur.push((h * 16 + l) as u8);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_single {
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if is_space(c) {
                break;
            } else if c == b'"' {
                in_double = true;
            } else if c == b'\'' {
                in_single = true;
            } else {
                cur.push(c);
            }
            i += 1;
        }
        args.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk: 1024,
        max_elements: 16,
        max_depth: 8,
    };

    fn decode_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match decode(&mut buf, &LIMITS, true)? {
                Decoded::Command(c) => out.push(c.args.iter().map(|a| a.to_vec()).collect()),
                Decoded::Skipped => {}
                Decoded::Incomplete { .. } => return Ok(out),
            }
        }
    }

    #[test]
    fn multibulk_and_inline_commands() {
        let got = decode_all(b"*2\r\n$4\r\nECHO\r\n$3\r\na\0b\r\nPING x\r\n*0\r\n\r\n").unwrap();
        assert_eq!(
            got,
            vec![
                vec![b"ECHO".to_vec(), b"a\0b".to_vec()],
                vec![b"PING".to_vec(), b"x".to_vec()]
            ]
        );
    }

    #[test]
    fn incomplete_commands_leave_the_buffer_untouched() {
        let full = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(matches!(
                decode(&mut buf, &LIMITS, true),
                Ok(Decoded::Incomplete { .. })
            ));
            assert_eq!(&buf[..], &full[..cut]);
        }
    }

    #[test]
    fn raw_bytes_are_kept_for_forwarding() {
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\nrest"[..]);
        let Decoded::Command(c) = decode(&mut buf, &LIMITS, true).unwrap() else {
            panic!()
        };
        assert_eq!(&c.raw[..], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(&buf[..], b"rest");
    }

    #[test]
    fn malformed_frames_get_redis_error_texts() {
        let cases: [(&[u8], &str); 5] = [
            (b"*abc\r\n", "invalid multibulk length"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$x\r\n", "invalid bulk length"),
            (b"PING \"a\r\n", "unbalanced quotes in request"),
        ];
        for (input, msg) in cases {
            let mut buf = BytesMut::from(input);
            assert_eq!(
                decode(&mut buf, &LIMITS, true),
                Err(ProtocolError(msg.into())),
                "{input:?}"
            );
        }
    }

    #[test]
    fn limits_are_enforced_from_the_header_before_the_data_arrives() {
        let mut buf = BytesMut::from(&b"*1\r\n$2000\r\n"[..]);
        let e = decode(&mut buf, &LIMITS, true).unwrap_err();
        assert!(e.0.contains("--max-bulk-bytes"), "{e}");
        let mut buf = BytesMut::from(&b"*17\r\n"[..]);
        assert!(
            decode(&mut buf, &LIMITS, true)
                .unwrap_err()
                .0
                .contains("--max-args")
        );
        let mut buf = BytesMut::from(vec![b'x'; INLINE_MAX + 1].as_slice());
        assert_eq!(
            decode(&mut buf, &LIMITS, true).unwrap_err().0,
            "too big inline request"
        );
    }

    /// Found by the fuzzer: an inline command was not held to the limits (`MGET` with 20 keys
    /// passed `--max-args 16`), which bound every multibulk one.
    #[test]
    fn inline_commands_are_held_to_the_limits_too() {
        let mut line = b"MGET".to_vec();
        for i in 0..16 {
            line.extend_from_slice(format!(" k{i}").as_bytes());
        }
        line.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&line[..]);
        let e = decode(&mut buf, &LIMITS, true).unwrap_err();
        assert!(
            e.0.contains("17 arguments") && e.0.contains("--max-args"),
            "{e}"
        );
        let mut buf = BytesMut::from(format!("SET k {}\r\n", "v".repeat(1025)).as_bytes());
        let e = decode(&mut buf, &LIMITS, true).unwrap_err();
        assert!(
            e.0.contains("1025 bytes") && e.0.contains("--max-bulk-bytes"),
            "{e}"
        );
        // At the limits, it is a command.
        let mut buf = BytesMut::from(format!("SET k {}\r\n", "v".repeat(1024)).as_bytes());
        assert!(matches!(
            decode(&mut buf, &LIMITS, true),
            Ok(Decoded::Command(_))
        ));
    }

    /// Found by the fuzzer: `*1\r\n\r\n` was answered `expected '$', got '\r'` with the raw
    /// byte in the error line; Redis writes it as a space, and so does the reply encoder now.
    #[test]
    fn protocol_errors_about_line_breaks_are_one_line() {
        let mut buf = BytesMut::from(&b"*1\r\n\r\n"[..]);
        let e = decode(&mut buf, &LIMITS, true).unwrap_err();
        assert_eq!(
            &e.reply().to_bytes(crate::resp::Protocol::Resp2)[..],
            b"-ERR Protocol error: expected '$', got ' '\r\n"
        );
    }

    #[test]
    fn unauthenticated_clients_get_small_frames_only() {
        let mut buf = BytesMut::from(&b"*11\r\n"[..]);
        assert_eq!(
            decode(&mut buf, &LIMITS, false).unwrap_err().0,
            "unauthenticated multibulk length"
        );
        let mut buf = BytesMut::from(&b"*1\r\n$16385\r\n"[..]);
        let limits = Limits {
            max_bulk: 1 << 20,
            ..LIMITS
        };
        assert_eq!(
            decode(&mut buf, &limits, false).unwrap_err().0,
            "unauthenticated bulk length"
        );
    }

    #[test]
    fn inline_quoting_follows_sdssplitargs() {
        let args = split_args(br#"SET "a\x41\n" 'it\'s' plain"#).unwrap();
        assert_eq!(
            args,
            vec![
                b"SET".to_vec(),
                b"aA\n".to_vec(),
                b"it's".to_vec(),
                b"plain".to_vec()
            ]
        );
        assert_eq!(split_args(br#""a"b"#), None);
        assert_eq!(split_args(b"  "), Some(vec![]));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_all(&input);
        }

        #[test]
        fn encoded_commands_decode_back_whatever_the_split(
            args in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..8),
            cut in 0usize..400,
        ) {
            let args: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
            let wire = encode(&args);
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let first = decode(&mut buf, &LIMITS, true).unwrap();
            let got = match first {
                Decoded::Command(c) => c,
                Decoded::Incomplete { .. } => {
                    buf.extend_from_slice(&wire[cut..]);
                    match decode(&mut buf, &LIMITS, true).unwrap() {
                        Decoded::Command(c) => c,
                        other => panic!("{other:?}"),
                    }
                }
                Decoded::Skipped => panic!("skipped"),
            };
            proptest::prop_assert_eq!(got.args, args);
            proptest::prop_assert_eq!(got.raw, wire);
        }
    }
}
