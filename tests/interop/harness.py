"""Process plumbing for the interop suite: real redis-server, real sidecars, real app servers.

Every process is started through a `Processes` table, which owns its log file and tears it down;
conftest.py attaches the last lines of every log to a failing test's report.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
APPS = HERE / "apps"
VENV_PYTHON = HERE.parent / ".venv" / "bin" / "python"

SIDECAR_BIN = Path(
    os.environ.get("SWITCHBOARD_SIDECAR_BIN", REPO_ROOT / "target" / "debug" / "switchboard-sidecar")
)
REDIS_SERVER = os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server")

# Short timings so reconnects, heartbeats and the post-outage flush happen within a test's patience.
SIDECAR_PEER_TTL_SECONDS = 3.0
SIDECAR_TIMING_FLAGS = [
    "--reconnect-min-ms", "50",
    "--reconnect-max-ms", "500",
    "--heartbeat-ms", "500",
    "--peer-ttl-ms", str(int(SIDECAR_PEER_TTL_SECONDS * 1000)),
    "--flush-grace-ms", "3000",
]
# Session records in the backplane expire this long after their owner last renewed them.
SIDECAR_SESSION_TTL_SECONDS = 5.0
SIDECAR_FRONT_FLAGS = ["--session-ttl-ms", str(int(SIDECAR_SESSION_TTL_SECONDS * 1000))]
NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")

T = TypeVar("T")


_PORT_LOW, _PORT_SPAN = 15_000, 17_000  # up to 31999, below Linux's ephemeral ports (32768-)
_next_port = itertools.count(os.getpid() * 977 % _PORT_SPAN)


def free_port() -> int:
    """A port nobody listens on right now, and one this process never handed out before: taken in
    turn from 15000-31999. Not the kernel's pick for port 0, which can hand out the same port
    twice before either is bound (a cluster node's bus port once took another node's client
    port) and lies in the range outgoing connections take their local ports from."""
    for _ in range(_PORT_SPAN):
        port = _PORT_LOW + next(_next_port) % _PORT_SPAN
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free loopback port in {_PORT_LOW}..{_PORT_LOW + _PORT_SPAN - 1}")


def wait_until(what: str, probe: Callable[[], T], timeout: float = 15.0, interval: float = 0.05,
               watch: list["ManagedProcess"] | tuple = ()) -> T:
    """Polls `probe` until it returns something truthy and returns that; fails after `timeout`.

    Exceptions from the probe count as "not yet" (a port that refuses connections, say) and the
    last one is quoted in the failure. A watched process that exits fails the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        for proc in watch:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}")
        try:
            result = probe()
            if result:
                return result
            last = result
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means "not yet"
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last probe gave {last!r}")
        time.sleep(interval)


class NotYet:
    """A falsy probe result that says what is still missing (quoted if the wait times out)."""

    def __init__(self, why: str):
        self.why = why

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.why


def port_accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def http_request(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
                 timeout: float = 5.0) -> tuple[int, str]:
    """One plain HTTP request (a new connection each time); returns (status, body) whatever the status."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus (or OpenMetrics) text exposition: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise AssertionError(f"not a Prometheus sample line: {line!r}")
        name, labels, value = match.groups()
        samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


class ManagedProcess:
    """One child process whose stdout and stderr go to a log file (stdout may be a pipe instead)."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, pipe_stdio: bool = False,
                 env: dict[str, str] | None = None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if pipe_stdio else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdio else self._log,
            stderr=self._log,
            env={**os.environ, **(env or {})},
            cwd=HERE,
            start_new_session=True,  # a signal to the test runner's group must not hit these first
        )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _kill_group(self) -> None:
        """SIGKILL to the process and everything it started (its own session and process group,
        see start_new_session): gunicorn's worker, for one, would outlive its arbiter. Only while
        the process lives, so its pid is still the group's and nobody else's."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no chance to say goodbye to anyone. The whole
        process group goes, as a container's processes all do."""
        self._kill_group()
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()  # to the process alone, as the kubelet signals a container's PID 1
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.popen.wait(timeout=5)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream:
                stream.close()
        self._log.close()


class Processes:
    """Every process a test started, so teardown and failure reports can reach all of them."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[ManagedProcess] = []

    def start(self, name: str, argv: list, **kwargs) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.log_dir, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()

    def tails(self, lines: int = 40) -> str:
        parts = []
        for proc in self.started:
            state = "running" if proc.alive() else f"exited {proc.popen.returncode}"
            parts.append(f"----- {proc.name} (pid {proc.pid}, {state}) {proc.log_path} -----\n{proc.tail(lines)}")
        return "\n".join(parts)


class RedisServer:
    """The shared backplane: one Debian redis-server with no persistence, restartable on its port."""

    def __init__(self, procs: Processes):
        self.procs = procs
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.generation = 0
        self.proc: ManagedProcess | None = None

    def start(self) -> None:
        self.generation += 1
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", self.port, "--save", "",
                "--appendonly", "no", "--dir", self.procs.log_dir, "--loglevel", "notice"]
        self.proc = self.procs.start(f"redis-{self.generation}", argv)
        wait_until(f"redis-server to listen on {self.port}", lambda: port_accepts(self.port), watch=[self.proc])

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        assert not port_accepts(self.port), "something still listens on the dead redis-server's port"


class RedisCluster:
    """A real Redis Cluster on loopback: `primaries` redis-servers in cluster mode, each with
    `replicas` replicas, joined by `redis-cli --cluster create`. Its `url` names every node as a
    seed (`redis+cluster://`), as a sidecar is configured for ElastiCache and the like.

    With `tls`, every node speaks TLS only (clients, the cluster bus and replication, as
    in-transit encryption on a cloud cluster), with a certificate from a CA made here by
    `openssl`; the url is `rediss+cluster://localhost:…` and `sidecar_args` trusts the CA."""

    def __init__(self, procs: Processes, primaries: int = 3, replicas: int = 1, tls: bool = False):
        self.procs = procs
        self.ports = [free_port() for _ in range(primaries * (1 + replicas))]
        self.replicas = replicas
        self.nodes: dict[int, ManagedProcess] = {}
        self.tls = tls
        scheme, host = ("rediss+cluster", "localhost") if tls else ("redis+cluster", "127.0.0.1")
        self.url = f"{scheme}://" + ",".join(f"{host}:{p}" for p in self.ports)
        self.certs = procs.log_dir / "cluster-certs"
        self.sidecar_args = ["--upstream-tls-ca-file", self.certs / "ca.crt"] if tls else []

    def _make_certificates(self) -> None:
        self.certs.mkdir(exist_ok=True)
        c = self.certs
        (c / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        for argv in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", c / "ca.key", "-out", c / "ca.crt",
             "-days", "2", "-subj", "/CN=switchboard-test-ca"],
            ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", c / "node.key", "-out", c / "node.csr",
             "-subj", "/CN=localhost"],
            ["x509", "-req", "-in", c / "node.csr", "-CA", c / "ca.crt", "-CAkey", c / "ca.key",
             "-CAcreateserial", "-out", c / "node.crt", "-days", "2", "-extfile", c / "ext"],
        ):
            done = subprocess.run(["openssl", *map(str, argv)], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"openssl {argv[0]} failed: {done.stderr}"

    def _listen_args(self, port: int) -> list:
        if not self.tls:
            return ["--port", port]
        c = self.certs
        return ["--port", "0", "--tls-port", port, "--tls-cert-file", c / "node.crt", "--tls-key-file", c / "node.key",
                "--tls-ca-cert-file", c / "ca.crt", "--tls-auth-clients", "no", "--tls-cluster", "yes",
                "--tls-replication", "yes"]

    def _cli_tls(self) -> list[str]:
        return ["--tls", "--cacert", str(self.certs / "ca.crt")] if self.tls else []

    def start(self) -> None:
        if self.tls:
            self._make_certificates()
        for port in self.ports:
            node_dir = self.procs.log_dir / f"cluster-{port}"
            node_dir.mkdir(exist_ok=True)
            argv = [REDIS_SERVER, "--bind", "127.0.0.1", *self._listen_args(port), "--save", "", "--appendonly", "no",
                    "--cluster-enabled", "yes", "--cluster-config-file", node_dir / "nodes.conf",
                    # The bus port is the port + 10000 unless told: not known to be free.
                    "--cluster-port", free_port(), "--cluster-node-timeout", "1000",
                    # Replicas join CLUSTER SLOTS and can take over only once replication pinged
                    # them (every 10 s by default).
                    "--repl-ping-replica-period", "1", "--repl-diskless-sync-delay", "0",
                    "--dir", node_dir, "--loglevel", "notice"]
            self.nodes[port] = self.procs.start(f"cluster-node-{port}", argv)
        for port, proc in self.nodes.items():
            wait_until(f"cluster node to listen on {port}", lambda: port_accepts(port), watch=[proc])
        create = subprocess.run(
            ["redis-cli", *self._cli_tls(), "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        assert create.returncode == 0, f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}"
        self.wait_healthy()

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(["redis-cli", *self._cli_tls(), "-p", str(port), *args], capture_output=True, text=True,
                              timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def live_ports(self) -> list[int]:
        return [port for port, proc in self.nodes.items() if proc.alive()]

    def info(self, port: int) -> dict[str, str]:
        """`CLUSTER INFO` of one node, as a dict."""
        lines = self.cli(port, "cluster", "info").splitlines()
        return dict(line.strip().split(":", 1) for line in lines if ":" in line)

    def wait_healthy(self, timeout: float = 30.0, replicas: bool = True) -> None:
        """Every live node says `cluster_state:ok` and sees every slot served, and (`replicas`)
        every primary has its replicas online, so a killed one can be replaced."""
        def healthy():
            for port in self.live_ports():
                info = self.info(port)
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                    return NotYet(f"127.0.0.1:{port}: {info.get('cluster_state')}, {info.get('cluster_slots_ok')} slots ok")
                if not replicas:
                    continue
                replication = self.cli(port, "info", "replication")
                if "role:master" in replication and replication.count("state=online") < self.replicas:
                    return NotYet(f"127.0.0.1:{port}: replicas not online yet")
            return True
        wait_until("every cluster node to report cluster_state:ok", healthy, timeout=timeout)

    def primary_of(self, name: str) -> int:
        """The port of the primary serving the slot of `name`, as a live node sees it."""
        asker = self.live_ports()[0]
        slot = int(self.cli(asker, "cluster", "keyslot", name).strip())
        for line in self.cli(asker, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for served in fields[8:]:
                lo, _, hi = served.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(fields[1].split(":")[1].split("@")[0])
        raise AssertionError(f"no primary serves slot {slot} of {name!r}")

    def node_id(self, port: int) -> str:
        return self.cli(port, "cluster", "myid").strip()

    def move_slot_of(self, name: str) -> tuple[int, int]:
        """Migrates the slot of `name` (with its keys) to another primary, as `redis-cli --cluster
        reshard` does, one slot: IMPORTING / MIGRATING, MIGRATE the keys, SETSLOT NODE on every
        primary. Returns (source port, target port)."""
        source = self.primary_of(name)
        asker = self.live_ports()[0]
        slot = self.cli(asker, "cluster", "keyslot", name).strip()
        primaries = sorted({self.primary_of(str(n)) for n in range(64)})
        target = next(p for p in primaries if p != source)
        src_id, dst_id = self.node_id(source), self.node_id(target)
        self.cli(target, "cluster", "setslot", slot, "importing", src_id)
        self.cli(source, "cluster", "setslot", slot, "migrating", dst_id)
        while keys := self.cli(source, "cluster", "getkeysinslot", slot, "100").split():
            for key in keys:
                out = self.cli(source, "migrate", "127.0.0.1", str(target), key, "0", "5000")
                assert "OK" in out or "NOKEY" in out, f"MIGRATE {key}: {out}"
        for port in [target, source, *[p for p in primaries if p not in (source, target)]]:
            self.cli(port, "cluster", "setslot", slot, "node", dst_id)

        def agreed():
            owners = {p: self.primary_of_as_seen_by(p, name) for p in self.live_ports()}
            return True if set(owners.values()) == {target} else NotYet(f"owners seen: {owners}")
        wait_until(f"every node to see slot {slot} on 127.0.0.1:{target}", agreed)
        return source, target

    def primary_of_as_seen_by(self, asker: int, name: str) -> int:
        slot = int(self.cli(asker, "cluster", "keyslot", name).strip())
        for line in self.cli(asker, "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for served in fields[8:]:
                lo, _, hi = served.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return int(fields[1].split(":")[1].split("@")[0])
        return -1

    def kill_primary_of(self, name: str) -> int:
        """SIGKILLs the primary serving `name`'s slot; returns its port (a replica takes over)."""
        port = self.primary_of(name)
        self.nodes[port].kill()
        return port

    def wait_for_failover(self, name: str, dead: int, timeout: float = 30.0) -> int:
        """Waits until another node serves `name`'s slot and the cluster is healthy again."""
        def promoted():
            try:
                port = self.primary_of(name)
            except (RuntimeError, AssertionError) as exc:
                return NotYet(str(exc))
            return port if port != dead else NotYet(f"127.0.0.1:{dead} still serves it")
        port = wait_until(f"a replica to take over from 127.0.0.1:{dead}", promoted, timeout=timeout)
        self.wait_healthy(timeout, replicas=False)
        return port


@dataclass
class Sidecar:
    name: str
    proc: ManagedProcess
    resp_port: int
    http_port: int
    front_port: int | None = None  # the HTTP front (--front-listen), when it has one
    peer_port: int | None = None  # the front's peer port (--front-peer-listen), when it has one

    @property
    def peer_url(self) -> str:
        assert self.peer_port is not None, f"{self.name}'s front has no peer port"
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.resp_port}"

    def readyz(self) -> int:
        return http_status(f"http://127.0.0.1:{self.http_port}/readyz")

    def healthz(self) -> int:
        return http_status(f"http://127.0.0.1:{self.http_port}/healthz")

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample on the sidecar's Prometheus endpoint, as (name, labels, value)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp:
            return parse_prometheus(resp.read().decode())

    def metric(self, name: str, labels: dict[str, str] | None = None, default: float | None = None) -> float:
        """The value of sample `name` whose labels include `labels` (summed if several do).

        None matching (a labelled counter is absent until first counted): `default`, or, without
        one, a failure that lists the samples of that name the sidecar does serve.
        """
        want = labels or {}
        samples = self.metrics()
        matching = [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in want.items())]
        if matching:
            return sum(matching)
        if default is not None:
            return default
        seen = [(n, l) for n, l, _ in samples if n == name] or sorted({n for n, _, _ in samples})
        raise AssertionError(f"{self.name}'s sidecar serves no sample {name}{want or ''}; it serves {seen}")


def sidecar_supports(flag: str) -> bool:
    """Whether SIDECAR_BIN's --help lists `flag` (so a missing feature fails with a clear message)."""
    done = subprocess.run([str(SIDECAR_BIN), "--help"], capture_output=True, text=True, timeout=30)
    return flag in done.stdout


def start_sidecar(procs: Processes, pod: str, upstream_url: str, extra_args: list | tuple = (),
                  front_app_port: int | list[int] | None = None, front_secret_file: Path | None = None,
                  wait_ready: bool = True, peer_port: bool = True) -> Sidecar:
    """A sidecar for `pod`; waits for /readyz (or, without `wait_ready`, for /healthz only).

    With `front_app_port` it also runs the HTTP front, on a free port, in front of an app on that
    port (a list: an app of several workers, one port each), sharing the fleet's `front_secret_file`; with `peer_port` (as the operator deploys it)
    the front takes other fronts' forwarded requests on a second port of its own."""
    if not SIDECAR_BIN.is_file():
        raise AssertionError(
            f"sidecar binary {SIDECAR_BIN} is missing: run `cargo build -p switchboard-sidecar` "
            "or set SWITCHBOARD_SIDECAR_BIN"
        )
    resp_port, http_port = free_port(), free_port()
    argv = [SIDECAR_BIN, "--listen", f"127.0.0.1:{resp_port}", "--http-listen", f"127.0.0.1:{http_port}",
            "--upstream", upstream_url, "--sidecar-id", pod, *SIDECAR_TIMING_FLAGS]
    front_port = peer = None
    if front_app_port is not None:
        assert front_secret_file is not None, "a front needs the fleet's --front-secret-file"
        front_port = free_port()
        app_ports = front_app_port if isinstance(front_app_port, list) else [front_app_port]
        apps = ",".join(f"127.0.0.1:{port}" for port in app_ports)
        argv += ["--front-listen", f"127.0.0.1:{front_port}", "--front-app", apps,
                 "--front-secret-file", front_secret_file, *SIDECAR_FRONT_FLAGS]
        if peer_port:
            peer = free_port()
            argv += ["--front-peer-listen", f"127.0.0.1:{peer}"]
    argv += list(extra_args)
    proc = procs.start(f"sidecar-{pod}", argv, env={"RUST_LOG": os.environ.get("RUST_LOG", "info"), "NO_COLOR": "1"})
    sidecar = Sidecar(pod, proc, resp_port, http_port, front_port, peer)
    if wait_ready:
        wait_until(f"{pod}'s sidecar /readyz to return 200", lambda: sidecar.readyz() == 200, watch=[proc])
    else:
        wait_until(f"{pod}'s sidecar /healthz to return 200", lambda: sidecar.healthz() == 200, watch=[proc])
    return sidecar


@dataclass
class Pod:
    """One replica: an app server and, in `sidecar` mode, its own sidecar."""

    name: str
    app: ManagedProcess
    port: int
    sidecar: Sidecar | None
    front_port: int | None = None  # its sidecar's HTTP front, in front of the app (start_fleet(front=True))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def front_url(self) -> str:
        assert self.front_port is not None, f"{self.name} has no HTTP front"
        return f"http://127.0.0.1:{self.front_port}"


def app_argv(stack: str, port: int, redis_url: str, pod: str, adapter: str = "classic") -> list:
    """The command line of one app server of `stack`: python (python-socketio, py_app.py), flask
    (Flask-SocketIO under gunicorn, flask_app.py) or node (socket.io, node_app.js). `adapter`
    picks the Node app's Redis adapter: classic, sharded or streams (see node_app.js)."""
    if stack == "python":
        return [VENV_PYTHON, APPS / "py_app.py", "--port", port, "--redis-url", redis_url, "--name", pod]
    if stack == "flask":
        return [VENV_PYTHON, APPS / "flask_app.py", "--port", port, "--redis-url", redis_url, "--name", pod]
    if stack == "node":
        return ["node", APPS / "node_app.js", "--port", port, "--redis-url", redis_url, "--name", pod,
                "--adapter", adapter]
    raise ValueError(stack)


def front_secret_file(procs: Processes) -> Path:
    """The fleet-wide secret of the HTTP fronts (printable ASCII, no whitespace), in the test's dir."""
    path = procs.log_dir / "front-secret"
    if not path.exists():
        path.write_text(secrets.token_hex(24))
        path.chmod(0o600)
    return path


def start_fleet(procs: Processes, redis: RedisServer | RedisCluster, stack: str, mode: str,
                size: int = 3, adapter: str = "classic", front: bool = False, peer_port: bool = True) -> list[Pod]:
    """`size` pods of `stack` apps whose Redis adapter points at a sidecar (`sidecar`) or at the
    backplane itself (`direct`, the control that proves the harness).

    With `front` (sidecar mode only) each sidecar also runs its HTTP front before its app (one
    secret file for the fleet) and each Pod has a `front_port`; with `peer_port` the fronts forward
    to each other's peer ports, as the operator deploys them (without: one port takes both)."""
    assert not front or mode == "sidecar", "the HTTP front is the sidecar's: front=True needs mode='sidecar'"
    if front and not sidecar_supports("--front-listen"):
        raise AssertionError(f"sidecar binary {SIDECAR_BIN} has no --front-listen (built before the HTTP front?)")
    secret = front_secret_file(procs) if front else None
    pods = []
    for i in range(1, size + 1):
        name = f"pod-{i}"
        extra = getattr(redis, "sidecar_args", [])
        port = free_port()  # first: a front must know its app's port before it starts
        sidecar = None
        if mode == "sidecar":
            # A front's sidecar might wait for its app to be ready: /readyz is awaited below instead.
            sidecar = start_sidecar(procs, name, redis.url, extra, front_app_port=port if front else None,
                                    front_secret_file=secret, wait_ready=not front, peer_port=peer_port)
        app = procs.start(f"app-{name}", app_argv(stack, port, sidecar.url if sidecar else redis.url, name, adapter))
        pods.append(Pod(name, app, port, sidecar, sidecar.front_port if front else None))
    for pod in pods:
        wait_until(f"{pod.name}'s {stack} app to listen", lambda: port_accepts(pod.port), watch=[pod.app])
    if front:
        for pod in pods:
            sidecar = pod.sidecar
            wait_until(f"{pod.name}'s sidecar /readyz to return 200", lambda: sidecar.readyz() == 200,
                       watch=[sidecar.proc])
            wait_until(f"{pod.name}'s front to accept connections on {pod.front_port}",
                       lambda: port_accepts(pod.front_port), watch=[sidecar.proc])
    return pods


class RoundRobinNginx:
    """Debian's nginx as a plain round-robin HTTP load balancer over `ports` on loopback: no
    ip_hash, no sticky cookie, one worker (so successive requests take the upstreams strictly in
    turn), WebSocket upgrades passed through, no buffering. Its access log (status, upstream,
    request) goes to its process log with an `access:` prefix; see `access_log()`."""

    def __init__(self, procs: Processes, ports: list[int], name: str = "nginx"):
        self.procs = procs
        self.ports = list(ports)
        self.name = name
        self.port = free_port()
        self.dir = procs.log_dir / name
        self.conf = self.dir / "nginx.conf"
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        d = self.dir
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in self.ports)
        # As root the workers would run as `nobody`, who cannot enter the test's 0700 tmp dir
        # holding the temp paths; as anyone else nginx warns that `user` makes no sense.
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""{user}worker_processes 1;
pid {d}/nginx.pid;
error_log stderr notice;
events {{
    worker_connections 1024;
}}
http {{
    log_format rr 'access: $status|$upstream_addr|$request';
    access_log /dev/stderr rr;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream pods {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://pods;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;  # with the port, as the Origin check of python-engineio expects
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
        }}
    }}
}}
"""

    def start(self) -> "RoundRobinNginx":
        if not Path(NGINX).is_file():
            raise AssertionError(f"{NGINX} is missing: apt-get install nginx (or set NGINX_BIN)")
        self.dir.mkdir(exist_ok=True)
        self.conf.write_text(self._config())
        self.proc = self.procs.start(self.name, [NGINX, "-e", "stderr", "-g", "daemon off;", "-p", self.dir,
                                                 "-c", self.conf])
        wait_until(f"{self.name} to accept connections on {self.port}", lambda: port_accepts(self.port),
                   watch=[self.proc])
        return self

    def set_upstreams(self, ports: list[int]) -> None:
        """Balances over `ports` from now on, as a Service does once an endpoint is removed: a new
        configuration and SIGHUP; returns once nginx's new workers run it (requests in flight on
        the old workers finish there)."""
        assert self.proc is not None
        self.ports = list(ports)
        self.conf.write_text(self._config())
        before = self.proc.log_text().count("reconfiguring")
        self.proc.popen.send_signal(signal.SIGHUP)
        wait_until(f"{self.name} to reload its configuration",
                   lambda: self.proc.log_text().count("reconfiguring") > before
                   and "start worker process" in self.proc.log_text().split("reconfiguring")[-1],
                   watch=[self.proc])

    def access_log(self) -> list[tuple[int, str, str]]:
        """Every request nginx has finished so far: (status, upstream address, request line)."""
        assert self.proc is not None
        entries = []
        for line in self.proc.log_text().splitlines():
            if line.startswith("access: "):
                status, upstream, request = line[len("access: "):].split("|", 2)
                entries.append((int(status), upstream, request))
        return entries
