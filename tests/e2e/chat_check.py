"""Proves a chat example works across pods: two socket.io clients on different pods, one message.

Client A connects (long-polling, then WebSocket) and asks which pod it is on. Client B connects
with long-polling only (every request is a new HTTP request, so it fails with "Invalid session"
unless the ingress pins it to one pod) until it lands on another pod, with a fresh cookie jar
per attempt, as separate browsers would have. Both join one room; A says something; B must
receive it, relayed from A's pod through the Redis adapter, the sidecars and the backplane.

Works with both examples (python-socketio and Node socket.io serve the same events).

    python chat_check.py --url http://chat.localhost:8080 --resolve chat.localhost:127.0.0.1
    python chat_check.py --url http://127.0.0.1:5001 --url-b http://127.0.0.1:5002
"""

from __future__ import annotations

import argparse
import queue
import socket
import sys
import threading
import time
import uuid

import requests
import socketio

TIMEOUT = 15.0


def say(msg: str) -> None:
    print(f"chat-check: {msg}", flush=True)


def pin_host(host: str, address: str) -> None:
    """Resolve `host` to `address` in this process (both requests and websocket-client use
    getaddrinfo), so a cluster's ingress host works without DNS or /etc/hosts."""
    real = socket.getaddrinfo

    def getaddrinfo(name, *args, **kwargs):
        return real(address if name == host else name, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


class Chatter:
    def __init__(self, name: str, url: str, transports: list[str]):
        self.name = name
        self.messages: queue.Queue = queue.Queue()
        self.http = requests.Session()  # this client's own cookie jar (the ingress's affinity cookie)
        self.client = socketio.Client(http_session=self.http, reconnection=False)
        self.client.on("message", self.messages.put)
        self.client.connect(url, transports=transports, wait_timeout=TIMEOUT)
        self.pod = self.call("whoami")["pod"]
        self.cookies = sorted(self.http.cookies.keys())
        say(f"{name} connected ({'+'.join(transports)}) to pod {self.pod}; cookies: {', '.join(self.cookies) or 'none'}")

    def call(self, event: str, *args):
        return self.client.call(event, *args, timeout=TIMEOUT)

    def expect(self, text: str, deadline: float) -> dict:
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if message.get("text") == text:
                return message
        raise AssertionError(f"{self.name} (pod {self.pod}) did not receive {text!r} in time")

    def close(self) -> None:
        # A long-polling client's disconnect waits for its pending GET, which python-engineio
        # servers hold until the next ping (25 s): do not wait that long to report.
        closer = threading.Thread(target=self.client.disconnect, daemon=True)
        closer.start()
        closer.join(timeout=3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="where client A connects (and B, without --url-b)")
    parser.add_argument("--url-b", help="where client B connects (default: --url)")
    parser.add_argument("--resolve", metavar="HOST:ADDRESS", help="resolve HOST to ADDRESS in this process")
    parser.add_argument("--attempts", type=int, default=20, help="connections B may try to reach another pod")
    parser.add_argument("--expect-no-cookie", action="store_true",
                        help="fail if the ingress sets any cookie (affinity off: the sidecars route sessions)")
    args = parser.parse_args()
    if args.resolve:
        host, _, address = args.resolve.rpartition(":")
        pin_host(host, address)

    a = b = None
    try:
        a = Chatter("client A", args.url, ["polling", "websocket"])
        for attempt in range(1, args.attempts + 1):
            b = Chatter("client B", args.url_b or args.url, ["polling"])
            if b.pod != a.pod:
                break
            say(f"client B landed on A's pod too (attempt {attempt}/{args.attempts}); trying a new cookie jar")
            b.close()
            b = None
        if b is None:
            raise AssertionError(f"every connection landed on pod {a.pod}: are there several ready replicas?")
        if args.expect_no_cookie and (a.cookies or b.cookies):
            raise AssertionError(f"the ingress set cookies {a.cookies + b.cookies} though no affinity was asked for")

        room = f"e2e-{uuid.uuid4().hex[:8]}"
        for chatter in (a, b):
            chatter.call("join", room)
        text = f"hello from {a.pod} ({uuid.uuid4().hex[:8]})"
        reply = a.call("say", {"room": room, "text": text})
        say(f"client A said {text!r} in room {room} (ack from pod {reply['pod']})")
        deadline = time.monotonic() + TIMEOUT
        got = b.expect(text, deadline)
        say(f"client B on pod {b.pod} received it from pod {got['pod']}")
        a.expect(text, deadline)  # the sender's own pod delivers it too
        if got["pod"] != a.pod:
            raise AssertionError(f"the message names pod {got['pod']}, expected A's pod {a.pod}")
        # B has been long-polling on one session all along: any request that reached another
        # pod's app would have ended it (with cookies the ingress pins it; without, the
        # sidecars' fronts route it).
        if b.client.transport() != "polling" or not b.client.connected:
            raise AssertionError("client B lost its long-polling session")
        say("PASS: a message crossed pods, and long-polling stayed on one pod")
        return 0
    except (AssertionError, socketio.exceptions.SocketIOError) as e:
        # A session routed to the wrong pod shows up here: its calls time out or it disconnects.
        say(f"FAIL: {type(e).__name__}: {e}")
        return 1
    finally:
        for chatter in (a, b):
            if chatter is not None:
                chatter.close()


if __name__ == "__main__":
    sys.exit(main())
