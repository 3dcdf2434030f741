"""Long-running socket.io clients for tests/e2e/node.sh: what happens to a conversation while
the cluster changes under it.

    python node_clients.py --url URL --resolve HOST:ADDRESS [--upgrade] --during 'kubectl ...'

Client A and client B connect through the ingress (each with its own cookie jar, long-polling
first, then WebSocket unless --polling-only) until they sit on different pods, join one room,
and A says numbered messages ("n=1", "n=2", ...) every --interval seconds. After --before
messages the --during command runs (delete the Redis primary, restart the Deployment); A keeps
sending for --after messages more once it has returned. Then every message A's server
acknowledged must reach B exactly once and in order.

--expect-no-disconnect: the clients must not be disconnected at all (Redis failover is below
them). Without it (a rollout restart replaces their pods) clients reconnect, messages sent while
A is away are not counted (A retries each until acknowledged), and delivery must resume: every
message acknowledged after both are back on their new pods arrives.
"""

from __future__ import annotations

import argparse
import queue
import subprocess
import sys
import threading
import time

import requests
import socketio

from chat_check import pin_host, say

ACK = 10.0


class Client:
    def __init__(self, name: str, url: str, transports: list[str], room: str):
        self.name, self.url, self.transports, self.room = name, url, transports, room
        self.received: queue.Queue = queue.Queue()
        self.disconnects = 0
        self.rejoined = threading.Event()
        self.http = requests.Session()
        self.sio = socketio.Client(http_session=self.http, reconnection=True,
                                   reconnection_delay=0.5, reconnection_delay_max=2)
        self.sio.on("message", lambda m: self.received.put(m.get("text")))
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("connect", self._on_connect)
        self.sio.connect(url, transports=transports, wait_timeout=ACK)
        self.pod = self.sio.call("whoami", timeout=ACK)["pod"]

    def _on_disconnect(self, *reason):
        self.disconnects += 1
        self.rejoined.clear()
        say(f"{self.name} disconnected ({reason})")

    def _on_connect(self):
        # A reconnected socket is a new session on (maybe) a new pod: join the room again.
        def rejoin():
            try:
                self.sio.call("join", self.room, timeout=ACK)
                self.pod = self.sio.call("whoami", timeout=ACK)["pod"]
                self.rejoined.set()
            except socketio.exceptions.SocketIOError:
                pass  # the next connect retries

        threading.Thread(target=rejoin, daemon=True).start()

    def close(self):
        closer = threading.Thread(target=self.sio.disconnect, daemon=True)
        closer.start()
        closer.join(timeout=3)


def back_on_current_pods(args, a: Client, b: Client) -> bool:
    """Both clients reconnected, back in the room, on pods that are not on their way out (a
    client still on a terminating pod would be cut off again, mid-count)."""
    if not all(c.sio.connected and c.rejoined.is_set() for c in (a, b)):
        return False
    if not args.current_pods:
        return True
    current = subprocess.run(args.current_pods, shell=True, capture_output=True, text=True).stdout
    return a.pod in current.split() and b.pod in current.split()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--resolve", metavar="HOST:ADDRESS")
    p.add_argument("--during", required=True, help="shell command run mid-conversation")
    p.add_argument("--before", type=int, default=20)
    p.add_argument("--after", type=int, default=60)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--expect-no-disconnect", action="store_true")
    p.add_argument("--attempts", type=int, default=20)
    p.add_argument("--current-pods", help="shell command printing the names of the pods that "
                   "serve now: counting resumes only once both clients are on one of them")
    args = p.parse_args()
    if args.resolve:
        host, _, address = args.resolve.rpartition(":")
        pin_host(host, address)
    room = f"journey-{int(time.time() * 1000) % 100000}"
    a = b = None
    try:
        a = Client("client A", args.url, ["polling", "websocket"], room)
        for _ in range(args.attempts):
            b = Client("client B", args.url, ["polling", "websocket"], room)
            if b.pod != a.pod:
                break
            b.close()
            b = None
        if b is None:
            raise AssertionError(f"client B always landed on A's pod {a.pod}")
        for c in (a, b):
            c.sio.call("join", room, timeout=ACK)
        say(f"client A on {a.pod}, client B on {b.pod}, room {room}")

        acked: list[str] = []  # messages A's server acknowledged, in order
        resumed_from = None  # index in acked from which delivery must be complete
        during = None
        n = 0
        while True:
            n += 1
            text = f"n={n}"
            if n == args.before + 1:
                say(f"running: {args.during}")
                during = subprocess.Popen(args.during, shell=True)
            if during is not None and during.poll() is not None and resumed_from is None:
                if during.returncode != 0:
                    raise AssertionError(f"{args.during!r} exited {during.returncode}")
                if args.expect_no_disconnect or back_on_current_pods(args, a, b):
                    resumed_from = len(acked)
                    say(f"after {args.during!r}: A on {a.pod}, B on {b.pod}; counting from {text}")
            if resumed_from is not None and len(acked) - resumed_from >= args.after:
                break
            if n > (args.before + args.after) * 20:
                raise AssertionError("the clients never came back after the command")
            try:
                a.sio.call("say", {"room": room, "text": text}, timeout=ACK)
                acked.append(text)
            except socketio.exceptions.SocketIOError as err:
                if args.expect_no_disconnect:
                    raise AssertionError(f"A's say {text} failed: {err}") from err
            time.sleep(args.interval)

        # Everything acknowledged must arrive; B gets the room's messages in order.
        deadline = time.monotonic() + 15
        got: list[str] = []
        expected = acked if args.expect_no_disconnect else acked[resumed_from:]
        want = set(expected)
        while want - set(got) and time.monotonic() < deadline:
            try:
                got.append(b.received.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                break
        missing = [t for t in expected if t not in set(got)]
        if missing:
            raise AssertionError(f"B missed {len(missing)} of {len(expected)} messages: {missing[:10]}")
        counted = [t for t in got if t in want]
        if len(counted) != len(set(counted)):
            raise AssertionError("B received some messages twice")
        if counted != expected:
            raise AssertionError("B received the messages out of order")
        if args.expect_no_disconnect and (a.disconnects or b.disconnects):
            raise AssertionError(f"disconnects: A {a.disconnects}, B {b.disconnects}")
        say(f"PASS: {len(expected)} numbered messages, none lost, none twice, in order; "
            f"disconnects A {a.disconnects} B {b.disconnects}")
        return 0
    except (AssertionError, socketio.exceptions.SocketIOError) as err:
        say(f"FAIL: {type(err).__name__}: {err}")
        return 1
    finally:
        for c in (a, b):
            if c is not None:
                c.close()


if __name__ == "__main__":
    sys.exit(main())
