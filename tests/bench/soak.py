"""Soak (not in CI): mixed pub/sub and pass-through load through two sidecars for a while, with a
Redis restart in the middle; prints each sidecar's RSS over time and counts every message.

    tests/bench/run.sh soak             # SOAK_SECONDS=600 by default

Two sidecars ("pods" a and b) on one redis-server (append-only file, so the keyspace survives
the restart). Publishers on both pods publish numbered messages to a few channels at a steady
rate; subscribers on both pods check every message arrives, in order per publisher. Pass-through
clients INCR counters and read them back. Halfway, redis-server is stopped for a few seconds and
started again on the same port.

Nothing may be lost: every publish the sidecar acknowledged reaches every subscriber (the outage
buffer holds them), and every INCR that returned a value is counted. Pass-through commands made
while Redis is down get an error, as they would talking to Redis directly, and are retried. RSS is
sampled every SOAK_SAMPLE_SECONDS and must end near where it settled after warm-up.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "interop"))

from harness import (  # noqa: E402 - the interop harness is the process plumbing
    REDIS_SERVER,
    Processes,
    free_port,
    port_accepts,
    start_sidecar,
    wait_until,
)

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
SAMPLE = int(os.environ.get("SOAK_SAMPLE_SECONDS", "15"))
RATE = int(os.environ.get("SOAK_PUBLISH_RATE", "500"))  # per publisher, messages/s
CHANNELS = ["soak:room-0", "soak:room-1", "soak:room-2"]
OUTAGE_SECONDS = 5


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Redis:
    def __init__(self, procs: Processes, workdir: Path):
        self.procs, self.dir, self.port = procs, workdir, free_port()
        self.generation = 0
        self.proc = None

    def start(self) -> None:
        self.generation += 1
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", self.port, "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir]
        self.proc = self.procs.start(f"redis-{self.generation}", argv)
        wait_until("redis-server to listen", lambda: port_accepts(self.port), watch=[self.proc])

    def stop(self) -> None:
        self.proc.stop()


class Publisher(threading.Thread):
    """Publishes `name-<n>` round-robin over the channels at RATE/s; counts acknowledged ones."""

    def __init__(self, name: str, url: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.name_, self.url, self.stop = name, url, stop
        self.acked = 0
        self.errors = 0

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, protocol=2)
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * RATE)
            while self.acked < due and not self.stop.is_set():
                channel = CHANNELS[self.acked % len(CHANNELS)]
                try:
                    client.publish(channel, f"{self.name_}-{self.acked}")
                    self.acked += 1
                except redis.RedisError:
                    self.errors += 1  # not acknowledged: sent again
                    time.sleep(0.01)
            time.sleep(0.002)


class Subscriber(threading.Thread):
    """Receives everything on every channel; per publisher, messages must arrive in order."""

    def __init__(self, name: str, url: str, done: threading.Event):
        super().__init__(daemon=True)
        self.name_, self.done = name, done
        self.pubsub = redis.Redis.from_url(url, protocol=2).pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*CHANNELS)
        self.next: dict[str, int] = {}
        self.gaps: list[str] = []
        self.duplicates = 0
        self.received = 0

    def run(self) -> None:
        while not self.done.is_set():
            try:
                message = self.pubsub.get_message(timeout=1.0)
            except redis.RedisError:
                if self.done.is_set():
                    return  # the sidecars are being stopped
                raise
            if message is None:
                continue
            who, n = message["data"].decode().rsplit("-", 1)
            n = int(n)
            expected = self.next.get(who, 0)
            if n < expected:
                self.duplicates += 1
                continue
            if n > expected:
                self.gaps.append(f"{who} {expected}..{n - 1}")
            self.next[who] = n + 1
            self.received += 1


class Counter(threading.Thread):
    """Pass-through: INCR a key, then GET it; every acknowledged INCR must be in the value."""

    def __init__(self, name: str, url: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.key, self.url, self.stop = f"soak:counter:{name}", url, stop
        self.acked = 0
        self.last = 0
        self.errors = 0
        self.mismatches = 0

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, protocol=2)
        while not self.stop.is_set():
            try:
                value = client.incr(self.key)
                self.acked += 1
                # An INCR whose reply was lost with the connection may have run (then the value
                # jumps by 2), but an acknowledged one is never undone: the value only grows.
                if value <= self.last or int(client.get(self.key)) < value:
                    self.mismatches += 1
                self.last = value
            except redis.RedisError:
                self.errors += 1
                time.sleep(0.05)
            time.sleep(0.001)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        procs = Processes(Path(tmp))
        try:
            return soak(procs, Path(tmp))
        except Exception:
            print(procs.tails(30), file=sys.stderr)
            raise
        finally:
            procs.stop_all()


def soak(procs: Processes, workdir: Path) -> int:
    server = Redis(procs, workdir)
    server.start()
    url = f"redis://127.0.0.1:{server.port}"
    pods = [start_sidecar(procs, pod, url) for pod in ("a", "b")]
    stop, done = threading.Event(), threading.Event()
    subscribers = [Subscriber(f"sub-{p.name}", p.url, done) for p in pods]
    for s in subscribers:
        s.start()
    time.sleep(1)  # subscribed everywhere before the first publish
    publishers = [Publisher(f"pub-{p.name}", p.url, stop) for p in pods]
    counters = [Counter(p.name, p.url, stop) for p in pods]
    for t in publishers + counters:
        t.start()

    print(f"soak: {SECONDS} s, {len(publishers)} publishers x {RATE}/s over {len(CHANNELS)} channels, "
          f"{len(subscribers)} subscribers, {len(counters)} INCR clients; redis restart at {SECONDS // 2} s")
    print(f"  {'t (s)':>6} {'RSS a (KiB)':>12} {'RSS b (KiB)':>12} {'published':>10} {'received':>10}")
    start = time.monotonic()
    restarted = False
    samples = []
    while (elapsed := time.monotonic() - start) < SECONDS:
        if not restarted and elapsed >= SECONDS / 2:
            print(f"  -- stopping redis-server for {OUTAGE_SECONDS} s --")
            server.stop()
            time.sleep(OUTAGE_SECONDS)
            server.start()
            restarted = True
            print("  -- redis-server is back --")
        rss = [rss_kib(p.proc.pid) for p in pods]
        samples.append((elapsed, rss))
        print(f"  {elapsed:>6.0f} {rss[0]:>12} {rss[1]:>12} {sum(p.acked for p in publishers):>10} "
              f"{sum(s.received for s in subscribers):>10}", flush=True)
        time.sleep(SAMPLE)
    stop.set()
    for t in publishers + counters:
        t.join(timeout=10)

    published = {p.name_: p.acked for p in publishers}
    wait_until("every subscriber to receive every acknowledged publish",
               lambda: all(all(s.next.get(who, 0) >= n for who, n in published.items()) for s in subscribers),
               timeout=60)
    failures = []
    for s in subscribers:
        print(f"  {s.name_}: received {s.received}, duplicates {s.duplicates}, gaps {s.gaps or 'none'}")
        if s.gaps:
            failures.append(f"{s.name_} missed {s.gaps}")
    for c in counters:
        print(f"  {c.key}: {c.acked} INCRs acknowledged, {c.errors} errors during the outage, "
              f"{c.mismatches} mismatches")
        if c.mismatches:
            failures.append(f"{c.key}: {c.mismatches} acknowledged INCRs missing")
    for p in publishers:
        print(f"  {p.name_}: {p.acked} publishes acknowledged, {p.errors} errors")
    settled = samples[min(2, len(samples) - 1)][1]
    final = samples[-1][1]
    for name, first, last in zip(("a", "b"), settled, final):
        growth = (last - first) / max(first, 1)
        print(f"  sidecar {name} RSS: {first} KiB after warm-up, {last} KiB at the end ({growth:+.0%})")
        if growth > 0.5:
            failures.append(f"sidecar {name} RSS grew {growth:+.0%}")
    done.set()
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("ok: nothing lost, RSS flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
