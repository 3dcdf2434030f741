//! Entry points for the coverage-guided fuzz target (`sidecar/fuzz`) and for the test that
//! replays its corpus (`tests/fuzz_corpus.rs`). Not an API: nothing else may use it.
//!
//! [`run`] takes any bytes and drives them through what hostile input reaches:
//!
//! - as a stream of local **requests**: the decoder (`resp::request::decode`) fed the bytes whole
//!   and in pieces, as a connection would deliver them, then the typed parser
//!   (`session::command::Request::parse`) on every command it yields;
//! - as a stream of upstream **replies**: `resp::value::frame_len`, `resp::value::parse` and the
//!   subscriber's in-place message splitter.
//!
//! It checks properties, not only the absence of a panic, and panics when one fails (which the
//! fuzzer reports as a crash):
//!
//! 1. every decode step either yields a command (and removes exactly its bytes), skips bytes,
//!    asks for more (leaving the buffer untouched, asking for more than it has and never for
//!    more than one command within the [`Limits`] can take), or fails with a protocol error;
//! 2. every command is within the [`Limits`] (arguments, bulk sizes);
//! 3. the bytes decode to the same commands and the same outcome whether they arrive whole or
//!    split anywhere (the `needed` hint is never more than the command turns out to be);
//! 4. a command re-encoded as RESP decodes to the same command;
//! 5. what the parser extracts is the command's own arguments, and every error reply it or the
//!    decoder makes is exactly one well-formed RESP frame in both protocols (no reply injection
//!    through a client's bytes);
//! 6. a reply frame's prefixes are all incomplete, the frame parses structurally, and the
//!    subscriber's fast path agrees with the full parser.

use bytes::{Bytes, BytesMut};

use crate::resp::request::{self, Decoded, decode};
use crate::resp::value::{self, Value};
use crate::resp::{INLINE_MAX, Limits, Protocol, Reply};
use crate::session::command::Request;

/// Longest input looked at. Splitting a line longer than [`INLINE_MAX`] legitimately changes
/// the outcome (too long without its newline; fine with it), so inputs stay well under it.
pub const MAX_INPUT: usize = 16 * 1024;

/// The request-side configurations every input is decoded under: the tightest limits the
/// sidecar accepts (`--max-bulk-bytes` 1024 is its minimum), and its defaults before `AUTH`.
const REQUEST_CASES: [(Limits, bool); 2] = [
    (
        Limits {
            max_bulk: 1024,
            max_elements: 16,
            max_depth: 1,
        },
        true,
    ),
    (
        Limits {
            max_bulk: 64 << 20,
            max_elements: 1 << 20,
            max_depth: 1,
        },
        false,
    ),
];

/// Reply-side limits: tight ones (so every limit is reachable with small inputs) and the ones
/// the sidecar's upstream links use.
const REPLY_LIMITS: [Limits; 2] = [
    Limits {
        max_bulk: 64,
        max_elements: 8,
        max_depth: 4,
    },
    Limits {
        max_bulk: 512 << 20,
        max_elements: 64 << 20,
        max_depth: 64,
    },
];

/// Drives `data` through every decoder and parser and checks their properties; panics if one
/// does not hold.
pub fn run(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    requests(data);
    replies(data);
}

/// How a stream of requests ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Everything decoded; this many bytes wait for the rest of a command.
    Incomplete(usize),
    Error(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Trace {
    /// Each command's arguments, or `None` for skipped bytes.
    items: Vec<Option<Vec<Bytes>>>,
    end: End,
}

/// The most bytes one command can need under `limits`: its count line, then per argument a
/// length line and the data, with up to [`INLINE_MAX`] of unterminated header in the buffer.
fn max_request(limits: &Limits) -> usize {
    let per_arg = 1 + 20 + 2 + limits.max_bulk + 2;
    INLINE_MAX + 2 + limits.max_elements.saturating_mul(per_arg)
}

/// Feeds `data` to the decoder in pieces, as a session reads a connection: decode until more
/// bytes are needed, then read more. `pieces` gives the length of each piece in turn (`None`:
/// all at once). Checks every step, and with `deep` each command and error too (they are the
/// same whatever the pieces, as the caller checks).
fn stream(
    data: &[u8],
    pieces: Option<&[usize]>,
    limits: &Limits,
    authenticated: bool,
    deep: bool,
) -> Trace {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    // The buffer always holds `data[front..fed]`.
    let mut front = 0;
    let mut fed = 0;
    // The last `needed` hint for the command starting at `front`.
    let mut hint = 0;
    let all = [data.len()];
    let mut lengths = pieces.unwrap_or(&all).iter().cycle();
    while fed < data.len() {
        let len = (*lengths.next().unwrap()).clamp(1, data.len() - fed);
        let piece = &data[fed..fed + len];
        buf.extend_from_slice(piece);
        fed += len;
        loop {
            let held = buf.len();
            let step = decode(&mut buf, limits, authenticated);
            let consumed = held - buf.len();
            if step.is_ok() {
                assert_eq!(
                    &buf[..],
                    &data[front + consumed..fed],
                    "the decoder took the wrong bytes"
                );
            }
            match step {
                Ok(Decoded::Command(command)) => {
                    assert!(consumed > 0, "a command consumed nothing");
                    assert!(
                        consumed >= hint,
                        "asked for {hint} bytes, then completed a command in {consumed}"
                    );
                    if deep {
                        check_command(&command, &data[front..front + consumed], limits);
                    }
                    items.push(Some(command.args));
                }
                Ok(Decoded::Skipped) => {
                    assert!(consumed > 0, "a skip consumed nothing");
                    assert!(
                        consumed >= hint,
                        "asked for {hint} bytes, then skipped {consumed}"
                    );
                    items.push(None);
                }
                Ok(Decoded::Incomplete { needed }) => {
                    assert_eq!(consumed, 0, "an incomplete command consumed bytes");
                    assert!(
                        needed > held,
                        "asked for {needed} bytes with {held} buffered"
                    );
                    assert!(
                        needed <= max_request(limits),
                        "asked to buffer {needed} bytes, more than a command within the limits"
                    );
                    assert!(needed >= hint, "the `needed` hint went down");
                    hint = needed;
                    break;
                }
                Err(e) => {
                    if deep {
                        check_single_frame(&e.reply(), &format!("ERR {e}"));
                    }
                    return Trace {
                        items,
                        end: End::Error(e.0),
                    };
                }
            }
            front += consumed;
            hint = 0;
        }
    }
    Trace {
        items,
        end: End::Incomplete(buf.len()),
    }
}

/// Properties 2, 4 and 5 for one decoded command; `consumed` is the bytes it came from.
fn check_command(command: &request::Command, consumed: &[u8], limits: &Limits) {
    let args = &command.args;
    assert!(!args.is_empty(), "a command without a name");
    assert!(
        args.len() <= limits.max_elements,
        "{} arguments, over the limit of {}",
        args.len(),
        limits.max_elements
    );
    for arg in args {
        assert!(
            arg.len() <= limits.max_bulk,
            "an argument of {} bytes, over the limit of {}",
            arg.len(),
            limits.max_bulk
        );
    }
    // What is forwarded upstream: the bytes themselves for multibulk, a re-encoding for inline.
    let canonical = request::encode(args);
    if consumed.first() == Some(&b'*') {
        assert_eq!(&command.raw[..], consumed, "raw is not the bytes received");
        // Lengths are canonical (no `+`, no leading zeros); only the unchecked terminators may
        // differ from a fresh encoding.
        assert_eq!(command.raw.len(), canonical.len());
    } else {
        assert_eq!(
            command.raw, canonical,
            "an inline command's raw is not its encoding"
        );
    }
    // Re-encoded, it decodes to the same command, whole, under the same limits.
    let mut again = BytesMut::from(&canonical[..]);
    match decode(&mut again, limits, true) {
        Ok(Decoded::Command(c)) => {
            assert_eq!(&c.args, args, "the re-encoded command decodes differently");
            assert_eq!(c.raw, canonical);
            assert!(again.is_empty(), "the re-encoded command left bytes behind");
        }
        other => panic!("the re-encoded command {canonical:?} decodes to {other:?}"),
    }
    check_request(command);
}

/// Property 5: the typed parser takes its values from the command's own arguments, and its
/// error replies are well-formed frames.
fn check_request(command: &request::Command) {
    let args = &command.args;
    let name = command.name();
    let request = Request::parse(command, &name);
    assert_eq!(
        request,
        Request::parse(command, &name),
        "the parser is not pure"
    );
    match &request {
        Request::Ping(message) => assert_eq!(message.as_ref(), args.get(1)),
        Request::Echo(message) => assert_eq!(message, &args[1]),
        Request::Auth { user, password } => {
            assert_eq!(password, args.last().unwrap());
            assert_eq!(user.is_some(), args.len() == 3);
        }
        Request::Select(db) => {
            assert_eq!(std::str::from_utf8(&args[1]).ok(), Some(&*db.to_string()));
        }
        Request::Hello(hello) => {
            assert!(matches!(hello.proto, None | Some(2 | 3)), "{hello:?}");
        }
        Request::Publish {
            channel, message, ..
        } => {
            assert_eq!((channel, message), (&args[1], &args[2]));
        }
        Request::Subscribe { topics, .. } => {
            assert!(!topics.is_empty());
            assert_eq!(&topics[..], &args[1..]);
        }
        Request::Unsubscribe { topics, .. } => assert_eq!(&topics[..], &args[1..]),
        Request::Invalid(reply) => {
            let Reply::Error(text) = reply else {
                panic!("an invalid command answered {reply:?}")
            };
            check_single_frame(reply, text);
        }
        Request::Unsupported(n) => assert_eq!(n, &name),
        Request::Client(_)
        | Request::Info
        | Request::Quit
        | Request::Reset
        | Request::Pubsub(_)
        | Request::Forward(_) => {}
    }
    // The errors a pass-through command can get name it from its raw bytes.
    let lost = crate::upstream::pipeline::not_run_error(&command.raw, "why");
    assert_eq!(
        value::frame_len(&lost, &REPLY_LIMITS[1]),
        Ok(Some(lost.len())),
        "{lost:?} is not one frame"
    );
}

/// An error reply is one frame in both protocols, and reads back as its text (with line breaks
/// made spaces, as Redis does).
fn check_single_frame(reply: &Reply, text: &str) {
    for proto in [Protocol::Resp2, Protocol::Resp3] {
        let wire = reply.to_bytes(proto);
        assert_eq!(
            value::frame_len(&wire, &REPLY_LIMITS[1]),
            Ok(Some(wire.len())),
            "the reply {wire:?} is not exactly one frame"
        );
        let expected: Vec<u8> = text
            .bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
            .collect();
        assert_eq!(
            value::parse(&wire),
            Ok(Value::Error(Bytes::from(expected))),
            "the reply {wire:?} does not read back as its text"
        );
    }
}

/// Properties 1 to 5 for `data` as requests.
fn requests(data: &[u8]) {
    // Piece lengths chosen by the data: 1 to 16 bytes (more for large inputs, as every step
    // rescans the partial command), so one pass splits at many points, single bytes included.
    let scale = (data.len() / 256).max(1);
    let mut h = data.iter().fold(0x9e37_79b9_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let pieces: Vec<usize> = (0..16)
        .map(|i| {
            h = h.rotate_left(5).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            if i == 0 {
                1
            } else {
                scale * (1 + (h >> 60) as usize)
            }
        })
        .collect();
    for (case, (limits, authenticated)) in REQUEST_CASES.iter().enumerate() {
        let whole = stream(data, None, limits, *authenticated, true);
        // Splitting is the decoder's own business, the same under any limits: once is enough.
        if case == 0 && data.len() > 1 {
            let split = stream(data, Some(&pieces), limits, *authenticated, false);
            assert_eq!(
                whole, split,
                "decoding in pieces of {pieces:?} differs from decoding whole"
            );
        }
    }
}

/// Property 6 for `data` as upstream replies.
fn replies(data: &[u8]) {
    for limits in &REPLY_LIMITS {
        let mut rest = data;
        while let Ok(Some(n)) = value::frame_len(rest, limits) {
            assert!(
                n > 0 && n <= rest.len(),
                "frame of {n} in {} bytes",
                rest.len()
            );
            let frame = &rest[..n];
            assert_eq!(value::frame_len(frame, limits), Ok(Some(n)));
            // Its prefixes are incomplete (an upstream link keeps reading): the one a byte short,
            // and three more.
            for cut in [n - 1, n / 2, n / 3, (n * 7) / 8] {
                assert_eq!(
                    value::frame_len(&frame[..cut], limits),
                    Ok(None),
                    "a prefix of {cut} bytes of a {n}-byte frame"
                );
            }
            let frame = Bytes::copy_from_slice(frame);
            match value::parse(&frame) {
                Ok(parsed) => {
                    if let Some((kind, parts)) = crate::relay::backplane::split_message(&frame) {
                        let mut expected: Vec<&[u8]> = vec![kind.message_word()];
                        let count = if kind == crate::pubsub::Kind::Pattern {
                            3
                        } else {
                            2
                        };
                        expected.extend(parts[..count].iter().map(|p| &p[..]));
                        let got: Vec<&[u8]> = parsed
                            .as_elements()
                            .expect("a message is an array")
                            .iter()
                            .map(|v| &v.as_bytes().expect("message parts are bulks")[..])
                            .collect();
                        assert_eq!(got, expected, "the fast path disagrees with the parser");
                    }
                }
                // The boundary finder checks structure, not scalar contents: only an integer
                // that is not one may fail to parse.
                Err(e) => assert_eq!(e.0, "invalid length in reply", "{frame:?}"),
            }
            rest = &rest[n..];
        }
    }
}
