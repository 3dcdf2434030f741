//! The fleet registry: how sidecars tell each other their local subscription counts.
//!
//! Each sidecar keeps one hash in the backplane, `<prefix>switchboard:peer:<id>`, mapping
//! `c:<channel>`, `p:<pattern>` and `s:<shard channel>` to its number of local subscribers, plus
//! an `alive` field so the hash exists even with no subscriptions. The hash has a TTL renewed on
//! every heartbeat, so a sidecar that dies stops being counted after `--peer-ttl-ms`; a sorted set
//! `<prefix>switchboard:peers` lists the ids to read. Changes are written before the local client
//! gets its confirmation, so a `NUMSUB` anywhere in the fleet right after a `SUBSCRIBE` sees it.
//!
//! Fields `up:<shard>` hold the `run_id` of the server this sidecar is subscribed on for each
//! shard, written once its subscriptions there are restored. After an outage a sidecar flushes
//! its buffered publishes only when every peer's mark names the server it reconnected to itself:
//! mere presence of an entry proves nothing after a Sentinel failover, because the new primary
//! inherited every entry from the old one by replication.
//!
//! Every operation is one Lua script, so it is atomic and costs one round trip. Scripts touch
//! keys they do not declare, which standalone Redis allows; the registry always lives on the
//! backplane's first shard (shard 0). On a Redis Cluster every key carries the hash tag
//! `{<prefix>switchboard}`, so they share one slot (the scripts' undeclared keys included, which
//! the cluster allows within the slot), and shard 0 is the primary serving it.

use bytes::Bytes;

use crate::pubsub::Topic;
use crate::resp::Command;

/// Replaces this sidecar's entry with a full snapshot and (re)lists it.
const SNAPSHOT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'alive', '1')
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
";

/// Applies count changes; returns 0 (and changes nothing) if the entry is gone, which means the
/// backplane lost it (a restart, an expiry) and a snapshot must follow.
const ADJUST: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) <= 0 then redis.call('HDEL', KEYS[1], ARGV[i]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// The heartbeat: renews the TTL; 0 if the entry is gone (a snapshot must follow).
const TOUCH: &str = r"
if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
";

/// Sets one field (a shard's server mark; empty: removes it); 0 if the entry is gone (a snapshot
/// must follow).
const MARK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[2]) else redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// Reads every live entry, forgetting ids whose hash expired.
const READ: &str = r"
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h == 0 then redis.call('ZREM', KEYS[1], id) else out[#out + 1] = id; out[#out + 1] = h end
end
return out
";

/// Removes this sidecar's entry (on graceful shutdown).
const LEAVE: &str = r"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

/// Builds the registry commands for one sidecar.
#[derive(Debug, Clone)]
pub struct Registry {
    id: String,
    ttl_ms: u64,
    peers_key: String,
    peer_prefix: String,
}

impl Registry {
    pub fn new(channel_prefix: &str, id: &str, ttl_ms: u64) -> Self {
        Registry {
            id: id.to_owned(),
            ttl_ms,
            peers_key: format!("{channel_prefix}switchboard:peers"),
            peer_prefix: format!("{channel_prefix}switchboard:peer:"),
        }
    }

    /// The same registry with its keys under one hash tag, for a Redis Cluster.
    pub fn for_cluster(channel_prefix: &str, id: &str, ttl_ms: u64) -> Self {
        let tag = Self::cluster_tag(channel_prefix);
        Registry {
            id: id.to_owned(),
            ttl_ms,
            peers_key: format!("{tag}:peers"),
            peer_prefix: format!("{tag}:peer:"),
        }
    }

    /// The hash tag of the registry's keys on a cluster: its slot decides shard 0.
    pub fn cluster_tag(channel_prefix: &str) -> String {
        format!("{{{channel_prefix}switchboard}}")
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn own_key(&self) -> String {
        format!("{}{}", self.peer_prefix, self.id)
    }

    fn eval(&self, script: &str, argv: Vec<Bytes>) -> Command {
        let mut args: Vec<Bytes> = vec![
            Bytes::from_static(b"EVAL"),
            Bytes::copy_from_slice(script.as_bytes()),
            Bytes::from_static(b"2"),
            self.own_key().into(),
            self.peers_key.clone().into(),
        ];
        args.extend(argv);
        Command::from_args(args)
    }

    /// The whole entry: counts, and the server marks of the shards restored so far.
    pub fn snapshot<'a>(
        &self,
        counts: impl IntoIterator<Item = (&'a Topic, i64)>,
        marks: impl IntoIterator<Item = (usize, &'a Bytes)>,
    ) -> Command {
        let mut argv = vec![self.id.clone().into(), self.ttl_ms.to_string().into()];
        for (shard, server) in marks {
            argv.push(mark_field(shard));
            argv.push(server.clone());
        }
        for (topic, n) in counts {
            if n > 0 {
                argv.push(topic.registry_field());
                argv.push(n.to_string().into());
            }
        }
        self.eval(SNAPSHOT, argv)
    }

    pub fn adjust<'a>(&self, deltas: impl IntoIterator<Item = (&'a Topic, i64)>) -> Command {
        let mut argv = vec![self.ttl_ms.to_string().into()];
        for (topic, d) in deltas {
            argv.push(topic.registry_field());
            argv.push(d.to_string().into());
        }
        self.eval(ADJUST, argv)
    }

    /// Records that this sidecar's subscriptions on `shard` are in place on `server` (`None`:
    /// that they are not, any more).
    pub fn mark(&self, shard: usize, server: Option<&Bytes>) -> Command {
        self.eval(
            MARK,
            vec![
                self.ttl_ms.to_string().into(),
                mark_field(shard),
                server.cloned().unwrap_or_default(),
            ],
        )
    }

    pub fn touch(&self) -> Command {
        self.eval(
            TOUCH,
            vec![self.id.clone().into(), self.ttl_ms.to_string().into()],
        )
    }

    pub fn leave(&self) -> Command {
        self.eval(LEAVE, vec![self.id.clone().into()])
    }

    pub fn read(&self) -> Command {
        Command::from_args([
            Bytes::from_static(b"EVAL"),
            Bytes::copy_from_slice(READ.as_bytes()),
            Bytes::from_static(b"1"),
            self.peers_key.clone().into(),
            self.peer_prefix.clone().into(),
        ])
    }
}

/// The registry field holding a shard's server mark.
pub fn mark_field(shard: usize) -> Bytes {
    format!("up:{shard}").into()
}

/// The shard a registry field marks, if it is a mark.
pub fn marked_shard(field: &[u8]) -> Option<usize> {
    std::str::from_utf8(field.strip_prefix(b"up:")?)
        .ok()?
        .parse()
        .ok()
}
