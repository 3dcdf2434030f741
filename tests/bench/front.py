"""The HTTP front's cost: Engine.IO requests to a real python-socketio app straight, through the
pod's own front (the session is local), and through another pod's front (forwarded to the owner),
side by side in one run. Not part of CI.

    tests/bench/run.sh front

Three python-socketio pods, each behind a sidecar with its front on, one redis-server. Measured
with keep-alive connections, one request at a time (latency, not throughput):
- a polling handshake (the front records the new session in the backplane before answering);
- a polling POST of one socket.io event on an open session;
- one socket.io event with an acknowledgement over a WebSocket (WebSocket-first for the app and
  the local front, an upgraded polling session for the forwarded path).
Rounds alternate the paths so the machine's noise falls on all of them alike; p50 and p99 of
every sample, and each path's ratio to the app straight.

Knobs (environment): BENCH_REQUESTS (400 per path per round), BENCH_ROUNDS (3).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websocket

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "interop"))

from harness import Processes, RedisServer, start_fleet  # noqa: E402 - the interop harness

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "400"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
EIO = "/socket.io/?EIO=4&transport=polling"


class Http:
    """One keep-alive connection to 127.0.0.1:port."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "text/plain;charset=UTF-8"} if body else {}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return data


def handshake(conn: Http) -> str:
    opened = conn.call("GET", EIO)
    return json.loads(opened.decode()[1:].split("\x1e")[0])["sid"]


def open_session(owner: Http) -> str:
    """A session opened on `owner`, its default namespace connected."""
    sid = handshake(owner)
    owner.call("POST", f"{EIO}&sid={sid}", b"40")
    owner.call("GET", f"{EIO}&sid={sid}")  # the namespace's connect answer
    return sid


def timed(samples: list[float], fn) -> None:
    started = time.perf_counter()
    fn()
    samples.append((time.perf_counter() - started) * 1e6)


def bench_handshakes(port: int, samples: list[float]) -> None:
    conn = Http(port)
    for _ in range(REQUESTS):
        timed(samples, lambda: handshake(conn))


def bench_posts(owner_port: int, via_port: int, samples: list[float]) -> None:
    owner, via = Http(owner_port), Http(via_port)
    sid = open_session(owner)
    body = b'42["whoami"]'
    for _ in range(REQUESTS):
        timed(samples, lambda: via.call("POST", f"{EIO}&sid={sid}", body))


def ws_connect(port: int, sid: str | None) -> websocket.WebSocket:
    path = "/socket.io/?EIO=4&transport=websocket" + (f"&sid={sid}" if sid else "")
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=10)
    if sid is None:
        ws.recv()  # the open packet
        ws.send("40")
        ws.recv()  # the namespace's connect answer
    else:  # an upgrade of a polling session
        ws.send("2probe")
        if ws.recv() != "3probe":
            raise RuntimeError("the upgrade probe was not answered")
        ws.send("5")
    return ws


def bench_ws(port: int, sid: str | None, samples: list[float]) -> None:
    ws = ws_connect(port, sid)
    try:
        for i in range(REQUESTS):
            def round_trip():
                ws.send(f'42{i}["whoami"]')
                while True:
                    frame = ws.recv()
                    if frame == "2":  # the server's ping
                        ws.send("3")
                        continue
                    if frame.startswith(f"43{i}"):
                        return
            timed(samples, round_trip)
    finally:
        ws.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-front-") as tmp:
        procs = Processes(Path(tmp))
        try:
            redis = RedisServer(procs)
            redis.start()
            pods = start_fleet(procs, redis, "python", "sidecar", front=True)
            a, b = pods[0], pods[1]
            results: dict[str, dict[str, list[float]]] = {
                "polling handshake": {"app straight": [], "front, local": []},
                "polling POST, one event": {"app straight": [], "front, local": [],
                                            "front, forwarded": []},
                "WebSocket event + ack": {"app straight": [], "front, local": [],
                                          "front, forwarded": []},
            }
            for _ in range(ROUNDS):
                hs = results["polling handshake"]
                bench_handshakes(a.port, hs["app straight"])
                bench_handshakes(a.front_port, hs["front, local"])
                posts = results["polling POST, one event"]
                bench_posts(a.port, a.port, posts["app straight"])
                bench_posts(a.front_port, a.front_port, posts["front, local"])
                bench_posts(a.front_port, b.front_port, posts["front, forwarded"])
                ws = results["WebSocket event + ack"]
                bench_ws(a.port, None, ws["app straight"])
                bench_ws(a.front_port, None, ws["front, local"])
                bench_ws(b.front_port, open_session(Http(a.front_port)), ws["front, forwarded"])
        except Exception:
            print(procs.tails(30), file=sys.stderr)
            raise
        finally:
            procs.stop_all()

    print(f"HTTP front latency: 3 python-socketio pods, one request at a time, "
          f"{ROUNDS} rounds x {REQUESTS} per path")
    for what, paths in results.items():
        straight = statistics.median(paths["app straight"])
        print(f"  {what}")
        print(f"    {'':<18} {'p50 (us)':>10} {'p99 (us)':>10} {'p50 / straight':>15}")
        for path, samples in paths.items():
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            print(f"    {path:<18} {p50:>10.0f} {p99:>10.0f} {p50 / straight:>14.2f}x")


if __name__ == "__main__":
    main()
