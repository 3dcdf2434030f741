"""Engine.IO sessions routed by the sidecars' HTTP fronts, behind a load balancer with no affinity.

Three pods share one redis-server; each sidecar also runs its HTTP front (`--front-listen`) in
front of its app, and a plain round-robin nginx (one worker, no ip_hash, no sticky cookie) spreads
every HTTP request over the three fronts. A long-polling Engine.IO session makes one request per
poll and per send, each with its `sid`, and round robin sends two in three of them to a pod that
never heard of that sid; the fronts must hand each to the pod that owns the session.

- python-socketio, Flask-SocketIO (under gunicorn) and Node socket.io servers: clients
  (python-socketio's for the first two, socket.io-client for Node), long-polling only and
  upgrading to WebSocket, connect through nginx, join a room and receive every numbered
  broadcast (made on every pod, to the room and to everyone) exactly once, in each pod's order,
  and nobody sees a connect error, a disconnect or an HTTP error; the broadcasts are repeated
  once the session records' TTL has passed (so only their renewal keeps the sessions routable).
  The fronts' metrics show they really forwarded (this is routing, not luck), never refused each
  other and never met an unknown sid.
- A request claiming to be forwarded with a wrong secret, sent straight to a front, gets 403 and
  is counted as refused.
- A poll for a sid nobody owns gets the framework's own 400, byte for byte.
- Control: the same round robin straight at the apps (no fronts) breaks polling sessions (400s,
  and a real polling-only client fails to connect), so the tests above can fail.
"""

from __future__ import annotations

import time

import pytest

from harness import (
    SIDECAR_SESSION_TTL_SECONDS, NotYet, RoundRobinNginx, front_secret_file, http_request, start_fleet, wait_until,
)
from scenario import (
    ROOM, UNKNOWN_SID_BODY, app_events, assert_no_trouble, assert_sessions_kept, assert_sessions_lost,
    raw_polling_sessions, wait_for_warmups,
)

STACKS = ["python", "flask", "node"]
POLLING = ["polling"]
UPGRADING = ["polling", "websocket"]  # both libraries' default: a polling handshake, then an upgrade

FORWARDED_HEADER = "x-switchboard-forwarded"
REQUESTS = "switchboard_sidecar_front_requests_total"
REFUSED = "switchboard_sidecar_front_forwards_refused_total"

MEMBERS = {
    "polling-member-1": POLLING, "polling-member-2": POLLING, "polling-member-3": POLLING,
    "upgrading-member-1": UPGRADING, "upgrading-member-2": UPGRADING, "upgrading-member-3": UPGRADING,
}
OUTSIDERS = {"polling-outsider": POLLING, "upgrading-outsider": UPGRADING}
BROADCASTS_PER_PHASE = 12


def trigger(pod) -> str:
    """The client, connected straight to `pod`'s front, that a test asks to make `pod` emit."""
    return f"trigger-{pod.name}"


def routed(pods, route: str) -> float:
    """Front requests of one route (local, forwarded, unknown), summed over the fleet."""
    return sum(pod.sidecar.metric(REQUESTS, {"route": route}, default=0.0) for pod in pods)


def start_routed_fleet(procs, redis_server, stack):
    pods = start_fleet(procs, redis_server, stack, "sidecar", front=True)
    nginx = RoundRobinNginx(procs, [pod.front_port for pod in pods]).start()
    return pods, nginx


def numbered(clients, name: str) -> list[dict]:
    return [e[1] for e in app_events(clients, name) if e[0] == "numbered"]


@pytest.mark.parametrize("stack", STACKS)
def test_sessions_behind_round_robin_get_every_broadcast_exactly_once(procs, redis_server, clients_factory, stack):
    pods, nginx = start_routed_fleet(procs, redis_server, stack)
    clients = clients_factory(stack)

    # A handshake is answered by the pod whose front it reaches: a trigger per pod, straight there.
    for pod in pods:
        clients.connect(trigger(pod), pod.front_url)
        who = clients.call(trigger(pod), "whoami")["name"]
        assert who == pod.name, f"a client connected to {pod.name}'s front should be served by {pod.name}, not {who}"

    landed = {}
    for name, transports in {**MEMBERS, **OUTSIDERS}.items():
        clients.connect(name, nginx.url, transports)
        landed[name] = clients.call(name, "whoami")["name"]
    last_handshake = time.monotonic()
    for name in MEMBERS:
        assert clients.call(name, "join", ROOM) == "ok", f"{name} (on {landed[name]}) should have joined {ROOM}"
    for name, transports in {**MEMBERS, **OUTSIDERS}.items():
        if transports == UPGRADING:
            wait_until(f"{name} to upgrade to WebSocket through nginx and the fronts",
                       lambda: clients.transport(name) == "websocket")
        else:
            assert clients.transport(name) == "polling", f"{name} should still be long-polling"
    listeners = [*MEMBERS, *OUTSIDERS]
    wait_for_warmups(clients, {pod.name: trigger(pod) for pod in pods}, listeners)

    sent: list[tuple[dict, bool]] = []  # (payload, to the room only)

    def broadcast_phase(phase: int) -> None:
        first = len(sent)
        for n in range(first, first + BROADCASTS_PER_PHASE):
            pod = pods[n % len(pods)]
            payload, to_room = {"n": n, "from": pod.name}, n % 2 == 0
            if to_room:
                assert clients.call(trigger(pod), "emit_to_room", ROOM, "numbered", payload) == "ok"
            else:
                assert clients.call(trigger(pod), "emit_to_all", "numbered", payload) == "ok"
            sent.append((payload, to_room))
        # Each pod's sentinel follows its numbered broadcasts on the same connection, so once a
        # client has every pod's sentinel, nothing of this phase can still be on its way to it.
        sentinels = [{"phase": phase, "from": pod.name} for pod in pods]
        for pod, sentinel in zip(pods, sentinels):
            assert clients.call(trigger(pod), "emit_to_all", "sentinel", sentinel) == "ok"

        def all_sentinels_in():
            missing = {n: [s["from"] for s in sentinels if ["sentinel", s] not in clients.events(n)]
                       for n in listeners}
            missing = {n: m for n, m in missing.items() if m}
            return NotYet(f"still missing: {missing}") if missing else True

        wait_until(f"every pod's phase-{phase} sentinel to reach every client", all_sentinels_in, timeout=20)

    broadcast_phase(1)
    # Deliberately let the session records' TTL pass: from here on, only the owners' renewals
    # keep the sids routable.
    time.sleep(max(0.0, last_handshake + 1.5 * SIDECAR_SESSION_TTL_SECONDS - time.monotonic()))
    broadcast_phase(2)

    for name in listeners:
        got = numbered(clients, name)
        wanted = [p for p, to_room in sent if name in MEMBERS or not to_room]
        by_n = sorted(got, key=lambda p: p["n"])
        assert by_n == wanted, (
            f"{name} ({'member' if name in MEMBERS else 'outsider'}, on {landed[name]}, {clients.transport(name)}) "
            f"should have received exactly once each of n={[p['n'] for p in wanted]}, "
            f"got n={[p['n'] for p in got]}")
        for pod in pods:
            order = [p["n"] for p in got if p["from"] == pod.name]
            assert order == sorted(order), f"{name} should get {pod.name}'s broadcasts in the order made, got {order}"
        others = {e[0] for e in app_events(clients, name)} - {"numbered", "sentinel"}
        assert not others, f"{name} should receive only numbered broadcasts and sentinels, also got {others}"

    assert_no_trouble(clients, [*listeners, *(trigger(pod) for pod in pods)], nginx)

    # The same hand-made sessions that break round robin straight at the apps (the control below).
    assert_sessions_kept(nginx.url, 6, "pod")

    forwarded = routed(pods, "forwarded")
    assert forwarded > 0, (f"the fronts should have forwarded requests to the owning pod (route=forwarded summed "
                           f"over the fleet > 0), got {forwarded}; clients landed on {landed}")
    for pod in pods:
        local = pod.sidecar.metric(REQUESTS, {"route": "local"})
        assert local > 0, (f"{pod.name}'s front should have served requests locally (its trigger's at least), "
                           f"got {local}")
        refused = pod.sidecar.metric(REFUSED)
        assert refused == 0, f"{pod.name}'s front should never refuse the fleet's own forwards, refused {refused}"
    unknown = routed(pods, "unknown")
    assert unknown == 0, f"no live session's sid should ever have been unknown to the fleet, got {unknown} unknown"


@pytest.mark.parametrize("stack", STACKS)
def test_a_forwarded_request_with_a_wrong_secret_is_refused_with_403(procs, redis_server, stack):
    pods = start_fleet(procs, redis_server, stack, "sidecar", front=True)
    target, elsewhere = pods[0], pods[1]
    handshake = f"{target.front_url}/socket.io/?EIO=4&transport=polling"
    status, body = http_request(handshake)
    assert status == 200 and body.startswith("0{"), (
        f"a plain handshake at the front should be served, got {status} {body!r}")
    owned_elsewhere = raw_polling_sessions(elsewhere.front_url, 1)[0]
    assert owned_elsewhere["post"] == 200, f"a session on {elsewhere.name} should work there: {owned_elsewhere}"

    secret = front_secret_file(procs).read_text().strip()
    forgeries = [
        (handshake, "not-the-fleet-secret-0123456789"),
        (handshake, secret[:-1] + ("x" if secret[-1] != "x" else "y")),  # same length, last byte wrong
        (handshake, secret + "x"),  # the secret as a prefix
        (f"{handshake}&sid={owned_elsewhere['sid']}", "not-the-fleet-secret-0123456789"),
    ]
    before = target.sidecar.metric(REFUSED)
    for url, value in forgeries:
        # At the peer port, where forwarded requests are taken: only the secret is wrong.
        url = url.replace(target.front_url, target.sidecar.peer_url)
        status, body = http_request(url, headers={FORWARDED_HEADER: value})
        assert status == 403, f"GET {url} with {FORWARDED_HEADER}: {value!r} should get 403, got {status} {body!r}"
    wait_until(f"{target.name}'s {REFUSED} to rise by {len(forgeries)} from {before}",
               lambda: target.sidecar.metric(REFUSED) == before + len(forgeries))


def test_forwarded_requests_are_taken_at_the_peer_port_only(procs, redis_server):
    """The peer port takes the fleet's forwarded requests and nothing else; the public port (the
    Service's, the ingress's) takes no forwarded request, even with the right secret: a leaked
    secret alone does not let an outsider in, the NetworkPolicy on the peer port stands in the way.
    Without a peer port, the one port takes both (the secret decides)."""
    target = start_fleet(procs, redis_server, "python", "sidecar", size=1, front=True)[0]
    secret = front_secret_file(procs).read_text().strip()
    handshake = "/socket.io/?EIO=4&transport=polling"

    status, body = http_request(f"{target.sidecar.peer_url}{handshake}", headers={FORWARDED_HEADER: secret})
    assert status == 200 and body.startswith("0{"), (
        f"a request forwarded with the fleet's secret should reach the app through the peer port, got {status} {body!r}")
    before = target.sidecar.metric(REFUSED)
    refusals = [
        (target.front_url, {FORWARDED_HEADER: secret}, "takes no forwarded requests"),
        (target.sidecar.peer_url, {}, "for requests forwarded by the fleet's pods only"),
    ]
    for url, headers, says in refusals:
        status, body = http_request(f"{url}{handshake}", headers=headers)
        assert status == 403 and says in body, (
            f"GET {url}{handshake} with {headers or 'no header'} should get 403 naming why ({says!r}), "
            f"got {status} {body!r}")
    wait_until(f"{target.name}'s {REFUSED} to rise by {len(refusals)} from {before}",
               lambda: target.sidecar.metric(REFUSED) == before + len(refusals))
    log = target.sidecar.proc.log_text()
    assert "front: refused a request" in log, f"the refusal should be named in the sidecar's log:\n{log[-2000:]}"


def test_without_a_peer_port_the_one_port_takes_forwarded_requests_with_the_secret(procs, redis_server):
    target = start_fleet(procs, redis_server, "python", "sidecar", size=1, front=True, peer_port=False)[0]
    assert target.sidecar.peer_port is None
    secret = front_secret_file(procs).read_text().strip()
    handshake = f"{target.front_url}/socket.io/?EIO=4&transport=polling"
    status, body = http_request(handshake, headers={FORWARDED_HEADER: secret})
    assert status == 200 and body.startswith("0{"), (
        f"with one port, a request forwarded with the secret should reach the app, got {status} {body!r}")
    status, body = http_request(handshake, headers={FORWARDED_HEADER: "not-the-fleet-secret-0123456789"})
    assert status == 403, f"with one port, a wrong secret should still get 403, got {status} {body!r}"


@pytest.mark.parametrize("stack", STACKS)
def test_a_sid_nobody_owns_gets_the_frameworks_own_400(procs, redis_server, stack):
    pods, nginx = start_routed_fleet(procs, redis_server, stack)
    query = "/socket.io/?EIO=4&transport=polling&sid=nope"
    straight = http_request(f"{pods[0].url}{query}")  # what the app itself says
    assert straight[0] == 400 and UNKNOWN_SID_BODY[stack] in straight[1], (
        f"the {stack} app should answer an unknown sid with 400 {UNKNOWN_SID_BODY[stack]!r}, got {straight}")

    before = routed(pods, "unknown")
    through = http_request(f"{nginx.url}{query}")
    assert through == straight, (
        f"through nginx and the fronts, an unknown sid should get the app's own {straight}, got {through}")
    wait_until(f"route=unknown summed over the fleet to rise by 1 from {before}",
               lambda: routed(pods, "unknown") == before + 1)


@pytest.mark.parametrize("stack", STACKS)
def test_control_round_robin_straight_at_the_apps_breaks_polling_sessions(procs, redis_server, clients_factory,
                                                                          stack):
    pods = start_fleet(procs, redis_server, stack, "direct")
    nginx = RoundRobinNginx(procs, [pod.port for pod in pods]).start()

    assert_sessions_lost(nginx.url, 6, stack)

    clients = clients_factory(stack)
    sid = clients.try_connect("polling-client", nginx.url, POLLING)
    assert sid is None, (
        f"a polling-only client through round robin straight at the apps should fail to connect, got sid {sid}")
    assert clients.connect_errors("polling-client"), (
        "the failed polling-only client should have reported a connect error")
    assert any(entry[0] == 400 for entry in nginx.access_log()), "nginx should have logged the apps' 400s"
