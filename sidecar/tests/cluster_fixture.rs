//! The Redis Cluster fixture against real `redis-server` processes, before any sidecar test
//! relies on it: the topology it reports is the one the nodes act on (they redirect and refuse
//! exactly as it says), and a primary it kills is replaced by a replica holding the data.

use switchboard_sidecar_support as support;

use std::collections::BTreeSet;

use support::cluster::SLOTS;
use support::{RedisCluster, command, show};

#[test]
fn the_cluster_fixture_routes_refuses_and_fails_over_like_the_cluster_itself() {
    let mut cluster = RedisCluster::start(3, 1);

    let seeds = cluster.seeds();
    assert_eq!(seeds.len(), 6, "nodes: {seeds:?}");
    let primaries = cluster.primaries();
    let distinct: BTreeSet<_> = primaries.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "primaries: {primaries:?}");
    let ranges = cluster.slot_ranges();
    assert_eq!(ranges.first().map(|r| r.start), Some(0), "{ranges:?}");
    assert_eq!(ranges.last().map(|r| r.end), Some(SLOTS - 1), "{ranges:?}");
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].end + 1, pair[1].start, "a gap in {ranges:?}");
    }
    let serving: BTreeSet<_> = ranges.iter().map(|r| r.primary).collect();
    assert_eq!(serving, distinct, "slot owners vs primaries");
    for primary in &primaries {
        let role = cluster.admin(*primary).call(command(&[b"ROLE"]));
        assert!(
            role.starts_with(b"*3\r\n$6\r\nmaster\r\n"),
            "ROLE of {primary}: {}",
            show(&role)
        );
    }
    let url = cluster.url();
    for primary in &primaries {
        assert!(url.contains(&primary.to_string()), "{primary} not in {url}");
    }
    assert!(url.starts_with("redis+cluster://127.0.0.1:"), "{url}");

    let key = "switchboard:fixture:survives-failover";
    let slot = cluster.key_slot(key);
    let owner = cluster.primary_of_slot(slot);
    let mut on_owner = cluster.admin(owner);
    let set = command(&[b"SET", key.as_bytes(), b"before"]);
    assert_eq!(on_owner.call(&set), b"+OK\r\n");
    // Acknowledged by the replica, so it has the key when it takes over.
    let acked = on_owner.call(command(&[b"WAIT", b"1", b"1000"]));
    assert_eq!(acked, b":1\r\n", "WAIT: {}", show(&acked));

    let other = *primaries
        .iter()
        .find(|p| **p != owner)
        .expect("a second primary");
    let moved = cluster.admin(other).call(&set);
    assert_eq!(
        moved,
        format!("-MOVED {slot} {owner}\r\n").into_bytes(),
        "SET on {other}: {}",
        show(&moved)
    );

    let elsewhere = (0..)
        .map(|i| format!("switchboard:fixture:other:{i}"))
        .find(|k| cluster.key_slot(k) != slot)
        .expect("a key in another slot");
    let mget = on_owner.call(command(&[b"MGET", key.as_bytes(), elsewhere.as_bytes()]));
    assert!(
        mget.starts_with(b"-CROSSSLOT"),
        "MGET across slots: {}",
        show(&mget)
    );
    drop(on_owner);

    let killed = cluster.kill_primary_of_slot(slot);
    assert_eq!(killed, owner);
    let promoted = cluster.primary_of_slot(slot);
    assert_ne!(promoted, killed);
    assert_eq!(cluster.seeds().len(), 5);
    assert_eq!(cluster.primaries().len(), 3);
    let got = cluster
        .admin(promoted)
        .call(command(&[b"GET", key.as_bytes()]));
    assert_eq!(
        got,
        b"$6\r\nbefore\r\n",
        "GET on {promoted}: {}",
        show(&got)
    );
}
