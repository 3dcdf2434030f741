#!/usr/bin/env python3
"""Run the images build.sh made under runc, as one pod would, and check each one works.

No containerd, no kubelet: each archive is unpacked into an OCI bundle whose process, user,
environment and working directory come from the image's own config, with the settings the
operator's and the examples' pod specs use (read-only root filesystem, no capabilities, no new
privileges, writable dirs on tmpfs). The containers share one network namespace, like a pod:

  redis (uid 999, /data tmpfs)   127.0.0.1:6380, a password, run as the operator runs it
  redis-sentinel (same image)    127.0.0.1:26379, its config on a tmpfs, watching that redis
  sidecar (uid 65532)            127.0.0.1:6379 -> redis; /readyz on 9091
  chat-python (uid 10001)        the example's app.py on :5000, REDIS_URL at the sidecar
  chat-node (uid 1000)           the example's app.js on :3000, REDIS_URL at the sidecar
  operator (uid 65532)           --help only: it needs an API server

Checks (from the host, inside the pod's network namespace with nsenter): PING through the
sidecar answers PONG and reaches redis; redis-server runs as uid 999; the Sentinel sees the
primary; both apps answer /healthz and an Engine.IO handshake; each app's Redis adapter
subscribed through the sidecar. Needs root, runc, nsenter, redis-cli, curl.

  python3 tests/images/smoke.py [ENV_FILE]    # ENV_FILE: build.sh's last line
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
PASSWORD = "smoke-password"


class Failure(Exception):
    pass


def read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def unpack(archive: Path, rootfs: Path) -> dict:
    """Unpack the image's layers in order into rootfs; return its config."""
    rootfs.mkdir(parents=True)
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]
        config = json.load(outer.extractfile(manifest["Config"]))
        for layer in manifest["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer), mode="r|") as tar:
                tar.extractall(rootfs, numeric_owner=True, filter="fully_trusted")
    return config


class Pod:
    """Containers under one runc root, sharing the first one's network namespace."""

    def __init__(self, work: Path):
        self.work = work
        self.state = work / "runc"
        self.containers: list[str] = []
        self.netns_pid: int | None = None
        self.template = json.loads(subprocess.run(
            ["runc", "spec", "--bundle", str(work)], check=True, capture_output=True,
            cwd=work).stdout or (work / "config.json").read_text())

    def run(self, name: str, archive: Path, args: list[str] | None = None, env: list[str] = (),
            tmpfs: dict[str, tuple[int, str]] = {}, binds: dict[str, Path] = {}) -> int:
        bundle = self.work / name
        image = unpack(archive, bundle / "rootfs")["config"]
        spec = json.loads(json.dumps(self.template))
        uid, _, gid = image.get("User", "0:0").partition(":")
        spec["process"].update({
            "terminal": False,
            "args": args or (image.get("Entrypoint") or []) + (image.get("Cmd") or []),
            "env": image.get("Env", []) + list(env),
            "cwd": image.get("WorkingDir") or "/",
            "user": {"uid": int(uid), "gid": int(gid or uid)},
            # The pods' securityContext: drop ALL, no privilege escalation.
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "ambient")},
            "noNewPrivileges": True,
        })
        # This VM lacks CAP_SYS_RESOURCE: no limit above the one runc itself runs with.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        spec["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": hard, "soft": soft}]
        spec["root"] = {"path": "rootfs", "readonly": True}
        spec["hostname"] = "smoke"
        # emptyDirs: owned by the pod's fsGroup (redis) or world-writable (/tmp).
        for path, (owner, mode) in tmpfs.items():
            spec["mounts"].append({"destination": path, "type": "tmpfs", "source": "tmpfs",
                                   "options": ["nosuid", "nodev", f"mode={mode}", f"uid={owner}",
                                               f"gid={owner}", "size=16m"]})
        for path, source in binds.items():
            spec["mounts"].append({"destination": path, "type": "bind", "source": str(source),
                                   "options": ["rbind", "ro"]})
        if self.netns_pid is not None:
            for ns in spec["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = f"/proc/{self.netns_pid}/ns/net"
        (bundle / "config.json").write_text(json.dumps(spec))
        log = open(self.work / f"{name}.log", "wb")
        pid_file = bundle / "pid"
        subprocess.run(["runc", "--root", str(self.state), "run", "--detach", "--bundle",
                        str(bundle), "--pid-file", str(pid_file), f"smoke-{name}"],
                       check=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.containers.append(f"smoke-{name}")
        pid = int(pid_file.read_text())
        if self.netns_pid is None:
            self.netns_pid = pid
            self.inside(["ip", "link", "set", "lo", "up"])
        return pid

    def inside(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a host program in the pod's network namespace."""
        return subprocess.run(["nsenter", f"--net=/proc/{self.netns_pid}/ns/net", *argv],
                              capture_output=True, text=True, check=check, timeout=30)

    def log(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for container in reversed(self.containers):
            subprocess.run(["runc", "--root", str(self.state), "delete", "--force", container],
                           capture_output=True)


def until(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                print(f"    ok: {what}")
                return result
        except (subprocess.SubprocessError, OSError, ValueError) as err:
            last = err
        time.sleep(0.3)
    raise Failure(f"{what}: not within {timeout:.0f}s ({last})")


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError("no Uid line")


def main() -> int:
    env_file = Path(sys.argv[1]) if len(sys.argv) > 1 else \
        Path(os.environ.get("SWITCHBOARD_CACHE", Path.home() / ".cache/switchboard")) / \
        "images/images.env"
    images = read_env(env_file)
    archive = {name: Path(images[f"SWITCHBOARD_{name}_IMAGE_ARCHIVE"])
               for name in ("OPERATOR", "SIDECAR", "REDIS", "CHAT_PYTHON", "CHAT_NODE")}
    work = Path(tempfile.mkdtemp(prefix="sb-smoke-"))
    pod = Pod(work)
    try:
        print("==> redis: redis-server as the operator's single-replica pod runs it")
        redis = pod.run("redis", archive["REDIS"], env=[f"REDIS_PASSWORD={PASSWORD}"],
                        args=["redis-server", "--port", "6380", "--save", "", "--appendonly",
                              "no", "--requirepass", PASSWORD],
                        tmpfs={"/data": (999, "0770")})
        until("redis answers PING", lambda: pod.inside(
            ["redis-cli", "-p", "6380", "-a", PASSWORD, "--no-auth-warning", "PING"]
        ).stdout.strip() == "PONG")
        if uid_of(redis) != 999:
            raise Failure(f"redis-server runs as uid {uid_of(redis)}, expected 999")
        print("    ok: redis-server runs as uid 999 with a read-only root filesystem")

        print("==> redis: the tools the operator's start scripts use are in the image")
        tools = "sh redis-server redis-sentinel redis-cli timeout getent cat mv sleep"
        pod.run("tools", archive["REDIS"], args=["sh", "-c", f"for t in {tools}; do command -v $t; done"])
        until("sh -c 'command -v ...' found every tool", lambda: len(
            pod.log("tools").split()) == len(tools.split()), timeout=10)

        print("==> redis: redis-sentinel with its config on a tmpfs")
        conf = (f"port 26379\\ndir /sentinel\\nsentinel monitor m 127.0.0.1 6380 1\\n"
                f"sentinel auth-pass m {PASSWORD}\\n")
        pod.run("sentinel", archive["REDIS"], tmpfs={"/sentinel": (999, "0770")},
                args=["sh", "-c", f"printf '{conf}' > /sentinel/sentinel.conf && "
                      "exec redis-sentinel /sentinel/sentinel.conf"])
        until("Sentinel names the primary", lambda: pod.inside(
            ["redis-cli", "-p", "26379", "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "m"]
        ).stdout.split() == ["127.0.0.1", "6380"])

        print("==> sidecar: in front of redis, as the injector configures it")
        sidecar = pod.run("sidecar", archive["SIDECAR"], env=[
            "SWITCHBOARD_UPSTREAM_URL=redis://127.0.0.1:6380",
            f"SWITCHBOARD_UPSTREAM_PASSWORD={PASSWORD}",
            "SWITCHBOARD_HTTP_LISTEN=127.0.0.1:9091"])
        until("sidecar /readyz", lambda: pod.inside(
            ["curl", "-fsS", "http://127.0.0.1:9091/readyz"], check=False).returncode == 0)
        until("PING through the sidecar answers PONG", lambda: pod.inside(
            ["redis-cli", "-p", "6379", "PING"]).stdout.strip() == "PONG")
        if uid_of(sidecar) != 65532:
            raise Failure(f"sidecar runs as uid {uid_of(sidecar)}, expected 65532")
        print("    ok: the sidecar runs as uid 65532")

        print("==> operator: the binary starts (it needs an API server for more)")
        pod.run("operator", archive["OPERATOR"], args=["/usr/local/bin/switchboard-operator",
                                                       "--help"])
        until("switchboard-operator --help prints its usage", lambda: "--sidecar-image" in
              pod.log("operator"), timeout=10)

        for name, port, app in (("chat-python", 5000, ["python", "/app/app.py"]),
                                ("chat-node", 3000, ["node", "/app/app.js"])):
            print(f"==> {name}: the example's app with its baked packages, behind the sidecar")
            example = EXAMPLES / ("python-socketio-chat" if name == "chat-python"
                                  else "node-socketio-chat")
            pod.run(name, archive[name.upper().replace("-", "_")], args=app,
                    env=[f"PORT={port}", "REDIS_URL=redis://127.0.0.1:6379",
                         f"POD_NAME={name}-0"],
                    tmpfs={"/tmp": (0, "1777")}, binds={"/app": example})
            until(f"{name} /healthz", lambda: pod.inside(
                ["curl", "-fsS", f"http://127.0.0.1:{port}/healthz"]).stdout.strip() == "ok")
            until(f"{name} answers an Engine.IO handshake", lambda: pod.inside(
                ["curl", "-fsS", f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"]
            ).stdout.startswith('0{"sid"'))
        until("both apps' adapters subscribed through the sidecar", lambda: len(pod.inside(
            ["redis-cli", "-p", "6380", "-a", PASSWORD, "--no-auth-warning", "PUBSUB",
             "CHANNELS"]).stdout.split()) >= 2)
        print("PASS")
        return 0
    except (Failure, subprocess.CalledProcessError) as err:
        print(f"FAIL: {err}", file=sys.stderr)
        for log in sorted(work.glob("*.log")):
            print(f"----- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        return 1
    finally:
        pod.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
