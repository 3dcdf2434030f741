"""Losing the backplane is invisible to the apps behind sidecars.

Three pods, each app behind its own sidecar, share one redis-server. Mid-test redis-server is
SIGKILLed, the apps keep emitting to a room while it is down, and then it is restarted (empty, on
the same port). The sidecars must reconnect, resubscribe and flush what was published during the
outage, while the apps and their clients notice nothing:

- every room member receives every emit (before, during and after the outage) exactly once, each
  pod's emits in the order they were made, and outsiders receive none of them;
- no socket.io client is ever disconnected;
- the app processes are the ones that started (same PIDs; under gunicorn, the same worker too)
  and never logged a Redis error;
- (Node) after the outage the fleet-wide PUBSUB NUMSUB is right again: fetchSockets() and
  serverSideEmit() with acks hear every server.

There is no `direct` variant: straight to Redis, the adapters see the connection drop and the
emits made during the outage are lost, which is the problem the sidecar exists to solve.
"""

from __future__ import annotations

import time

import pytest

from harness import start_fleet, wait_until
from scenario import (
    ROOM, app_events, assert_cluster_queries_hear_every_server, connect_room_layout, everyone,
    member, outsider, wait_for_delivery, wait_for_fleet_to_converge, wait_for_server_count,
)

# Longer than the sidecars' --reconnect-max-ms (500), so several reconnect attempts fail.
OUTAGE_SECONDS = 2.0

# What each app logs when its own Redis connection has trouble (see apps/). Flask-SocketIO's sync
# RedisManager says what the async one does: "Cannot publish to redis... retrying" / "... giving
# up" and "Cannot receive from redis... retrying in 1 secs" (seen with redis-server SIGKILLed
# under a `direct` flask fleet).
REDIS_TROUBLE = {
    "python": ["Cannot receive from redis", "Cannot publish to redis"],
    "flask": ["Cannot receive from redis", "Cannot publish to redis"],
    "node": ["redis-error", "redis-close", "redis-reconnecting"],
}


def news(pod, n: int) -> dict:
    return {"from": pod.name, "n": n}


@pytest.mark.parametrize("stack", ["python", "flask", "node"])
def test_emits_during_a_redis_outage_arrive_and_nobody_reconnects(procs, redis_server, clients_factory,
                                                                  stack):
    pods = start_fleet(procs, redis_server, stack, "sidecar")
    clients = clients_factory(stack)
    sids = connect_room_layout(clients, pods)
    wait_for_fleet_to_converge(clients, pods)
    identities = {pod.name: clients.call(outsider(pod), "whoami") for pod in pods}
    assert {name: who["pid"] for name, who in identities.items()} == {pod.name: pod.app.pid for pod in pods}
    members = [member(pod) for pod in pods]
    first, second = pods[0], pods[1]

    def emit_news(pod, n):
        payload = news(pod, n)
        assert clients.call(outsider(pod), "emit_to_room", ROOM, "news", payload) == "ok"
        return payload

    sent = [emit_news(first, 1)]
    wait_for_delivery(clients, members, "news", sent[-1])

    redis_server.crash()
    outage_started = time.monotonic()
    sent.append(emit_news(first, 2))
    sent.append(emit_news(second, 3))
    for pod in pods:  # /readyz is 200 only while the backplane is connected
        wait_until(f"{pod.name}'s sidecar to notice the outage (/readyz not 200)",
                   lambda: pod.sidecar.readyz() != 200, timeout=5, watch=[pod.sidecar.proc])
    # Keep the backplane down for a while, then emit again from both sides.
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
    sent.append(emit_news(first, 4))
    sent.append(emit_news(second, 5))
    redis_server.start()

    for payload in sent[1:]:
        wait_for_delivery(clients, members, "news", payload, timeout=20)
    for pod in pods:
        wait_until(f"{pod.name}'s sidecar /readyz to return 200 again", lambda: pod.sidecar.readyz() == 200,
                   watch=[pod.sidecar.proc])

    sent.append(emit_news(second, 6))
    sentinel = {"to": "everyone"}
    assert clients.call(outsider(second), "emit_to_all", "sentinel", sentinel) == "ok"
    wait_for_delivery(clients, everyone(pods), "sentinel", sentinel)

    for name in members:
        got = [e[1] for e in app_events(clients, name) if e[0] == "news"]
        assert sorted(got, key=lambda p: p["n"]) == sent, f"{name} got {got}"
        for pod in pods:
            in_order = [p for p in sent if p["from"] == pod.name]
            assert [p for p in got if p["from"] == pod.name] == in_order, f"{name} got {pod.name}'s emits out of order: {got}"
    for pod in pods:
        assert app_events(clients, outsider(pod)) == [["sentinel", sentinel]]

    disconnects = {name: clients.disconnects(name) for name in everyone(pods)}
    assert disconnects == {name: 0 for name in everyone(pods)}, "socket.io clients were disconnected"
    for pod in pods:
        assert pod.app.alive(), f"{pod.name}'s app exited"
        # The whole answer: the flask app's also names gunicorn's worker, which its arbiter would
        # have replaced had it died or hung.
        assert clients.call(outsider(pod), "whoami") == identities[pod.name], f"{pod.name}'s app was restarted"
        trouble = [line for line in pod.app.log_text().splitlines()
                   if any(marker in line for marker in REDIS_TROUBLE[stack])]
        assert not trouble, f"{pod.name}'s app noticed the outage:\n" + "\n".join(trouble)

    if stack == "node":
        wait_for_server_count(clients, pods, expected=len(pods))
        assert_cluster_queries_hear_every_server(clients, pods, sids)
