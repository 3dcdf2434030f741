"""Pods whose app runs several worker processes, one port each, behind one sidecar's front.

python-socketio and Flask-SocketIO answer "run several workers on their own ports, behind a
balancer with sticky sessions" (python-socketio#1263, Flask-SocketIO#439 report what happens
without), and so does socket.io for Node's cluster. Here each of two pods runs two workers of
its stack, each on its own port, sharing the pod's sidecar; the sidecar's front is given both
ports (`--front-app a,b`), spreads new sessions over them in turn and sends every request of a
session to the worker that opened it, wherever in the fleet the request arrives. A plain
round-robin nginx (no affinity) spreads the requests over the two fronts.

- Clients long-polling only and upgrading to WebSocket connect through nginx and land on
  every worker of at least one pod (the handshakes are spread), join a room and receive every
  numbered broadcast, made by every worker, exactly once; nobody sees a connect error, a
  disconnect or an HTTP error, and hand-made polling sessions are answered by their own worker.
- Control: round robin straight at one pod's two workers breaks polling sessions (400): the
  workers share no sessions, so what passes above is the front's doing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness import (
    ManagedProcess, NotYet, RoundRobinNginx, Sidecar, app_argv, free_port, front_secret_file, port_accepts, start_sidecar,
    wait_until,
)
from scenario import ROOM, app_events, assert_no_trouble, assert_sessions_kept, assert_sessions_lost, wait_for_warmups

STACKS = ["python", "flask", "node"]
WORKERS = 2
POLLING = ["polling"]
UPGRADING = ["polling", "websocket"]
CLIENTS = {**{f"polling-{i}": POLLING for i in range(1, 5)}, **{f"upgrading-{i}": UPGRADING for i in range(1, 5)}}


@dataclass
class MultiWorkerPod:
    name: str
    sidecar: Sidecar
    ports: list[int]  # one per worker, in --front-app order
    workers: list[ManagedProcess]


def start_pods(procs, redis_server, stack: str, count: int = 2) -> list[MultiWorkerPod]:
    secret = front_secret_file(procs)
    pods = []
    for i in range(1, count + 1):
        name = f"pod-{i}"
        ports = [free_port() for _ in range(WORKERS)]
        sidecar = start_sidecar(procs, name, redis_server.url, front_app_port=ports, front_secret_file=secret,
                                wait_ready=False)
        workers = [procs.start(f"app-{name}-w{w}", app_argv(stack, port, sidecar.url, name))
                   for w, port in enumerate(ports)]
        pods.append(MultiWorkerPod(name, sidecar, ports, workers))
    for pod in pods:
        for worker, port in zip(pod.workers, pod.ports):
            wait_until(f"{pod.name}'s {stack} worker on {port} to listen", lambda: port_accepts(port),
                       watch=[worker])
        wait_until(f"{pod.name}'s sidecar /readyz to return 200", lambda: pod.sidecar.readyz() == 200,
                   watch=[pod.sidecar.proc])
        wait_until(f"{pod.name}'s front to accept connections", lambda: port_accepts(pod.sidecar.front_port),
                   watch=[pod.sidecar.proc])
    return pods


def trigger(pod: MultiWorkerPod, worker: int) -> str:
    """The client, connected straight to one worker's port, that makes that worker emit."""
    return f"trigger-{pod.name}-w{worker}"


@pytest.mark.parametrize("stack", STACKS)
def test_sessions_stay_with_their_worker_and_get_every_broadcast_once(procs, redis_server, clients_factory, stack):
    pods = start_pods(procs, redis_server, stack)
    nginx = RoundRobinNginx(procs, [pod.sidecar.front_port for pod in pods]).start()
    clients = clients_factory(stack)

    worker_of_pid = {}  # the app process's pid -> (pod, worker)
    for pod in pods:
        for w, port in enumerate(pod.ports):
            clients.connect(trigger(pod, w), f"http://127.0.0.1:{port}")
            who = clients.call(trigger(pod, w), "whoami")
            assert who["name"] == pod.name, f"{trigger(pod, w)} should be served by {pod.name}, got {who}"
            worker_of_pid[who["pid"]] = (pod.name, w)
    assert len(worker_of_pid) == len(pods) * WORKERS, f"every worker should be its own process: {worker_of_pid}"

    landed = {}
    for name, transports in CLIENTS.items():
        clients.connect(name, nginx.url, transports)
        pid = clients.call(name, "whoami")["pid"]
        assert pid in worker_of_pid, f"{name} should be served by one of the workers {worker_of_pid}, got pid {pid}"
        landed[name] = worker_of_pid[pid]
    # Each front takes the workers in turn for handshakes; nginx's round robin decides which
    # front gets which, so of the eight handshakes one front got at least four.
    spread = [pod.name for pod in pods
              if {w for (p, w) in landed.values() if p == pod.name} == set(range(WORKERS))]
    assert spread, f"some pod should have had sessions opened on each of its {WORKERS} workers: {landed}"

    for name in CLIENTS:
        assert clients.call(name, "join", ROOM) == "ok", f"{name} (on {landed[name]}) should have joined {ROOM}"
    for name, transports in CLIENTS.items():
        if transports == UPGRADING:
            wait_until(f"{name} to upgrade to WebSocket through nginx and the fronts",
                       lambda: clients.transport(name) == "websocket")
        else:
            assert clients.transport(name) == "polling", f"{name} should still be long-polling"
    triggers = {trigger(pod, w): trigger(pod, w) for pod in pods for w in range(WORKERS)}
    wait_for_warmups(clients, triggers, list(CLIENTS))

    sent = []
    for n in range(12):
        pod, w = pods[n % len(pods)], (n // len(pods)) % WORKERS
        payload = {"n": n, "from": f"{pod.name}-w{w}"}
        if n % 2 == 0:
            assert clients.call(trigger(pod, w), "emit_to_room", ROOM, "numbered", payload) == "ok"
        else:
            assert clients.call(trigger(pod, w), "emit_to_all", "numbered", payload) == "ok"
        sent.append(payload)

    def everyone_has_everything():
        short = {name: len([e for e in app_events(clients, name) if e[0] == "numbered"]) for name in CLIENTS}
        short = {name: got for name, got in short.items() if got < len(sent)}
        return NotYet(f"still short of {len(sent)} broadcasts: {short}") if short else True

    wait_until("every numbered broadcast to reach every client", everyone_has_everything, timeout=20)
    for name in CLIENTS:
        got = sorted((e[1] for e in app_events(clients, name) if e[0] == "numbered"), key=lambda p: p["n"])
        assert got == sent, (f"{name} (on {landed[name]}, {clients.transport(name)}) should have received each "
                             f"broadcast exactly once: sent {[p['n'] for p in sent]}, got {[p['n'] for p in got]}")
    assert_no_trouble(clients, [*CLIENTS, *triggers], nginx)
    assert_sessions_kept(nginx.url, 8, "worker")


@pytest.mark.parametrize("stack", STACKS)
def test_control_round_robin_over_one_pods_workers_breaks_polling_sessions(procs, redis_server, stack):
    pod = start_pods(procs, redis_server, stack, count=1)[0]
    nginx = RoundRobinNginx(procs, pod.ports).start()
    assert_sessions_lost(nginx.url, 6, stack)
