"""The HTTP front when things go wrong: a pod killed mid-session, a handshake flood, requests
that are not what they should be.

- A pod deleted (SIGTERM, its endpoint gone first) while long-polling clients hold sessions on
  every pod behind a round-robin nginx: its clients reconnect, through the fronts, to live pods;
  the others never see a disconnect and get every broadcast (its front drains the long-polls
  passing through it); its records leave the backplane within the TTL.
- A pod SIGKILLed: its clients reconnect, everyone hears broadcasts again, its records expire.
- A handshake flood at one front with `--front-max-sessions 5`: every handshake is still
  answered by the app, only 5 are recorded in the backplane, the rest are counted.
- A request head over the front's limit gets 431, a request that is not HTTP is cut; both are
  counted and logged. A `sid` that is not an Engine.IO id goes to the app, which refuses it.
"""

from __future__ import annotations

import socket

import pytest
import redis

from harness import (
    SIDECAR_SESSION_TTL_SECONDS, NotYet, RoundRobinNginx, free_port, front_secret_file, http_request, port_accepts,
    Sidecar, start_fleet, start_sidecar, app_argv, wait_until,
)
from scenario import app_events

STACKS = ["python", "flask", "node"]
POLLING = ["polling"]
SID_KEYS = "switchboard:sid:*"


def records_of(backplane: redis.Redis, sidecar: Sidecar) -> set[str]:
    """The session ids the backplane records as owned by `sidecar`'s front (at the address it
    advertises: its peer port, else its one port)."""
    owner = f"127.0.0.1:{sidecar.peer_port or sidecar.front_port}"
    return {key.decode().rsplit(":", 1)[1] for key in backplane.scan_iter(SID_KEYS)
            if backplane.get(key) == owner.encode()}


def routed_fleet_with_sessions(procs, redis_server, clients_factory, stack):
    """Three pods with fronts behind round robin, six long-polling clients spread over them;
    returns the pods, nginx, the backplane, the clients, their names and each one's owner pod."""
    pods = start_fleet(procs, redis_server, stack, "sidecar", front=True)
    nginx = RoundRobinNginx(procs, [pod.front_port for pod in pods]).start()
    backplane = redis.Redis(port=redis_server.port)
    clients = clients_factory(stack)
    names = [f"polling-{i}" for i in range(6)]
    for name in names:
        clients.connect(name, nginx.url, transports=POLLING)
    owner_of = {name: clients.call(name, "whoami")["name"] for name in names}
    assert {p.name for p in pods} == set(owner_of.values()), f"round robin spreads the handshakes: {owner_of}"
    return pods, nginx, backplane, clients, names, owner_of


def first_pod_leaves(pods, nginx, backplane, names, owner_of):
    """Takes the first pod's front out of nginx, as its endpoint leaves the Service before the
    pod goes; returns the pod, the sessions it records, and the clients it owns and does not own."""
    pod = pods[0]
    records = records_of(backplane, pod.sidecar)
    assert records, f"{pod.name} records no session; records: {list(backplane.scan_iter(SID_KEYS))}"
    orphans = [n for n in names if owner_of[n] == pod.name]
    survivors = [n for n in names if owner_of[n] != pod.name]
    nginx.set_upstreams([p.front_port for p in pods[1:]])
    return pod, records, orphans, survivors


def wait_for_records_to_expire(backplane, pod, records):
    """Nobody renews a gone pod's records: they leave the backplane within the TTL."""
    wait_until(f"{pod.name}'s session records to expire",
               lambda: not (records_of(backplane, pod.sidecar) & records),
               timeout=SIDECAR_SESSION_TTL_SECONDS + 5)


def broadcast_reaches_everyone(clients, names, emitter, payload):
    assert clients.call(emitter, "emit_to_all", "numbered", payload) == "ok"

    def everyone_got():
        missing = [n for n in names if ["numbered", payload] not in app_events(clients, n)]
        return NotYet(f"not yet at {missing}") if missing else True
    wait_until(f"{payload} to reach every client", everyone_got, timeout=30)


def wait_for_reconnects(clients, orphans, live):
    for name in orphans:
        wait_until(f"{name} to reconnect to a live pod",
                   lambda: (clients.call(name, "whoami") or {}).get("name") in live, timeout=60)


@pytest.mark.parametrize("stack", STACKS)
def test_a_pod_deleted_mid_session_its_clients_reconnect_and_the_others_never_notice(procs, redis_server,
                                                                                    clients_factory, stack):
    """As `kubectl delete pod` goes: the endpoint leaves the Service, the app gets SIGTERM and
    exits, then its sidecar does, whose front lets the other pods' long-polls passing through it
    finish before it exits."""
    pods, nginx, backplane, clients, names, owner_of = routed_fleet_with_sessions(
        procs, redis_server, clients_factory, stack)
    gone, gone_records, orphans, survivors = first_pod_leaves(pods, nginx, backplane, names, owner_of)
    gone.app.stop()
    gone.sidecar.proc.popen.terminate()  # SIGTERM, and no SIGKILL 5 s later: the drain may take longer
    wait_until(f"{gone.name}'s sidecar to drain its front and exit", lambda: not gone.sidecar.proc.alive(),
               timeout=40)
    assert "front: drained" in gone.sidecar.proc.log_text(), "the front drained rather than cut"

    wait_for_reconnects(clients, orphans, {p.name for p in pods[1:]})
    for i, name in enumerate(survivors):
        broadcast_reaches_everyone(clients, names, name, {"after_delete": i, "from": owner_of[name]})
    for name in survivors:
        assert clients.connect_errors(name) == [], f"{name} saw connect errors"
        assert clients.disconnects(name) == 0, f"{name} was disconnected though its pod lives"
    wait_for_records_to_expire(backplane, gone, gone_records)


@pytest.mark.parametrize("stack", STACKS)
def test_a_pod_killed_mid_session_its_clients_reconnect_and_its_records_expire(procs, redis_server,
                                                                                clients_factory, stack):
    """SIGKILL, as a crash or an OOM kill: no drain. The dead pod's clients reconnect to live
    pods and everyone hears broadcasts again; its records leave the backplane within the TTL. (A
    survivor whose long-poll happened to pass through the dead pod's front at that moment loses
    that poll: Node's engine.io then ends its session and it reconnects; see the README.)"""
    pods, nginx, backplane, clients, names, owner_of = routed_fleet_with_sessions(
        procs, redis_server, clients_factory, stack)
    dead, dead_records, orphans, _ = first_pod_leaves(pods, nginx, backplane, names, owner_of)
    dead.app.kill()
    dead.sidecar.proc.kill()
    wait_for_records_to_expire(backplane, dead, dead_records)

    live = {p.name for p in pods[1:]}
    wait_for_reconnects(clients, names, live)  # survivors too, if their poll was cut
    emitter = next(n for n in names if n not in orphans)
    for i in range(3):
        broadcast_reaches_everyone(clients, names, emitter, {"after_kill": i})


def start_single_front(procs, redis_server, stack, extra_args=()):
    """One pod (app and sidecar with its front), for tests that aim at one front."""
    port = free_port()
    sidecar = start_sidecar(procs, "pod-1", redis_server.url, extra_args, front_app_port=port,
                            front_secret_file=front_secret_file(procs), wait_ready=False)
    app = procs.start("app-pod-1", app_argv(stack, port, sidecar.url, "pod-1"))
    wait_until("the app to listen", lambda: port_accepts(port), watch=[app])
    wait_until("the sidecar to be ready", lambda: sidecar.readyz() == 200, watch=[sidecar.proc])
    return sidecar


@pytest.mark.parametrize("stack", STACKS)
def test_a_handshake_flood_is_answered_but_recorded_only_up_to_the_bound(procs, redis_server, stack):
    sidecar = start_single_front(procs, redis_server, stack, ["--front-max-sessions", "5"])
    backplane = redis.Redis(port=redis_server.port)
    url = f"http://127.0.0.1:{sidecar.front_port}/socket.io/?EIO=4&transport=polling"
    for i in range(20):
        status, body = http_request(url)
        assert status == 200 and body.startswith("0{"), f"handshake {i}: {status} {body[:200]!r}"
    recorded = records_of(backplane, sidecar)
    assert len(recorded) == 5, f"{len(recorded)} recorded, want the bound, 5"
    assert sidecar.metric("switchboard_sidecar_front_sessions_unrecorded_total") == 15
    assert sidecar.metric("switchboard_sidecar_front_sessions") == 5


def test_oversized_and_malformed_requests_are_refused_counted_and_named(procs, redis_server):
    sidecar = start_single_front(procs, redis_server, "python")
    port = sidecar.front_port

    def raw(request: bytes) -> bytes:
        """What the front answers before it closes (every request here says `Connection: close`
        or is not HTTP at all)."""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            chunks = []
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)

    huge = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    answer = raw(huge)
    assert answer.startswith(b"HTTP/1.1 431"), f"an oversized head: {answer[:200]!r}"
    answer = raw(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert not answer.startswith(b"HTTP/1.1 2"), f"garbage was served: {answer[:200]!r}"
    wait_until("both to be counted",
               lambda: sidecar.metric("switchboard_sidecar_front_requests_malformed_total") >= 2, timeout=5)
    assert "malformed, oversized or too slow" in sidecar.proc.log_text(), "named in the log"

    # A sid that is not an Engine.IO id is not looked up; the app refuses it itself.
    status, body = http_request(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling&sid=..%2F..%2Fetc")
    assert status == 400, f"a forged sid: {status} {body[:200]!r}"
