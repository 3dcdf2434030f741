//! Which local connections hear which topics, and the delivery of one message to them.
//!
//! The table is the local truth: a connection is in it exactly while Redis would consider it
//! subscribed, and its confirmation is queued under the same write lock that inserts it, so no
//! message can overtake a confirmation.

use std::collections::{HashMap, HashSet};
use std::sync::{OnceLock, RwLock};

use bytes::{Bytes, BytesMut};

use crate::glob;
use crate::pubsub::Outbox;
use crate::pubsub::{Kind, Topic};
use crate::resp::Protocol;

/// Subscribers of one topic, by connection id.
pub type Subscribers = HashMap<u64, Outbox>;

#[derive(Default)]
pub struct Table {
    topics: RwLock<Topics>,
}

/// Subscribers by topic, plus the subscribed patterns on their own, so a publish costs one
/// lookup and a walk over the (usually few) patterns, not a walk over every topic.
#[derive(Default)]
struct Topics {
    by_topic: HashMap<Topic, Subscribers>,
    patterns: HashSet<Bytes>,
}

/// A message as it arrived: encoded lazily, at most once per protocol, however many local
/// connections receive it.
pub struct Delivery<'a> {
    pub kind: Kind,
    /// The matching pattern, for `pmessage`.
    pub pattern: Option<&'a [u8]>,
    pub channel: &'a [u8],
    pub payload: &'a [u8],
    encoded: [OnceLock<Bytes>; 2],
}

impl<'a> Delivery<'a> {
    pub fn new(
        kind: Kind,
        pattern: Option<&'a [u8]>,
        channel: &'a [u8],
        payload: &'a [u8],
    ) -> Self {
        Delivery {
            kind,
            pattern,
            channel,
            payload,
            encoded: Default::default(),
        }
    }

    /// This message already encoded for RESP2 subscribers (the frame as it came from upstream).
    pub fn with_resp2(self, frame: Option<Bytes>) -> Self {
        if let Some(frame) = frame {
            let _ = self.encoded[0].set(frame);
        }
        self
    }

    fn frame(&self, proto: Protocol) -> Bytes {
        let slot = &self.encoded[usize::from(proto == Protocol::Resp3)];
        slot.get_or_init(|| {
            let word = self.kind.message_word();
            let parts: Vec<&[u8]> = match self.pattern {
                Some(p) => vec![word, p, self.channel, self.payload],
                None => vec![word, self.channel, self.payload],
            };
            let mut out = BytesMut::new();
            let marker = if proto == Protocol::Resp3 { b'>' } else { b'*' };
            crate::resp::write_bulks(&mut out, marker, &parts);
            out.freeze()
        })
        .clone()
    }
}

/// What one delivery did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub queued: usize,
    pub dropped: usize,
}

impl Table {
    /// Delivers to the subscribers of exactly this topic (the pattern itself for `pmessage`).
    pub fn deliver(&self, topic: &Topic, message: &Delivery<'_>) -> Delivered {
        let topics = self.topics.read().expect("table lock poisoned");
        let mut done = Delivered::default();
        if let Some(subs) = topics.by_topic.get(topic) {
            for outbox in subs.values() {
                if outbox.message(message.frame(outbox.protocol())) {
                    done.queued += 1;
                } else {
                    done.dropped += 1;
                }
            }
        }
        done
    }

    /// Delivers a publish made locally with no backplane: channel subscribers first, then every
    /// matching pattern, in Redis's order. Returns how many connections received it.
    pub fn publish_locally(&self, kind: Kind, channel: &[u8], payload: &[u8]) -> usize {
        let direct = Delivery::new(kind, None, channel, payload);
        let mut receivers = self
            .deliver(&Topic::new(kind, Bytes::copy_from_slice(channel)), &direct)
            .queued;
        if kind == Kind::Channel {
            let patterns: Vec<Topic> = {
                let topics = self.topics.read().expect("table lock poisoned");
                topics
                    .patterns
                    .iter()
                    .filter(|p| glob::matches(p, channel))
                    .map(|p| Topic::new(Kind::Pattern, p.clone()))
                    .collect()
            };
            for pattern in patterns {
                let m = Delivery::new(Kind::Pattern, Some(&pattern.name), channel, payload);
                receivers += self.deliver(&pattern, &m).queued;
            }
        }
        receivers
    }

    /// Adds `outbox` to `topic` and, under the same lock, queues `confirmation` to it.
    pub fn insert(&self, topic: Topic, outbox: &Outbox, confirmation: Bytes) {
        let mut topics = self.topics.write().expect("table lock poisoned");
        if topic.kind == Kind::Pattern {
            topics.patterns.insert(topic.name.clone());
        }
        topics
            .by_topic
            .entry(topic)
            .or_default()
            .insert(outbox.id(), outbox.clone());
        outbox.reply(confirmation);
    }

    /// Removes `outbox` from `topic` and queues `confirmation` (if any) under the same lock.
    pub fn remove(&self, topic: &Topic, outbox: &Outbox, confirmation: Option<Bytes>) {
        let mut topics = self.topics.write().expect("table lock poisoned");
        if let Some(subs) = topics.by_topic.get_mut(topic) {
            subs.remove(&outbox.id());
            if subs.is_empty() {
                topics.by_topic.remove(topic);
                if topic.kind == Kind::Pattern {
                    topics.patterns.remove(&topic.name);
                }
            }
        }
        if let Some(c) = confirmation {
            outbox.reply(c);
        }
    }

    /// Local subscriber counts per topic (this pod's share of the fleet-wide counts).
    pub fn counts(&self) -> HashMap<Topic, i64> {
        let topics = self.topics.read().expect("table lock poisoned");
        topics
            .by_topic
            .iter()
            .map(|(t, s)| (t.clone(), s.len() as i64))
            .collect()
    }

    /// How many local connections a publish to `channel` reaches (channel plus patterns).
    pub fn receivers(&self, kind: Kind, channel: &Bytes) -> i64 {
        let topics = self.topics.read().expect("table lock poisoned");
        let count = |t: &Topic| topics.by_topic.get(t).map_or(0, |s| s.len());
        let direct = count(&Topic::new(kind, channel.clone()));
        let patterns: usize = if kind == Kind::Channel {
            topics
                .patterns
                .iter()
                .filter(|p| glob::matches(p, channel))
                .map(|p| count(&Topic::new(Kind::Pattern, p.clone())))
                .sum()
        } else {
            0
        };
        (direct + patterns) as i64
    }
}
