"""Fan-out across pods with real Socket.IO stacks, through the sidecar and (as a control) without it.

Three pods share one redis-server. In `sidecar` mode each app's unmodified Redis adapter talks to
its own switchboard-sidecar; in `direct` mode it talks to redis-server itself. Both modes run the
same assertions: the sidecar must be indistinguishable from one Redis shared by every replica.

- python-socketio (AsyncRedisManager, redis-py 8 speaking RESP3), Flask-SocketIO (the sync
  RedisManager it picks for `message_queue=redis://…`, also redis-py, in threads under gunicorn)
  and Node socket.io (@socket.io/redis-adapter over ioredis, RESP2): an emit to a room on pod-1
  reaches the room's members on every pod, exactly once and in order, and nobody else.
- Node only: fetchSockets() and serverSideEmit() with acks, which wait for as many answers as
  `PUBSUB NUMSUB` reports servers; a wrong fleet-wide count shows up as missing answers or as the
  adapter's 5 s "timeout reached" error.
"""

from __future__ import annotations

import pytest

from harness import start_fleet
from scenario import (
    ROOM, app_events, assert_cluster_queries_hear_every_server, connect_room_layout, everyone, member,
    outsider, wait_for_delivery, wait_for_fleet_to_converge, wait_for_server_count,
)

MODES = ["direct", "sidecar"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stack", ["python", "flask", "node"])
def test_room_emit_reaches_members_on_every_pod_and_no_one_else(procs, redis_server, clients_factory,
                                                                 stack, mode):
    pods = start_fleet(procs, redis_server, stack, mode)
    clients = clients_factory(stack)
    connect_room_layout(clients, pods)
    wait_for_fleet_to_converge(clients, pods)
    emitter = outsider(pods[0])

    news, sentinel = {"headline": "room only"}, {"to": "everyone"}
    assert clients.call(emitter, "emit_to_room", ROOM, "news", news) == "ok"
    # Sent after the room emit on the same connection, so it arrives after anything the room emit
    # delivers: once everyone has the sentinel, nobody can still be about to get "news".
    assert clients.call(emitter, "emit_to_all", "sentinel", sentinel) == "ok"
    wait_for_delivery(clients, everyone(pods), "sentinel", sentinel)

    received = {name: app_events(clients, name) for name in everyone(pods)}
    expected = {}
    for pod in pods:
        expected[member(pod)] = [["news", news], ["sentinel", sentinel]]
        expected[outsider(pod)] = [["sentinel", sentinel]]
    assert received == expected


@pytest.mark.parametrize("mode", MODES)
def test_node_cluster_queries_hear_every_server(procs, redis_server, clients_factory, mode):
    pods = start_fleet(procs, redis_server, "node", mode)
    clients = clients_factory("node")
    sids = connect_room_layout(clients, pods)
    wait_for_fleet_to_converge(clients, pods)
    wait_for_server_count(clients, pods, expected=len(pods))

    assert_cluster_queries_hear_every_server(clients, pods, sids)
