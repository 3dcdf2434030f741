"""Socket.IO clients as the tests see them: one interface, two real implementations.

`PyClients` drives python-socketio clients in this process; `NodeClients` drives socket.io-client
sockets inside a small Node process (apps/node_clients.js) over JSON lines on its stdin/stdout.
Each named client records every event it receives (in order), how often it was disconnected and
every connect error it reported.
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
        self._connect_errors: dict[str, list] = {}
        self._lock = threading.Lock()

    def connect(self, name: str, url: str, transports: list[str] | tuple = ("websocket",)) -> str:
        """A client named `name` connected to `url` over `transports` (["polling"]: long-polling
        only; ["polling", "websocket"]: the library's default, a polling handshake then an upgrade)."""
        return self._connect(name, url, transports, reconnection=True)

    def try_connect(self, name: str, url: str, transports: list[str] | tuple = ("websocket",),
                    timeout: float = 5.0) -> str | None:
        """One connection attempt, without reconnecting: the sid, or None if it failed (the reason
        is in `connect_errors`)."""
        try:
            return self._connect(name, url, transports, reconnection=False, timeout=timeout)
        except socketio.exceptions.ConnectionError as exc:
            with self._lock:
                self._connect_errors[name].append(f"connect() raised: {exc}")
            return None

    def _connect(self, name: str, url: str, transports, reconnection: bool, timeout: float = ACK_TIMEOUT) -> str:
        client = socketio.Client(reconnection=reconnection)
        events, disconnects, connect_errors = [], [], []

        def on_any(event, *args):
            with self._lock:
                events.append([event, *args])

        def on_disconnect(*reason):
            with self._lock:
                disconnects.append(reason)

        def on_connect_error(*data):
            with self._lock:
                connect_errors.append(repr(data))

        client.on("*", on_any)
        client.on("disconnect", on_disconnect)
        client.on("connect_error", on_connect_error)
        self._events[name], self._disconnects[name], self._connect_errors[name] = events, disconnects, connect_errors
        client.connect(url, transports=list(transports), wait_timeout=timeout)
        self._clients[name] = client
        return client.sid

    def call(self, name: str, event: str, *args, timeout: float = ACK_TIMEOUT):
        return self._clients[name].call(event, tuple(args), timeout=timeout)

    def events(self, name: str) -> list:
        with self._lock:
            return list(self._events[name])

    def disconnects(self, name: str) -> int:
        with self._lock:
            return len(self._disconnects[name])

    def connect_errors(self, name: str) -> list[str]:
        """Every connect_error the client reported (and a failed try_connect), as text."""
        with self._lock:
            return list(self._connect_errors[name])

    def transport(self, name: str) -> str:
        """The Engine.IO transport the client uses now: "polling" or "websocket"."""
        return self._clients[name].transport()

    def close(self) -> None:
        for client in self._clients.values():
            if client.transport() == "polling":
                # python-engineio's server leaves a pending long-poll unanswered when the session
                # closes, so disconnect() would wait out the poll's 30 s timeout: not waited for
                # (the poll ends when teardown stops the servers).
                threading.Thread(target=client.disconnect, daemon=True).start()
            else:
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

    def connect(self, name: str, url: str, transports: list[str] | tuple = ("websocket",)) -> str:
        """As PyClients.connect: `transports` is socket.io-client's option of that name."""
        return self._request("connect", name=name, url=url, transports=list(transports))

    def try_connect(self, name: str, url: str, transports: list[str] | tuple = ("websocket",),
                    timeout: float = 5.0) -> str | None:
        """One connection attempt, without reconnecting: the sid, or None once it failed."""
        return self._request("try_connect", name=name, url=url, transports=list(transports),
                             ms=int(timeout * 1000), timeout=timeout + 5)

    def call(self, name: str, event: str, *args, timeout: float = ACK_TIMEOUT):
        return self._request("call", name=name, event=event, args=list(args), ms=int(timeout * 1000),
                             timeout=timeout + 5)

    def events(self, name: str) -> list:
        return self._request("events", name=name)

    def disconnects(self, name: str) -> int:
        return self._request("disconnects", name=name)

    def connect_errors(self, name: str) -> list[str]:
        """Every connect_error the socket reported (and every failed WebSocket upgrade probe)."""
        return self._request("connect_errors", name=name)

    def transport(self, name: str) -> str:
        """The Engine.IO transport the socket uses now: "polling" or "websocket"."""
        return self._request("transport", name=name)

    def close(self) -> None:
        if self._proc.alive():
            try:
                self._request("close", timeout=5)
            except (AssertionError, OSError):
                pass  # teardown stops the process anyway


PY_CLIENT_STACKS = ("python", "flask")  # Flask-SocketIO's own clients are python-socketio's


def open_clients(stack: str, procs: Processes):
    """The clients a `stack`'s apps are tested with: python-socketio for the python and flask
    stacks, socket.io-client for node."""
    if stack in PY_CLIENT_STACKS:
        return PyClients()
    if stack == "node":
        return NodeClients(procs)
    raise ValueError(stack)
