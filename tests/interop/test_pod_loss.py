"""A pod that dies stops being counted, so cluster-wide queries stop waiting for it.

Node's @socket.io/redis-adapter waits for `PUBSUB NUMSUB - 1` answers to serverSideEmit() and
for NUMSUB answers to fetchSockets(). When a pod is SIGKILLed (app and, in `sidecar` mode, its
sidecar too, as when a node fails), the count must drop to the survivors: straight to Redis it
drops as soon as the dead app's connections close; through sidecars, once the dead sidecar's
fleet-registry entry expires (--peer-ttl-ms). A count stuck at 3 would turn every later query
into the adapter's 5 s "timeout reached" error.
"""

from __future__ import annotations

import pytest

from harness import SIDECAR_PEER_TTL_SECONDS, start_fleet
from scenario import (
    assert_cluster_queries_hear_every_server, connect_room_layout, member, outsider,
    wait_for_fleet_to_converge, wait_for_server_count,
)


@pytest.mark.parametrize("mode", ["direct", "sidecar"])
def test_cluster_queries_stop_waiting_for_a_killed_pod(procs, redis_server, clients_factory, mode):
    pods = start_fleet(procs, redis_server, "node", mode)
    clients = clients_factory("node")
    sids = connect_room_layout(clients, pods)
    wait_for_fleet_to_converge(clients, pods)
    wait_for_server_count(clients, pods, expected=3)

    victim, survivors = pods[-1], pods[:-1]
    if victim.sidecar:
        # Sidecar first, so it cannot tell the fleet its app's subscriptions are gone: only the
        # registry entry's expiry can.
        victim.sidecar.proc.kill()
    victim.app.kill()

    wait_for_server_count(clients, survivors, expected=2, timeout=SIDECAR_PEER_TTL_SECONDS + 10)
    surviving_sids = {name: sid for name, sid in sids.items()
                      if name in {member(p) for p in survivors} | {outsider(p) for p in survivors}}
    assert_cluster_queries_hear_every_server(clients, survivors, surviving_sids)
