"""Socket.IO clients as the tests see them: one interface, two real implementations.

`PyClients` drives python-socketio clients in this process; `NodeClients` drives socket.io-client
sockets inside a small Node process (apps/node_clients.js) over JSON lines on its stdin/stdout.
Each named client records every event it receives (in order) and how often it was disconnected.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading

import socketio

from harness import APPS, Processes

ACK_TIMEOUT = 10.0


class PyClients:
    def __init__(self):
        self._clients: dict[str, socketio.Client] = {}
        self._events: dict[str, list] = {}
        self._disconnects: dict[str, list] = {}
        self._lock = threading.Lock()

    def connect(self, name: str, url: str) -> str:
        client = socketio.Client(reconnection=True)
        events, disconnects = [], []

        def on_any(event, *args):
            with self._lock:
                events.append([event, *args])

        def on_disconnect(*reason):
            with self._lock:
                disconnects.append(reason)

        client.on("*", on_any)
        client.on("disconnect", on_disconnect)
        client.connect(url, transports=["websocket"], wait_timeout=ACK_TIMEOUT)
        self._clients[name], self._events[name], self._disconnects[name] = client, events, disconnects
        return client.sid

    def call(self, name: str, event: str, *args, timeout: float = ACK_TIMEOUT):
        return self._clients[name].call(event, tuple(args), timeout=timeout)

    def events(self, name: str) -> list:
        with self._lock:
            return list(self._events[name])

    def disconnects(self, name: str) -> int:
        with self._lock:
            return len(self._disconnects[name])

    def close(self) -> None:
        for client in self._clients.values():
            client.disconnect()


class NodeClients:
    def __init__(self, procs: Processes):
        self._proc = procs.start("node-clients", ["node", APPS / "node_clients.js"], pipe_stdio=True)
        self._ids = itertools.count(1)
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_replies, daemon=True).start()

    def _read_replies(self) -> None:
        for line in self._proc.popen.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)  # the driver exited

    def _request(self, op: str, timeout: float = ACK_TIMEOUT + 5, **fields):
        request_id = next(self._ids)
        self._proc.popen.stdin.write((json.dumps({"id": request_id, "op": op, **fields}) + "\n").encode())
        self._proc.popen.stdin.flush()
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"node client driver did not answer {op} {fields} within {timeout}s") from None
        if reply is None:
            raise AssertionError(f"node client driver exited while answering {op} {fields}")
        assert reply["id"] == request_id, f"driver answered request {reply['id']}, expected {request_id}"
        if not reply["ok"]:
            raise RuntimeError(f"{op} {fields} failed in the node client: {reply['error']}")
        return reply["result"]

    def connect(self, name: str, url: str) -> str:
        return self._request("connect", name=name, url=url)

    def call(self, name: str, event: str, *args, timeout: float = ACK_TIMEOUT):
        return self._request("call", name=name, event=event, args=list(args), ms=int(timeout * 1000),
                             timeout=timeout + 5)

    def events(self, name: str) -> list:
        return self._request("events", name=name)

    def disconnects(self, name: str) -> int:
        return self._request("disconnects", name=name)

    def close(self) -> None:
        if self._proc.alive():
            try:
                self._request("close", timeout=5)
            except (AssertionError, OSError):
                pass  # teardown stops the process anyway


def open_clients(stack: str, procs: Processes):
    return PyClients() if stack == "python" else NodeClients(procs)
