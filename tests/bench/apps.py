"""Application-level benchmark: real socket.io servers broadcasting to real socket.io clients in
rooms, through sidecars versus straight to Redis, side by side in one run. Not part of CI.

    tests/bench/run.sh apps        # installs the interop venv and node_modules, then runs this

For each stack (3 Node socket.io servers with @socket.io/redis-adapter over ioredis; 3
python-socketio servers with AsyncRedisManager) and each path (`direct`: every server's adapter
talks to one redis-server; `sidecar`: each server talks to its own sidecar, the sidecars to that
redis-server), it starts the fleet and runs tests/bench/app_load.js: many socket.io-client sockets
spread over the servers and rooms, one emitter per server asking it to broadcast to a room, first
at a fixed rate, then as fast as the servers acknowledge. It prints messages delivered per second
and end-to-end p50/p99 (emit request to delivery), and the sidecar/direct ratios.

Knobs (environment): BENCH_CLIENTS_PER_SERVER (100), BENCH_ROOMS (10), BENCH_RATE (200 broadcasts/s),
BENCH_SECONDS (10), BENCH_WINDOW (32 broadcasts in flight at the maximum), BENCH_STACKS (node,python),
BENCH_ROUNDS (2: direct and sidecar alternate, the median round is shown).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "interop"))

from harness import (  # noqa: E402 - the interop harness is the process plumbing
    SIDECAR_BIN,
    Processes,
    RedisServer,
    start_fleet,
)

CLIENTS = int(os.environ.get("BENCH_CLIENTS_PER_SERVER", "100"))
ROOMS = int(os.environ.get("BENCH_ROOMS", "10"))
RATE = int(os.environ.get("BENCH_RATE", "200"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
WINDOW = int(os.environ.get("BENCH_WINDOW", "32"))
STACKS = os.environ.get("BENCH_STACKS", "node,python").split(",")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
NODE_PATH = str(HERE.parent / "node_modules")


def load(urls: list[str], mode: str) -> dict:
    argv = ["node", HERE / "app_load.js", "--urls", ",".join(urls), "--clients-per-server", CLIENTS,
            "--rooms", ROOMS, "--mode", mode, "--rate", RATE, "--seconds", SECONDS, "--window", WINDOW]
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=SECONDS + 180,
                         env={**os.environ, "NODE_PATH": NODE_PATH}, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"app_load.js failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_side(stack: str, path: str) -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix=f"bench-{stack}-{path}-") as tmp:
        procs = Processes(Path(tmp))
        try:
            redis = RedisServer(procs)
            redis.start()
            pods = start_fleet(procs, redis, stack, path)
            urls = [p.url for p in pods]
            watched = [redis.proc.pid] + [p.sidecar.proc.pid for p in pods if p.sidecar]
            results = {}
            for mode in ("rate", "max"):
                before = [cpu_seconds(pid) for pid in watched]
                result = load(urls, mode)
                after = [cpu_seconds(pid) for pid in watched]
                result["redis_cpu_s"] = after[0] - before[0]
                result["sidecars_cpu_s"] = sum(after[1:]) - sum(before[1:])
                results[mode] = result
            return results
        except Exception:
            print(procs.tails(20), file=sys.stderr)
            raise
        finally:
            procs.stop_all()


def median_by(rounds: list[dict], key: str) -> dict:
    ordered = sorted(rounds, key=lambda r: r[key])
    return ordered[len(ordered) // 2]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def report(stack: str, mode: str, direct: dict, sidecar: dict) -> None:
    title = f"{RATE} broadcasts/s" if mode == "rate" else f"maximum ({WINDOW} in flight)"
    print(f"  {stack}, {title}")
    print(f"    {'':<26} {'direct':>12} {'sidecar':>12} {'sidecar/direct':>15}")
    rows = [
        ("delivered/s", direct["delivered_per_s"], sidecar["delivered_per_s"], "{:.0f}"),
        ("p50 end to end (us)", direct["p50_us"], sidecar["p50_us"], "{:.0f}"),
        ("p99 end to end (us)", direct["p99_us"], sidecar["p99_us"], "{:.0f}"),
    ]
    for label, d, s, fmt in rows:
        print(f"    {label:<26} {fmt.format(d):>12} {fmt.format(s):>12} {ratio(s, d):>15}")
    print(f"    {'delivered / expected':<26} {direct['delivered']}/{direct['expected']:<5} "
          f"{sidecar['delivered']}/{sidecar['expected']}")
    print(f"    {'redis-server CPU (s)':<26} {direct['redis_cpu_s']:>12.2f} {sidecar['redis_cpu_s']:>12.2f}")
    print(f"    {'sidecars CPU, 3 pods (s)':<26} {'-':>12} {sidecar['sidecars_cpu_s']:>12.2f}")


def main() -> None:
    load_avg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print("switchboard application-level benchmark (tests/bench/apps.py)")
    print(f"  machine: {os.cpu_count()} cores, load average {load_avg} at start")
    print(f"  sidecar binary: {SIDECAR_BIN}")
    print(f"  3 servers per stack, {CLIENTS} socket.io clients each, {ROOMS} rooms, "
          f"{SECONDS} s per measurement, median of {ROUNDS} alternating rounds")
    print()
    for stack in STACKS:
        rounds: dict[str, list[dict]] = {"direct": [], "sidecar": []}
        for _ in range(ROUNDS):
            for path in ("direct", "sidecar"):
                rounds[path].append(run_side(stack, path))
        for mode in ("rate", "max"):
            direct = median_by([r[mode] for r in rounds["direct"]], "delivered_per_s")
            sidecar = median_by([r[mode] for r in rounds["sidecar"]], "delivered_per_s")
            report(stack, mode, direct, sidecar)
        print()
    load_avg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"  load average {load_avg} at the end")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"  ({time.monotonic() - started:.0f} s)")
