//! A Redis Cluster as the backplane: its slot map, asked of the seed nodes.
//!
//! The URL `redis+cluster://host1:port1,host2:port2` (`rediss+cluster://` for TLS) names seeds,
//! not shards. At start the sidecar asks them `CLUSTER SLOTS` (answered by every Redis Cluster
//! version, and by the managed ones) and makes one backplane shard per primary, each a
//! [`Target::Cluster`] that remembers one slot it owns. Every (re)connect of a shard asks again
//! which node owns that slot, so a failover (a replica promoted) is a reconnect that lands on the
//! new primary, as behind Sentinel.
//!
//! The slots are hashed as Redis Cluster hashes keys (CRC-16/XMODEM of the hash tag, if the
//! name has one, else of the whole name), so the sidecar and the cluster always agree on which
//! node a channel or key lives on.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{Addr, Endpoint, Target, UpstreamError, command};
use crate::relay::shard::crc16;
use crate::resp::Value;

/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;

/// How long one seed may take to answer before the next is asked.
const SEED_TIMEOUT: Duration = Duration::from_secs(2);

/// The slot of a key or shard channel, as Redis Cluster computes it (hash tags honoured).
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(0, hash_tag(key).unwrap_or(key)) % SLOTS
}

/// What is between the first `{` and the next `}`, when that is not empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let len = key[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// A short hash tag whose slot is `slot`: `{n}` for the smallest such number `n`. Every sidecar
/// computes the same one, so names built with it (a shard's own channels) agree fleet-wide.
pub fn tag_for_slot(slot: u16) -> String {
    (0u32..)
        .map(|n| n.to_string())
        .find(|n| key_slot(n.as_bytes()) == slot)
        .map(|n| format!("{{{n}}}"))
        .expect("every slot is reached by some number")
}

/// The slot map every part of the sidecar routes by (relay, pass-through), swapped whole when
/// the cluster is resharded (see `relay::topology`).
#[derive(Debug)]
pub struct SlotMap {
    table: RwLock<Arc<[u16]>>,
    /// A hash of the table: equal on every sidecar that sees the same map, so it can say in the
    /// registry which map its subscriptions follow.
    epoch: AtomicU64,
}

impl SlotMap {
    pub fn new(table: Arc<[u16]>) -> Self {
        let epoch = epoch_of(&table);
        SlotMap {
            table: RwLock::new(table),
            epoch: AtomicU64::new(epoch),
        }
    }

    /// The shard serving `slot`.
    pub fn shard(&self, slot: u16) -> usize {
        usize::from(self.table.read().expect("slot map poisoned")[usize::from(slot)])
    }

    pub fn table(&self) -> Arc<[u16]> {
        self.table.read().expect("slot map poisoned").clone()
    }

    /// Replaces the table; false if it was the same.
    pub fn replace(&self, table: Arc<[u16]>) -> bool {
        let mut current = self.table.write().expect("slot map poisoned");
        if *current == table {
            return false;
        }
        self.epoch.store(epoch_of(&table), Ordering::Relaxed);
        *current = table;
        true
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// The lowest slot `shard` serves (it names the shard's own channels), if any.
    pub fn first_slot(&self, shard: usize) -> Option<u16> {
        let table = self.table();
        (0..SLOTS).find(|&s| usize::from(table[usize::from(s)]) == shard)
    }
}

/// FNV-1a of the table.
fn epoch_of(table: &[u16]) -> u64 {
    table.iter().fold(0xcbf2_9ce4_8422_2325, |h, &s| {
        (h ^ u64::from(s)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One primary and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub addr: Addr,
    /// Inclusive ranges, in order.
    pub ranges: Vec<(u16, u16)>,
}

impl Primary {
    /// The lowest slot it serves: names the shard in the registry and in its own channels.
    pub fn first_slot(&self) -> u16 {
        self.ranges.iter().map(|r| r.0).min().unwrap_or(0)
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }
}

/// The cluster's primaries, ordered by their lowest slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub primaries: Vec<Primary>,
}

impl Topology {
    /// Slot → index in `primaries`; `None` if some slot has no primary (the cluster is not
    /// fully set up: Redis Cluster itself refuses commands then, `CLUSTERDOWN`).
    pub fn slot_table(&self) -> Option<Vec<u16>> {
        let mut table = vec![u16::MAX; usize::from(SLOTS)];
        for (i, p) in self.primaries.iter().enumerate() {
            for &(lo, hi) in &p.ranges {
                for slot in lo..=hi.min(SLOTS - 1) {
                    table[usize::from(slot)] = u16::try_from(i).ok()?;
                }
            }
        }
        (!table.contains(&u16::MAX)).then_some(table)
    }

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...], replicas...], ...]`.
    pub fn from_slots(reply: &Value) -> Result<Self, String> {
        let bad = || format!("unexpected CLUSTER SLOTS reply {reply:?}");
        let mut primaries: Vec<Primary> = Vec::new();
        for range in reply.as_elements().ok_or_else(bad)? {
            let parts = range.as_elements().ok_or_else(bad)?;
            let int = |i: usize| match parts.get(i) {
                Some(Value::Integer(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (lo, hi) = (int(0).ok_or_else(bad)?, int(1).ok_or_else(bad)?);
            let node = parts.get(2).and_then(Value::as_elements).ok_or_else(bad)?;
            let host = node
                .first()
                .and_then(Value::as_bytes)
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .ok_or_else(bad)?;
            let port = match node.get(1) {
                Some(Value::Integer(p)) => u16::try_from(*p).map_err(|_| bad())?,
                _ => return Err(bad()),
            };
            let addr = Addr { host, port };
            match primaries.iter_mut().find(|p| p.addr == addr) {
                Some(p) => p.ranges.push((lo, hi)),
                None => primaries.push(Primary {
                    addr,
                    ranges: vec![(lo, hi)],
                }),
            }
        }
        for p in &mut primaries {
            p.ranges.sort_unstable();
        }
        primaries.sort_by_key(Primary::first_slot);
        Ok(Topology { primaries })
    }

    /// The primary serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<&Primary> {
        self.primaries.iter().find(|p| p.owns(slot))
    }

    /// This topology as a table over the shards of `current`: each primary becomes the shard
    /// whose slots it shares most of (a resharding moves some slots, a failover none), so shard
    /// numbers stay stable. `None` if the primaries are not one per shard (one was added or
    /// removed: the sidecars must restart to use it) or some slot has no primary.
    pub fn table_over(&self, current: &[u16], shards: usize) -> Option<Vec<u16>> {
        if self.primaries.len() != shards {
            return None;
        }
        let mut overlap = vec![vec![0usize; shards]; shards];
        for (p, primary) in self.primaries.iter().enumerate() {
            for &(lo, hi) in &primary.ranges {
                for slot in lo..=hi.min(SLOTS - 1) {
                    overlap[p][usize::from(current[usize::from(slot)])] += 1;
                }
            }
        }
        // Greedy by largest overlap: a handful of primaries.
        let mut shard_of = vec![usize::MAX; shards];
        let mut taken = vec![false; shards];
        let mut pairs: Vec<(usize, usize, usize)> = (0..shards)
            .flat_map(|p| (0..shards).map(move |s| (p, s)))
            .map(|(p, s)| (overlap[p][s], p, s))
            .collect();
        pairs.sort_unstable_by(|a, b| b.cmp(a));
        for (_, p, s) in pairs {
            if shard_of[p] == usize::MAX && !taken[s] {
                shard_of[p] = s;
                taken[s] = true;
            }
        }
        let mut table = vec![u16::MAX; usize::from(SLOTS)];
        for (p, primary) in self.primaries.iter().enumerate() {
            for &(lo, hi) in &primary.ranges {
                for slot in lo..=hi.min(SLOTS - 1) {
                    table[usize::from(slot)] = u16::try_from(shard_of[p]).ok()?;
                }
            }
        }
        (!table.contains(&u16::MAX)).then_some(table)
    }
}

/// Asks the seeds, in turn (starting with the one that answered last), for the slot map.
pub async fn discover(endpoint: &Endpoint) -> Result<Topology, UpstreamError> {
    let Target::Cluster {
        seeds, preferred, ..
    } = &endpoint.target
    else {
        unreachable!("discover is only called for cluster endpoints")
    };
    discover_from(endpoint, seeds, preferred).await
}

async fn discover_from(
    endpoint: &Endpoint,
    seeds: &[Addr],
    preferred: &Arc<AtomicUsize>,
) -> Result<Topology, UpstreamError> {
    let first = preferred.load(Ordering::Relaxed) % seeds.len();
    let mut failures = Vec::new();
    for i in 0..seeds.len() {
        let at = (first + i) % seeds.len();
        let seed = &seeds[at];
        match tokio::time::timeout(SEED_TIMEOUT, ask(endpoint, seed)).await {
            Ok(Ok(topology)) => {
                preferred.store(at, Ordering::Relaxed);
                return Ok(topology);
            }
            Ok(Err(Refusal::NotCluster)) => {
                return Err(UpstreamError::NotCluster {
                    endpoint: endpoint.to_string(),
                    addr: seed.clone(),
                });
            }
            Ok(Err(Refusal::Failed(e))) => failures.push(format!("{seed}: {e}")),
            Err(_) => failures.push(format!("{seed}: no answer within {SEED_TIMEOUT:?}")),
        }
    }
    Err(UpstreamError::NoClusterSeed {
        endpoint: endpoint.to_string(),
        failures: failures.join("; "),
    })
}

/// Where the primary of `slot` is right now.
pub(super) async fn primary_of(
    endpoint: &Endpoint,
    seeds: &[Addr],
    slot: u16,
    preferred: &Arc<AtomicUsize>,
) -> Result<Addr, UpstreamError> {
    let topology = discover_from(endpoint, seeds, preferred).await?;
    topology
        .owner(slot)
        .map(|p| p.addr.clone())
        .ok_or_else(|| UpstreamError::NoClusterSeed {
            endpoint: endpoint.to_string(),
            failures: format!("no primary serves slot {slot} right now (CLUSTERDOWN?)"),
        })
}

enum Refusal {
    NotCluster,
    Failed(String),
}

/// One seed, authenticated with the backplane's own credentials when there are any.
async fn ask(endpoint: &Endpoint, seed: &Addr) -> Result<Topology, Refusal> {
    let failed = |e: UpstreamError| Refusal::Failed(e.to_string());
    let mut link = endpoint.dial(seed).await.map_err(failed)?;
    if let Some(pw) = &endpoint.password {
        let auth = match &endpoint.username {
            Some(user) => command(&["AUTH", user, pw]),
            None => command(&["AUTH", pw]),
        };
        if let Value::Error(e) = link.call(&auth.raw).await.map_err(failed)? {
            return Err(Refusal::Failed(format!(
                "refused AUTH: {}",
                String::from_utf8_lossy(&e)
            )));
        }
    }
    let reply = link
        .call(&command(&["CLUSTER", "SLOTS"]).raw)
        .await
        .map_err(failed)?;
    match &reply {
        Value::Error(e) if e.windows(7).any(|w| w == b"cluster") => Err(Refusal::NotCluster),
        Value::Error(e) => Err(Refusal::Failed(String::from_utf8_lossy(e).into_owned())),
        _ => Topology::from_slots(&reply).map_err(Refusal::Failed),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn slots_are_redis_clusters_with_hash_tags() {
        // `CLUSTER KEYSLOT` of Redis 7.0 for each.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(0, b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        for slot in [0, 5460, 5461, 16383] {
            let tag = tag_for_slot(slot);
            assert_eq!(key_slot(format!("x:{tag}:y").as_bytes()), slot, "{tag}");
        }
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::Bulk(Bytes::copy_from_slice(host.as_bytes())),
            Value::Integer(port),
            Value::Bulk(Bytes::from_static(b"id")),
        ])
    }

    #[test]
    fn parses_cluster_slots_into_primaries_by_first_slot() {
        let range = |lo, hi, primary: Value| {
            Value::Array(vec![
                Value::Integer(lo),
                Value::Integer(hi),
                primary,
                node("10.0.0.9", 7009),
            ])
        };
        let reply = Value::Array(vec![
            range(5461, 10922, node("10.0.0.2", 7002)),
            range(0, 5000, node("10.0.0.1", 7001)),
            range(10923, 16383, node("10.0.0.3", 7003)),
            range(5001, 5460, node("10.0.0.2", 7002)),
        ]);
        let t = Topology::from_slots(&reply).unwrap();
        assert_eq!(t.primaries.len(), 3);
        assert_eq!(t.primaries[0].addr.to_string(), "10.0.0.1:7001");
        assert_eq!(t.primaries[1].ranges, vec![(5001, 5460), (5461, 10922)]);
        assert_eq!(t.owner(5200).unwrap().addr.port, 7002);
        let table = t.slot_table().unwrap();
        assert_eq!((table[0], table[5001], table[16383]), (0, 1, 2));
        // A resharding keeps shard numbers: the primary that kept most of shard 1's slots is
        // still shard 1, whatever its place in the list.
        let current = t.slot_table().unwrap();
        let moved = Topology::from_slots(&Value::Array(vec![
            range(0, 4000, node("10.0.0.1", 7001)),
            range(4001, 10922, node("10.0.0.2", 7002)),
            range(10923, 16383, node("10.0.0.3", 7003)),
        ]))
        .unwrap();
        let over = moved.table_over(&current, 3).unwrap();
        assert_eq!((over[0], over[4500], over[16383]), (0, 1, 2));
        assert_eq!(moved.table_over(&current, 4), None, "a primary was added");
        let map = SlotMap::new(current.into());
        let before = map.epoch();
        assert!(!map.replace(map.table()));
        assert!(map.replace(over.into()));
        assert_ne!(map.epoch(), before);
        assert_eq!((map.shard(4500), map.first_slot(1)), (1, Some(4001)));
        let partial = Topology::from_slots(&Value::Array(vec![range(0, 5, node("h", 1))]));
        assert_eq!(partial.unwrap().slot_table(), None, "slots without owner");
        assert!(Topology::from_slots(&Value::Integer(1)).is_err());
    }
}
