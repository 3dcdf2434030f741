//! Fleet-wide subscription counts: what one shared Redis would report, reconstructed from every
//! sidecar's registry entry.
//!
//! Each sidecar holds one upstream subscription per topic however many local connections want
//! it, so upstream `PUBSUB NUMSUB` would count pods, not application connections. Socket.io's
//! adapters wait for exactly `NUMSUB` replies in `fetchSockets`, `serverSideEmit` with acks and
//! `allRooms`, so the sidecar answers from this view instead: the sum of every live sidecar's
//! local counts (see `registry` for how entries are kept and expire).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::glob;
use crate::pubsub::{Kind, Topic};
use crate::resp::Value;

/// Counts per topic for each live sidecar, by sidecar id.
#[derive(Debug, Default, Clone)]
pub struct Fleet {
    pub peers: HashMap<String, HashMap<Topic, i64>>,
    /// Each sidecar's server marks: shard → `run_id` it is subscribed on (see `registry`).
    pub marks: HashMap<String, HashMap<usize, Bytes>>,
}

impl Fleet {
    /// Reads the registry script's reply: `[id, [field, count, ...], id, [...], ...]`.
    pub fn from_registry(reply: &Value) -> Option<Fleet> {
        let items = reply.as_elements()?;
        let mut peers = HashMap::new();
        let mut marks = HashMap::new();
        for pair in items.chunks(2) {
            let [id, fields] = pair else { return None };
            let id = String::from_utf8_lossy(id.as_bytes()?).into_owned();
            let mut counts = HashMap::new();
            let mut own_marks = HashMap::new();
            for kv in fields.as_elements()?.chunks(2) {
                let [k, v] = kv else { return None };
                if let Some(shard) = super::registry::marked_shard(k.as_bytes()?) {
                    own_marks.insert(shard, v.as_bytes()?.clone());
                    continue;
                }
                let Some(topic) = Topic::from_registry_field(k.as_bytes()?) else {
                    continue;
                };
                let n: i64 = std::str::from_utf8(v.as_bytes()?).ok()?.parse().ok()?;
                if n > 0 {
                    counts.insert(topic, n);
                }
            }
            marks.insert(id.clone(), own_marks);
            peers.insert(id, counts);
        }
        Some(Fleet { peers, marks })
    }

    /// The peers among `awaited` not yet subscribed on `server` for `shard`.
    pub fn not_back_on<'a>(
        &self,
        awaited: &'a HashSet<String>,
        shard: usize,
        server: &Bytes,
    ) -> Vec<&'a String> {
        awaited
            .iter()
            .filter(|p| {
                self.marks
                    .get(*p)
                    .and_then(|m| m.get(&shard))
                    .is_none_or(|s| s != server)
            })
            .collect()
    }

    pub fn ids(&self) -> HashSet<String> {
        self.peers.keys().cloned().collect()
    }

    /// This fleet with `own` standing for sidecar `id` (local counts are always current).
    pub fn with_own(mut self, id: &str, own: HashMap<Topic, i64>) -> Fleet {
        self.peers.insert(id.to_owned(), own);
        self
    }

    /// `PUBSUB NUMSUB` / `SHARDNUMSUB`: subscribers of each channel across the fleet.
    pub fn numsub(&self, kind: Kind, channel: &Bytes) -> i64 {
        let topic = Topic::new(kind, channel.clone());
        self.peers.values().filter_map(|c| c.get(&topic)).sum()
    }

    /// `PUBSUB NUMPAT`: distinct patterns subscribed anywhere in the fleet.
    pub fn numpat(&self) -> i64 {
        self.names(Kind::Pattern).len() as i64
    }

    /// `PUBSUB CHANNELS` / `SHARDCHANNELS`: distinct active channels, optionally glob-filtered.
    pub fn channels(&self, kind: Kind, pattern: Option<&[u8]>) -> Vec<Bytes> {
        let mut names: Vec<Bytes> = self
            .names(kind)
            .into_iter()
            .filter(|n| pattern.is_none_or(|p| glob::matches(p, n)))
            .collect();
        names.sort();
        names
    }

    /// Totals across the fleet, precomputed once per registry read so a publish's receiver
    /// count costs one lookup plus the patterns, however many pods and topics there are.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for counts in self.peers.values() {
            for (topic, n) in counts {
                *totals.by_topic.entry(topic.clone()).or_insert(0) += n;
            }
        }
        totals.patterns = totals
            .by_topic
            .iter()
            .filter(|(t, _)| t.kind == Kind::Pattern)
            .map(|(t, n)| (t.name.clone(), *n))
            .collect();
        totals
    }

    fn names(&self, kind: Kind) -> HashSet<Bytes> {
        self.peers
            .values()
            .flat_map(|c| c.keys())
            .filter(|t| t.kind == kind)
            .map(|t| t.name.clone())
            .collect()
    }
}

/// Subscriber counts summed over sidecars (see [`Fleet::totals`]).
#[derive(Debug, Default, Clone)]
pub struct Totals {
    by_topic: HashMap<Topic, i64>,
    patterns: Vec<(Bytes, i64)>,
}

impl Totals {
    /// How many application connections a publish to `channel` reaches: its subscribers plus
    /// those of every matching pattern (this is what `PUBLISH` replies).
    pub fn receivers(&self, kind: Kind, channel: &Bytes) -> i64 {
        // A clone of the name is a reference count: the lookup allocates nothing.
        let direct = self
            .by_topic
            .get(&Topic::new(kind, channel.clone()))
            .copied()
            .unwrap_or(0);
        if kind != Kind::Channel {
            return direct;
        }
        direct
            + self
                .patterns
                .iter()
                .filter(|(p, _)| glob::matches(p, channel))
                .map(|(_, n)| n)
                .sum::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(kind: Kind, name: &'static str) -> Topic {
        Topic::new(kind, Bytes::from_static(name.as_bytes()))
    }

    #[test]
    fn sums_across_sidecars_like_one_redis() {
        let mut fleet = Fleet::default();
        fleet.peers.insert(
            "a".into(),
            HashMap::from([
                (topic(Kind::Channel, "x"), 2),
                (topic(Kind::Pattern, "x*"), 1),
            ]),
        );
        fleet.peers.insert(
            "b".into(),
            HashMap::from([
                (topic(Kind::Channel, "x"), 1),
                (topic(Kind::Pattern, "x*"), 3),
            ]),
        );
        let x = Bytes::from_static(b"x");
        assert_eq!(fleet.numsub(Kind::Channel, &x), 3);
        assert_eq!(fleet.numsub(Kind::Shard, &x), 0);
        assert_eq!(fleet.numpat(), 1);
        assert_eq!(fleet.totals().receivers(Kind::Channel, &x), 7);
        assert_eq!(fleet.totals().receivers(Kind::Shard, &x), 0);
        assert_eq!(
            fleet.channels(Kind::Channel, Some(b"y*")),
            Vec::<Bytes>::new()
        );
        assert_eq!(fleet.channels(Kind::Channel, None), vec![x]);
    }

    #[test]
    fn parses_the_registry_reply_and_skips_zero_counts() {
        let b = |s: &'static str| Value::Bulk(Bytes::from_static(s.as_bytes()));
        let reply = Value::Array(vec![
            b("pod-1"),
            Value::Array(vec![
                b("alive"),
                b("1"),
                b("c:room"),
                b("2"),
                b("p:a*"),
                b("0"),
                b("up:0"),
                b("run-a"),
            ]),
            b("pod-2"),
            Value::Array(vec![b("alive"), b("1"), b("up:0"), b("run-old")]),
        ]);
        let fleet = Fleet::from_registry(&reply).unwrap();
        assert_eq!(
            fleet.peers["pod-1"],
            HashMap::from([(topic(Kind::Channel, "room"), 2)])
        );
        let awaited = HashSet::from(["pod-1".to_owned(), "pod-2".to_owned(), "pod-3".to_owned()]);
        let mut missing = fleet.not_back_on(&awaited, 0, &Bytes::from_static(b"run-a"));
        missing.sort();
        assert_eq!(
            missing,
            vec!["pod-2", "pod-3"],
            "an inherited mark is not a return"
        );
    }
}
