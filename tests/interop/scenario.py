"""The room scenario shared by the tests: who is connected where, and how to tell the fleet is up.

Each pod gets one room member and one outsider. Outsiders also serve as the triggers: a test
asks `outsider-pod-1` to make pod-1 emit, so pod-1 is the emitting server.
"""

from __future__ import annotations

import itertools
import json
import time

from harness import NotYet, Pod, http_request, wait_until

ROOM = "lobby"
# What each Engine.IO server answers (with 400) to a sid it does not know. Flask-SocketIO's is
# python-engineio's sync Server, whose answer is the async one's (`"Invalid session <sid>"`).
UNKNOWN_SID_BODY = {"python": "Invalid session", "flask": "Invalid session", "node": "Session ID unknown"}
WARMUP = "warmup"  # broadcasts used only to learn that every server hears every other one


def member(pod: Pod) -> str:
    return f"member-{pod.name}"


def outsider(pod: Pod) -> str:
    return f"outsider-{pod.name}"


def everyone(pods: list[Pod]) -> list[str]:
    return [name for pod in pods for name in (member(pod), outsider(pod))]


def connect_room_layout(clients, pods: list[Pod]) -> dict[str, str]:
    """Connects a member and an outsider to every pod, puts the members in ROOM; returns name -> sid."""
    sids = {}
    for pod in pods:
        sids[member(pod)] = clients.connect(member(pod), pod.url)
        sids[outsider(pod)] = clients.connect(outsider(pod), pod.url)
        assert clients.call(member(pod), "join", ROOM) == "ok"
    return sids


def app_events(clients, name: str) -> list:
    """What a client received, minus the warm-up traffic."""
    return [e for e in clients.events(name) if e[0] != WARMUP]


def wait_for_fleet_to_converge(clients, pods: list[Pod], timeout: float = 20.0) -> None:
    """Waits until a broadcast from each pod reaches clients on every pod.

    The apps subscribe to the backplane asynchronously (python-socketio only once its first client
    connects), so a first emit can legitimately precede a peer's subscription. Warm-up broadcasts
    are repeated until all have arrived; the tests then ignore them.
    """
    wait_for_warmups(clients, {pod.name: outsider(pod) for pod in pods}, everyone(pods), timeout=timeout)


def wait_for_warmups(clients, emitters: dict[str, str], listeners: list[str], timeout: float = 20.0) -> None:
    """Waits until a warm-up broadcast asked of each of `emitters` (label -> the client that makes
    its pod emit) has reached every one of `listeners`, re-sending the missing ones each round."""
    rounds = itertools.count()
    pending = set(emitters)

    def everyone_heard_every_pod():
        for label, trigger in emitters.items():
            if label in pending:
                clients.call(trigger, "emit_to_all", WARMUP, {"from": label, "round": next(rounds)})
        time.sleep(0.2)  # give this round's broadcasts a moment before re-sending (bounded by the deadline)
        for label in list(pending):
            if all(any(e[0] == WARMUP and e[1]["from"] == label for e in clients.events(name))
                   for name in listeners):
                pending.discard(label)
        return NotYet(f"not yet heard everywhere: broadcasts from {sorted(pending)}") if pending else True

    wait_until("warm-up broadcasts from every pod to reach every client", everyone_heard_every_pod,
               timeout=timeout, interval=0)


def wait_for_delivery(clients, names: list[str], event: str, payload, timeout: float = 15.0) -> None:
    def all_delivered():
        missing = [n for n in names if [event, payload] not in clients.events(n)]
        return NotYet(f"not yet at {missing}") if missing else True

    wait_until(f"{event} {payload} to reach {names}", all_delivered, timeout=timeout)


def wait_for_server_count(clients, pods, expected: int, timeout: float = 15.0) -> None:
    """The adapter's own view of the fleet (PUBSUB NUMSUB of its request channel) from every pod."""

    def counts_agree():
        counts = {pod.name: clients.call(outsider(pod), "server_count") for pod in pods}
        return True if set(counts.values()) == {expected} else NotYet(f"serverCount() per pod: {counts}")

    wait_until(f"every pod's serverCount() to be {expected}", counts_agree, timeout=timeout, interval=0.2)


def assert_cluster_queries_hear_every_server(clients, pods: list[Pod], sids: dict[str, str]) -> None:
    """Node only: fetchSockets() and serverSideEmit() with acks, asked from every pod.

    Both wait for as many answers as PUBSUB NUMSUB reports servers: a count too low gives partial
    results, one too high the adapter's "timeout reached" error after 5 s.
    """
    for asker in pods:
        # fetchSockets(): every server's sockets, each once, with its rooms.
        fetched = clients.call(outsider(asker), "fetch_sockets")
        assert "error" not in fetched, f"fetchSockets() on {asker.name} failed: {fetched}"
        by_id = {s["id"]: s for s in fetched["sockets"]}
        assert len(by_id) == len(fetched["sockets"]), f"duplicates in fetchSockets() on {asker.name}"
        assert sorted(by_id) == sorted(sids.values()), f"fetchSockets() on {asker.name}: {fetched}"
        for pod in pods:
            assert by_id[sids[member(pod)]]["pod"] == pod.name
            assert ROOM in by_id[sids[member(pod)]]["rooms"]
            assert ROOM not in by_id[sids[outsider(pod)]]["rooms"]

        # serverSideEmit() with an ack: one answer from every OTHER server, no timeout error.
        roll_call = clients.call(outsider(asker), "server_side_emit", {"asked_by": asker.name})
        assert roll_call["error"] is None, f"serverSideEmit() from {asker.name}: {roll_call}"
        answered = sorted(a["pod"] for a in roll_call["answers"])
        assert answered == sorted(p.name for p in pods if p is not asker), roll_call


def raw_polling_sessions(url: str, count: int, path: str = "/socket.io/") -> list[dict]:
    """`count` Engine.IO sessions opened by hand, with plain HTTP: each a polling handshake
    (`GET ?EIO=4&transport=polling`) and then a POST carrying the socket.io CONNECT packet (`40`)
    for the sid it gave, each request on a new connection. The pod that made the session answers
    the POST `ok` (python-engineio: `OK`) at once; any other pod knows no such sid and answers 400.

    Returns one dict per session: handshake status, sid, POST status and body."""
    sessions = []
    for _ in range(count):
        status, body = http_request(f"{url}{path}?EIO=4&transport=polling")
        sid = json.loads(body[1:])["sid"] if status == 200 and body.startswith("0{") else None
        entry = {"handshake": status, "sid": sid, "post": None, "post_body": None}
        if sid is not None:
            entry["post"], entry["post_body"] = http_request(
                f"{url}{path}?EIO=4&transport=polling&sid={sid}", method="POST", body=b"40",
                headers={"Content-Type": "text/plain;charset=UTF-8"})
        sessions.append(entry)
    return sessions


def assert_sessions_kept(url: str, count: int, owner: str) -> None:
    """`count` hand-made polling sessions through `url`: each POST answered by the `owner` (pod or
    worker) that opened its session."""
    sessions = raw_polling_sessions(url, count)
    assert all(s["handshake"] == 200 and s["post"] == 200 and s["post_body"].lower() == "ok" for s in sessions), (
        f"every hand-made polling session through the fronts should be answered by its own {owner}: {sessions}")


def assert_sessions_lost(url: str, count: int, stack: str) -> None:
    """The control: `count` hand-made polling sessions through `url` (round robin straight at the
    apps) all open, and some POST reaches an app that does not know its sid and gets its 400."""
    sessions = raw_polling_sessions(url, count)
    assert all(s["handshake"] == 200 for s in sessions), f"every handshake should succeed on whichever app: {sessions}"
    lost = [s for s in sessions if s["post"] == 400]
    assert lost, (f"straight at the apps, some polling request should land on an app that does not know its sid "
                  f"(400): {sessions}")
    assert all(UNKNOWN_SID_BODY[stack] in s["post_body"] for s in lost), (
        f"those 400s should be the app's unknown sid ({UNKNOWN_SID_BODY[stack]!r}): {lost}")


def assert_no_trouble(clients, names, nginx) -> None:
    """None of `names` ever had a connect error or a disconnect, and no request through `nginx` failed."""
    for name in names:
        assert clients.connect_errors(name) == [], f"{name} should never have had a connect error"
        assert clients.disconnects(name) == 0, f"{name} should never have been disconnected"
    errors = [entry for entry in nginx.access_log() if entry[0] >= 400]
    assert not errors, f"no request through nginx should have failed; these did: {errors}"
