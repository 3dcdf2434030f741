//! Which backplane shard a channel lives on.
//!
//! A channel lives on shard `(crc16(name) % 16384) % shards`: its Redis Cluster hash slot, modulo
//! the number of shards. `name` is the channel as it appears on the backplane, **with** the
//! channel prefix, and `crc16` is CRC-16/XMODEM (polynomial 0x1021, initial value 0, no
//! reflection), Redis Cluster's key-slot checksum, so any Redis client library can compute a
//! channel's shard (`slot(name) % shards`). Hashing the prefixed name
//! keeps the rule "the name you see in `PUBSUB CHANNELS` decides the shard"; every sidecar of a
//! cluster shares the prefix (they would not hear each other otherwise), so all of them agree.
//! No hash tags: socket.io's channels are not keys and gain nothing from co-location.
//!
//! Shard channels (`SSUBSCRIBE`/`SPUBLISH`) follow the same rule. Patterns can match channels on
//! any shard, so a pattern is subscribed on every shard. The fleet registry and pass-through
//! commands stay on shard 0.
//!
//! On a Redis Cluster (see `upstream::cluster`) the shards are the cluster's primaries and a
//! channel lives where the cluster says its slot is: the slot of the prefixed name as Redis
//! Cluster hashes keys (hash tags honoured, since the cluster honours them for `SPUBLISH`),
//! looked up in the slot map. There the app's classic channels are shard channels named
//! [`CLASSIC`]`<channel>` upstream, apart from its own shard channels (a `PUBLISH foo` must not
//! reach an `SSUBSCRIBE foo`), and hashed by that name.

use crate::pubsub::{Kind, Topic};

/// Redis Cluster's number of hash slots.
const SLOTS: usize = 16384;

/// On a cluster, what an app's classic channel is called upstream, before its name (after the
/// channel prefix).
pub const CLASSIC: &[u8] = b"__c:";

/// Routes topics to shards for one sidecar.
#[derive(Debug, Clone)]
pub struct Router {
    prefix: bytes::Bytes,
    shards: usize,
    /// On a cluster: slot → shard.
    slots: Option<std::sync::Arc<crate::upstream::cluster::SlotMap>>,
}

impl Router {
    pub fn new(prefix: bytes::Bytes, shards: usize) -> Self {
        assert!(shards > 0, "a bridged relay has at least one shard");
        Router {
            prefix,
            shards,
            slots: None,
        }
    }

    /// Routes by a cluster's slot map (which can change: a resharding).
    pub fn cluster(
        prefix: bytes::Bytes,
        slots: std::sync::Arc<crate::upstream::cluster::SlotMap>,
    ) -> Self {
        let shards = slots
            .table()
            .iter()
            .map(|&s| usize::from(s) + 1)
            .max()
            .unwrap_or(1);
        Router {
            prefix,
            shards,
            slots: Some(slots),
        }
    }

    /// The shard of a channel or shard channel, named as the application names it.
    pub fn shard_of(&self, kind: Kind, channel: &[u8]) -> usize {
        if let (Some(slots), Some(slot)) = (&self.slots, self.slot_of(kind, channel)) {
            return slots.shard(slot);
        }
        if self.shards == 1 {
            return 0;
        }
        let slot = usize::from(crc16(crc16(0, &self.prefix), channel)) % SLOTS;
        slot % self.shards
    }

    /// On a cluster, the slot of the name `channel` has there (the app's classic channels are
    /// marked, see [`CLASSIC`]).
    pub fn slot_of(&self, kind: Kind, channel: &[u8]) -> Option<u16> {
        self.slots.as_ref()?;
        let mut name = Vec::with_capacity(self.prefix.len() + CLASSIC.len() + channel.len());
        name.extend_from_slice(&self.prefix);
        if kind == Kind::Channel {
            name.extend_from_slice(CLASSIC);
        }
        name.extend_from_slice(channel);
        Some(crate::upstream::cluster::key_slot(&name))
    }

    /// On a cluster, the slot map as it is now.
    pub fn table(&self) -> Option<std::sync::Arc<[u16]>> {
        Some(self.slots.as_ref()?.table())
    }

    /// On a cluster, the lowest slot `shard` serves now (its own channels carry its tag).
    pub fn first_slot(&self, shard: usize) -> Option<u16> {
        self.slots.as_ref()?.first_slot(shard)
    }

    /// Every topic grouped by the shards it is subscribed on (patterns on all of them).
    pub fn split(&self, topics: &[Topic]) -> Vec<Vec<Topic>> {
        let mut by_shard = vec![Vec::new(); self.shards];
        for topic in topics {
            if topic.kind == Kind::Pattern {
                by_shard.iter_mut().for_each(|s| s.push(topic.clone()));
            } else {
                by_shard[self.shard_of(topic.kind, &topic.name)].push(topic.clone());
            }
        }
        by_shard
    }
}

/// On a cluster, the shard that carries the all-messages copies of every publish sidecar `id`
/// makes (see `backplane::Part`): one per sidecar, so a pattern subscriber gets one
/// publisher's messages in order, and spread over the shards by the sidecars' ids.
pub fn copy_shard(id: &str, shards: usize) -> usize {
    usize::from(crc16(0, id.as_bytes())) % shards.max(1)
}

/// CRC-16/XMODEM, continuing from `crc` (start with 0). Bitwise rather than table-driven: a
/// channel name is hashed once per publish or subscribe, a few dozen bytes.
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn crc16_is_xmodem_as_in_redis_cluster() {
        // The check value of CRC-16/XMODEM, and Redis Cluster's own examples
        // (`CLUSTER KEYSLOT foo` = 12182, `bar` = 5061).
        assert_eq!(crc16(0, b"123456789"), 0x31C3);
        assert_eq!(crc16(0, b"foo") % 16384, 12182);
        assert_eq!(crc16(0, b"bar") % 16384, 5061);
        assert_eq!(crc16(crc16(0, b"12345"), b"6789"), 0x31C3, "it streams");
    }

    #[test]
    fn the_prefixed_name_decides_and_patterns_go_everywhere() {
        let plain = Router::new(Bytes::new(), 2);
        let prefixed = Router::new(Bytes::from_static(b"fo"), 2);
        assert_eq!(
            prefixed.shard_of(Kind::Channel, b"o"),
            plain.shard_of(Kind::Shard, b"foo")
        );
        assert_eq!(plain.shard_of(Kind::Channel, b"foo"), 12182 % 2);
        let topics = [
            Topic::new(Kind::Channel, Bytes::from_static(b"foo")),
            Topic::new(Kind::Shard, Bytes::from_static(b"bar")),
            Topic::new(Kind::Pattern, Bytes::from_static(b"f*")),
        ];
        let split = Router::new(Bytes::new(), 3).split(&topics);
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), 2 + 3);
        assert!(split.iter().all(|s| s.contains(&topics[2])));
        assert!(split[12182 % 3].contains(&topics[0]));
        assert!(split[5061 % 3].contains(&topics[1]));
    }

    #[test]
    fn on_a_cluster_the_slot_map_decides_with_hash_tags() {
        let mut slots = vec![0u16; 16384];
        slots[12182..].fill(1);
        let map = crate::upstream::cluster::SlotMap::new(slots.into());
        let router = Router::cluster(Bytes::from_static(b"fo"), std::sync::Arc::new(map));
        assert_eq!(router.shard_of(Kind::Shard, b"o"), 1, "foo is slot 12182");
        let slot = |name: &[u8]| crate::upstream::cluster::key_slot(name);
        let classic = usize::from(slot(b"fo__c:o") >= 12182);
        assert_eq!(router.shard_of(Kind::Channel, b"o"), classic);
        let tagged = usize::from(slot(b"bar") >= 12182);
        assert_eq!(
            router.shard_of(Kind::Channel, b"x{bar}"),
            tagged,
            "the tag alone"
        );
        assert_eq!(router.split(&[]).len(), 2);
    }
}
