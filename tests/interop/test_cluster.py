"""A Redis Cluster as the backplane, with apps whose adapters know nothing of clusters.

python-socketio's AsyncRedisManager has no cluster support at all, and the Node adapters over a
plain client fail on `MOVED`. Behind sidecars given `redis+cluster://` (3 primaries, 1 replica
each, every node a seed) python-socketio and socket.io's three Redis adapters (classic over
ioredis, sharded over node-redis, streams over ioredis) must work as on one Redis:

- a room emit reaches the room's members on every pod exactly once, and nobody else; (Node)
  fetchSockets() and serverSideEmit() with acks hear every server;
- the cluster bus carries no classic pub/sub: the sidecars publish with SPUBLISH on the one
  primary that owns the channel's slot (`cluster_stats_messages_publish_sent` stays 0 on every
  node), yet the Node adapter's PSUBSCRIBE still gets every message;
- the primary serving the emits' channel is SIGKILLed mid-stream: a replica takes over, every
  emit (before, during, after) arrives exactly once and in order, no client is disconnected, and
  the apps never notice;
- the slot of the emits' channel (or stream) migrates to another primary mid-stream: the
  sidecars follow the new slot map (their key commands follow `-ASK`/`-MOVED`), with the same
  guarantees.

There is no `direct` variant: straight to the cluster these adapters do not work.
"""

from __future__ import annotations

import pytest

from harness import RedisCluster, start_fleet, wait_until
from scenario import (
    ROOM, app_events, assert_cluster_queries_hear_every_server, connect_room_layout, everyone,
    member, outsider, wait_for_delivery, wait_for_fleet_to_converge, wait_for_server_count,
)

# (stack, adapter) pairs, and the name on the cluster their room emits go through: a channel
# (the sidecar marks an app's classic channels `__c:`; see sidecar/src/relay/shard.rs), a shard
# channel (kept as is), or the streams adapter's stream key.
STACKS = [("python", "classic"), ("node", "classic"), ("node", "sharded"), ("node", "streams")]
EMIT_NAME = {
    ("python", "classic"): "__c:socketio",
    ("node", "classic"): f"__c:socket.io#/#{ROOM}#",
    ("node", "sharded"): f"socket.io#/#{ROOM}#",
    ("node", "streams"): "socket.io",
}

REDIS_TROUBLE = {
    "python": ["Cannot receive from redis", "Cannot publish to redis"],
    "node": ["redis-error", "redis-close", "redis-reconnecting"],
}


@pytest.fixture
def redis_cluster(procs) -> RedisCluster:
    cluster = RedisCluster(procs, primaries=3, replicas=1)
    cluster.start()
    return cluster


def classic_publishes(cluster: RedisCluster) -> dict[int, int]:
    """Per live node, the classic PUBLISH messages it sent over the cluster bus."""
    return {port: int(cluster.info(port).get("cluster_stats_messages_publish_sent", "0"))
            for port in cluster.live_ports()}


@pytest.mark.parametrize(("stack", "adapter"), STACKS)
def test_room_emit_over_a_cluster_reaches_every_pod_without_flooding_the_bus(procs, redis_cluster,
                                                                             clients_factory, stack,
                                                                             adapter):
    pods = start_fleet(procs, redis_cluster, stack, "sidecar", adapter=adapter)
    clients = clients_factory(stack)
    sids = connect_room_layout(clients, pods)
    wait_for_fleet_to_converge(clients, pods)
    emitter = outsider(pods[0])

    news, sentinel = {"headline": "room only"}, {"to": "everyone"}
    assert clients.call(emitter, "emit_to_room", ROOM, "news", news) == "ok"
    assert clients.call(emitter, "emit_to_all", "sentinel", sentinel) == "ok"
    wait_for_delivery(clients, everyone(pods), "sentinel", sentinel)

    received = {name: app_events(clients, name) for name in everyone(pods)}
    expected = {}
    for pod in pods:
        expected[member(pod)] = [["news", news], ["sentinel", sentinel]]
        expected[outsider(pod)] = [["sentinel", sentinel]]
    assert received == expected
    if stack == "node":
        wait_for_server_count(clients, pods, expected=len(pods))
        assert_cluster_queries_hear_every_server(clients, pods, sids)

    assert classic_publishes(redis_cluster) == {port: 0 for port in redis_cluster.live_ports()}, \
        "classic PUBLISH reached the cluster bus (it floods every node)"
    if adapter != "streams":  # the streams adapter broadcasts through a stream, not pub/sub
        sharded = sum(int(redis_cluster.info(p).get("cluster_stats_messages_publishshard_sent", "0"))
                      for p in redis_cluster.live_ports())
        assert sharded > 0, "no sharded publish went to a replica: the sidecars did not use SPUBLISH"


def news(pod, n: int) -> dict:
    return {"from": pod.name, "n": n}


@pytest.mark.parametrize(("stack", "adapter"), STACKS)
def test_a_primary_killed_mid_stream_loses_nothing_and_nobody_reconnects(procs, redis_cluster,
                                                                         clients_factory, stack,
                                                                         adapter):
    pods = start_fleet(procs, redis_cluster, stack, "sidecar", adapter=adapter)
    clients = clients_factory(stack)
    sids = connect_room_layout(clients, pods)
    wait_for_fleet_to_converge(clients, pods)
    members = [member(pod) for pod in pods]
    first, second = pods[0], pods[1]

    def emit_news(pod, n):
        payload = news(pod, n)
        assert clients.call(outsider(pod), "emit_to_room", ROOM, "news", payload) == "ok"
        return payload

    sent = [emit_news(first, 1)]
    wait_for_delivery(clients, members, "news", sent[-1])

    dead = redis_cluster.kill_primary_of(EMIT_NAME[(stack, adapter)])
    # The emits below are made while the slot has no primary. One made at the very moment of the
    # kill could be in flight on the dying connection, where it may or may not have run (a key
    # command such as the streams adapter's XADD is then answered with an error, as Redis's own
    # clients are), so they start once every sidecar has seen the primary go.
    for pod in pods:  # /readyz is 200 only while every backplane shard is connected
        wait_until(f"{pod.name}'s sidecar to notice the primary's loss (/readyz not 200)",
                   lambda: pod.sidecar.readyz() != 200, timeout=10, watch=[pod.sidecar.proc])
    n = 2
    for _ in range(10):  # emits while the slot has no primary, and while the replica takes over
        sent.append(emit_news(first if n % 2 else second, n))
        n += 1
    redis_cluster.wait_for_failover(EMIT_NAME[(stack, adapter)], dead)
    for _ in range(5):
        sent.append(emit_news(first if n % 2 else second, n))
        n += 1

    for payload in sent[1:]:
        wait_for_delivery(clients, members, "news", payload, timeout=30)
    sentinel = {"to": "everyone"}
    assert clients.call(outsider(second), "emit_to_all", "sentinel", sentinel) == "ok"
    wait_for_delivery(clients, everyone(pods), "sentinel", sentinel, timeout=30)

    for name in members:
        got = [e[1] for e in app_events(clients, name) if e[0] == "news"]
        assert sorted(got, key=lambda p: p["n"]) == sent, f"{name} got {got}"
        for pod in pods:
            in_order = [p for p in sent if p["from"] == pod.name]
            assert [p for p in got if p["from"] == pod.name] == in_order, \
                f"{name} got {pod.name}'s emits out of order: {got}"
    for pod in pods:
        assert app_events(clients, outsider(pod)) == [["sentinel", sentinel]]
    disconnects = {name: clients.disconnects(name) for name in everyone(pods)}
    assert disconnects == {name: 0 for name in everyone(pods)}, "socket.io clients were disconnected"
    for pod in pods:
        assert pod.app.alive(), f"{pod.name}'s app exited"
        trouble = [line for line in pod.app.log_text().splitlines()
                   if any(marker in line for marker in REDIS_TROUBLE[stack])]
        assert not trouble, f"{pod.name}'s app noticed the failover:\n" + "\n".join(trouble)
    if stack == "node":
        wait_for_server_count(clients, pods, expected=len(pods))
        assert_cluster_queries_hear_every_server(clients, pods, sids)


@pytest.mark.parametrize(("stack", "adapter"), [("python", "classic"), ("node", "classic")])
def test_a_tls_only_cluster_carries_emits_through_a_failover(procs, clients_factory, stack, adapter):
    """The cloud shape: `rediss+cluster://`, every node TLS-only (clients, bus, replication), a
    private CA; the sidecars verify the nodes they discover, before and after a failover."""
    cluster = RedisCluster(procs, primaries=3, replicas=1, tls=True)
    cluster.start()
    pods = start_fleet(procs, cluster, stack, "sidecar", adapter=adapter)
    clients = clients_factory(stack)
    connect_room_layout(clients, pods)
    wait_for_fleet_to_converge(clients, pods)
    members = [member(pod) for pod in pods]

    def emit_news(n):
        payload = news(pods[n % len(pods)], n)
        assert clients.call(outsider(pods[n % len(pods)]), "emit_to_room", ROOM, "news", payload) == "ok"
        return payload

    sent = [emit_news(n) for n in range(1, 4)]
    dead = cluster.kill_primary_of(EMIT_NAME[(stack, adapter)])
    sent += [emit_news(n) for n in range(4, 8)]
    cluster.wait_for_failover(EMIT_NAME[(stack, adapter)], dead)
    sent += [emit_news(n) for n in range(8, 10)]
    for payload in sent:
        wait_for_delivery(clients, members, "news", payload, timeout=30)
    for name in members:
        got = [e[1] for e in app_events(clients, name) if e[0] == "news"]
        assert sorted(got, key=lambda p: p["n"]) == sent, f"{name} got {got}"
    assert {name: clients.disconnects(name) for name in everyone(pods)} == {name: 0 for name in everyone(pods)}


@pytest.mark.parametrize(("stack", "adapter"), STACKS)
def test_a_slot_migrated_mid_stream_loses_nothing_and_nobody_reconnects(procs, redis_cluster,
                                                                        clients_factory, stack,
                                                                        adapter):
    """A resharding under running apps: the slot of the emits' channel (or stream) migrates to
    another primary while emits flow. The sidecars follow the new slot map, move their
    subscriptions there, and every emit arrives exactly once, in order, with no reconnect."""
    pods = start_fleet(procs, redis_cluster, stack, "sidecar", adapter=adapter)
    clients = clients_factory(stack)
    connect_room_layout(clients, pods)
    wait_for_fleet_to_converge(clients, pods)
    members = [member(pod) for pod in pods]
    name = EMIT_NAME[(stack, adapter)]

    def emit_news(n):
        pod = pods[n % 2]
        payload = news(pod, n)
        assert clients.call(outsider(pod), "emit_to_room", ROOM, "news", payload) == "ok"
        return payload

    sent = [emit_news(n) for n in range(1, 6)]
    source, target = redis_cluster.move_slot_of(name)
    sent += [emit_news(n) for n in range(6, 16)]
    for payload in sent:
        wait_for_delivery(clients, members, "news", payload, timeout=30)
    # Late emits too: the fleet settled on the new map.
    sent += [emit_news(n) for n in range(16, 20)]
    for payload in sent[-4:]:
        wait_for_delivery(clients, members, "news", payload, timeout=30)

    for who in members:
        got = [e[1] for e in app_events(clients, who) if e[0] == "news"]
        assert sorted(got, key=lambda p: p["n"]) == sent, f"{who} got {got}"
        for pod in pods:
            in_order = [p for p in sent if p["from"] == pod.name]
            assert [p for p in got if p["from"] == pod.name] == in_order, f"{who}: out of order {got}"
    assert {n: clients.disconnects(n) for n in everyone(pods)} == {n: 0 for n in everyone(pods)}
    for pod in pods:
        trouble = [line for line in pod.app.log_text().splitlines()
                   if any(marker in line for marker in REDIS_TROUBLE[stack])]
        assert not trouble, f"{pod.name}'s app noticed the resharding:\n" + "\n".join(trouble)
        wait_until(f"{pod.name}'s sidecar to follow the new slot map",
                   lambda: "the cluster was resharded" in pod.sidecar.proc.log_text(), timeout=10)
    if (stack, adapter) != ("node", "streams") and (stack, adapter) != ("node", "classic"):
        # Exact subscribers of the emits' channel (the classic Node adapter uses a pattern).
        on_target = redis_cluster.cli(target, "pubsub", "shardchannels").split()
        assert name in on_target, f"{name} is not subscribed on its new primary 127.0.0.1:{target}: {on_target}"
        assert name not in redis_cluster.cli(source, "pubsub", "shardchannels").split()
