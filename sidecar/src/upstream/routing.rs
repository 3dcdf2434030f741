//! Which backplane shard a pass-through command goes to.
//!
//! On one server (or Sentinel group) every command goes to shard 0. On a Redis Cluster a
//! command goes to the primary serving the slot of its first key. The key positions come from
//! the cluster itself: `COMMAND` (first key, last key, step, the `movablekeys` flag, and the
//! same for subcommands such as `XINFO STREAM`), read once at start, so no command table is
//! written here. For the commands whose keys move (`EVAL`, `XREAD`, `ZUNION`, `SORT`...) the
//! cluster is asked `COMMAND GETKEYS` (the caller does, see `session::passthrough`).
//!
//! Only the first key decides: the node then checks the rest itself and answers exactly as
//! Redis Cluster does (`-CROSSSLOT` for keys in several slots, `-MOVED` inside a transaction
//! begun on another node). Commands that act on one node's whole keyspace are refused with
//! the reason: on a cluster their answer would silently cover one primary only.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::cluster::key_slot;
use super::pool::Pool;
use crate::resp::{Command, Value};

/// Per-node commands refused on a cluster (each would run on one primary of several).
const PER_NODE: &[&str] = &[
    "keys",
    "scan",
    "dbsize",
    "randomkey",
    "flushdb",
    "flushall",
    "swapdb",
];

/// Where a command's keys are, as `COMMAND` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    /// Index of the first key (0: none).
    first: usize,
    /// The keys move with the arguments: ask `COMMAND GETKEYS`.
    movable: bool,
    /// A container (`XINFO`, `OBJECT`...): the subcommand's own spec decides.
    container: bool,
}

/// The key positions of every command, from a `COMMAND` reply.
#[derive(Debug, Default)]
pub struct KeySpecs(HashMap<String, Spec>);

impl KeySpecs {
    /// Parses `COMMAND`: `[[name, arity, flags, first, last, step, acl, tips, specs, subs], ...]`.
    pub fn from_command(reply: &Value) -> Result<Self, String> {
        let mut specs = HashMap::new();
        for entry in reply.as_elements().ok_or("COMMAND did not answer a list")? {
            insert(&mut specs, entry);
        }
        if specs.is_empty() {
            return Err("COMMAND listed no commands".into());
        }
        Ok(KeySpecs(specs))
    }
}

fn insert(specs: &mut HashMap<String, Spec>, entry: &Value) {
    let Some(parts) = entry.as_elements() else {
        return;
    };
    let Some(name) = parts.first().and_then(Value::as_bytes) else {
        return;
    };
    let int = |i: usize| match parts.get(i) {
        Some(Value::Integer(n)) => usize::try_from(*n).unwrap_or(0),
        _ => 0,
    };
    let movable = parts
        .get(2)
        .and_then(Value::as_elements)
        .is_some_and(|flags| {
            flags
                .iter()
                .any(|f| f.as_bytes().is_some_and(|f| &f[..] == b"movablekeys"))
        });
    let subs = parts.get(9).and_then(Value::as_elements).unwrap_or(&[]);
    for sub in subs {
        insert(specs, sub);
    }
    specs.insert(
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        Spec {
            first: int(3),
            movable,
            container: !subs.is_empty(),
        },
    );
}

/// Where a command goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// This shard.
    Shard(usize),
    /// Its keys move: ask `COMMAND GETKEYS`, then [`Routes::by_key`] with the first.
    AskKeys,
    /// Refused, with this error.
    Refused(String),
}

/// The pass-through links of every shard, and how to choose among them.
pub struct Routes {
    pools: Vec<Arc<Pool>>,
    /// On a cluster: slot → shard, and the key positions.
    cluster: Option<(Arc<super::cluster::SlotMap>, KeySpecs)>,
}

impl Routes {
    /// One server: everything to its pool.
    pub fn single(pool: Arc<Pool>) -> Self {
        Routes {
            pools: vec![pool],
            cluster: None,
        }
    }

    /// A cluster: `pools[shard]`, chosen by the shard the slot map gives the first key's slot.
    pub fn cluster(
        pools: Vec<Arc<Pool>>,
        slots: Arc<super::cluster::SlotMap>,
        specs: KeySpecs,
    ) -> Self {
        Routes {
            pools,
            cluster: Some((slots, specs)),
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// The pass-through links of `shard`.
    pub fn pool(&self, shard: usize) -> &Arc<Pool> {
        &self.pools[shard.min(self.pools.len() - 1)]
    }

    /// The shard for `command` (lower-cased `name`).
    pub fn route(&self, name: &str, command: &Command) -> Route {
        let Some((_, specs)) = &self.cluster else {
            return Route::Shard(0);
        };
        if PER_NODE.contains(&name) {
            return Route::Refused(format!(
                "ERR switchboard: '{name}' acts on one node's keyspace, and this backplane is a Redis Cluster of {} primaries: the answer would cover one of them only; run it against each primary",
                self.pools.len()
            ));
        }
        let args = &command.args;
        let mut spec = specs.0.get(name);
        if spec.is_some_and(|s| s.container)
            && let Some(sub) = args.get(1)
        {
            let full = format!(
                "{name}|{}",
                String::from_utf8_lossy(sub).to_ascii_lowercase()
            );
            spec = specs.0.get(&full).or(spec);
        }
        match spec {
            Some(s) if s.movable => Route::AskKeys,
            Some(s) if s.first > 0 => match args.get(s.first) {
                Some(key) => Route::Shard(self.by_key(key)),
                None => Route::Shard(0),
            },
            // Keyless (INFO, TIME, SCRIPT LOAD...), or unknown to this server: shard 0, which
            // answers as any node would.
            _ => Route::Shard(0),
        }
    }

    /// The shard serving `key`'s slot.
    pub fn by_key(&self, key: &Bytes) -> usize {
        match &self.cluster {
            Some((slots, _)) => slots.shard(key_slot(key)),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::Endpoint;

    fn entry(name: &str, flags: &[&str], first: i64, subs: Vec<Value>) -> Value {
        let bulk = |s: &str| Value::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        Value::Array(vec![
            bulk(name),
            Value::Integer(-2),
            Value::Array(flags.iter().map(|f| bulk(f)).collect()),
            Value::Integer(first),
            Value::Integer(first),
            Value::Integer(1),
            Value::Array(vec![]),
            Value::Array(vec![]),
            Value::Array(vec![]),
            Value::Array(subs),
        ])
    }

    fn routes() -> Routes {
        let reply = Value::Array(vec![
            entry("get", &["readonly"], 1, vec![]),
            entry("eval", &["movablekeys"], 0, vec![]),
            entry("info", &[], 0, vec![]),
            entry(
                "xinfo",
                &[],
                0,
                vec![entry("xinfo|stream", &["readonly"], 2, vec![])],
            ),
        ]);
        let specs = KeySpecs::from_command(&reply).unwrap();
        let pool = |_| {
            Arc::new(Pool::new(
                Endpoint::parse("redis://127.0.0.1:1").unwrap(),
                1,
                Arc::new(Metrics::default()),
            ))
        };
        let mut slots = vec![0u16; 16384];
        slots[8192..].fill(1);
        let map = Arc::new(crate::upstream::cluster::SlotMap::new(slots.into()));
        Routes::cluster((0..2).map(pool).collect(), map, specs)
    }

    fn cmd(args: &[&str]) -> Command {
        Command::from_args(args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())))
    }

    #[test]
    fn the_first_key_decides_from_the_servers_own_command_table() {
        let r = routes();
        // `CLUSTER KEYSLOT foo` = 12182, `bar` = 5061.
        assert_eq!(r.route("get", &cmd(&["GET", "foo"])), Route::Shard(1));
        assert_eq!(r.route("get", &cmd(&["GET", "bar"])), Route::Shard(0));
        assert_eq!(r.route("get", &cmd(&["GET", "x{foo}"])), Route::Shard(1));
        assert_eq!(
            r.route("xinfo", &cmd(&["XINFO", "STREAM", "foo"])),
            Route::Shard(1),
            "a subcommand's own key position"
        );
        assert_eq!(
            r.route("eval", &cmd(&["EVAL", "s", "1", "foo"])),
            Route::AskKeys
        );
        assert_eq!(r.route("info", &cmd(&["INFO"])), Route::Shard(0));
        assert_eq!(r.route("nosuch", &cmd(&["NOSUCH", "foo"])), Route::Shard(0));
        let Route::Refused(why) = r.route("keys", &cmd(&["KEYS", "*"])) else {
            panic!("KEYS is per node")
        };
        assert!(why.contains("Redis Cluster of 2 primaries"), "{why}");
        assert!(KeySpecs::from_command(&Value::Array(vec![])).is_err());
    }
}
