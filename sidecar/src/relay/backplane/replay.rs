//! Nothing lost when the backplane dies, nothing delivered twice because of it.
//!
//! Redis pub/sub delivers at most once: a server that crashes (or closes its clients for a
//! failover) can acknowledge a PUBLISH on our control link while the message is still in its
//! output buffer for the subscriber links, and lose it there. So a publisher cannot trust an
//! acknowledgement alone. It keeps each acknowledged publish ([`Unconfirmed`]) until a PING
//! sent on its subscriber link *after* the acknowledgement is answered: by then the server has
//! run a later event loop, which wrote out what the publish queued. When the links die first,
//! the publisher sends those publishes again, with the ones that were never acknowledged.
//!
//! Sent again, they would reach twice the subscribers that did get them. So before the
//! replays, on the same control link, the publisher announces them on [`CHANNEL`]; every
//! sidecar subscribes to it on every shard, and since one connection's publishes reach one
//! subscriber link in order, the announcement arrives before the replays. A receiver keeps the
//! frames it delivered in the last few heartbeats ([`Recent`]); on an announcement (or on its
//! own loss of the links) it sets aside the ones that match ([`Dedup`]), and drops that many of
//! the replays when they arrive. A replay it never saw is delivered. Subscribers that are not
//! sidecars (a worker on the backplane itself) get the replays too, at least once.
//!
//! Everything here is bounded by the publish buffer's limits; past them the oldest entries go,
//! which costs a possible duplicate (or, for [`Unconfirmed`], the protection against a crash),
//! never memory.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::machine::{Message, split_message};
use crate::pubsub::Kind;
use crate::resp::Limits;
use crate::resp::request::{Decoded, decode};

/// The channel (after the channel prefix) announcements go on. Reserved: sidecars never deliver
/// it to applications.
pub(crate) const CHANNEL: &[u8] = b"__switchboard:replays";

/// Most bytes of publishes one announcement lists (a publish larger than this is replayed
/// without one, and may arrive twice); see [`announcements`].
const ANNOUNCEMENT_BYTES: usize = 1 << 20;

/// Acknowledged publishes not yet proven delivered, in acknowledgement order.
#[derive(Debug, Default)]
pub(crate) struct Unconfirmed {
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
    acked: u64,
}

impl Unconfirmed {
    /// A publish was acknowledged; keeps it within `max_messages` / `max_bytes` (dropping the
    /// oldest, the likeliest to have been delivered).
    pub(crate) fn acked(&mut self, raw: Bytes, max_messages: usize, max_bytes: usize) {
        self.acked += 1;
        self.bytes += raw.len();
        self.entries.push_back((self.acked, raw));
        while self.entries.len() > max_messages || self.bytes > max_bytes {
            let Some((_, old)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.len();
        }
    }

    /// Taken when a PING goes out on the subscriber link: its answer confirms everything
    /// acknowledged up to here.
    pub(crate) fn mark(&self) -> u64 {
        self.acked
    }

    /// The PING taken at `mark` was answered.
    pub(crate) fn confirm(&mut self, mark: u64) {
        while self.entries.front().is_some_and(|(n, _)| *n <= mark) {
            let (_, raw) = self.entries.pop_front().expect("front exists");
            self.bytes -= raw.len();
        }
    }

    /// The links died: what must be sent again, oldest first.
    pub(crate) fn take(self) -> impl Iterator<Item = Bytes> {
        self.entries.into_iter().map(|(_, raw)| raw)
    }
}

/// The frames delivered in the last [`EPOCHS`] heartbeats, as they arrived, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// Each frame with the heartbeat (epoch) it arrived in.
    frames: VecDeque<(u64, Bytes)>,
    bytes: usize,
    epoch: u64,
}

/// Heartbeats of frames kept: a publisher confirms at every heartbeat, so what it may replay
/// was acknowledged at most about two heartbeats before its links died.
const EPOCHS: u64 = 3;

impl Recent {
    /// Keeps `frame`, and within `max_messages` / `max_bytes` as many of the latest as fit.
    pub(crate) fn record(&mut self, frame: &Bytes, max_messages: usize, max_bytes: usize) {
        self.bytes += frame.len();
        self.frames.push_back((self.epoch, frame.clone()));
        while self.frames.len() > max_messages || self.bytes > max_bytes {
            self.pop();
        }
    }

    /// A heartbeat passed: frames from before the last [`EPOCHS`] go.
    pub(crate) fn rotate(&mut self) {
        self.epoch += 1;
        while self
            .frames
            .front()
            .is_some_and(|(e, _)| e + EPOCHS <= self.epoch)
        {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some((_, old)) = self.frames.pop_front() {
            self.bytes -= old.len();
        }
    }

    fn take(&mut self) -> impl Iterator<Item = Bytes> + use<> {
        self.bytes = 0;
        std::mem::take(&mut self.frames).into_iter().map(|(_, f)| f)
    }
}

/// A publish as subscribers see it: PUBLISH (`Kind::Channel`) or SPUBLISH (`Kind::Shard`), its
/// channel (without the prefix) and payload.
pub(crate) type Publish = (Kind, Bytes, Bytes);

/// Per publish, how many frames of it were delivered, by the pattern that matched (`None`:
/// the channel subscription itself).
type Seen = HashMap<Publish, HashMap<Option<Bytes>, usize>>;

/// What one publish looks like once delivered, for matching replays against.
fn identity(m: &Message) -> (Publish, Option<Bytes>) {
    let kind = if m.kind == Kind::Shard {
        Kind::Shard
    } else {
        Kind::Channel
    };
    (
        (kind, m.channel.clone(), m.payload.clone()),
        m.pattern.clone(),
    )
}

/// A receiver's memory of what it delivered before a loss, and the replays it expects to drop.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    /// Delivered frames set aside for matching (from [`Recent`]).
    seen: Seen,
    /// Announced replays of frames in `seen`: the next ones that arrive are dropped.
    expected: HashMap<(Publish, Option<Bytes>), usize>,
    /// Heartbeats left before `seen` and `expected` are forgotten.
    ttl: u32,
    /// Frames in `seen` and their bytes, bounded like the publish buffer.
    held: usize,
    held_bytes: usize,
}

impl Dedup {
    /// Sets aside what `recent` holds, to be matched for `ttl` heartbeats (within
    /// `max_messages` / `max_bytes` in all).
    pub(crate) fn set_aside(
        &mut self,
        recent: &mut Recent,
        prefix: &Bytes,
        ttl: u32,
        (max_messages, max_bytes): (usize, usize),
    ) {
        for frame in recent.take() {
            if self.held >= max_messages || self.held_bytes + frame.len() > max_bytes {
                continue;
            }
            let Some(m) = parse_delivered(&frame, prefix) else {
                continue;
            };
            self.held += 1;
            self.held_bytes += frame.len();
            let (publish, pattern) = identity(&m);
            *self
                .seen
                .entry(publish)
                .or_default()
                .entry(pattern)
                .or_default() += 1;
        }
        self.ttl = ttl;
    }

    /// An announcement of replays (the concatenated PUBLISH / SPUBLISH commands): each one this
    /// sidecar already delivered will be dropped when it arrives again, once per frame it made.
    /// Only frames it still `receives` (subscribed upstream now) are expected: a replay on a
    /// channel nobody here holds any more never arrives, and expecting it would drop the next
    /// publish of the same payload once somebody subscribes again.
    pub(crate) fn announced(
        &mut self,
        payload: &Bytes,
        prefix: &Bytes,
        receives: impl Fn(&Publish, Option<&Bytes>) -> bool,
    ) {
        let limits = Limits::for_upstream(payload.len());
        let mut rest = BytesMut::from(&payload[..]);
        while let Ok(Decoded::Command(c)) = decode(&mut rest, &limits, true) {
            let [verb, channel, body] = &c.args[..] else {
                continue;
            };
            let kind = if verb.eq_ignore_ascii_case(b"SPUBLISH") {
                Kind::Shard
            } else {
                Kind::Channel
            };
            let Some(channel) = channel.strip_prefix(&prefix[..]) else {
                continue;
            };
            let publish = (kind, Bytes::copy_from_slice(channel), body.clone());
            let Some(frames) = self.seen.get_mut(&publish) else {
                continue;
            };
            for (pattern, n) in frames.iter_mut() {
                *n -= 1;
                if receives(&publish, pattern.as_ref()) {
                    *self
                        .expected
                        .entry((publish.clone(), pattern.clone()))
                        .or_default() += 1;
                }
            }
            frames.retain(|_, n| *n > 0);
            if frames.is_empty() {
                self.seen.remove(&publish);
            }
        }
    }

    /// True when `m` is an announced replay of a frame already delivered (it is counted off).
    pub(crate) fn is_replay(&mut self, m: &Message) -> bool {
        if self.expected.is_empty() {
            return false;
        }
        let key = identity(m);
        let Some(n) = self.expected.get_mut(&key) else {
            return false;
        };
        *n -= 1;
        if *n == 0 {
            self.expected.remove(&key);
        }
        true
    }

    /// Subscriptions ended: replays expected on what is no longer `receives`d cannot arrive.
    pub(crate) fn forget_unreceived(
        &mut self,
        receives: impl Fn(&Publish, Option<&Bytes>) -> bool,
    ) {
        self.expected
            .retain(|(publish, pattern), _| receives(publish, pattern.as_ref()));
    }

    /// A heartbeat passed; forgets everything once the replays can no longer come.
    pub(crate) fn tick(&mut self) {
        if self.ttl > 0 {
            self.ttl -= 1;
            if self.ttl == 0 {
                self.seen.clear();
                self.expected.clear();
                self.held = 0;
                self.held_bytes = 0;
            }
        }
    }
}

/// A delivered frame read back into its parts (without the channel prefix).
fn parse_delivered(frame: &Bytes, prefix: &Bytes) -> Option<Message> {
    let (kind, [first, second, third]) = split_message(frame)?;
    let unprefixed = |b: &Bytes| b.starts_with(prefix).then(|| b.slice(prefix.len()..));
    let (pattern, channel, payload) = if kind == Kind::Pattern {
        (Some(unprefixed(&first)?), unprefixed(&second)?, third)
    } else {
        (None, unprefixed(&first)?, second)
    };
    Some(Message {
        kind,
        pattern,
        channel,
        payload,
        resp2: None,
    })
}

/// Splits `replays` (encoded publishes, in order) into runs, each with the payload of the
/// announcement that goes before it (`None` for a publish too large to announce). An
/// announcement stays within half of `max_bulk`, so every sidecar's subscriber link (which
/// takes messages up to `--max-bulk-bytes`) reads it.
pub(crate) fn announcements(
    replays: Vec<Bytes>,
    max_bulk: usize,
) -> Vec<(Option<Bytes>, Vec<Bytes>)> {
    let limit = ANNOUNCEMENT_BYTES.min(max_bulk / 2);
    let mut runs: Vec<(Option<BytesMut>, Vec<Bytes>)> = Vec::new();
    for raw in replays {
        if raw.len() > limit {
            runs.push((None, vec![raw]));
            continue;
        }
        match runs.last_mut() {
            Some((Some(listed), run)) if listed.len() + raw.len() <= limit => {
                listed.extend_from_slice(&raw);
                run.push(raw);
            }
            _ => runs.push((Some(BytesMut::from(&raw[..])), vec![raw])),
        }
    }
    runs.into_iter()
        .map(|(listed, run)| (listed.map(BytesMut::freeze), run))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn unconfirmed_keeps_what_no_answered_ping_covers_within_its_bounds() {
        let mut u = Unconfirmed::default();
        u.acked(b("one"), 10, 100);
        let mark = u.mark();
        u.acked(b("two"), 10, 100);
        u.confirm(mark);
        assert_eq!(u.take().collect::<Vec<_>>(), vec![b("two")]);

        let mut u = Unconfirmed::default();
        for s in ["a", "b", "c"] {
            u.acked(b(s), 2, 100);
        }
        assert_eq!(
            u.take().collect::<Vec<_>>(),
            vec![b("b"), b("c")],
            "2 at most"
        );
        let mut u = Unconfirmed::default();
        for s in ["aaaa", "bbbb", "cccc"] {
            u.acked(b(s), 10, 9);
        }
        assert_eq!(
            u.take().collect::<Vec<_>>(),
            vec![b("bbbb"), b("cccc")],
            "9 bytes"
        );
    }

    #[test]
    fn recent_keeps_the_last_heartbeats_and_the_latest_frames_within_bounds() {
        let mut r = Recent::default();
        r.record(&b("e0"), 10, 100);
        r.rotate();
        r.record(&b("e1"), 10, 100);
        r.rotate();
        r.record(&b("e2"), 10, 100);
        r.rotate();
        r.record(&b("e3"), 10, 100);
        assert_eq!(
            r.take().collect::<Vec<_>>(),
            vec![b("e1"), b("e2"), b("e3")],
            "three heartbeats"
        );
        for s in ["a", "b", "c"] {
            r.record(&b(s), 2, 100);
        }
        assert_eq!(r.take().collect::<Vec<_>>(), vec![b("b"), b("c")]);
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn announcements_list_runs_of_publishes_and_skip_the_oversized() {
        let small = b("*3\r\n$7\r\nPUBLISH\r\n$1\r\na\r\n$1\r\n1\r\n");
        let huge = Bytes::from(vec![b'x'; ANNOUNCEMENT_BYTES + 1]);
        let runs = announcements(
            vec![small.clone(), small.clone(), huge.clone(), small.clone()],
            64 << 20,
        );
        let shape: Vec<(Option<usize>, usize)> = runs
            .iter()
            .map(|(a, run)| (a.as_ref().map(Bytes::len), run.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Some(2 * small.len()), 2),
                (None, 1),
                (Some(small.len()), 1)
            ]
        );
        assert_eq!(runs[1].1, vec![huge]);
        let runs = announcements(vec![small.clone(), small.clone()], 2 * small.len());
        assert_eq!(
            runs.len(),
            2,
            "one per announcement within half of --max-bulk-bytes"
        );
    }
}
