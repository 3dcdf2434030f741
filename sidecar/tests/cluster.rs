//! The sidecar in front of a real Redis Cluster (3 primaries, 1 replica each), given
//! `--upstream redis+cluster://<the primaries>`: the app talks to it as to one plain Redis.
//! Key commands get the owning primary's own replies (the cluster is the oracle), pub/sub works
//! across sidecars over sharded pub/sub without flooding the cluster bus, a primary killed
//! mid-stream loses no message and closes no app connection, and wrong URLs are refused at
//! start with the reason.

use switchboard_sidecar_support as support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::cluster::SlotRange;
use support::resp::{Value, parse};
use support::{RawClient, RedisCluster, RedisServer, Sidecar, SidecarOptions, command, show};

/// A command from string arguments.
fn cmd(args: &[&str]) -> Vec<u8> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    command(&args)
}

/// The primary serving `slot` in `ranges`.
fn owner(ranges: &[SlotRange], slot: u16) -> SocketAddr {
    ranges
        .iter()
        .find(|r| r.contains(slot))
        .unwrap_or_else(|| panic!("no range holds slot {slot}: {ranges:?}"))
        .primary
}

/// The first `n` names `stem<i>` whose slot (per the cluster) `primary` serves.
fn names_on(
    cluster: &RedisCluster,
    ranges: &[SlotRange],
    stem: &str,
    primary: SocketAddr,
    n: usize,
) -> Vec<String> {
    (0..)
        .map(|i| format!("{stem}{i}"))
        .filter(|name| owner(ranges, cluster.key_slot(name)) == primary)
        .take(n)
        .collect()
}

/// The primary of the sidecar's shard 0: the registry's keys live there (hash tag
/// `{switchboard}` with the default empty channel prefix), and keyless commands go there.
fn registry_primary(cluster: &RedisCluster, ranges: &[SlotRange]) -> SocketAddr {
    owner(ranges, cluster.key_slot("{switchboard}"))
}

/// A sidecar on the cluster, with the short timers the failover tests use elsewhere.
fn cluster_sidecar(cluster: &RedisCluster, id: &str) -> Sidecar {
    SidecarOptions::upstream(cluster.url())
        .arg("--sidecar-id", id)
        .arg("--heartbeat-ms", "250")
        .arg("--peer-ttl-ms", "3000")
        .arg("--reconnect-max-ms", "250")
        .arg("--flush-grace-ms", "15000")
        .start()
}

/// One scenario's replies, each labelled with its command.
type Transcript = Vec<(String, Vec<u8>)>;

/// Sends each command on `conn` (one at a time) and records the replies.
fn run(conn: &mut RawClient, commands: &[Vec<&str>]) -> Transcript {
    commands
        .iter()
        .map(|c| (c.join(" "), conn.call(cmd(c))))
        .collect()
}

/// The two transcripts are equal, step by step, byte for byte.
fn assert_same(what: &str, sidecar: &Transcript, node: &Transcript) {
    assert_eq!(sidecar.len(), node.len(), "{what}: transcript lengths");
    for ((label, got), (_, want)) in sidecar.iter().zip(node) {
        assert_eq!(
            show(got),
            show(want),
            "{what}: `{label}`: the sidecar's reply (left) differs from the node's (right)"
        );
    }
}

/// Every key command of the scenario, on keys sharing the hash tag `{tag}`.
fn key_script(tag: &str) -> Vec<Vec<String>> {
    let k = |suffix: &str| format!("{{{tag}}}:{suffix}");
    let (s, h, x, a, b) = (k("s"), k("h"), k("x"), k("a"), k("b"));
    let script = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let lines: Vec<Vec<&str>> = vec![
        vec!["GET", &s],
        vec!["SET", &s, "10"],
        vec!["GET", &s],
        vec!["INCR", &s],
        vec!["HSET", &h, "f1", "v1", "f2", "v2"],
        vec!["HGETALL", &h],
        vec!["EXPIRE", &s, "100"],
        vec!["TTL", &s],
        vec!["XADD", &x, "1-1", "f", "v"],
        vec!["XADD", &x, "2-1", "g", "w"],
        vec!["XRANGE", &x, "-", "+"],
        vec!["EVAL", script, "1", &s, "5"],
        vec!["GET", &s],
        vec!["MSET", &a, "1", &b, "2"],
        vec!["MGET", &a, &b],
        vec!["INCR", &h],
        vec!["DEL", &s, &h, &x, &a, &b],
        vec!["TTL", &s],
    ];
    lines
        .into_iter()
        .map(|l| l.into_iter().map(str::to_owned).collect())
        .collect()
}

fn as_strs(commands: &[Vec<String>]) -> Vec<Vec<&str>> {
    commands
        .iter()
        .map(|c| c.iter().map(String::as_str).collect())
        .collect()
}

/// `INFO clients`' `blocked_clients` of one node.
fn blocked_clients(cluster: &RedisCluster, node: SocketAddr) -> usize {
    let reply = cluster.admin(node).call(cmd(&["INFO", "clients"]));
    let text = String::from_utf8_lossy(&reply).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in INFO clients of {node}: {text}"))
}

/// Key commands, with the cluster as the oracle: every reply through the sidecar is
/// byte-identical to the one the primary owning the keys gives when sent the same commands
/// straight, for keys on each of the three primaries: plain, hash, stream, script and hash-tagged
/// multi-key commands, `CROSSSLOT` across slots, and transactions opened on the node of their
/// first queued command (a later command of another node's slot gets that node's `-MOVED` and
/// `-EXECABORT`). Commands that act on one node's keyspace are refused with the reason; `BLPOP`
/// on a key of a primary other than shard 0's is woken by an `LPUSH` through another sidecar.
#[test]
fn key_commands_get_the_owning_primarys_own_replies() {
    let cluster = RedisCluster::start(3, 1);
    let sidecar = SidecarOptions::upstream(cluster.url()).start();
    let other_sidecar = SidecarOptions::upstream(cluster.url()).start();
    let ranges = cluster.slot_ranges();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{ranges:?}");
    let first = registry_primary(&cluster, &ranges);

    // Two tags per primary; each tag's whole script lives on that primary.
    let tags: Vec<(String, SocketAddr)> = primaries
        .iter()
        .flat_map(|p| {
            names_on(&cluster, &ranges, "kt", *p, 2)
                .into_iter()
                .map(|t| (t, *p))
        })
        .collect();
    let mut app = RawClient::connect(sidecar.addr, "app");
    for (tag, primary) in &tags {
        let script = key_script(tag);
        let through_sidecar = run(&mut app, &as_strs(&script));
        let mut node = cluster.admin(*primary);
        let straight = run(&mut node, &as_strs(&script));
        assert_same(
            &format!("keys {{{tag}}} on {primary}"),
            &through_sidecar,
            &straight,
        );
        // The replies are the real ones, not two copies of the same refusal.
        assert_eq!(through_sidecar[1].1, b"+OK\r\n", "SET {{{tag}}}:s");
        assert_eq!(through_sidecar[12].1, b"$2\r\n16\r\n", "GET after EVAL");
        assert_eq!(through_sidecar[16].1, b":5\r\n", "DEL of the five keys");
    }

    // MGET across slots (on two primaries): the node's own CROSSSLOT.
    let (x, y) = (
        format!("{{{}}}:x", tags[0].0),
        format!("{{{}}}:y", tags[2].0),
    );
    assert_ne!(tags[0].1, tags[2].1);
    let mget = cmd(&["MGET", &x, &y]);
    let via = app.call(&mget);
    let straight = cluster.admin(tags[0].1).call(&mget);
    assert!(
        via.starts_with(b"-CROSSSLOT "),
        "MGET {x} {y}: {}",
        show(&via)
    );
    assert_eq!(show(&via), show(&straight), "MGET across slots");

    // A transaction on a primary other than shard 0's: opened where its first command belongs.
    let (k1, k1_node) = tags
        .iter()
        .find(|(_, p)| *p != first)
        .map(|(t, p)| (format!("{{{t}}}:m"), *p))
        .expect("a tag on a primary other than shard 0's");
    let (k2, k2_node) = tags
        .iter()
        .find(|(_, p)| *p != k1_node)
        .map(|(t, p)| (format!("{{{t}}}:m"), *p))
        .expect("a tag on another primary");
    let transaction: Vec<Vec<&str>> = vec![
        vec!["MULTI"],
        vec!["SET", &k1, "5"],
        vec!["INCR", &k1],
        vec!["EXEC"],
        vec!["DEL", &k1],
    ];
    let through_sidecar = run(&mut app, &transaction);
    let straight = run(&mut cluster.admin(k1_node), &transaction);
    assert_same("MULTI on a second primary", &through_sidecar, &straight);
    assert_eq!(
        show(&through_sidecar[3].1),
        show(b"*2\r\n+OK\r\n:6\r\n"),
        "EXEC"
    );
    let aborted: Vec<Vec<&str>> = vec![
        vec!["MULTI"],
        vec!["SET", &k1, "1"],
        vec!["SET", &k2, "1"],
        vec!["EXEC"],
        vec!["EXISTS", &k1],
    ];
    let through_sidecar = run(&mut app, &aborted);
    let straight = run(&mut cluster.admin(k1_node), &aborted);
    assert_same("MULTI across two primaries", &through_sidecar, &straight);
    let slot2 = cluster.key_slot(&k2);
    assert_eq!(
        show(&through_sidecar[2].1),
        show(format!("-MOVED {slot2} {k2_node}\r\n").as_bytes()),
        "the second command's node"
    );
    assert!(
        through_sidecar[3].1.starts_with(b"-EXECABORT "),
        "EXEC: {}",
        show(&through_sidecar[3].1)
    );

    // Per-node keyspace commands: refused, naming the command; the connection goes on.
    for (args, name) in [
        (vec!["KEYS", "*"], "keys"),
        (vec!["DBSIZE"], "dbsize"),
        (vec!["SCAN", "0"], "scan"),
    ] {
        let reply = app.call(cmd(&args));
        let expected = format!("-ERR switchboard: '{name}' acts on one node's keyspace");
        assert!(
            reply.starts_with(expected.as_bytes()),
            "{args:?}: {}",
            show(&reply)
        );
    }
    assert_eq!(app.call(cmd(&["PING"])), b"+PONG\r\n");

    // BLPOP on a second primary's key, woken by an LPUSH through another sidecar.
    let list = format!(
        "{{{}}}:list",
        tags.iter().find(|(_, p)| *p != first).unwrap().0
    );
    let list_node = owner(&ranges, cluster.key_slot(&list));
    assert_ne!(list_node, first);
    let blocked_before = blocked_clients(&cluster, list_node);
    let mut waiter = RawClient::connect(sidecar.addr, "blpop");
    waiter.send(cmd(&["BLPOP", &list, "20"]));
    support::wait_for(
        "BLPOP to block on the key's primary",
        Duration::from_secs(10),
        || blocked_clients(&cluster, list_node) > blocked_before,
    );
    let mut pusher = RawClient::connect(other_sidecar.addr, "lpush");
    assert_eq!(pusher.call(cmd(&["LPUSH", &list, "hello"])), b":1\r\n");
    assert_eq!(
        show(&waiter.read_frame()),
        show(format!("*2\r\n${}\r\n{list}\r\n$5\r\nhello\r\n", list.len()).as_bytes()),
        "BLPOP's reply"
    );
    assert_eq!(waiter.call(cmd(&["EXISTS", &list])), b":0\r\n");
}

/// What one received pub/sub frame is: its kind, pattern (for `pmessage`), channel, payload.
fn message_parts(frame: &[u8], who: &str) -> (String, String, String, String) {
    let Ok(Value::Aggregate(_, Some(items))) = parse(frame) else {
        panic!("{who}: not a pub/sub message: {}", show(frame))
    };
    let text = |i: usize| {
        items
            .get(i)
            .and_then(Value::as_bytes)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| panic!("{who}: element {i} missing in {}", show(frame)))
    };
    match text(0).as_str() {
        "pmessage" => ("pmessage".into(), text(1), text(2), text(3)),
        kind @ ("message" | "smessage") => (kind.into(), String::new(), text(1), text(2)),
        _ => panic!("{who}: unexpected frame {}", show(frame)),
    }
}

/// One stream a subscriber expects: (frame kind, pattern or "", channel).
type Stream = (String, String, String);

/// Reads `client`'s messages until every stream in `expected` ended with its `end` payload,
/// each stream's payloads being `<tag>:<channel>:<n>` for n = 0, 1, ... `rounds - 1` exactly,
/// in order. Anything else (a stream not expected, a payload of the other kind, a gap, a
/// duplicate) fails the test.
fn expect_streams(client: &mut RawClient, expected: &BTreeSet<Stream>, rounds: usize) {
    let mut next: BTreeMap<&Stream, usize> = expected.iter().map(|s| (s, 0)).collect();
    let mut ended = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = client.try_read_frame(left).unwrap_or_else(|e| {
            panic!(
                "{}: stopped receiving ({e:?}); {} of {} streams ended; positions {next:?}",
                client.name,
                ended.len(),
                expected.len()
            )
        });
        let (kind, pattern, channel, payload) = message_parts(&frame, &client.name);
        let stream = (kind.clone(), pattern, channel.clone());
        let Some(n) = next.get_mut(&stream) else {
            panic!(
                "{}: a message it must not get: {stream:?} {payload:?}",
                client.name
            )
        };
        assert!(
            !ended.contains(&stream),
            "{}: {stream:?} got {payload:?} after its end",
            client.name
        );
        let tag = if kind == "smessage" { "s" } else { "p" };
        if payload == format!("{tag}:{channel}:end") {
            assert_eq!(
                *n, rounds,
                "{}: {stream:?} ended after {n} of {rounds} messages",
                client.name
            );
            ended.insert(stream);
        } else {
            assert_eq!(
                payload,
                format!("{tag}:{channel}:{n}"),
                "{}: {stream:?}: a message missing, repeated, out of order or of the other kind",
                client.name
            );
            *n += 1;
        }
    }
    client.assert_nothing_within(Duration::from_millis(300));
}

/// A subscriber connection that subscribed to each of `names` with `verb`, one command each.
fn subscriber(addr: SocketAddr, name: &str, verb: &str, names: &[String]) -> RawClient {
    let mut c = RawClient::connect(addr, name);
    let confirmation = match verb {
        "SUBSCRIBE" => "subscribe",
        "PSUBSCRIBE" => "psubscribe",
        "SSUBSCRIBE" => "ssubscribe",
        other => panic!("not a subscribe verb: {other}"),
    };
    for (i, n) in names.iter().enumerate() {
        let reply = c.call(cmd(&[verb, n]));
        let want = format!(
            "*3\r\n${}\r\n{confirmation}\r\n${}\r\n{n}\r\n:{}\r\n",
            confirmation.len(),
            n.len(),
            i + 1
        );
        assert_eq!(show(&reply), show(want.as_bytes()), "{name}: {verb} {n}");
    }
    c
}

/// A counter of one node's `CLUSTER INFO` (Redis lists a message type only once it was sent).
fn cluster_info_counter(cluster: &RedisCluster, node: SocketAddr, name: &str) -> u64 {
    let reply = cluster.admin(node).call(cmd(&["CLUSTER", "INFO"]));
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert!(
        text.contains("cluster_state:ok"),
        "CLUSTER INFO of {node}: {text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')))
        .map_or(0, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name} of {node}: {v:?}: {e}"))
        })
}

/// The bulk strings of a flat array reply.
fn strings(reply: &[u8]) -> Vec<String> {
    let Ok(Value::Aggregate(_, Some(items))) = parse(reply) else {
        panic!("not an array: {}", show(reply))
    };
    items
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes().expect("a string")).into_owned())
        .collect()
}

/// Pub/sub through three sidecars on the cluster: sidecar A publishes numbered messages with
/// `PUBLISH` and `SPUBLISH` on channels spread over all three primaries (and on channels no one
/// subscribed); `SUBSCRIBE` and `PSUBSCRIBE` subscribers on B and C and an `SSUBSCRIBE` one on
/// C each receive every message they match exactly once, in per-channel order, and none they do
/// not: a `PUBLISH x` never reaches an `SSUBSCRIBE x`, an `SPUBLISH x` never a `SUBSCRIBE x` or a
/// pattern (Redis's semantics). Two patterns matching one channel on one connection give two
/// `pmessage`s, as in Redis. The cluster bus carries no classic publish
/// (`cluster_stats_messages_publish_sent` stays 0 on every node, while one `PUBLISH` straight to
/// a node does count there), and every primary's `PUBSUB SHARDCHANNELS` lists only channels of
/// slots it serves, among them the test's channels of those slots.
#[test]
fn pub_sub_across_three_sidecars_rides_sharded_pub_sub_with_redis_semantics() {
    let cluster = RedisCluster::start(3, 1);
    let ranges = cluster.slot_ranges();
    let primaries = cluster.primaries();
    let (a, b, c) = (
        cluster_sidecar(&cluster, "pod-a"),
        cluster_sidecar(&cluster, "pod-b"),
        cluster_sidecar(&cluster, "pod-c"),
    );
    const CHANNELS: usize = 24;
    const ROUNDS: usize = 20;
    let channels: Vec<String> = (0..CHANNELS).map(|i| format!("ch:{i}")).collect();
    // Upstream, the app's channel `c` is the shard channel `__c:c`, and `SSUBSCRIBE c` is `c`.
    let mut classic_on: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
    let mut sharded_on: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
    for ch in &channels {
        let up = format!("__c:{ch}");
        classic_on
            .entry(owner(&ranges, cluster.key_slot(&up)))
            .or_default()
            .push(up);
        sharded_on
            .entry(owner(&ranges, cluster.key_slot(ch)))
            .or_default()
            .push(ch.clone());
    }
    for p in &primaries {
        assert!(
            classic_on.contains_key(p) && sharded_on.contains_key(p),
            "the channels must be spread over every primary: {classic_on:?} {sharded_on:?}"
        );
    }
    let unheard: Vec<String> = (0..4).map(|i| format!("zz:{i}")).collect();

    let mut sub_b = subscriber(b.addr, "sub-b", "SUBSCRIBE", &channels);
    let mut sub_c = subscriber(c.addr, "sub-c", "SUBSCRIBE", &channels);
    let mut psub_b = subscriber(b.addr, "psub-b", "PSUBSCRIBE", &["ch:*".into()]);
    let mut psub_c = subscriber(
        c.addr,
        "psub-c",
        "PSUBSCRIBE",
        &["ch:*".into(), "ch:1*".into()],
    );
    let mut ssub_c = subscriber(c.addr, "ssub-c", "SSUBSCRIBE", &channels);

    let streams = |kind: &str, pattern: &str| -> BTreeSet<Stream> {
        let prefix = pattern.trim_end_matches('*');
        channels
            .iter()
            .filter(|ch| ch.starts_with(prefix))
            .map(|ch| (kind.to_owned(), pattern.to_owned(), ch.clone()))
            .collect()
    };
    let classic = streams("message", "");
    let sharded = streams("smessage", "");
    let all = streams("pmessage", "ch:*");
    let both: BTreeSet<Stream> = all.union(&streams("pmessage", "ch:1*")).cloned().collect();
    assert_eq!(
        both.len(),
        CHANNELS + 11,
        "ch:1 and ch:10..ch:19 match ch:1*"
    );

    std::thread::scope(|s| {
        let readers = [
            (&mut sub_b, &classic),
            (&mut sub_c, &classic),
            (&mut psub_b, &all),
            (&mut psub_c, &both),
            (&mut ssub_c, &sharded),
        ]
        .map(|(client, expected)| s.spawn(move || expect_streams(client, expected, ROUNDS)));

        let mut publisher = RawClient::connect(a.addr, "pub-a");
        let rounds = (0..ROUNDS).map(|n| n.to_string()).chain(["end".to_owned()]);
        for n in rounds {
            // One round pipelined: every channel, both kinds, and the unheard ones.
            let mut batch = Vec::new();
            let mut count = 0;
            for ch in channels.iter().chain(&unheard) {
                batch.extend(cmd(&["PUBLISH", ch, &format!("p:{ch}:{n}")]));
                batch.extend(cmd(&["SPUBLISH", ch, &format!("s:{ch}:{n}")]));
                count += 2;
            }
            publisher.send(&batch);
            for reply in publisher.read_frames(count) {
                assert!(reply.starts_with(b":"), "publish: {}", show(&reply));
            }
        }
        for reader in readers {
            if let Err(panic) = reader.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });

    for node in cluster.seeds() {
        assert_eq!(
            cluster_info_counter(&cluster, node, "cluster_stats_messages_publish_sent"),
            0,
            "node {node} sent classic PUBLISH messages over the cluster bus"
        );
    }
    for p in &primaries {
        let listed = strings(&cluster.admin(*p).call(cmd(&["PUBSUB", "SHARDCHANNELS"])));
        for name in &listed {
            assert_eq!(
                owner(&ranges, cluster.key_slot(name)),
                *p,
                "{p} lists shard channel {name:?} of a slot it does not serve: {listed:?}"
            );
        }
        for name in classic_on[p].iter().chain(&sharded_on[p]) {
            assert!(
                listed.contains(name),
                "{p} does not list {name:?}: {listed:?}"
            );
        }
    }
    // The counter is the right one: a classic PUBLISH straight to a node does show there.
    let node = primaries[0];
    cluster.admin(node).call(cmd(&["PUBLISH", "direct", "x"]));
    support::wait_for(
        "a direct PUBLISH to count in CLUSTER INFO",
        Duration::from_secs(10),
        || cluster_info_counter(&cluster, node, "cluster_stats_messages_publish_sent") > 0,
    );
}

/// One publisher's messages reach a pattern subscriber in the order it published them, as
/// from one Redis, although its channels live on every primary: sidecar A pipelines numbered
/// `PUBLISH`es round-robin over channels spread across the three primaries, and `PSUBSCRIBE`
/// subscribers on B and on A itself read every number once, in order. (Per-channel order alone
/// would let an emit to a room and a broadcast after it arrive swapped; Node's classic
/// socket.io adapter receives both through one pattern.)
#[test]
fn a_pattern_subscriber_gets_one_publishers_messages_in_order_across_primaries() {
    let cluster = RedisCluster::start(3, 0);
    let ranges = cluster.slot_ranges();
    let (a, b) = (
        cluster_sidecar(&cluster, "pod-a"),
        cluster_sidecar(&cluster, "pod-b"),
    );
    let channels: Vec<String> = cluster
        .primaries()
        .into_iter()
        .flat_map(|p| {
            let up = names_on(&cluster, &ranges, "__c:ord:", p, 2);
            up.into_iter()
                .map(|n| n.trim_start_matches("__c:").to_owned())
        })
        .collect();
    assert_eq!(
        channels.len(),
        6,
        "two channels on each of the three primaries"
    );
    const MESSAGES: usize = 600;
    let mut on_b = subscriber(b.addr, "psub-b", "PSUBSCRIBE", &["ord:*".into()]);
    let mut on_a = subscriber(a.addr, "psub-a", "PSUBSCRIBE", &["ord:*".into()]);

    let mut publisher = RawClient::connect(a.addr, "pub-a");
    for batch in (0..MESSAGES).collect::<Vec<_>>().chunks(100) {
        let mut bytes = Vec::new();
        for &n in batch {
            bytes.extend(cmd(&[
                "PUBLISH",
                &channels[n % channels.len()],
                &n.to_string(),
            ]));
        }
        publisher.send(&bytes);
        for reply in publisher.read_frames(batch.len()) {
            assert!(reply.starts_with(b":"), "publish: {}", show(&reply));
        }
    }
    for sub in [&mut on_b, &mut on_a] {
        for n in 0..MESSAGES {
            let frame = sub
                .try_read_frame(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{}: message {n} never came: {e:?}", sub.name));
            let (kind, pattern, channel, payload) = message_parts(&frame, &sub.name);
            assert_eq!(
                (
                    kind.as_str(),
                    pattern.as_str(),
                    channel.as_str(),
                    payload.as_str()
                ),
                (
                    "pmessage",
                    "ord:*",
                    channels[n % channels.len()].as_str(),
                    n.to_string().as_str()
                ),
                "{}: message {n} of the publisher's order",
                sub.name
            );
        }
        sub.assert_nothing_within(Duration::from_millis(300));
    }
}

/// A publisher on one sidecar sending numbered messages on one channel from its own thread
/// until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: SocketAddr, channel: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut client = RawClient::connect(addr, "publisher");
        let (stop2, sent2, channel) = (stop.clone(), sent.clone(), channel.to_owned());
        let thread = std::thread::spawn(move || {
            let mut i = 0;
            while !stop2.load(Ordering::Relaxed) {
                let body = format!("p:{channel}:{i}");
                let reply = client.call(cmd(&["PUBLISH", &channel, &body]));
                assert!(reply.starts_with(b":"), "PUBLISH {i}: {}", show(&reply));
                i += 1;
                sent2.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Traffic { stop, sent, thread }
    }

    fn wait_for_more(&self, more: usize) {
        let target = self.sent.load(Ordering::Relaxed) + more;
        support::wait_for("more publishes", Duration::from_secs(30), || {
            self.sent.load(Ordering::Relaxed) >= target
        });
    }

    /// Stops the publisher; returns how many it sent.
    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// The primary serving a channel is killed (SIGKILL) while a publisher on sidecar A sends
/// numbered messages on it: a replica takes over, and subscribers (`SUBSCRIBE` on B and C, a
/// `PSUBSCRIBE` on C) receive every message, before, during and after, exactly once and in
/// order, on connections that never close. A key written before the kill (and acknowledged by
/// the replica, `WAIT 1` straight to the primary) is read through the sidecar afterwards.
#[test]
fn a_primary_killed_mid_stream_loses_no_message_and_no_app_connection() {
    let mut cluster = RedisCluster::start(3, 1);
    let ranges = cluster.slot_ranges();
    let registry = registry_primary(&cluster, &ranges);
    // A channel on a primary other than shard 0's (the registry's): its own failover only.
    let channel = (0..)
        .map(|i| format!("news{i}"))
        .find(|ch| owner(&ranges, cluster.key_slot(&format!("__c:{ch}"))) != registry)
        .unwrap();
    let slot = cluster.key_slot(&format!("__c:{channel}"));
    let doomed = owner(&ranges, slot);
    let (mut a, mut b, mut c) = (
        cluster_sidecar(&cluster, "pod-a"),
        cluster_sidecar(&cluster, "pod-b"),
        cluster_sidecar(&cluster, "pod-c"),
    );
    let mut subscribers = [
        subscriber(b.addr, "sub-b", "SUBSCRIBE", std::slice::from_ref(&channel)),
        subscriber(c.addr, "sub-c", "SUBSCRIBE", std::slice::from_ref(&channel)),
        subscriber(c.addr, "psub-c", "PSUBSCRIBE", &["news*".to_owned()]),
    ];

    let key = names_on(&cluster, &ranges, "before:", doomed, 1).remove(0);
    let mut app = RawClient::connect(a.addr, "app");
    assert_eq!(app.call(cmd(&["SET", &key, "kept"])), b"+OK\r\n");
    assert_eq!(
        cluster.admin(doomed).call(cmd(&["WAIT", "1", "1000"])),
        b":1\r\n",
        "the replica acknowledged the write"
    );

    let traffic = Traffic::start(a.addr, &channel);
    traffic.wait_for_more(50);
    let killed = cluster.kill_primary_of_slot(slot);
    assert_eq!(killed, doomed);
    let promoted = cluster.primary_of_slot(slot);
    eprintln!("slot {slot} ({channel}) failed over from {killed} to {promoted}");
    support::wait_for("every sidecar ready again", Duration::from_secs(30), || {
        [&a, &b, &c].iter().all(|s| s.readyz() == Ok(200))
    });
    traffic.wait_for_more(100);
    let sent = traffic.stop();
    eprintln!("{sent} messages published");

    let streams = |kind: &str, pattern: &str| {
        BTreeSet::from([(kind.to_owned(), pattern.to_owned(), channel.clone())])
    };
    let end = cmd(&["PUBLISH", &channel, &format!("p:{channel}:end")]);
    assert!(app.call(&end).starts_with(b":"));
    for (s, expected) in subscribers.iter_mut().zip([
        streams("message", ""),
        streams("message", ""),
        streams("pmessage", "news*"),
    ]) {
        expect_streams(s, &expected, sent);
        // Never closed: the same socket still answers.
        assert_eq!(
            s.call(cmd(&["PING"])),
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
            "{}",
            s.name
        );
    }
    for s in [&mut a, &mut b, &mut c] {
        s.assert_running();
    }
    assert_eq!(
        show(&app.call(cmd(&["GET", &key]))),
        show(b"$4\r\nkept\r\n"),
        "the key written before the failover, read through the sidecar"
    );
    assert_eq!(
        show(&cluster.admin(promoted).call(cmd(&["GET", &key]))),
        show(b"$4\r\nkept\r\n")
    );
}

/// `switchboard_sidecar_commands_redirected_total`, read from `/metrics`.
fn redirected(sidecar: &Sidecar) -> u64 {
    let body = support::http_body(sidecar.http_addr, "/metrics").unwrap_or_default();
    body.lines()
        .find_map(|l| {
            l.strip_prefix("switchboard_sidecar_commands_redirected_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A slot migrating under an app that knows nothing of clusters: the node answers `-ASK` for
/// a key already moved, then `-MOVED` once the slot is handed over (the node itself is asked
/// too, as the oracle). Through the sidecar the app gets the key's value each time, its
/// pipelined replies in order, and never a redirection.
#[test]
fn a_migrating_slot_is_followed_through_ask_and_moved_in_the_clients_order() {
    let cluster = RedisCluster::start(3, 0);
    let ranges = cluster.slot_ranges();
    let registry = registry_primary(&cluster, &ranges);
    let source = cluster
        .primaries()
        .into_iter()
        .find(|p| *p != registry)
        .expect("three primaries");
    let target = cluster
        .primaries()
        .into_iter()
        .find(|p| *p != source)
        .expect("three primaries");
    let moving = names_on(&cluster, &ranges, "moving:", source, 1).remove(0);
    let slot = cluster.key_slot(&moving);
    // A key on the same node in another slot, which stays.
    let staying = names_on(&cluster, &ranges, "staying:", source, 8)
        .into_iter()
        .find(|k| cluster.key_slot(k) != slot)
        .expect("a key in another slot");
    let sidecar = cluster_sidecar(&cluster, "pod-a");
    let mut app = RawClient::connect(sidecar.addr, "app");
    assert_eq!(app.call(cmd(&["SET", &moving, "m"])), b"+OK\r\n");
    assert_eq!(app.call(cmd(&["SET", &staying, "s"])), b"+OK\r\n");

    // Half-way: the key is on the target, the slot still the source's.
    let slot_text = slot.to_string();
    let (src_id, dst_id) = (cluster.node_id(source), cluster.node_id(target));
    let setslot = |node: SocketAddr, how: &str, id: &str| {
        let reply = cluster
            .admin(node)
            .call(cmd(&["CLUSTER", "SETSLOT", &slot_text, how, id]));
        assert_eq!(
            show(&reply),
            show_str("+OK\r\n"),
            "CLUSTER SETSLOT {slot} {how} on {node}"
        );
    };
    setslot(target, "IMPORTING", &src_id);
    setslot(source, "MIGRATING", &dst_id);
    let migrated = cluster.admin(source).call(cmd(&[
        "MIGRATE",
        &target.ip().to_string(),
        &target.port().to_string(),
        &moving,
        "0",
        "5000",
    ]));
    assert_eq!(show(&migrated), show_str("+OK\r\n"));
    let asked = cluster.admin(source).call(cmd(&["GET", &moving]));
    assert!(
        asked.starts_with(b"-ASK "),
        "the node redirects: {}",
        show(&asked)
    );

    let before = redirected(&sidecar);
    let pipeline = [
        cmd(&["GET", &moving]),
        cmd(&["GET", &staying]),
        cmd(&["GET", &moving]),
        cmd(&["GET", &staying]),
    ]
    .concat();
    app.send(&pipeline);
    let replies: Vec<String> = app.read_frames(4).iter().map(|f| show(f)).collect();
    assert_eq!(
        replies,
        ["$1\r\nm\r\n", "$1\r\ns\r\n", "$1\r\nm\r\n", "$1\r\ns\r\n"].map(show_str),
        "the moved key's value (after ASKING on the target), in the client's order"
    );
    assert!(
        redirected(&sidecar) >= before + 2,
        "both -ASK answers were followed"
    );

    // Handed over: the source answers -MOVED; the sidecar follows it and reads the slot map
    // again.
    let others = cluster
        .primaries()
        .into_iter()
        .filter(|p| ![source, target].contains(p));
    for node in [target, source].into_iter().chain(others) {
        setslot(node, "NODE", &dst_id);
    }
    let moved = cluster.admin(source).call(cmd(&["GET", &moving]));
    assert!(
        moved.starts_with(b"-MOVED "),
        "the node redirects: {}",
        show(&moved)
    );
    assert_eq!(
        show(&app.call(cmd(&["GET", &moving]))),
        show_str("$1\r\nm\r\n")
    );
    assert_eq!(
        show(&app.call(cmd(&["SET", &moving, "m2"]))),
        show_str("+OK\r\n")
    );
    assert_eq!(
        show(&cluster.admin(target).call(cmd(&["GET", &moving]))),
        show_str("$2\r\nm2\r\n"),
        "written on the slot's new primary"
    );
    support::wait_for(
        "the sidecar to follow the new slot map",
        Duration::from_secs(10),
        || sidecar.log_text().contains("the cluster was resharded"),
    );
}

fn show_str(s: &str) -> String {
    show(s.as_bytes())
}

/// Wrong cluster URLs stop the sidecar at start, saying why: a seed that is a plain
/// (non-cluster) `redis-server`, and a database number (a cluster has only database 0).
#[test]
fn a_wrong_cluster_url_is_refused_at_start_with_the_reason() {
    let plain = RedisServer::start();
    let url = format!("redis+cluster://127.0.0.1:{}", plain.port());
    let mut sidecar = SidecarOptions::upstream(url).no_wait().start();
    let status = sidecar.wait_for_exit(Duration::from_secs(20));
    let log = sidecar.log_text();
    assert!(!status.success(), "exited with {status}; log:\n{log}");
    assert!(
        log.contains("is not a Redis Cluster node"),
        "the reason is given; log:\n{log}"
    );
    assert!(
        log.contains(&format!("127.0.0.1:{}", plain.port())),
        "the seed is named; log:\n{log}"
    );

    let mut sidecar = SidecarOptions::upstream("redis+cluster://127.0.0.1:1/2".into())
        .no_wait()
        .start();
    let status = sidecar.wait_for_exit(Duration::from_secs(20));
    let log = sidecar.log_text();
    assert!(!status.success(), "exited with {status}; log:\n{log}");
    assert!(
        log.contains("a cluster has only database 0"),
        "the reason is given; log:\n{log}"
    );
}
