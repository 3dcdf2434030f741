//! A real Redis Cluster on loopback: `redis-server` processes in cluster mode, joined into one
//! cluster by `redis-cli --cluster create`, all killed on drop. Every wait is a poll with a
//! deadline on what the nodes themselves report (`CLUSTER INFO`, `CLUSTER SLOTS`, `ROLE`), never
//! a fixed sleep: `redis-cli` returns as soon as the nodes have met, when `cluster_state:ok` may
//! already be reported but the replicas have not synced (nor even appear in `CLUSTER SLOTS`).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::client::RawClient;
use super::process::{RedisServer, TempDir, free_port};
use super::resp::Value;
use super::sentinel::query;

const REDIS_CLI: &str = "redis-cli";
/// Every cluster has this many hash slots.
pub const SLOTS: u16 = 16384;
/// A node is suspected down after a second of silence, so a failover takes a few seconds.
const NODE_TIMEOUT_MS: u64 = 1000;
/// Long enough for a failover (failure detection, election, the other replicas' resync) on a
/// small, loaded machine.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// `redis-cli --cluster` waits for the cluster to join itself, with no deadline of its own.
const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// Each poll asks every node three questions on fresh connections: not every 20 ms.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// One contiguous run of slots and who serves it, as `CLUSTER SLOTS` reports it (the replicas
/// sorted: each node lists them in the order it learnt of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub primary: SocketAddr,
    pub replicas: Vec<SocketAddr>,
}

impl SlotRange {
    pub fn contains(&self, slot: u16) -> bool {
        (self.start..=self.end).contains(&slot)
    }

    fn len(&self) -> usize {
        usize::from(self.end - self.start) + 1
    }
}

/// One cluster node; a killed one keeps its place (its log stays readable, its process is gone).
struct Node {
    server: RedisServer,
    killed: bool,
}

/// `primaries` shards of one primary and `replicas_per_primary` replicas each.
pub struct RedisCluster {
    /// Every node ever started, in start order (`redis-cli` made the first `primaries` of them
    /// the primaries).
    nodes: Vec<Node>,
    primaries: usize,
    /// The nodes' `nodes-<port>.conf` files and `redis-cli`'s output. Declared after `nodes`, so
    /// it is removed after the processes writing into it are killed.
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node agrees on who serves
    /// each of the 16384 slots and every replica has synced with its primary.
    pub fn start(primaries: usize, replicas_per_primary: usize) -> Self {
        Self::start_with_args(primaries, replicas_per_primary, &[])
    }

    /// The same, with extra `redis-server` arguments for every node (a `--tls-port`, say). The
    /// fixture's own queries and `redis-cli` use the plain ports without `AUTH`, so the extra
    /// arguments must leave those open.
    pub fn start_with_args(
        primaries: usize,
        replicas_per_primary: usize,
        extra_args: &[&str],
    ) -> Self {
        // redis-cli refuses fewer ("Redis Cluster requires at least 3 master nodes").
        assert!(
            primaries >= 3,
            "a Redis Cluster needs at least 3 primaries, not {primaries}"
        );
        let dir = TempDir::new("cluster");
        let total = primaries * (1 + replicas_per_primary);
        let nodes = (0..total)
            .map(|_| {
                let port = free_port();
                // The bus port too: the default (port + 10000) is not checked free, and from
                // 22768 up it lies in the ephemeral range that outgoing connections take.
                let bus_port = free_port().to_string();
                let conf = dir.path().join(format!("nodes-{port}.conf"));
                let conf = conf.display().to_string();
                let node_timeout = NODE_TIMEOUT_MS.to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port,
                    "--cluster-config-file",
                    &conf,
                    "--cluster-node-timeout",
                    &node_timeout,
                    // A primary otherwise waits 5 s for more replicas before a diskless full
                    // sync: the replicas' first sync, and a resync after a failover.
                    "--repl-diskless-sync-delay",
                    "0",
                    // Redis 7.0 leaves a replica out of `CLUSTER SLOTS` while its replication
                    // offset is 0, as it is in an empty cluster until the primary's first
                    // replication PING: every 10 s by default.
                    "--repl-ping-replica-period",
                    "1",
                ];
                args.extend_from_slice(extra_args);
                Node {
                    server: RedisServer::start_on_port(port, None, &args),
                    killed: false,
                }
            })
            .collect();
        let cluster = Self {
            nodes,
            primaries,
            dir,
        };
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(cluster.nodes.iter().map(|n| n.server.addr().to_string()));
        create.extend([
            "--cluster-replicas".into(),
            replicas_per_primary.to_string(),
            "--cluster-yes".into(),
        ]);
        cluster.redis_cli("redis-cli --cluster create", &create);
        cluster.wait_until_settled(
            &format!(
                "the new cluster ({primaries} primaries, {replicas_per_primary} replicas each)"
            ),
            |ranges| match ranges
                .iter()
                .find(|r| r.replicas.len() != replicas_per_primary)
            {
                Some(r) => Err(format!(
                    "{} has {} replicas, not {replicas_per_primary}",
                    r.primary,
                    r.replicas.len()
                )),
                None => Ok(()),
            },
        );
        cluster
    }

    /// Every live node (killed ones are left out), in start order.
    pub fn seeds(&self) -> Vec<SocketAddr> {
        self.live().map(|n| n.server.addr()).collect()
    }

    /// The URL the sidecar's `--upstream` takes: the current primaries as seeds.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.primaries().iter().map(|a| a.to_string()).collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Who serves which slots now, per `CLUSTER SLOTS` of the first live node that answers.
    pub fn slot_ranges(&self) -> Vec<SlotRange> {
        let reply = self.ask(&["CLUSTER", "SLOTS"]);
        parse_slots(&reply).unwrap_or_else(|e| panic!("CLUSTER SLOTS: {e}"))
    }

    /// The current primaries (those serving slots), sorted.
    pub fn primaries(&self) -> Vec<SocketAddr> {
        let mut primaries: Vec<SocketAddr> = self.slot_ranges().iter().map(|r| r.primary).collect();
        primaries.sort();
        primaries.dedup();
        primaries
    }

    /// The primary serving `slot` now, per the cluster.
    pub fn primary_of_slot(&self, slot: u16) -> SocketAddr {
        self.range_of_slot(slot).primary
    }

    /// `CLUSTER KEYSLOT key`, as the cluster computes it (hash tags included).
    pub fn key_slot(&self, key: &str) -> u16 {
        match self.ask(&["CLUSTER", "KEYSLOT", key]) {
            Value::Line(b':', n) => String::from_utf8_lossy(&n)
                .parse()
                .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key:?}: {e}")),
            other => panic!("CLUSTER KEYSLOT {key:?} replied {other:?}"),
        }
    }

    /// A raw connection to one live node, for commands the test sends behind the sidecar's back.
    pub fn admin(&self, addr: SocketAddr) -> RawClient {
        self.live_node(addr);
        RawClient::connect(addr, &format!("cluster node {addr}"))
    }

    /// `CLUSTER MYID` of one live node.
    pub fn node_id(&self, addr: SocketAddr) -> String {
        self.live_node(addr);
        match query(addr, None, &["CLUSTER", "MYID"]) {
            Ok(Value::Bulk(b'$', Some(id))) => String::from_utf8_lossy(&id).into_owned(),
            other => panic!("CLUSTER MYID on {addr}: {other:?}"),
        }
    }

    /// The last `lines` lines of one node's log (a killed node's too).
    pub fn log_tail(&self, addr: SocketAddr, lines: usize) -> String {
        self.node(addr).server.log_tail(lines)
    }

    /// Kills (SIGKILL, as a crash would) the primary serving `slot` and waits until one of its
    /// replicas has taken over and every surviving node agrees again. Returns the killed address.
    pub fn kill_primary_of_slot(&mut self, slot: u16) -> SocketAddr {
        let range = self.range_of_slot(slot);
        let killed = range.primary;
        assert!(
            !range.replicas.is_empty(),
            "the primary of slot {slot} ({killed}) has no replica to take over"
        );
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.server.addr() == killed)
            .unwrap_or_else(|| panic!("the primary of slot {slot} ({killed}) is not a node here"));
        node.server.stop();
        node.killed = true;
        self.wait_until_settled(
            &format!("a replica of {killed} to take over slot {slot}"),
            |ranges| match ranges.iter().find(|r| r.contains(slot)) {
                Some(r) if r.primary != killed => Ok(()),
                _ => Err(format!("slot {slot} is still served by {killed}")),
            },
        );
        killed
    }

    /// Moves `slots` slots (their keys too) from the primary `from` to the primary `to` with
    /// `redis-cli --cluster reshard`, and waits until every node agrees `to` serves them.
    pub fn reshard(&self, slots: u16, from: SocketAddr, to: SocketAddr) {
        let owned_by = |ranges: &[SlotRange], addr: SocketAddr| -> usize {
            ranges
                .iter()
                .filter(|r| r.primary == addr)
                .map(SlotRange::len)
                .sum()
        };
        let wanted = owned_by(&self.slot_ranges(), to) + usize::from(slots);
        let args: Vec<String> = vec![
            "--cluster".into(),
            "reshard".into(),
            from.to_string(),
            "--cluster-from".into(),
            self.node_id(from),
            "--cluster-to".into(),
            self.node_id(to),
            "--cluster-slots".into(),
            slots.to_string(),
            "--cluster-yes".into(),
        ];
        self.redis_cli(
            &format!("redis-cli --cluster reshard {from} -> {to}"),
            &args,
        );
        self.wait_until_settled(&format!("{slots} slots to move from {from} to {to}"), |r| {
            match owned_by(r, to) {
                n if n == wanted => Ok(()),
                n => Err(format!("{to} serves {n} slots, not {wanted}")),
            }
        });
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.killed)
    }

    fn node(&self, addr: SocketAddr) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.server.addr() == addr)
            .unwrap_or_else(|| panic!("{addr} is not a node of this cluster"))
    }

    fn live_node(&self, addr: SocketAddr) -> &Node {
        let node = self.node(addr);
        assert!(!node.killed, "cluster node {addr} was killed");
        node
    }

    fn range_of_slot(&self, slot: u16) -> SlotRange {
        assert!(slot < SLOTS, "slot {slot} is out of range (0..{SLOTS})");
        self.slot_ranges()
            .into_iter()
            .find(|r| r.contains(slot))
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// One command, answered by the first live node that answers at all.
    fn ask(&self, args: &[&str]) -> Value {
        let mut errors = Vec::new();
        for node in self.live() {
            match query(node.server.addr(), None, args) {
                Ok(reply) => return reply,
                Err(e) => errors.push(e),
            }
        }
        panic!("no cluster node answered {args:?}: {errors:?}")
    }

    /// Runs `redis-cli` (output to a file, so a full pipe cannot stall it) and fails the test,
    /// with its output, if it fails or outlives [`CLI_DEADLINE`].
    fn redis_cli(&self, what: &str, args: &[String]) -> String {
        let out_path = self.dir.path().join("redis-cli.out");
        let out = File::create(&out_path).expect("create redis-cli's output file");
        let err = out.try_clone().expect("clone the output file handle");
        let mut child = Command::new(REDIS_CLI)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {REDIS_CLI} (is it installed?): {e}"));
        let output = || strip_ansi(&std::fs::read_to_string(&out_path).unwrap_or_default());
        let deadline = Instant::now() + CLI_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll redis-cli") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what}: still running after {CLI_DEADLINE:?}; output:\n{}",
                    output()
                );
            }
            std::thread::sleep(POLL_EVERY);
        };
        let output = output();
        assert!(
            status.success(),
            "{what}: exited with {status}; output:\n{output}"
        );
        output
    }

    /// Polls until [`RedisCluster::check`] and `also` hold on what the cluster reports; fails the
    /// test naming `what` and the last disagreement after [`SETTLE_DEADLINE`].
    fn wait_until_settled(
        &self,
        what: &str,
        also: impl Fn(&[SlotRange]) -> Result<(), String>,
    ) -> Vec<SlotRange> {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let last = match self.check().and_then(|r| also(&r).map(|()| r)) {
                Ok(ranges) => return ranges,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {SETTLE_DEADLINE:?} waiting for {what} to settle (last: {last})"
            );
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Whether the cluster is whole: every live node says `cluster_state:ok` with all slots
    /// served and every node known, all report the same `CLUSTER SLOTS` covering every slot with
    /// `primaries` live primaries, and each live node's `ROLE` matches it (a primary with every
    /// listed replica online, a replica synced with its listed primary). `Err` names what is off.
    fn check(&self) -> Result<Vec<SlotRange>, String> {
        let mut agreed: Option<(SocketAddr, Vec<SlotRange>)> = None;
        for node in self.live() {
            let addr = node.server.addr();
            let info = query(addr, None, &["CLUSTER", "INFO"])?;
            let info = String::from_utf8_lossy(info.as_bytes().unwrap_or_default()).into_owned();
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .map(str::trim)
                    .unwrap_or("?")
                    .to_string()
            };
            let expected = [
                ("cluster_state", "ok".to_string()),
                ("cluster_slots_ok", SLOTS.to_string()),
                ("cluster_known_nodes", self.nodes.len().to_string()),
                ("cluster_size", self.primaries.to_string()),
            ];
            for (name, want) in expected {
                let got = field(name);
                if got != want {
                    return Err(format!("{addr} reports {name}:{got}, not {want}"));
                }
            }
            let ranges = parse_slots(&query(addr, None, &["CLUSTER", "SLOTS"])?)
                .map_err(|e| format!("{addr}: CLUSTER SLOTS: {e}"))?;
            let mut next = 0u32;
            for r in &ranges {
                if u32::from(r.start) != next {
                    return Err(format!("{addr}: CLUSTER SLOTS has no slot {next}"));
                }
                next = u32::from(r.end) + 1;
            }
            if next != u32::from(SLOTS) {
                return Err(format!("{addr}: CLUSTER SLOTS ends at slot {next}"));
            }
            match &agreed {
                None => agreed = Some((addr, ranges)),
                Some((first, theirs)) if *theirs != ranges => {
                    return Err(format!(
                        "{first} and {addr} disagree on CLUSTER SLOTS: {} vs {}",
                        brief(theirs),
                        brief(&ranges)
                    ));
                }
                Some(_) => {}
            }
        }
        let (_, ranges) = agreed.ok_or("no live node")?;
        // Each primary with the replicas every node lists for it.
        let shards: BTreeMap<SocketAddr, &[SocketAddr]> = ranges
            .iter()
            .map(|r| (r.primary, r.replicas.as_slice()))
            .collect();
        if shards.len() != self.primaries {
            return Err(format!(
                "{} primaries serve slots, not {}: {}",
                shards.len(),
                self.primaries,
                brief(&ranges)
            ));
        }
        let live: Vec<SocketAddr> = self.seeds();
        for (primary, replicas) in &shards {
            if let Some(gone) = std::iter::once(primary)
                .chain(replicas.iter())
                .find(|a| !live.contains(a))
            {
                return Err(format!(
                    "CLUSTER SLOTS still lists killed node {gone}: {}",
                    brief(&ranges)
                ));
            }
        }
        for addr in &live {
            let role = query(*addr, None, &["ROLE"])?;
            let role = elements(&role);
            match role.first().map(text).as_deref() {
                Some("master") => {
                    let Some(replicas) = shards.get(addr) else {
                        return Err(format!("{addr} is a primary serving no slots"));
                    };
                    let online = role.get(2).map_or(0, |r| elements(r).len());
                    if online != replicas.len() {
                        return Err(format!(
                            "primary {addr} has {online} replicas online, not {}",
                            replicas.len()
                        ));
                    }
                }
                Some("slave") => {
                    let primary = role
                        .get(1)
                        .zip(role.get(2))
                        .and_then(|(ip, port)| socket_addr(&text(ip), &text(port)));
                    let state = role.get(3).map(text).unwrap_or_default();
                    let listed = primary
                        .and_then(|p| shards.get(&p))
                        .is_some_and(|replicas| replicas.contains(addr));
                    if state != "connected" || !listed {
                        return Err(format!(
                            "replica {addr} of {primary:?} is {state:?}; CLUSTER SLOTS: {}",
                            brief(&ranges)
                        ));
                    }
                }
                other => return Err(format!("{addr}: ROLE is {other:?}")),
            }
        }
        Ok(ranges)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                let state = if node.killed { " (killed)" } else { "" };
                eprintln!(
                    "---- cluster node {}{state} log (last 20 lines) ----\n{}",
                    node.server.addr(),
                    node.server.log_tail(20)
                );
            }
            eprintln!("---- end of cluster node logs ----");
        }
        // Killed nodes have no process left; stopping them again does nothing.
        for node in &mut self.nodes {
            node.server.stop();
        }
    }
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(v.as_bytes().unwrap_or_default()).into_owned()
}

fn elements(v: &Value) -> &[Value] {
    match v {
        Value::Aggregate(_, Some(items)) => items,
        _ => &[],
    }
}

fn socket_addr(ip: &str, port: &str) -> Option<SocketAddr> {
    Some(SocketAddr::new(
        ip.parse::<IpAddr>().ok()?,
        port.parse().ok()?,
    ))
}

/// `CLUSTER SLOTS`: `[start, end, [ip, port, id, …] (the primary), [ip, port, id, …]…]` per
/// range, sorted by slot.
fn parse_slots(reply: &Value) -> Result<Vec<SlotRange>, String> {
    let Value::Aggregate(b'*', Some(entries)) = reply else {
        return Err(format!("not an array: {reply:?}"));
    };
    let node = |v: &Value| {
        let fields = elements(v);
        let ip = fields.first().map(text).unwrap_or_default();
        let port = fields.get(1).map(text).unwrap_or_default();
        socket_addr(&ip, &port).ok_or_else(|| format!("no address in {v:?}"))
    };
    let mut ranges = entries
        .iter()
        .map(|entry| {
            let fields = elements(entry);
            let slot = |i: usize| -> Result<u16, String> {
                fields
                    .get(i)
                    .map(text)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("no slot number in {entry:?}"))
            };
            let mut replicas = fields
                .get(3..)
                .unwrap_or_default()
                .iter()
                .map(node)
                .collect::<Result<Vec<_>, _>>()?;
            replicas.sort();
            Ok(SlotRange {
                start: slot(0)?,
                end: slot(1)?,
                primary: node(
                    fields
                        .get(2)
                        .ok_or_else(|| format!("no primary in {entry:?}"))?,
                )?,
                replicas,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    ranges.sort_by_key(|r| r.start);
    Ok(ranges)
}

/// Ranges as `0-5460@127.0.0.1:15000[127.0.0.1:15004]`, for failure messages.
fn brief(ranges: &[SlotRange]) -> String {
    let shown: Vec<String> = ranges
        .iter()
        .map(|r| {
            let replicas: Vec<String> = r.replicas.iter().map(|a| a.to_string()).collect();
            format!(
                "{}-{}@{}[{}]",
                r.start,
                r.end,
                r.primary,
                replicas.join(",")
            )
        })
        .collect();
    shown.join(" ")
}

/// `redis-cli` colours its output even into a file.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // `ESC [ … m`: skip to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
