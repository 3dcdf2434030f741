//! The backplane's state machine, frame by frame: what it writes for each request, what it owes
//! and answers for each reply, and what survives a lost connection. No sockets, no clock: every
//! instant is passed in.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::machine::{Lost, Machine, Message, Outbound};
use super::{Part, Request, Settings, Shared};
use crate::metrics::Metrics;
use crate::pubsub::{Kind, Topic};
use crate::relay::registry::Registry;
use crate::resp::request::{Decoded, decode};
use crate::resp::{Limits, Value};

const PREFIX: &str = "app:";
const GRACE: Duration = Duration::from_secs(2);

fn settings(buffer_messages: usize) -> Settings {
    Settings {
        channel_prefix: Bytes::from_static(PREFIX.as_bytes()),
        heartbeat: Duration::from_secs(1),
        flush_grace: GRACE,
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(100),
        buffer_bytes: 1 << 20,
        buffer_messages,
        max_bulk: 1 << 20,
        pattern_copies: true,
    }
}

fn machine(shard: usize, sentinel: bool, buffer_messages: usize) -> (Machine, Arc<Shared>) {
    let shared = Shared::new(1, Arc::new(Metrics::default()));
    let registry = Registry::new(PREFIX, "me", 10_000);
    let m = Machine::new(
        shard,
        settings(buffer_messages),
        registry,
        sentinel,
        shared.clone(),
    );
    (m, shared)
}

/// The commands in written bytes, as text: `["SUBSCRIBE", "app:a"]`. EVAL scripts are shown by
/// what they do (`EVAL:<first line of the script>`), so tests read like the registry's names.
fn commands(mut bytes: BytesMut) -> Vec<Vec<String>> {
    let limits = Limits::for_upstream(1 << 20);
    let mut out = Vec::new();
    loop {
        match decode(&mut bytes, &limits, true).expect("the machine writes valid RESP") {
            Decoded::Command(c) => out.push(
                c.args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            ),
            Decoded::Skipped => {}
            Decoded::Incomplete { .. } => {
                assert!(bytes.is_empty(), "a partial command was written");
                return out;
            }
        }
    }
}

/// The verbs written, registry scripts named by their key operation.
fn verbs(bytes: BytesMut) -> Vec<String> {
    commands(bytes)
        .into_iter()
        .map(|c| {
            if c[0] != "EVAL" {
                return c[0].clone();
            }
            let script = &c[1];
            let name = [
                ("redis.call('DEL', KEYS[1])\nredis.call('HSET'", "SNAPSHOT"),
                ("HINCRBY", "ADJUST"),
                ("ZRANGE", "READ"),
                ("ZREM', KEYS[2]", "LEAVE"),
                ("ARGV[3] == ''", "MARK"),
                ("PEXPIRE', KEYS[1], ARGV[2]) == 0", "TOUCH"),
            ]
            .iter()
            .find(|(needle, _)| script.contains(needle))
            .map_or("EVAL?", |(_, name)| name);
            name.to_owned()
        })
        .collect()
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn confirm(word: &str, channel: &str, count: i64) -> Value {
    Value::Array(vec![bulk(word), bulk(channel), Value::Integer(count)])
}

fn pong() -> Value {
    Value::Simple(Bytes::from_static(b"PONG"))
}

/// A registry read: each peer with its server mark for shard 0.
fn registry_read(peers: &[(&str, &str)]) -> Value {
    Value::Array(
        peers
            .iter()
            .flat_map(|(id, server)| {
                [
                    bulk(id),
                    Value::Array(vec![bulk("alive"), bulk("1"), bulk("up:0"), bulk(server)]),
                ]
            })
            .collect(),
    )
}

fn topics(kind: Kind, names: &[&str]) -> Vec<Topic> {
    names
        .iter()
        .map(|n| Topic::new(kind, Bytes::copy_from_slice(n.as_bytes())))
        .collect()
}

fn acquire(m: &mut Machine, names: &[&str]) -> oneshot::Receiver<Result<(), String>> {
    let (done, rx) = oneshot::channel();
    m.request(Request::Acquire {
        topics: topics(Kind::Channel, names),
        done,
    });
    rx
}

fn release(m: &mut Machine, names: &[&str]) {
    let (done, _) = oneshot::channel();
    m.request(Request::Release {
        topics: topics(Kind::Channel, names),
        done,
    });
}

fn publish(m: &mut Machine, channel: &str, payload: &str) {
    m.request(Request::Publish {
        kind: Kind::Channel,
        channel: Bytes::copy_from_slice(channel.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        part: Part::Both,
    });
}

/// Connects shard 0 and answers everything the restore asked (resubscriptions, the PING, the
/// snapshot, the registry read, the mark), as a healthy server would; `peers` is the registry.
fn connect_settled(m: &mut Machine, server: &str, peers: &[(&str, &str)], now: Instant) {
    m.connected(Bytes::copy_from_slice(server.as_bytes()), now);
    answer_sub(m);
    answer_ctl(m, peers, now);
}

/// Answers every subscriber-link command written so far, as a healthy server would.
fn answer_sub(m: &mut Machine) {
    for command in commands(m.take_sub_writes()) {
        match command[0].as_str() {
            "PING" => assert_eq!(m.sub_frame(pong()), None),
            verb => {
                for name in &command[1..] {
                    m.sub_frame(confirm(&verb.to_ascii_lowercase(), name, 1));
                }
            }
        }
    }
}

/// Answers every control command written so far (publishes with 1, registry scripts with 1,
/// reads with `peers`); returns the verbs answered.
fn answer_ctl(m: &mut Machine, peers: &[(&str, &str)], now: Instant) -> Vec<String> {
    let mut answered = Vec::new();
    loop {
        let verbs = verbs(m.take_ctl_writes());
        if verbs.is_empty() {
            return answered;
        }
        for verb in verbs {
            let reply = if verb == "READ" {
                registry_read(peers)
            } else {
                Value::Integer(1)
            };
            m.ctl_frame(reply, now).expect("a healthy reply");
            answered.push(verb);
        }
    }
}

/// The publishes written, `channel payload`; an announcement of replays shows what it lists:
/// `announce [app:a 1, app:a 2]`.
fn published(bytes: BytesMut) -> Vec<String> {
    commands(bytes)
        .into_iter()
        .filter(|c| c[0] == "PUBLISH" || c[0] == "SPUBLISH")
        .map(|c| {
            if c[1] == ANNOUNCEMENTS {
                let listed = published(BytesMut::from(c[2].as_bytes()));
                format!("announce [{}]", listed.join(", "))
            } else {
                format!("{} {}", c[1], c[2])
            }
        })
        .collect()
}

const ANNOUNCEMENTS: &str = "app:__switchboard:replays";

#[test]
fn a_subscribe_is_answered_only_once_the_backplane_confirms_every_channel() {
    let (mut m, _) = machine(0, false, 100);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    let mut done = acquire(&mut m, &["a", "b"]);
    assert_eq!(
        commands(m.take_sub_writes()),
        vec![vec!["SUBSCRIBE", "app:a", "app:b"]],
        "one upstream command, channels prefixed"
    );
    m.sub_frame(confirm("subscribe", "app:a", 1));
    assert!(done.try_recv().is_err(), "one of two confirmations");
    m.sub_frame(confirm("subscribe", "app:b", 2));
    assert_eq!(done.try_recv(), Ok(Ok(())));

    // A second local subscriber costs the backplane nothing; the last one leaving unsubscribes.
    let mut again = acquire(&mut m, &["a"]);
    assert!(m.take_sub_writes().is_empty());
    assert_eq!(again.try_recv(), Ok(Ok(())));
    release(&mut m, &["a"]);
    assert!(m.take_sub_writes().is_empty(), "one subscriber is left");
    release(&mut m, &["a"]);
    assert_eq!(
        commands(m.take_sub_writes()),
        vec![vec!["UNSUBSCRIBE", "app:a"]]
    );
    assert_eq!(m.subscriptions(), 1);
}

#[test]
fn a_refused_subscribe_is_reported_to_the_waiting_client() {
    let (mut m, _) = machine(0, false, 100);
    connect_settled(&mut m, "run-1", &[], Instant::now());
    let mut done = acquire(&mut m, &["a"]);
    m.take_sub_writes();
    m.sub_frame(Value::Error(Bytes::from_static(
        b"NOPERM no channel for you",
    )));
    assert_eq!(
        done.try_recv(),
        Ok(Err("NOPERM no channel for you".to_owned()))
    );
}

#[test]
fn a_failover_mid_subscribe_resubscribes_on_the_new_primary() {
    let (mut m, shared) = machine(0, false, 100);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    assert!(shared.is_ready());
    let mut done = acquire(&mut m, &["room"]);
    assert_eq!(verbs(m.take_sub_writes()), vec!["SUBSCRIBE"]);

    // The primary dies before confirming.
    m.disconnected();
    assert!(!shared.is_ready());
    assert_eq!(
        done.try_recv(),
        Ok(Ok(())),
        "recorded: the reconnect subscribes it, the client need not wait for the outage"
    );

    // The new primary gets the subscription back, then the PING that proves it is in place.
    m.connected(Bytes::from_static(b"run-2"), now);
    assert!(shared.is_ready());
    assert_eq!(
        commands(m.take_sub_writes()),
        vec![
            vec!["SUBSCRIBE", "app:room"],
            vec!["SUBSCRIBE", ANNOUNCEMENTS],
            vec!["PING"]
        ]
    );
    m.sub_frame(confirm("subscribe", "app:room", 1));
    m.sub_frame(confirm("subscribe", ANNOUNCEMENTS, 2));
    assert!(m.take_ctl_writes().iter().count() > 0, "the snapshot");
    m.sub_frame(pong());
    let ctl = commands(m.take_ctl_writes());
    let mark = ctl.last().expect("a mark once restored");
    assert_eq!(mark[mark.len() - 2..], ["up:0", "run-2"], "marked on run-2");
}

#[test]
fn a_reply_after_a_disconnect_answers_nothing_and_waiters_are_told() {
    let (mut m, _) = machine(0, false, 100);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    let (done, mut fleet) = oneshot::channel();
    m.request(Request::ReadFleet { done });
    let (done, mut left) = oneshot::channel();
    m.request(Request::Leave { done });
    assert_eq!(verbs(m.take_ctl_writes()), vec!["READ", "LEAVE"]);

    m.disconnected();
    assert_eq!(
        fleet.try_recv().expect("answered").map(|_| ()),
        Err("the backplane connection was lost".to_owned())
    );
    assert_eq!(left.try_recv(), Ok(()));

    // The dead link's late replies reach no one (and break nothing).
    assert_eq!(m.ctl_frame(registry_read(&[("x", "run-1")]), now), Ok(()));
    assert_eq!(m.sub_frame(confirm("subscribe", "app:a", 1)), None);

    // Offline requests are answered at once.
    let (done, mut fleet) = oneshot::channel();
    m.request(Request::ReadFleet { done });
    assert!(fleet.try_recv().expect("answered").is_err());

    // On the new link, replies match the new link's requests only.
    m.connected(Bytes::from_static(b"run-2"), now);
    assert_eq!(
        verbs(m.take_ctl_writes()),
        vec!["SNAPSHOT", "READ"],
        "a fresh entry and a fresh read, nothing left over"
    );
}

#[test]
fn an_outage_buffers_publishes_up_to_the_limit_and_flushes_them_in_order() {
    let (mut m, shared) = machine(0, false, 4);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    publish(&mut m, "a", "1");
    assert_eq!(published(m.take_ctl_writes()), vec!["app:a 1"]);
    // Sent, never acknowledged: goes back in front.
    m.disconnected();
    publish(&mut m, "a", "2");
    publish(&mut m, "a", "3");
    assert_eq!(m.buffered(), 3);

    m.connected(Bytes::from_static(b"run-2"), now);
    assert!(
        published(m.take_ctl_writes()).is_empty(),
        "held until the peers are checked"
    );
    assert_eq!(m.next_peer_check(), Some(now));
    publish(&mut m, "a", "4");
    assert_eq!(m.buffered(), 4, "fresh publishes wait behind the buffer");
    publish(&mut m, "a", "5");
    assert_eq!(m.buffered(), 4, "over the limit");
    assert_eq!(
        shared.metrics.publishes_dropped.get(),
        1,
        "counted, not lost silently"
    );
    m.peer_check_due();
    assert_eq!(verbs(m.take_ctl_writes()), vec!["READ"]);
    m.ctl_frame(Value::Integer(1), now).unwrap(); // the snapshot
    m.ctl_frame(registry_read(&[]), now).unwrap();
    assert_eq!(
        published(m.take_ctl_writes()),
        vec![
            "announce [app:a 1]",
            "app:a 1",
            "app:a 2",
            "app:a 3",
            "app:a 4"
        ],
        "the one sent before is announced as a replay"
    );
    assert_eq!(m.buffered(), 0);
    publish(&mut m, "a", "6");
    assert_eq!(
        published(m.take_ctl_writes()),
        vec!["app:a 6"],
        "no longer held"
    );
}

#[test]
fn the_flush_waits_for_peers_to_resubscribe_on_the_same_server() {
    let (mut m, _) = machine(0, false, 100);
    let t0 = Instant::now();
    connect_settled(&mut m, "run-1", &[("peer-b", "run-1")], t0);
    m.disconnected();
    publish(&mut m, "a", "held");

    // A failover: the new primary inherited peer-b's entry, mark and all, by replication.
    m.connected(Bytes::from_static(b"run-2"), t0);
    m.take_ctl_writes();
    m.peer_check_due();
    assert_eq!(verbs(m.take_ctl_writes()), vec!["READ"]);
    answer_ctl_pending_snapshot(&mut m, t0);
    m.ctl_frame(registry_read(&[("peer-b", "run-1")]), t0)
        .unwrap();
    assert!(
        published(m.take_ctl_writes()).is_empty(),
        "peer-b is not back"
    );
    let next = m.next_peer_check().expect("looks again");
    assert_eq!(next, t0 + Duration::from_millis(100));

    m.peer_check_due();
    m.take_ctl_writes();
    m.ctl_frame(registry_read(&[("peer-b", "run-2")]), next)
        .unwrap();
    assert_eq!(published(m.take_ctl_writes()), vec!["app:a held"]);
}

/// Answers the snapshot and registry read a reconnect wrote before the peer check's read.
fn answer_ctl_pending_snapshot(m: &mut Machine, now: Instant) {
    m.ctl_frame(Value::Integer(1), now).unwrap();
}

#[test]
fn the_flush_goes_ahead_when_the_grace_period_ends() {
    let (mut m, _) = machine(0, false, 100);
    let t0 = Instant::now();
    connect_settled(&mut m, "run-1", &[("gone-for-good", "run-1")], t0);
    m.disconnected();
    publish(&mut m, "a", "held");
    m.connected(Bytes::from_static(b"run-1"), t0);
    m.take_ctl_writes();
    answer_ctl_pending_snapshot(&mut m, t0);
    m.peer_check_due();
    m.take_ctl_writes();
    m.ctl_frame(registry_read(&[]), t0 + GRACE).unwrap();
    assert_eq!(
        published(m.take_ctl_writes()),
        vec!["app:a held"],
        "a peer that never comes back delays the flush by the grace period, no more"
    );
}

#[test]
fn a_readonly_reply_means_the_server_was_demoted() {
    let (mut m, _) = machine(0, false, 100);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    publish(&mut m, "a", "1");
    let lost = m.ctl_frame(
        Value::Error(Bytes::from_static(
            b"READONLY You can't write against a read only replica.",
        )),
        now,
    );
    assert!(matches!(lost, Err(Lost(e)) if e.contains("replica")));
    m.disconnected();
    assert_eq!(
        m.buffered(),
        1,
        "the refused publish is resent on the new primary"
    );
}

#[test]
fn behind_sentinel_the_heartbeat_checks_the_server_is_still_the_primary() {
    for (sentinel, role, lost) in [
        (true, "slave", true),
        (true, "master", false),
        (false, "slave", false),
    ] {
        let (mut m, _) = machine(1, sentinel, 100);
        let now = Instant::now();
        m.connected(Bytes::from_static(b"run-1"), now);
        m.take_sub_writes();
        m.heartbeat(now).unwrap();
        assert_eq!(verbs(m.take_ctl_writes()), vec!["ROLE"]);
        let reply = Value::Array(vec![bulk(role), bulk("127.0.0.1"), Value::Integer(6379)]);
        assert_eq!(
            m.ctl_frame(reply, now).is_err(),
            lost,
            "sentinel={sentinel} role={role}"
        );
    }
}

#[test]
fn a_heartbeat_unanswered_for_too_long_loses_the_link() {
    let (mut m, _) = machine(0, false, 100);
    let t0 = Instant::now();
    connect_settled(&mut m, "run-1", &[], t0);
    m.heartbeat(t0).unwrap();
    assert_eq!(verbs(m.take_sub_writes()), vec!["PING"]);
    assert_eq!(verbs(m.take_ctl_writes()), vec!["TOUCH", "READ"]);
    m.heartbeat(t0 + Duration::from_secs(1)).unwrap();
    assert!(
        m.take_sub_writes().is_empty(),
        "one heartbeat in flight at a time"
    );
    assert!(
        m.heartbeat(t0 + Duration::from_secs(3)).is_err(),
        "3 s is the floor"
    );

    // Answered in time, the next tick starts a new round.
    let (mut m, _) = machine(0, false, 100);
    connect_settled(&mut m, "run-1", &[], t0);
    m.heartbeat(t0).unwrap();
    m.take_sub_writes();
    m.sub_frame(pong());
    answer_ctl(&mut m, &[], t0);
    m.heartbeat(t0 + Duration::from_secs(5)).unwrap();
    assert_eq!(verbs(m.take_sub_writes()), vec!["PING"]);
}

#[test]
fn a_lost_registry_entry_is_rewritten_whole() {
    let (mut m, _) = machine(0, false, 100);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    let (done, mut registered) = oneshot::channel();
    m.request(Request::Register {
        deltas: vec![(topics(Kind::Channel, &["a"])[0].clone(), 1)],
        done,
    });
    assert_eq!(verbs(m.take_ctl_writes()), vec!["ADJUST"]);
    m.ctl_frame(Value::Integer(0), now).unwrap();
    assert_eq!(registered.try_recv(), Ok(()));
    let snapshot = commands(m.take_ctl_writes());
    assert_eq!(verbs_of(&snapshot), vec!["EVAL"]);
    let args = &snapshot[0];
    assert!(
        args.windows(2).any(|w| w == ["c:a", "1"]),
        "the snapshot carries the count: {args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["up:0", "run-1"]),
        "and the mark: {args:?}"
    );
}

fn verbs_of(commands: &[Vec<String>]) -> Vec<&str> {
    commands.iter().map(|c| c[0].as_str()).collect()
}

#[test]
fn other_shards_mark_and_check_peers_through_shard_0() {
    let (mut m, _) = machine(1, false, 100);
    let now = Instant::now();
    m.connected(Bytes::from_static(b"run-9"), now);
    assert!(
        m.take_ctl_writes().is_empty(),
        "no registry on this shard's links"
    );
    m.take_sub_writes();
    m.sub_frame(confirm("subscribe", ANNOUNCEMENTS, 1));
    m.sub_frame(pong());
    let marks = m.take_outbound();
    assert!(
        matches!(&marks[..], [Outbound::Registry(Request::Mark { shard: 1, server: Some(s) })] if s == "run-9"),
        "{marks:?}"
    );
    m.disconnected();
    assert!(matches!(
        &m.take_outbound()[..],
        [Outbound::Registry(Request::Mark {
            shard: 1,
            server: None
        })]
    ));
    publish(&mut m, "a", "held");
    m.connected(Bytes::from_static(b"run-9"), now);
    m.peer_check_due();
    m.peer_check_due();
    assert!(
        matches!(&m.take_outbound()[..], [Outbound::PeerCheck]),
        "one read in flight at a time"
    );
    m.peers_answered(None, now + GRACE);
    assert_eq!(published(m.take_ctl_writes()), vec!["app:a held"]);
}

#[test]
fn messages_are_unprefixed_and_other_clusters_ignored() {
    let (mut m, _) = machine(0, false, 100);
    connect_settled(&mut m, "run-1", &[], Instant::now());
    let frame = |items: &[&str]| Value::Array(items.iter().map(|s| bulk(s)).collect());
    assert_eq!(
        m.sub_frame(frame(&["message", "app:room", "hi"])),
        Some(Message {
            kind: Kind::Channel,
            pattern: None,
            channel: Bytes::from_static(b"room"),
            payload: Bytes::from_static(b"hi"),
            resp2: None,
        })
    );
    let p = m
        .sub_frame(frame(&["pmessage", "app:r*", "app:room", "hi"]))
        .expect("a pattern message");
    assert_eq!(p.topic(), topics(Kind::Pattern, &["r*"])[0]);
    assert_eq!(
        m.sub_frame(frame(&["smessage", "app:s", "x"]))
            .map(|m| m.kind),
        Some(Kind::Shard)
    );
    assert_eq!(
        m.sub_frame(frame(&["message", "other:room", "hi"])),
        None,
        "another prefix is another cluster"
    );
}

#[test]
fn raw_messages_are_read_in_place_and_passed_on_as_they_came() {
    let (mut m, _) = machine(0, false, 100);
    connect_settled(&mut m, "run-1", &[], Instant::now());
    let raw = Bytes::from_static(b"*3\r\n$7\r\nmessage\r\n$8\r\napp:room\r\n$2\r\nhi\r\n");
    let got = m.sub_raw(raw.clone()).unwrap().expect("a message");
    assert_eq!(
        (got.channel, got.payload),
        (Bytes::from_static(b"room"), Bytes::from_static(b"hi"))
    );
    assert_eq!(
        got.resp2, None,
        "with a prefix the frame must be encoded again"
    );

    let raw =
        Bytes::from_static(b"*4\r\n$8\r\npmessage\r\n$5\r\napp:r\r\n$8\r\napp:room\r\n$0\r\n\r\n");
    let got = m.sub_raw(raw).unwrap().expect("a pattern message");
    assert_eq!(got.pattern, Some(Bytes::from_static(b"r")));
    assert_eq!(got.payload, Bytes::new());
    assert_eq!(
        m.sub_raw(Bytes::from_static(
            b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n$1\r\nx\r\n"
        ))
        .unwrap(),
        None,
        "not this cluster's prefix"
    );
    // Anything else is parsed and matched against what the link owes.
    let mut done = acquire(&mut m, &["a"]);
    m.take_sub_writes();
    m.sub_raw(Bytes::from_static(
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\napp:a\r\n:1\r\n",
    ))
    .unwrap();
    assert_eq!(done.try_recv(), Ok(Ok(())));

    // Without a prefix a RESP2 subscriber gets the very bytes Redis sent.
    let shared = Shared::new(1, Arc::new(Metrics::default()));
    let mut plain = Machine::new(
        0,
        Settings {
            channel_prefix: Bytes::new(),
            ..settings(100)
        },
        Registry::new("", "me", 10_000),
        false,
        shared,
    );
    plain.connected(Bytes::from_static(b"run-1"), Instant::now());
    let raw = Bytes::from_static(b"*3\r\n$8\r\nsmessage\r\n$1\r\ns\r\n$3\r\nabc\r\n");
    let got = plain
        .sub_raw(raw.clone())
        .unwrap()
        .expect("a shard message");
    assert_eq!(got.kind, Kind::Shard);
    assert_eq!(got.resp2, Some(raw));
}

/// A `message` frame as the subscriber link receives it.
fn message_frame(channel: &str, payload: &str) -> Bytes {
    let mut out = BytesMut::new();
    crate::resp::write_bulks(
        &mut out,
        b'*',
        &[b"message", channel.as_bytes(), payload.as_bytes()],
    );
    out.freeze()
}

/// The frame of an announcement listing `publishes` (`(channel, payload)`, prefixed).
fn announcement_frame(publishes: &[(&str, &str)]) -> Bytes {
    let mut listed = BytesMut::new();
    for (channel, payload) in publishes {
        crate::resp::write_bulks(
            &mut listed,
            b'*',
            &[b"PUBLISH", channel.as_bytes(), payload.as_bytes()],
        );
    }
    let mut out = BytesMut::new();
    crate::resp::write_bulks(
        &mut out,
        b'*',
        &[b"message", ANNOUNCEMENTS.as_bytes(), &listed[..]],
    );
    out.freeze()
}

/// Connects on `server` after a loss and flushes what the outage held (no peers to wait for).
fn reconnect_and_flush(m: &mut Machine, server: &str, now: Instant) -> Vec<String> {
    m.connected(Bytes::copy_from_slice(server.as_bytes()), now);
    m.take_sub_writes();
    assert_eq!(verbs(m.take_ctl_writes()), vec!["SNAPSHOT"]);
    m.peer_check_due();
    assert_eq!(verbs(m.take_ctl_writes()), vec!["READ"]);
    m.ctl_frame(Value::Integer(1), now).unwrap(); // the snapshot
    m.ctl_frame(registry_read(&[]), now).unwrap();
    published(m.take_ctl_writes())
}

#[test]
fn acknowledged_publishes_are_replayed_until_a_later_subscriber_ping_proves_them_delivered() {
    let (mut m, shared) = machine(0, false, 100);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    publish(&mut m, "a", "1");
    publish(&mut m, "a", "2");
    assert_eq!(published(m.take_ctl_writes()), vec!["app:a 1", "app:a 2"]);
    m.ctl_frame(Value::Integer(1), now).unwrap();
    m.ctl_frame(Value::Integer(1), now).unwrap();

    // A heartbeat's PING on the subscriber link goes out after both were acknowledged; its
    // answer means the server ran past them and wrote out their messages.
    m.heartbeat(now).unwrap();
    assert_eq!(verbs(m.take_sub_writes()), vec!["PING"]);
    answer_ctl(&mut m, &[], now);
    m.sub_frame(pong());

    // Acknowledged, but the server dies before a PING proves it delivered: it may sit unsent
    // in the server's buffer for the subscribers. And one never acknowledged.
    publish(&mut m, "a", "3");
    publish(&mut m, "a", "4");
    assert_eq!(published(m.take_ctl_writes()), vec!["app:a 3", "app:a 4"]);
    m.ctl_frame(Value::Integer(1), now).unwrap();
    m.disconnected();
    assert_eq!(m.buffered(), 2);
    assert_eq!(shared.metrics.publishes_replayed.get(), 2);

    publish(&mut m, "a", "5");
    assert_eq!(
        reconnect_and_flush(&mut m, "run-2", now),
        vec![
            "announce [app:a 3, app:a 4]",
            "app:a 3",
            "app:a 4",
            "app:a 5"
        ],
        "announced, then sent again in order, then what the outage held"
    );

    // Lost again before anything is acknowledged: all three go again, announced again (the
    // announcement itself is not resent: the next flush makes a new one).
    m.disconnected();
    assert_eq!(
        reconnect_and_flush(&mut m, "run-3", now),
        vec![
            "announce [app:a 3, app:a 4, app:a 5]",
            "app:a 3",
            "app:a 4",
            "app:a 5"
        ]
    );
}

/// Subscribes channel `a` (prefix `app:`) and has the server confirm it.
fn subscribe_a(m: &mut Machine) {
    let mut done = acquire(m, &["a"]);
    m.take_sub_writes();
    m.sub_frame(confirm("subscribe", "app:a", 2));
    assert_eq!(done.try_recv(), Ok(Ok(())));
}

/// What the app gets of a message on `a` with `payload` (`None`: dropped).
fn delivered(m: &mut Machine, payload: &str) -> Option<String> {
    m.sub_raw(message_frame("app:a", payload))
        .unwrap()
        .map(|msg| String::from_utf8_lossy(&msg.payload).into_owned())
}

#[test]
fn a_receiver_drops_the_announced_replays_it_delivered_and_delivers_the_rest() {
    let (mut m, shared) = machine(0, false, 100);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    subscribe_a(&mut m);
    assert_eq!(delivered(&mut m, "1").as_deref(), Some("1"));
    assert_eq!(delivered(&mut m, "2").as_deref(), Some("2"));

    // The server dies; on the new one a peer announces the publishes it sends again: 1 (which
    // arrived here) and 3 (which did not).
    m.disconnected();
    connect_settled(&mut m, "run-2", &[], now);
    assert_eq!(
        m.sub_raw(announcement_frame(&[("app:a", "1"), ("app:a", "3")]))
            .unwrap(),
        None,
        "announcements are the sidecars' own, never the app's"
    );
    assert_eq!(delivered(&mut m, "1"), None, "already delivered: dropped");
    assert_eq!(delivered(&mut m, "3").as_deref(), Some("3"), "never seen");
    assert_eq!(
        delivered(&mut m, "1").as_deref(),
        Some("1"),
        "a new publish of the same payload is delivered"
    );
    assert_eq!(shared.metrics.messages_deduplicated.get(), 1);

    // A sidecar whose own links stayed up still drops the replays of what it delivered (the
    // publisher alone lost its links).
    assert_eq!(delivered(&mut m, "4").as_deref(), Some("4"));
    m.sub_raw(announcement_frame(&[("app:a", "4")])).unwrap();
    assert_eq!(delivered(&mut m, "4"), None);

    // Through a pattern the announcement channel matches, the app sees nothing either.
    let pattern_match = Bytes::from_static(
        b"*4\r\n$8\r\npmessage\r\n$5\r\napp:*\r\n$25\r\napp:__switchboard:replays\r\n$0\r\n\r\n",
    );
    assert_eq!(m.sub_raw(pattern_match).unwrap(), None);

    // An announced replay that never comes is forgotten once it no longer can: after that a
    // publish of the same payload is delivered.
    assert_eq!(delivered(&mut m, "5").as_deref(), Some("5"));
    m.sub_raw(announcement_frame(&[("app:a", "5")])).unwrap();
    for _ in 0..30 {
        m.heartbeat(now).unwrap();
        m.sub_frame(pong());
        answer_ctl(&mut m, &[], now);
    }
    assert_eq!(delivered(&mut m, "5").as_deref(), Some("5"));
}

#[test]
fn a_replay_expected_on_a_channel_given_up_never_drops_a_later_publish() {
    let (mut m, _) = machine(0, false, 100);
    let now = Instant::now();
    connect_settled(&mut m, "run-1", &[], now);
    subscribe_a(&mut m);
    assert_eq!(delivered(&mut m, "hello").as_deref(), Some("hello"));

    // The server dies and the app's subscriber leaves meanwhile; on the new server a peer
    // announces its replay of "hello", which cannot reach this sidecar: it holds no "a".
    m.disconnected();
    release(&mut m, &["a"]);
    connect_settled(&mut m, "run-2", &[], now);
    m.sub_raw(announcement_frame(&[("app:a", "hello")]))
        .unwrap();
    // A new subscriber, and a new publish of the same payload: delivered, not taken for the
    // replay.
    subscribe_a(&mut m);
    assert_eq!(delivered(&mut m, "hello").as_deref(), Some("hello"));

    // Announced while "a" is held, then "a" given up before the replay came: the same.
    m.sub_raw(announcement_frame(&[("app:a", "hello")]))
        .unwrap();
    release(&mut m, &["a"]);
    assert_eq!(verbs(m.take_sub_writes()), vec!["UNSUBSCRIBE"]);
    m.sub_frame(confirm("unsubscribe", "app:a", 1));
    subscribe_a(&mut m);
    assert_eq!(delivered(&mut m, "hello").as_deref(), Some("hello"));

    // Announced while the subscription is sent but not confirmed yet: the server may have run
    // the replay before it, so the replay is not counted on (a duplicate, rather than a loss).
    release(&mut m, &["a"]);
    m.take_sub_writes();
    m.sub_frame(confirm("unsubscribe", "app:a", 1));
    let mut done = acquire(&mut m, &["a"]);
    assert_eq!(verbs(m.take_sub_writes()), vec!["SUBSCRIBE"]);
    m.sub_raw(announcement_frame(&[("app:a", "hello")]))
        .unwrap();
    m.sub_frame(confirm("subscribe", "app:a", 2));
    assert_eq!(done.try_recv(), Ok(Ok(())));
    assert_eq!(delivered(&mut m, "hello").as_deref(), Some("hello"));
}

/// The hash tag of slot 0 (`tag_for_slot(0)`), which names the shard's own channels.
const TAG: &str = "{3560}";

/// Shard 1 of a cluster that serves every slot (the registry is on shard 0).
fn cluster_machine() -> Machine {
    let (m, _) = machine(1, true, 100);
    m.in_cluster(super::machine::Cluster::new("{7}"), every_slot_on_shard_1())
}

/// A router for a cluster whose every slot is on shard 1, the machine's own.
fn every_slot_on_shard_1() -> crate::relay::shard::Router {
    let map = crate::upstream::cluster::SlotMap::new(vec![1u16; 16384].into());
    crate::relay::shard::Router::cluster(Bytes::from_static(b"app:"), Arc::new(map))
}

fn raw_frame(parts: &[&str]) -> Bytes {
    let mut out = format!("*{}\r\n", parts.len());
    for p in parts {
        out.push_str(&format!("${}\r\n{p}\r\n", p.len()));
    }
    Bytes::from(out)
}

#[test]
fn on_a_cluster_channels_ride_sharded_pub_sub_apart_from_shard_channels() {
    let mut m = cluster_machine();
    let now = Instant::now();
    m.connected(Bytes::from_static(b"run-1"), now);
    assert_eq!(
        commands(m.take_sub_writes()),
        vec![
            vec!["SSUBSCRIBE", &format!("app:__switchboard:replays:{TAG}")],
            vec!["PING"]
        ],
        "the shard's own announcement channel, sharded"
    );
    let mut done = acquire(&mut m, &["a", "b"]);
    assert_eq!(
        commands(m.take_sub_writes()),
        vec![
            vec!["SSUBSCRIBE", "app:__c:a"],
            vec!["SSUBSCRIBE", "app:__c:b"]
        ],
        "one command per channel: a command's shard channels must share a slot"
    );
    m.sub_frame(confirm(
        "ssubscribe",
        &format!("app:__switchboard:replays:{TAG}"),
        1,
    ));
    m.sub_frame(pong());
    m.sub_frame(confirm("ssubscribe", "app:__c:a", 1));
    assert!(done.try_recv().is_err(), "waits for the last one");
    m.sub_frame(confirm("ssubscribe", "app:__c:b", 1));
    assert_eq!(done.try_recv(), Ok(Ok(())));

    publish(&mut m, "a", "hi");
    m.request(Request::Publish {
        kind: Kind::Shard,
        channel: Bytes::from_static(b"a"),
        payload: Bytes::from_static(b"own"),
        part: Part::Both,
    });
    assert_eq!(
        commands(m.take_ctl_writes()),
        vec![
            vec!["SPUBLISH", "app:__c:a", "hi"],
            vec!["SPUBLISH", &format!("app:__switchboard:all:{TAG}"), "1:ahi"],
            vec!["SPUBLISH", "app:a", "own"],
        ],
        "a channel message is also copied for pattern subscribers; a shard message is not"
    );

    // Back to the app in the kind it subscribed.
    let classic = m
        .sub_raw(raw_frame(&["smessage", "app:__c:a", "hi"]))
        .unwrap()
        .unwrap();
    assert_eq!(
        (classic.kind, &classic.channel[..]),
        (Kind::Channel, &b"a"[..])
    );
    let own = m
        .sub_raw(raw_frame(&["smessage", "app:a", "own"]))
        .unwrap()
        .unwrap();
    assert_eq!((own.kind, &own.channel[..]), (Kind::Shard, &b"a"[..]));
}

#[test]
fn on_a_cluster_patterns_are_matched_from_the_all_messages_channel_once_each() {
    let mut m = cluster_machine();
    m.connected(Bytes::from_static(b"run-1"), Instant::now());
    m.take_sub_writes();
    let (done, _rx) = oneshot::channel();
    m.request(Request::Acquire {
        topics: topics(Kind::Pattern, &["room:*", "room:1*"]),
        done,
    });
    assert_eq!(
        commands(m.take_sub_writes()),
        vec![vec!["SSUBSCRIBE", &format!("app:__switchboard:all:{TAG}")]],
        "the first patterns subscribe the shard's all-messages channel, nothing per pattern"
    );
    let (done, _rx) = oneshot::channel();
    m.request(Request::Acquire {
        topics: topics(Kind::Pattern, &["lobby*"]),
        done,
    });
    assert!(m.take_sub_writes().is_empty(), "already subscribed");

    let first = m
        .sub_raw(raw_frame(&[
            "smessage",
            &format!("app:__switchboard:all:{TAG}"),
            "6:room:1x",
        ]))
        .unwrap()
        .unwrap();
    let mut got = vec![first];
    got.extend(std::iter::from_fn(|| m.take_fanout()));
    let mut patterns: Vec<_> = got
        .iter()
        .map(|g| {
            assert_eq!(
                (g.kind, &g.channel[..], &g.payload[..]),
                (Kind::Pattern, &b"room:1"[..], &b"x"[..])
            );
            String::from_utf8_lossy(g.pattern.as_deref().unwrap()).into_owned()
        })
        .collect();
    patterns.sort();
    assert_eq!(
        patterns,
        ["room:*", "room:1*"],
        "one pmessage per matching pattern"
    );
    assert_eq!(
        m.sub_raw(raw_frame(&[
            "smessage",
            &format!("app:__switchboard:all:{TAG}"),
            "5:other"
        ]))
        .unwrap(),
        None,
        "no pattern matches"
    );
    assert_eq!(
        m.sub_raw(raw_frame(&[
            "smessage",
            &format!("app:__switchboard:all:{TAG}"),
            "99:short"
        ]))
        .unwrap(),
        None,
        "a malformed envelope is dropped, not a crash"
    );

    let (done, _rx) = oneshot::channel();
    m.request(Request::Release {
        topics: topics(Kind::Pattern, &["room:*", "room:1*", "lobby*"]),
        done,
    });
    assert_eq!(
        commands(m.take_sub_writes()),
        vec![vec![
            "SUNSUBSCRIBE",
            &format!("app:__switchboard:all:{TAG}")
        ]],
        "the last pattern gone"
    );
}

/// Shard `shard` of a cluster routed by `router`, without all-messages copies (one command
/// per publish), connected to `server` with nothing held.
fn cluster_shard(shard: usize, router: &crate::relay::shard::Router, server: &str) -> Machine {
    cluster_shard_with(shard, router, server, false)
}

fn cluster_shard_with(
    shard: usize,
    router: &crate::relay::shard::Router,
    server: &str,
    pattern_copies: bool,
) -> Machine {
    let (_, shared) = machine(shard, true, 100);
    let mut m = Machine::new(
        shard,
        Settings {
            pattern_copies,
            ..settings(100)
        },
        Registry::new(PREFIX, "me", 10_000),
        true,
        shared,
    )
    .in_cluster(super::machine::Cluster::new("{7}"), router.clone());
    m.connected(Bytes::copy_from_slice(server.as_bytes()), Instant::now());
    m.take_sub_writes();
    m.take_ctl_writes();
    m
}

/// Takes the outbound requests for other shards, answering the ends of replan steps.
fn forwards(m: &mut Machine) -> Vec<(usize, Request)> {
    let mut out = Vec::new();
    for outbound in m.take_outbound() {
        match outbound {
            Outbound::Forward(shard, request) => out.push((shard, request)),
            Outbound::Done(done) => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
    out
}

#[test]
fn on_a_cluster_a_dropped_shard_subscription_drains_then_rebuilds_the_links() {
    let mut m = cluster_machine();
    let now = Instant::now();
    m.connected(Bytes::from_static(b"run-1"), now);
    let _done = acquire(&mut m, &["a"]);
    answer_sub(&mut m);
    m.take_ctl_writes();
    // A sunsubscribe we did not ask for means the slot left the node: once what went out is
    // proven delivered (a PING on the subscriber link), the links are rebuilt.
    let dropped = m.sub_raw(raw_frame(&["sunsubscribe", "app:__c:a", "0"]));
    assert_eq!(dropped, Ok(None));
    assert!(
        m.take_outbound()
            .iter()
            .any(|o| matches!(o, Outbound::SlotsMoved)),
        "the slot map is read again"
    );
    assert_eq!(verbs(m.take_sub_writes()), vec!["PING"]);
    publish(&mut m, "a", "held");
    assert!(m.take_ctl_writes().is_empty(), "held while draining");
    assert!(!m.take_replan());
    m.sub_frame(pong());
    assert!(m.take_replan(), "drained: new links");
    // One we asked for is an answer, not a loss.
    release(&mut m, &["a"]);
    assert_eq!(
        m.sub_raw(raw_frame(&["sunsubscribe", "app:__c:a", "0"])),
        Ok(None)
    );
}

#[test]
fn a_publishers_order_on_a_channel_survives_its_slot_changing_shards() {
    let map = Arc::new(crate::upstream::cluster::SlotMap::new(
        vec![1u16; 16384].into(),
    ));
    let router = crate::relay::shard::Router::cluster(Bytes::from_static(b"app:"), map.clone());
    let (mut a, mut b) = (
        cluster_shard(1, &router, "a"),
        cluster_shard(2, &router, "b"),
    );
    let now = Instant::now();

    publish(&mut a, "ch", "1");
    assert_eq!(published(a.take_ctl_writes()), vec!["app:__c:ch 1"]);
    // The slot of "ch" moves to shard 2, which the relay now sends "ch" to; "2" was routed to
    // shard 1 just before.
    map.replace(vec![2u16; 16384].into());
    publish(&mut b, "ch", "3");
    assert!(
        b.take_ctl_writes().is_empty(),
        "shard 2 holds a slot it did not serve when its links were built"
    );
    publish(&mut a, "ch", "2");
    assert!(
        a.take_ctl_writes().is_empty(),
        "behind the unanswered one, not around it"
    );
    assert!(forwards(&mut a).is_empty());

    // The replan's first step ends only once "1" is answered: the cluster refuses it.
    let (done, mut replanned) = oneshot::channel();
    a.request(Request::Replan { done });
    assert!(forwards(&mut a).is_empty());
    assert!(replanned.try_recv().is_err(), "waits for the answer to 1");
    a.ctl_frame(
        Value::Error(Bytes::from_static(b"MOVED 1 127.0.0.1:7002")),
        now,
    )
    .expect("a moved slot is not a lost link");
    let handed = forwards(&mut a);
    assert_eq!(replanned.try_recv(), Ok(()));
    assert_eq!(
        handed.iter().map(|(shard, _)| *shard).collect::<Vec<_>>(),
        vec![2, 2],
        "both go to shard 2"
    );
    for (_, request) in handed {
        b.request(request);
    }
    assert!(
        b.take_ctl_writes().is_empty(),
        "held until shard 2 rebuilds"
    );

    // The second step: shard 2's new links, and the flush once its peers are back.
    b.disconnected();
    b.connected(Bytes::from_static(b"b2"), now);
    b.take_sub_writes();
    b.take_ctl_writes();
    b.peers_answered(None, now);
    assert_eq!(
        published(b.take_ctl_writes()),
        vec!["app:__c:ch 1", "app:__c:ch 2", "app:__c:ch 3"],
        "in the publisher's order"
    );
}

/// The all-messages copy of a publish stays on the shard the relay gave it (the publisher's
/// copy shard, whose one stream keeps the publisher's order for pattern subscribers) when the
/// channel's slot moves; only the main half follows the slot, sent or held.
#[test]
fn on_a_resharding_the_copy_stays_on_its_shard_and_the_main_half_follows_the_slot() {
    let map = Arc::new(crate::upstream::cluster::SlotMap::new(
        vec![1u16; 16384].into(),
    ));
    let router = crate::relay::shard::Router::cluster(Bytes::from_static(b"app:"), map.clone());
    let mut m = cluster_shard_with(1, &router, "a", true);
    let now = Instant::now();
    // Sent while the slot map routes "ch" elsewhere: the main half goes on, the copy goes out
    // to this shard's all-messages channel (named by its first slot when the links were made).
    map.replace(vec![2u16; 16384].into());
    publish(&mut m, "ch", "1");
    let sent = published(m.take_ctl_writes());
    let all = match &sent[..] {
        [one] if one.starts_with("app:__switchboard:all:") && one.ends_with(" 2:ch1") => {
            one.trim_end_matches(" 2:ch1").to_owned()
        }
        _ => panic!("only the copy goes out here: {sent:?}"),
    };
    let copy = |payload: &str| format!("{all} 2:ch{payload}");
    let handed = forwards(&mut m);
    assert!(
        matches!(
            &handed[..],
            [(2, Request::PublishPart { part: Part::Main, payload, .. })] if payload == "1"
        ),
        "only the main half to shard 2: {handed:?}"
    );

    // Held through an outage, then a resharding: the same split of what is held.
    m.disconnected();
    publish(&mut m, "ch", "2");
    let (done, _replanned) = oneshot::channel();
    m.request(Request::Replan { done });
    let handed = forwards(&mut m);
    assert!(
        matches!(
            &handed[..],
            [(2, Request::PublishPart { part: Part::Main, payload, .. })] if payload == "2"
        ),
        "the held main half to shard 2: {handed:?}"
    );
    m.connected(Bytes::from_static(b"a2"), now);
    m.take_sub_writes();
    m.take_ctl_writes();
    m.peers_answered(None, now);
    let flushed = published(m.take_ctl_writes());
    assert_eq!(
        flushed.last(),
        Some(&copy("2")),
        "the held copy stays and is flushed here: {flushed:?}"
    );
    assert!(
        !flushed.iter().any(|p| p.starts_with("app:__c:ch")),
        "no main half here: {flushed:?}"
    );
}

#[test]
fn on_a_cluster_without_pattern_copies_a_publish_is_one_command_and_patterns_are_refused() {
    let (m, shared) = machine(1, true, 100);
    drop(m);
    let mut m = Machine::new(
        1,
        Settings {
            pattern_copies: false,
            ..settings(100)
        },
        Registry::new(PREFIX, "me", 10_000),
        true,
        shared,
    )
    .in_cluster(super::machine::Cluster::new("{7}"), every_slot_on_shard_1());
    m.connected(Bytes::from_static(b"run-1"), Instant::now());
    m.take_sub_writes();
    publish(&mut m, "a", "hi");
    assert_eq!(
        commands(m.take_ctl_writes()),
        vec![vec!["SPUBLISH", "app:__c:a", "hi"]]
    );
    let (done, mut rx) = oneshot::channel();
    m.request(Request::Acquire {
        topics: topics(Kind::Pattern, &["room:*"]),
        done,
    });
    let refused = rx.try_recv().expect("answered at once");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("--cluster-pattern-copies")),
        "{refused:?}"
    );
    assert!(
        m.take_sub_writes().is_empty(),
        "nothing subscribed upstream"
    );
}
