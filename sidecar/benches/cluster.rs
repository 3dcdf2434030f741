//! Cluster benchmark: pub/sub throughput through sidecars bridged to one `redis-server` and to a
//! 3-primary Redis Cluster, against the same clients talking to the cluster directly.
//!
//! ```text
//! cargo bench -p switchboard-sidecar --bench cluster
//! ```
//!
//! One run starts one `redis-server`, a Redis Cluster of [`PRIMARIES`] primaries and no replicas,
//! and two sidecars ("pods" A and B) bridged to each, all on free 127.0.0.1 ports, and measures
//! pub/sub deliveries/s of the same workload four ways, side by side:
//!
//! 1. **sidecars, one redis-server**: publishers on pod A, subscribers on pod B (a message crosses
//!    the backplane), as the relay bench does;
//! 2. **sidecars, cluster** (`--upstream redis+cluster://…`): the same, but underneath the app's
//!    `PUBLISH`/`SUBSCRIBE` of `c` are `SPUBLISH`/`SSUBSCRIBE` of `__c:c` on the primary owning
//!    that slot, so a message costs one cluster node;
//! 3. **cluster, classic pub/sub**: `PUBLISH`/`SUBSCRIBE` straight to the cluster, publishers on
//!    one node and subscribers on another, as an adapter that knows nothing of clusters would use
//!    it; every publish is broadcast to every node over the cluster bus;
//! 4. **cluster, sharded pub/sub**: `SPUBLISH`/`SSUBSCRIBE` straight to each channel's owning
//!    primary, the best a cluster-aware client can do.
//!
//! The workload: [`CHANNELS`] channels, an equal share on every primary (picked by the slot of
//! the name as the backplane sees it: `__c:<name>` through sidecars, `<name>` directly), one
//! publisher per primary's group of channels pipelining in parallel, and [`SUBSCRIBERS`]
//! subscribers each subscribed to every channel (directly with `SSUBSCRIBE`, one connection per
//! primary). Every subscriber must receive every message; a run that misses its deadline is
//! reported incomplete. Besides deliveries/s it reports the CPU time of the `redis-server`
//! processes (and the sidecars) per million deliveries, and the cluster bus traffic
//! (`cluster_stats_messages_publish*_sent`, summed over the nodes).
//!
//! All the primaries share the machine's cores with the sidecars and the clients: the goal of
//! (2)/(1) ≥ 0.9 × [`PRIMARIES`] assumes a core per primary, and the run prints the core count.
//!
//! Sizes: `CLUSTER_BENCH_MESSAGES` (publishes per run, all publishers together, default
//! [`MESSAGES`]) and `CLUSTER_BENCH_ROUNDS` (default [`ROUNDS`]) override them, e.g. for a smoke
//! run: `CLUSTER_BENCH_MESSAGES=1200 CLUSTER_BENCH_ROUNDS=1 cargo bench -p switchboard-sidecar
//! --bench cluster`.
//!
//! The sidecar binary is the one cargo builds for this bench (`CARGO_BIN_EXE_switchboard-sidecar`;
//! under `cargo bench` that is the `bench` profile, which inherits `release`, in target/release).
//! `SIDECAR_BENCH_BIN=/path/to/switchboard-sidecar` overrides it, e.g. to compare two builds.
//!
//! The clients speak raw RESP2 over tokio sockets, the same minimal client as the relay bench, so
//! the client is as cheap as it can be and identical on every side. Everything is killed on drop,
//! also when the bench panics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use procs::{RedisCluster, RedisServer, Sidecar, cpu_time};
use resp::{Connection, Frame};

/// Size of every published payload.
const PAYLOAD_BYTES: usize = 100;
/// Publishes per run, all publishers together (rounded up to a multiple of [`CHANNELS`]).
const MESSAGES: u64 = 480_000;
/// Each subscriber is subscribed to every channel and must receive every message.
const SUBSCRIBERS: usize = 4;
/// Every path is measured this many times, alternating; the median round is shown.
const ROUNDS: usize = 3;
const PRIMARIES: usize = 3;
/// Spread evenly over the primaries; one publisher per primary's group.
const CHANNELS: usize = 12;
const PODS: usize = 2;
/// How far the publishers together may run ahead of the slowest subscriber. Unbounded, the
/// backlog would pile up in Redis's output buffers until it disconnects a subscriber
/// (`client-output-buffer-limit pubsub 32mb 8mb 60`), and we would measure buffering instead of
/// sustained throughput. 20k × ~150 bytes stays under the 8 MB soft limit.
const PUBLISH_WINDOW: u64 = 20_000;
/// Publishes written per `write_all`: pipelining as a busy adapter would.
const PIPELINE_BATCH: u64 = 256;
/// Longest any one measurement may take before it reports what it got.
const PHASE_DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    let messages = env_size("CLUSTER_BENCH_MESSAGES", MESSAGES as usize) as u64;
    let rounds = env_size("CLUSTER_BENCH_ROUNDS", ROUNDS).max(1);
    // Whole messages per channel, so every channel (and every subscriber) gets the same number.
    let per_channel = messages.div_ceil(CHANNELS as u64).max(1);

    let redis = RedisServer::start();
    let cluster = RedisCluster::start(PRIMARIES, 0);
    let mut redis_pods: Vec<Sidecar> = (0..PODS)
        .map(|i| procs::start_sidecar(redis.url(), &format!("bench-redis-pod-{}", pod_name(i))))
        .collect();
    let mut cluster_pods: Vec<Sidecar> = (0..PODS)
        .map(|i| procs::start_sidecar(cluster.url(), &format!("bench-cluster-pod-{}", pod_name(i))))
        .collect();
    // (5): the same, for apps without patterns (`--cluster-pattern-copies false`).
    let mut lean_pods: Vec<Sidecar> = (0..PODS)
        .map(|i| {
            procs::start_sidecar_with(
                cluster.url(),
                &format!("bench-lean-pod-{}", pod_name(i)),
                &[("--cluster-pattern-copies", "false")],
            )
        })
        .collect();
    print_context(&cluster, per_channel, rounds);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    runtime.block_on(async {
        let paths = Route::all(&redis, &cluster, &redis_pods, &cluster_pods, &lean_pods).await;
        let mut results: Vec<Vec<Run>> = paths.iter().map(|_| Vec::new()).collect();
        // Alternating rounds, so a burst of load from a neighbour hurts every path alike.
        for round in 0..rounds {
            for (path, runs) in paths.iter().zip(&mut results) {
                let groups = pick_channels(&cluster, path, round);
                runs.push(path.measure(round, &groups, per_channel).await);
            }
        }
        report::throughput(&paths, results, per_channel);
    });
    drop(runtime);
    for pod in redis_pods
        .iter_mut()
        .chain(cluster_pods.iter_mut())
        .chain(lean_pods.iter_mut())
    {
        procs::assert_healthy(pod);
    }
}

/// A size from the environment (for smoke runs), else `default`.
fn env_size(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

fn pod_name(i: usize) -> char {
    (b'a' + i as u8) as char
}

// ---------------------------------------------------------------------------------------------
// The four routes
// ---------------------------------------------------------------------------------------------

/// Where one path's clients connect, what they send, and which processes serve them.
struct Route {
    /// "(1)" … "(4)", as the tables name it.
    label: &'static str,
    /// Part of every channel name, so each path's (and round's) channels are its own. All tags
    /// have the same length, so all paths' messages have the same size.
    tag: &'static str,
    /// `SPUBLISH`/`SSUBSCRIBE` (4) rather than `PUBLISH`/`SUBSCRIBE`.
    sharded: bool,
    /// What the backplane calls a channel, before its name: through sidecars to a cluster the
    /// app's classic channels are shard channels `__c:<name>` (the channel prefix is empty).
    backplane_prefix: &'static str,
    /// Where each group's publisher connects (group g: the channels on the g-th primary).
    publishers: Vec<SocketAddr>,
    /// Where each subscriber connects: one address, one connection subscribed to every channel;
    /// else one connection per group, group g's at the g-th address.
    subscriber_conns: Vec<SocketAddr>,
    /// The backplane's nodes: their `redis-server` CPU time counts, and where the upstream
    /// subscriptions are counted.
    nodes: Vec<SocketAddr>,
    redis_pids: Vec<u32>,
    sidecar_pids: Vec<u32>,
    /// Whether `nodes` are a cluster (bus counters to read).
    cluster: bool,
}

impl Route {
    async fn all(
        redis: &RedisServer,
        cluster: &RedisCluster,
        redis_pods: &[Sidecar],
        cluster_pods: &[Sidecar],
        lean_pods: &[Sidecar],
    ) -> Vec<Route> {
        let primaries = cluster.primaries();
        assert_eq!(primaries.len(), PRIMARIES, "the cluster's primaries");
        let mut cluster_pids = Vec::new();
        for &node in &primaries {
            cluster_pids.push(admin::process_id(node).await);
        }
        let pids = |pods: &[Sidecar]| pods.iter().map(Sidecar::pid).collect::<Vec<_>>();
        vec![
            Route {
                label: "(1)",
                tag: "p1",
                sharded: false,
                backplane_prefix: "",
                publishers: vec![redis_pods[0].addr; PRIMARIES],
                subscriber_conns: vec![redis_pods[PODS - 1].addr],
                nodes: vec![redis.addr()],
                redis_pids: vec![redis.pid()],
                sidecar_pids: pids(redis_pods),
                cluster: false,
            },
            Route {
                label: "(2)",
                tag: "p2",
                sharded: false,
                backplane_prefix: "__c:",
                publishers: vec![cluster_pods[0].addr; PRIMARIES],
                subscriber_conns: vec![cluster_pods[PODS - 1].addr],
                nodes: primaries.clone(),
                redis_pids: cluster_pids.clone(),
                sidecar_pids: pids(cluster_pods),
                cluster: true,
            },
            Route {
                label: "(3)",
                tag: "p3",
                sharded: false,
                backplane_prefix: "",
                publishers: vec![primaries[0]; PRIMARIES],
                subscriber_conns: vec![primaries[1]],
                nodes: primaries.clone(),
                redis_pids: cluster_pids.clone(),
                sidecar_pids: Vec::new(),
                cluster: true,
            },
            Route {
                label: "(4)",
                tag: "p4",
                sharded: true,
                backplane_prefix: "",
                publishers: primaries.clone(),
                subscriber_conns: primaries.clone(),
                nodes: primaries.clone(),
                redis_pids: cluster_pids.clone(),
                sidecar_pids: Vec::new(),
                cluster: true,
            },
            Route {
                label: "(5)",
                tag: "p5",
                sharded: false,
                backplane_prefix: "__c:",
                publishers: vec![lean_pods[0].addr; PRIMARIES],
                subscriber_conns: vec![lean_pods[PODS - 1].addr],
                nodes: primaries.clone(),
                redis_pids: cluster_pids,
                sidecar_pids: pids(lean_pods),
                cluster: true,
            },
        ]
    }

    /// CPU used so far by (the backplane's redis-servers, the path's sidecars).
    fn cpu(&self) -> (Duration, Duration) {
        let sum = |pids: &[u32]| pids.iter().map(|&p| cpu_time(p)).sum();
        (sum(&self.redis_pids), sum(&self.sidecar_pids))
    }

    /// `cluster_stats_messages_publish_sent` and `…_publishshard_sent`, summed over the nodes.
    async fn bus_sent(&self) -> (u64, u64) {
        if !self.cluster {
            return (0, 0);
        }
        let (mut publish, mut shard) = (0, 0);
        for &node in &self.nodes {
            let info = admin::text(node, &["CLUSTER", "INFO"]).await;
            publish += admin::field(&info, "cluster_stats_messages_publish_sent");
            shard += admin::field(&info, "cluster_stats_messages_publishshard_sent");
        }
        (publish, shard)
    }

    /// Channels with a subscriber on each backplane node (the upstream subscriptions, through
    /// sidecars): shows that the channels are spread as intended.
    async fn upstream_channels(&self, pattern: &str) -> Vec<usize> {
        // Through sidecars to a cluster, and directly with SSUBSCRIBE, they are shard channels.
        let sharded = self.sharded || self.backplane_prefix == resp::CLASSIC_PREFIX;
        let sub = if sharded { "SHARDCHANNELS" } else { "CHANNELS" };
        let mut counts = Vec::new();
        for &node in &self.nodes {
            counts.push(admin::count(node, &["PUBSUB", sub, pattern]).await);
        }
        counts
    }

    async fn measure(&self, round: usize, groups: &[Vec<String>], per_channel: u64) -> Run {
        let fanout = Fanout::subscribe(self, groups).await;
        let pattern = format!("{}{}*", self.backplane_prefix, channel_stem(self, round));
        let upstream_channels = self.upstream_channels(&pattern).await;
        let (bus_publish_before, bus_shard_before) = self.bus_sent().await;
        let (redis_before, sidecars_before) = self.cpu();
        let fanout_run = fanout.run(self, per_channel).await;
        let (redis_after, sidecars_after) = self.cpu();
        let (bus_publish_after, bus_shard_after) = self.bus_sent().await;
        Run {
            fanout: fanout_run,
            redis_cpu: redis_after.saturating_sub(redis_before),
            sidecar_cpu: sidecars_after.saturating_sub(sidecars_before),
            bus_publish: bus_publish_after.saturating_sub(bus_publish_before),
            bus_publishshard: bus_shard_after.saturating_sub(bus_shard_before),
            upstream_channels,
        }
    }
}

/// `bench:p2:r0:`: the start of every channel name of one path's round.
fn channel_stem(path: &Route, round: usize) -> String {
    format!("bench:{}:r{round}:", path.tag)
}

/// [`CHANNELS`] fresh channel names for one round of `path`, grouped by the primary that owns
/// the slot of the name as the backplane sees it (`groups[g]` on the g-th primary). The one-redis
/// path gets the same layout; there it does not matter.
fn pick_channels(cluster: &RedisCluster, path: &Route, round: usize) -> Vec<Vec<String>> {
    let per_primary = CHANNELS / PRIMARIES;
    let primaries = cluster.primaries();
    let ranges = cluster.slot_ranges();
    let mut groups: Vec<Vec<String>> = vec![Vec::new(); PRIMARIES];
    let stem = channel_stem(path, round);
    for i in 0.. {
        if groups.iter().all(|g| g.len() == per_primary) {
            break;
        }
        assert!(
            i < 10_000,
            "no spread of {CHANNELS} channels over the primaries"
        );
        let name = format!("{stem}{i:04}");
        let slot = cluster.key_slot(&format!("{}{name}", path.backplane_prefix));
        let owner = ranges
            .iter()
            .find(|r| r.contains(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
            .primary;
        let g = primaries
            .iter()
            .position(|&p| p == owner)
            .expect("the owner is a primary");
        if groups[g].len() < per_primary {
            groups[g].push(name);
        }
    }
    groups
}

/// One measurement of one path.
struct Run {
    fanout: FanoutRun,
    redis_cpu: Duration,
    sidecar_cpu: Duration,
    bus_publish: u64,
    bus_publishshard: u64,
    /// Channels subscribed upstream (on the backplane) per node.
    upstream_channels: Vec<usize>,
}

// ---------------------------------------------------------------------------------------------
// Fan-out: one pipelining publisher per channel group, every subscriber on every channel,
// flow-controlled by the slowest subscriber
// ---------------------------------------------------------------------------------------------

/// Subscribers ready to receive on every channel of one round.
struct Fanout {
    groups: Vec<Vec<String>>,
    /// Per subscriber: its connections and how many channels each covers.
    subscribers: Vec<Vec<(Connection, u64)>>,
}

#[derive(Clone)]
struct FanoutRun {
    /// From the first publish to the last subscriber receiving the last message.
    elapsed: Duration,
    /// Messages received, all subscribers together.
    delivered: u64,
    expected: u64,
    /// Publishes made, all publishers together.
    published: u64,
}

impl FanoutRun {
    fn deliveries_per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    fn complete(&self) -> bool {
        self.delivered == self.expected
    }
}

/// How many messages each subscriber has received and the publishers have sent; the
/// publishers wait on the slowest subscriber.
struct Progress {
    received: Vec<AtomicU64>,
    /// Publishes the publishers have claimed (about to send or sent), all together.
    claimed: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Progress {
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Claims `n` more publishes and waits until the publishers together may have that many
    /// out; false at the deadline. Claimed but unsent publishes are at most one batch per
    /// publisher, far less than the window, so the wait always ends.
    async fn claim(&self, n: u64, deadline: tokio::time::Instant) -> bool {
        let claimed = self.claimed.fetch_add(n, Ordering::Relaxed) + n;
        loop {
            // Registered before the check, so a notification in between is not lost.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if claimed.saturating_sub(self.slowest()) <= PUBLISH_WINDOW {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

impl Fanout {
    /// Connects and subscribes everyone; returns once every subscription is confirmed (through a
    /// sidecar that means the upstream subscription is in place too).
    async fn subscribe(path: &Route, groups: &[Vec<String>]) -> Self {
        let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
        for _ in 0..SUBSCRIBERS {
            let mut conns = Vec::new();
            if let [addr] = path.subscriber_conns[..] {
                let all: Vec<String> = groups.iter().flatten().cloned().collect();
                let n = all.len() as u64;
                conns.push((Connection::subscribed(addr, &all, path.sharded).await, n));
            } else {
                for (&addr, group) in path.subscriber_conns.iter().zip(groups) {
                    let n = group.len() as u64;
                    conns.push((Connection::subscribed(addr, group, path.sharded).await, n));
                }
            }
            subscribers.push(conns);
        }
        Fanout {
            groups: groups.to_vec(),
            subscribers,
        }
    }

    /// Every group's publisher publishes `per_channel` messages to each of its channels, round
    /// robin, in parallel.
    async fn run(self, path: &Route, per_channel: u64) -> FanoutRun {
        let per_subscriber = per_channel * CHANNELS as u64;
        let progress = Arc::new(Progress {
            received: (0..self.subscribers.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            claimed: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        });
        let expected = per_subscriber * self.subscribers.len() as u64;
        let mut publishers = Vec::new();
        for &addr in &path.publishers {
            publishers.push(Connection::connect(addr).await);
        }
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + PHASE_DEADLINE;

        let mut receivers = Vec::new();
        for (i, conns) in self.subscribers.into_iter().enumerate() {
            for (conn, channels) in conns {
                receivers.push(tokio::spawn(receive_all(
                    conn,
                    i,
                    per_channel * channels,
                    progress.clone(),
                    deadline,
                )));
            }
        }
        let mut senders = Vec::new();
        for (publisher, channels) in publishers.into_iter().zip(self.groups) {
            let messages = per_channel * channels.len() as u64;
            let (replies, writer) = publisher.into_split();
            let acks = tokio::spawn(count_publish_replies(replies, messages, deadline));
            let sent = tokio::spawn(publish_pipelined(
                writer,
                channels,
                path.sharded,
                messages,
                progress.clone(),
                deadline,
            ));
            senders.push((sent, acks));
        }

        let mut delivered = 0;
        for receiver in receivers {
            delivered += receiver.await.expect("a subscriber task panicked");
        }
        let elapsed = start.elapsed();
        let mut published = 0;
        for (sent, acks) in senders {
            let sent = sent.await.expect("a publisher task panicked");
            let acked = acks.await.expect("a publish-reply task panicked");
            assert!(
                acked >= sent || delivered < expected,
                "publish replies missing"
            );
            published += sent;
        }
        FanoutRun {
            elapsed,
            delivered,
            expected,
            published,
        }
    }
}

/// Writes `messages` publishes round robin over `channels` in batches, the publishers together
/// never more than [`PUBLISH_WINDOW`] ahead of the slowest subscriber. Stops early (and the run
/// reports it incomplete) at the deadline. Returns how many it sent.
async fn publish_pipelined(
    mut writer: resp::Writer,
    channels: Vec<String>,
    sharded: bool,
    messages: u64,
    progress: Arc<Progress>,
    deadline: tokio::time::Instant,
) -> u64 {
    let verb: &[u8] = if sharded { b"SPUBLISH" } else { b"PUBLISH" };
    let mut payload = vec![b'x'; PAYLOAD_BYTES];
    let mut batch = Vec::with_capacity(PIPELINE_BATCH as usize * (PAYLOAD_BYTES + 64));
    let mut published = 0;
    while published < messages {
        let n = PIPELINE_BATCH.min(messages - published);
        if !progress.claim(n, deadline).await {
            break;
        }
        batch.clear();
        for seq in published..published + n {
            // A sequence number up front: not checked, but the bytes differ like real messages.
            payload[..20].copy_from_slice(format!("{seq:020}").as_bytes());
            let channel = &channels[(seq % channels.len() as u64) as usize];
            resp::append_command(&mut batch, &[verb, channel.as_bytes(), &payload]);
        }
        writer.send(&batch).await;
        published += n;
    }
    published
}

/// Reads a publisher's integer replies; returns how many arrived before the deadline.
async fn count_publish_replies(
    mut replies: resp::Reader,
    messages: u64,
    deadline: tokio::time::Instant,
) -> u64 {
    let mut acked = 0;
    while acked < messages {
        match replies.next_frame(deadline).await {
            Ok(Frame::Integer(_)) => acked += 1,
            Ok(other) => panic!("PUBLISH answered {other:?}"),
            Err(_) => break,
        }
    }
    acked
}

/// Receives on one of subscriber `index`'s connections until `messages` arrived or the
/// deadline; returns how many arrived.
async fn receive_all(
    mut conn: Connection,
    index: usize,
    messages: u64,
    progress: Arc<Progress>,
    deadline: tokio::time::Instant,
) -> u64 {
    let mut received = 0;
    while received < messages {
        if conn.next_message(deadline).await.is_err() {
            break;
        }
        received += 1;
        progress.received[index].fetch_add(1, Ordering::Relaxed);
        // Waking the publishers for every message would cost more than the messages.
        if received % 1024 == 0 {
            progress.changed.notify_waiters();
        }
    }
    progress.changed.notify_waiters();
    received
}

// ---------------------------------------------------------------------------------------------
// Context and tables
// ---------------------------------------------------------------------------------------------

fn print_context(cluster: &RedisCluster, per_channel: u64, rounds: usize) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    println!("switchboard-sidecar cluster benchmark");
    println!(
        "  machine: {cores} cores (available_parallelism), load average {}",
        load.join(" ")
    );
    println!(
        "  NOTE: the {PRIMARIES} primaries share these {cores} cores with the sidecars, the clients and"
    );
    println!(
        "        whatever else runs here; compare the columns of one run, not absolute numbers"
    );
    println!("        across runs.");
    println!("  redis-server: {}", procs::redis_version());
    println!("  sidecar binary: {}", procs::sidecar_binary().display());
    println!(
        "  one redis-server; a Redis Cluster of {PRIMARIES} primaries, no replicas ({}); \
         {PODS} sidecars bridged to each; all on 127.0.0.1",
        cluster.url()
    );
    println!(
        "  {CHANNELS} channels ({} per primary), {PRIMARIES} publishers (one per primary's channels), \
         {SUBSCRIBERS} subscribers on all channels",
        CHANNELS / PRIMARIES
    );
    println!(
        "  {} publishes x {PAYLOAD_BYTES} B per run ({per_channel} per channel), {rounds} round(s); \
         RESP2 raw-socket clients on a 2-worker tokio runtime in the bench process",
        per_channel * CHANNELS as u64
    );
    println!();
}

mod report {
    use super::*;

    fn ratio(a: f64, b: f64) -> String {
        if b == 0.0 {
            "-".into()
        } else {
            format!("{:.2}x", a / b)
        }
    }

    fn row(label: &str, cells: &[String]) {
        print!("  {label:<36}");
        for cell in cells {
            print!(" {cell:>14}");
        }
        println!();
    }

    fn rule(columns: usize) {
        println!("  {}", "-".repeat(36 + columns * 15));
    }

    /// The round with the median delivery rate, and every round's rate.
    fn median(mut rounds: Vec<Run>) -> (Run, String) {
        rounds.sort_by(|a, b| {
            a.fanout
                .deliveries_per_sec()
                .total_cmp(&b.fanout.deliveries_per_sec())
        });
        let all = rounds
            .iter()
            .map(|r| format!("{:.0}k", r.fanout.deliveries_per_sec() / 1e3))
            .collect::<Vec<_>>()
            .join(" ");
        (rounds.swap_remove(rounds.len() / 2), all)
    }

    pub fn throughput(paths: &[Route], results: Vec<Vec<Run>>, per_channel: u64) {
        let rounds = results[0].len();
        println!(
            "pub/sub throughput: {PRIMARIES} publishers pipelining {} x {PAYLOAD_BYTES} B over \
             {CHANNELS} channels, {SUBSCRIBERS} subscribers on all of them; median of {rounds} \
             alternating round(s)",
            per_channel * CHANNELS as u64
        );
        println!(
            "  (1) sidecars -> one redis-server    (publishers on pod a, subscribers on pod b)"
        );
        println!(
            "  (2) sidecars -> cluster             (same pods; SPUBLISH/SSUBSCRIBE __c:<channel> on its primary)"
        );
        println!(
            "  (3) cluster, PUBLISH/SUBSCRIBE      (publishers on one node, subscribers on another: the bus carries it)"
        );
        println!(
            "  (4) cluster, SPUBLISH/SSUBSCRIBE    (each channel on its owning primary, from every client)"
        );
        println!(
            "  (5) sidecars -> cluster, no copies  (as (2) with --cluster-pattern-copies false: no PSUBSCRIBE)"
        );
        let incomplete: Vec<(&str, FanoutRun)> = paths
            .iter()
            .zip(&results)
            .flat_map(|(p, runs)| runs.iter().map(|r| (p.label, r.fanout.clone())))
            .filter(|(_, r)| !r.complete())
            .collect();
        let (runs, all_rounds): (Vec<Run>, Vec<String>) = results.into_iter().map(median).unzip();
        let labels: Vec<String> = paths.iter().map(|p| p.label.to_string()).collect();
        row("", &labels);
        rule(paths.len());
        let cells = |f: &dyn Fn(&Route, &Run) -> String| -> Vec<String> {
            paths.iter().zip(&runs).map(|(p, r)| f(p, r)).collect()
        };
        row(
            "deliveries/s (all subscribers)",
            &cells(&|_, r| format!("{:.0}", r.fanout.deliveries_per_sec())),
        );
        row(
            "publishes/s (each to all)",
            &cells(&|_, r| format!("{:.0}", r.fanout.deliveries_per_sec() / SUBSCRIBERS as f64)),
        );
        row(
            "elapsed",
            &cells(&|_, r| format!("{:.2} s", r.fanout.elapsed.as_secs_f64())),
        );
        row(
            "delivered / expected",
            &cells(&|_, r| format!("{}/{}", r.fanout.delivered, r.fanout.expected)),
        );
        row(
            "channels upstream, per node",
            &cells(&|_, r| {
                r.upstream_channels
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            }),
        );
        // CPU per delivered message, per million: what the servers spend to get a million
        // messages to one subscriber each.
        let per_million =
            |cpu: Duration, run: &FanoutRun| cpu.as_secs_f64() * 1e6 / run.delivered.max(1) as f64;
        row(
            "redis-server CPU s / 1M deliveries",
            &cells(&|_, r| format!("{:.2} s", per_million(r.redis_cpu, &r.fanout))),
        );
        row(
            "sidecars CPU s / 1M deliveries",
            &cells(&|p, r| {
                if p.sidecar_pids.is_empty() {
                    "-".into()
                } else {
                    format!("{:.2} s", per_million(r.sidecar_cpu, &r.fanout))
                }
            }),
        );
        row(
            "all servers CPU s / 1M deliveries",
            &cells(&|_, r| {
                format!(
                    "{:.2} s",
                    per_million(r.redis_cpu + r.sidecar_cpu, &r.fanout)
                )
            }),
        );
        let bus = |f: fn(&Run) -> u64| {
            move |p: &Route, r: &Run| {
                if p.cluster {
                    f(r).to_string()
                } else {
                    "-".into()
                }
            }
        };
        row(
            "bus publish msgs sent (all nodes)",
            &cells(&bus(|r| r.bus_publish)),
        );
        row(
            "bus publishshard msgs sent",
            &cells(&bus(|r| r.bus_publishshard)),
        );
        row(
            "publishes made",
            &cells(&|_, r| r.fanout.published.to_string()),
        );
        let all: Vec<String> = labels
            .iter()
            .zip(&all_rounds)
            .map(|(l, a)| format!("{l} {a}"))
            .collect();
        println!("  all rounds, deliveries/s: {}", all.join("; "));
        for (label, run) in &incomplete {
            println!(
                "  WARNING: {label}: only {} of {} deliveries arrived within {PHASE_DEADLINE:?}",
                run.delivered, run.expected
            );
        }
        println!();

        let rate = |i: usize| runs[i].fanout.deliveries_per_sec();
        println!("ratios of deliveries/s");
        row("", &["vs (1)".into(), "vs (3)".into(), "vs (4)".into()]);
        rule(3);
        row(
            "(2) sidecars to the cluster",
            &[
                ratio(rate(1), rate(0)),
                ratio(rate(1), rate(2)),
                ratio(rate(1), rate(3)),
            ],
        );
        row(
            "(5) the same, no pattern copies",
            &[
                ratio(rate(4), rate(0)),
                ratio(rate(4), rate(2)),
                ratio(rate(4), rate(3)),
            ],
        );
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        println!(
            "  goal (the issue): (2)/(1) >= {:.2}x (0.9 x {PRIMARIES} primaries) on a machine with a core \
             per primary; here {cores} cores are shared by {PRIMARIES} primaries, the sidecars and the clients",
            0.9 * PRIMARIES as f64
        );
        println!();
    }
}

// ---------------------------------------------------------------------------------------------
// Admin queries on the backplane's nodes
// ---------------------------------------------------------------------------------------------

mod admin {
    use std::net::SocketAddr;

    use super::resp::{Connection, Frame, command};

    async fn ask(addr: SocketAddr, args: &[&str]) -> Frame {
        let mut conn = Connection::connect(addr).await;
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        conn.send(&command(&args)).await;
        conn.reply().await
    }

    /// A bulk-string reply (`INFO`, `CLUSTER INFO`) as text.
    pub async fn text(addr: SocketAddr, args: &[&str]) -> String {
        match ask(addr, args).await {
            Frame::Bulk(Some(text)) => String::from_utf8_lossy(&text).into_owned(),
            other => panic!("{args:?} on {addr} answered {other:?}"),
        }
    }

    /// The length of an array reply (`PUBSUB CHANNELS pattern`).
    pub async fn count(addr: SocketAddr, args: &[&str]) -> usize {
        match ask(addr, args).await {
            Frame::Array(Some(items)) => items.len(),
            other => panic!("{args:?} on {addr} answered {other:?}"),
        }
    }

    /// `name:value` from an `INFO`-style text, 0 if absent.
    pub fn field(info: &str, name: &str) -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The pid of the `redis-server` at `addr` (`INFO server`), for its CPU time.
    pub async fn process_id(addr: SocketAddr) -> u32 {
        let info = text(addr, &["INFO", "server"]).await;
        let pid = field(&info, "process_id");
        assert!(pid > 0, "no process_id in INFO server of {addr}");
        pid as u32
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal RESP2 client (the relay bench's, with sharded subscriptions; relay.rs keeps its own
// inside its file, so it cannot be shared)
// ---------------------------------------------------------------------------------------------

mod resp {
    use std::net::SocketAddr;

    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::time::Instant;

    /// What a sidecar bridged to a cluster calls an app's classic channel upstream, before its
    /// name (`relay::shard::CLASSIC`).
    pub const CLASSIC_PREFIX: &str = "__c:";

    #[derive(Debug)]
    pub enum Frame {
        /// Only ever printed (an unexpected reply in a panic message).
        Simple(#[expect(dead_code, reason = "read through Debug only")] Vec<u8>),
        Error(Vec<u8>),
        /// Only counted (publish replies) or printed.
        Integer(#[expect(dead_code, reason = "read through Debug only")] i64),
        Bulk(Option<Vec<u8>>),
        Array(Option<Vec<Frame>>),
    }

    /// Appends one command as a RESP array of bulk strings.
    pub fn append_command(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn command(args: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        append_command(&mut out, args);
        out
    }

    /// Parses one frame from the front of `buf`: `Ok(None)` if it is not all there yet.
    fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
        let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[1..line_end];
        let after_line = line_end + 2;
        let number = || -> Result<i64, String> {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(line)))
        };
        let frame = match buf.first() {
            Some(b'+') => (Frame::Simple(line.to_vec()), after_line),
            Some(b'-') => (Frame::Error(line.to_vec()), after_line),
            Some(b':') => (Frame::Integer(number()?), after_line),
            Some(b'$') => match number()? {
                -1 => (Frame::Bulk(None), after_line),
                n => {
                    let end = after_line + n as usize;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    (Frame::Bulk(Some(buf[after_line..end].to_vec())), end + 2)
                }
            },
            Some(b'*') => match number()? {
                -1 => (Frame::Array(None), after_line),
                n => {
                    let mut items = Vec::with_capacity(n as usize);
                    let mut at = after_line;
                    for _ in 0..n {
                        let Some((item, used)) = parse(&buf[at..])? else {
                            return Ok(None);
                        };
                        items.push(item);
                        at += used;
                    }
                    (Frame::Array(Some(items)), at)
                }
            },
            other => return Err(format!("not RESP2: first byte {other:?}")),
        };
        Ok(Some(frame))
    }

    pub struct Reader {
        half: OwnedReadHalf,
        buf: BytesMut,
    }

    impl Reader {
        /// The next frame; reads from the socket only when the buffer holds no whole frame, so
        /// the deadline's timer is armed only when we actually wait.
        pub async fn next_frame(&mut self, deadline: Instant) -> Result<Frame, String> {
            loop {
                if let Some((frame, used)) = parse(&self.buf)? {
                    self.buf.advance(used);
                    return match frame {
                        Frame::Error(e) => {
                            Err(format!("error reply: {}", String::from_utf8_lossy(&e)))
                        }
                        frame => Ok(frame),
                    };
                }
                self.buf.reserve(64 * 1024);
                match tokio::time::timeout_at(deadline, self.half.read_buf(&mut self.buf)).await {
                    Err(_) => return Err("deadline passed".into()),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Ok(Ok(0)) => return Err("connection closed".into()),
                    Ok(Ok(_)) => {}
                }
            }
        }
    }

    pub struct Writer(OwnedWriteHalf);

    impl Writer {
        pub async fn send(&mut self, bytes: &[u8]) {
            self.0.write_all(bytes).await.expect("write to the server");
        }
    }

    /// One connection to Redis or a sidecar.
    pub struct Connection {
        reader: Reader,
        writer: Writer,
    }

    impl Connection {
        pub async fn connect(addr: SocketAddr) -> Self {
            let stream = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            // Clients (and adapters) disable Nagle.
            stream.set_nodelay(true).expect("set TCP_NODELAY");
            let (read, write) = stream.into_split();
            Connection {
                reader: Reader {
                    half: read,
                    buf: BytesMut::with_capacity(64 * 1024),
                },
                writer: Writer(write),
            }
        }

        /// Connected and subscribed to every channel in `channels`, every confirmation read:
        /// one `SUBSCRIBE` for all, or (`sharded`) one `SSUBSCRIBE` per channel, pipelined, since
        /// one `SSUBSCRIBE` may only name channels of one slot.
        pub async fn subscribed(addr: SocketAddr, channels: &[String], sharded: bool) -> Self {
            let mut conn = Self::connect(addr).await;
            let (verb, kind): (&[u8], &[u8]) = if sharded {
                (b"SSUBSCRIBE", b"ssubscribe")
            } else {
                (b"SUBSCRIBE", b"subscribe")
            };
            let mut out = Vec::new();
            if sharded {
                for channel in channels {
                    append_command(&mut out, &[verb, channel.as_bytes()]);
                }
            } else {
                let mut args: Vec<&[u8]> = vec![verb];
                args.extend(channels.iter().map(|c| c.as_bytes()));
                append_command(&mut out, &args);
            }
            conn.send(&out).await;
            for channel in channels {
                match conn.reply().await {
                    Frame::Array(Some(items)) if matches!(&items[0], Frame::Bulk(Some(k)) if k == kind) =>
                        {}
                    other => panic!(
                        "{} {channel} at {addr} answered {other:?}",
                        String::from_utf8_lossy(verb)
                    ),
                }
            }
            conn
        }

        pub fn into_split(self) -> (Reader, Writer) {
            (self.reader, self.writer)
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            self.writer.send(bytes).await;
        }

        /// The payload of the next pub/sub message (`message` or `smessage`).
        pub async fn next_message(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
            match self.reader.next_frame(deadline).await? {
                Frame::Array(Some(mut items)) if items.len() == 3 => match items.pop() {
                    Some(Frame::Bulk(Some(payload))) => Ok(payload),
                    other => Err(format!("message without a payload: {other:?}")),
                },
                other => Err(format!("expected a message, got {other:?}")),
            }
        }

        /// The next reply, within [`super::PHASE_DEADLINE`]; panics on an error or timeout.
        pub async fn reply(&mut self) -> Frame {
            let deadline = Instant::now() + super::PHASE_DEADLINE;
            self.reader
                .next_frame(deadline)
                .await
                .unwrap_or_else(|e| panic!("reading a reply: {e}"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------------------

/// The real processes, started by the same support code the integration tests use.
use switchboard_sidecar_support as support;

mod procs {
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Duration;

    use super::support::SidecarOptions;
    pub use super::support::{RedisCluster, RedisServer, Sidecar};

    /// The sidecar under test; `SIDECAR_BENCH_BIN` swaps in another build to compare two.
    pub fn sidecar_binary() -> PathBuf {
        std::env::var_os("SIDECAR_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_switchboard-sidecar")))
    }

    /// One "pod"'s sidecar, logging warnings only: logging must not be what we measure.
    pub fn start_sidecar(upstream: String, id: &str) -> Sidecar {
        start_sidecar_with(upstream, id, &[])
    }

    /// [`start_sidecar`] with more flags.
    pub fn start_sidecar_with(upstream: String, id: &str, flags: &[(&str, &str)]) -> Sidecar {
        let mut options = SidecarOptions::upstream(upstream)
            .arg("--sidecar-id", id)
            .binary(sidecar_binary())
            .log("warn");
        for (flag, value) in flags {
            options = options.arg(flag, value);
        }
        options.start()
    }

    /// Panics (with the sidecar's log) if it crashed during the bench or is not ready.
    pub fn assert_healthy(sidecar: &mut Sidecar) {
        sidecar.assert_running();
        assert_eq!(sidecar.readyz(), Ok(200), "sidecar /readyz after the bench");
    }

    pub fn redis_version() -> String {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// User plus system CPU time a process has used so far (0 if it cannot be read).
    pub fn cpu_time(pid: u32) -> Duration {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return Duration::ZERO;
        };
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            return Duration::ZERO;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        // USER_HZ is 100 on every Linux we run on; reading it needs libc.
        Duration::from_millis(ticks * 10)
    }
}
