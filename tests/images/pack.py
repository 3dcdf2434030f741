#!/usr/bin/env python3
"""Pack root filesystem directories or layer tarballs into a docker-archive image tarball.

This is how the node journey gets images without a registry: `ctr -n k8s.io images import out.tar`
reads the archive this tool writes (the layout of `docker save`: manifest.json, one config JSON
named by its digest, one layer tar per input). Python 3.11 standard library only.

What it owns, and why it is written the way it is:
- **Ownership is decided here, not by whoever staged the directory.** Every entry is owned by
  `--owner` (default 0:0) unless `--keep-owner` keeps the numeric ids on disk; `--chown
  PATH=UID:GID` then gives PATH and everything below it another owner (a writable /data owned by
  the image's user). `--chmod PATH=MODE` sets one entry's permission bits. User and group names are
  never written: containers resolve numeric ids only.
- **The same input gives the same image id.** Entries are written in sorted order with one fixed
  mtime (`--mtime`, default $SOURCE_DATE_EPOCH or 0), no names, no access times, and the config has a
  fixed `created`; so the config digest (the image id) depends on file contents, modes, owners and
  the options only. build.sh relies on that to skip unchanged imports.
- **Hard links stay hard links, symlinks stay symlinks** (a Debian root has both). Device nodes and
  sockets are skipped: the runtime mounts its own /dev, and a layer with device nodes cannot be
  unpacked by an unprivileged snapshotter.
- **Existing layer tarballs are used as they are** (gzip ones are decompressed: diff_ids are digests
  of the uncompressed tar), so a base layer built once is shared by several images.

Usage (each --layer-dir / --layer-tar is one layer, in the order given):
    pack.py --ref switchboard.local/pause:dev --layer-dir DIR --entrypoint '["/pause"]' \
            --user 65532:65532 -o out.tar
Prints the image id (sha256:...) on stdout. A bad option exits 64 with a message naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

EX_USAGE = 64
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Fixed so the config digest does not change from one build to the next.
CREATED = "1970-01-01T00:00:00Z"
CHUNK = 1 << 20


class PackError(Exception):
    """A problem with the input that the user can fix; the message says which input and what."""


@dataclasses.dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    @staticmethod
    def parse(text: str, what: str) -> "Owner":
        parts = text.split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise PackError(f"{what}: expected numeric UID:GID, got {text!r}")
        return Owner(int(parts[0]), int(parts[1]))


@dataclasses.dataclass(frozen=True)
class Layer:
    """One input: a directory to tar up, or an existing tar to use as it is."""

    kind: str  # "dir" or "tar"
    path: Path


@dataclasses.dataclass
class ImageSpec:
    refs: list[str]
    layers: list[Layer]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str | None = None
    env: list[str] = dataclasses.field(default_factory=list)
    workdir: str | None = None
    exposed_ports: list[str] = dataclasses.field(default_factory=list)
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    owner: Owner = Owner(0, 0)
    keep_owner: bool = False
    # Image paths ("/data", "data" and "./data" are the same) -> owner for that subtree.
    chown: dict[str, Owner] = dataclasses.field(default_factory=dict)
    # Image path -> permission bits for that one entry.
    chmod: dict[str, int] = dataclasses.field(default_factory=dict)
    mtime: int = 0


def image_path(text: str) -> str:
    """Normalise an image path to the form used in layer tars: relative, no './', no trailing '/'."""
    parts = [p for p in PurePosixPath("/" + text).parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise PackError(f"image path {text!r} must not contain '..'")
    return "/".join(parts)


# ---------------------------------------------------------------------------------------------
# Layer tars from directories
# ---------------------------------------------------------------------------------------------


def walk_sorted(root: Path, rel: str = "") -> Iterator[tuple[str, Path]]:
    """Yield (image path, host path) for everything under root, depth first, each directory just
    before its contents, names sorted. Symlinks to directories are entries, not trees."""
    host = root / rel if rel else root
    try:
        names = sorted(os.listdir(host))
    except OSError as err:
        raise PackError(f"cannot read directory {host}: {err.strerror}") from err
    for name in names:
        child_rel = f"{rel}/{name}" if rel else name
        child = host / name
        yield child_rel, child
        if child.is_dir() and not child.is_symlink():
            yield from walk_sorted(root, child_rel)


def owner_for(spec: ImageSpec, rel: str, st: os.stat_result) -> Owner:
    # The deepest --chown prefix wins, so --chown /=1:1 --chown /data=2:2 does what it reads as.
    best: tuple[int, Owner] | None = None
    for prefix, owner in spec.chown.items():
        if prefix == "" or rel == prefix or rel.startswith(prefix + "/"):
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), owner)
    if best is not None:
        return best[1]
    if spec.keep_owner:
        return Owner(st.st_uid, st.st_gid)
    return spec.owner


def tarinfo_for(spec: ImageSpec, rel: str, host: Path, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    owner = owner_for(spec, rel, st)
    info.uid, info.gid = owner.uid, owner.gid
    info.uname = info.gname = ""
    info.mtime = spec.mtime
    info.mode = spec.chmod.get(rel, stat.S_IMODE(st.st_mode))
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(host)
        info.mode = 0o777
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    else:
        raise ValueError("unsupported file type")  # filtered out by the caller
    return info


def write_dir_layer(spec: ImageSpec, root: Path, out: BinaryIO) -> set[str]:
    """Write root as a layer tar to out; return the image paths written."""
    if not root.is_dir():
        raise PackError(f"--layer-dir {root}: not a directory")
    # Hard links: the first path seen for an inode carries the data; the others link to it.
    first_path: dict[tuple[int, int], str] = {}
    seen: set[str] = set()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for rel, host in walk_sorted(root):
            st = host.lstat()
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
                continue
            info = tarinfo_for(spec, rel, host, st)
            seen.add(rel)
            if info.type == tarfile.REGTYPE and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in first_path:
                    info.type = tarfile.LNKTYPE
                    info.linkname = first_path[key]
                    info.size = 0
                    tar.addfile(info)
                    continue
                first_path[key] = rel
            if info.type == tarfile.REGTYPE:
                with open(host, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    return seen


# ---------------------------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------------------------


class HashingWriter(io.RawIOBase):
    """A write-only file that hashes what passes through it."""

    def __init__(self, sink: BinaryIO):
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data) -> int:  # type: ignore[override]
        self.sha.update(data)
        self.sink.write(data)
        self.size += len(data)
        return len(data)


def stage_layer(spec: ImageSpec, layer: Layer, dest: Path) -> tuple[str, set[str]]:
    """Write the uncompressed layer tar to dest; return its digest (the diff_id) and the paths
    written from a directory (none for a given tar: its entries are not ours to change)."""
    seen: set[str] = set()
    with open(dest, "wb") as sink:
        writer = HashingWriter(sink)
        if layer.kind == "dir":
            seen = write_dir_layer(spec, layer.path, writer)  # type: ignore[arg-type]
        else:
            copy_tar(layer.path, writer)  # type: ignore[arg-type]
    return "sha256:" + writer.sha.hexdigest(), seen


def check_paths_exist(spec: ImageSpec, seen: set[str]) -> None:
    """A --chown or --chmod that matched nothing is a typo that would silently do nothing."""
    for option, paths in (("--chown", spec.chown), ("--chmod", spec.chmod)):
        for path in paths:
            if path and path not in seen:
                raise PackError(f"{option} /{path}: no such path in any --layer-dir")


def copy_tar(path: Path, out: BinaryIO) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as err:
        raise PackError(f"--layer-tar {path}: {err.strerror}") from err
    opener = gzip.open if magic == b"\x1f\x8b" else open
    with opener(path, "rb") as src:  # type: ignore[operator]
        shutil.copyfileobj(src, out, CHUNK)
    # A truncated or non-tar file would otherwise only fail at import, far from its cause.
    try:
        with opener(path, "rb") as src, tarfile.open(fileobj=src, mode="r|") as tar:  # type: ignore[operator]
            for _ in tar:
                pass
    except (tarfile.TarError, OSError, EOFError) as err:
        raise PackError(f"--layer-tar {path}: not a readable tar ({err})") from err


def image_config(spec: ImageSpec, diff_ids: list[str]) -> dict:
    env = list(spec.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    config: dict = {"Env": env}
    if spec.entrypoint is not None:
        config["Entrypoint"] = spec.entrypoint
    if spec.cmd is not None:
        config["Cmd"] = spec.cmd
    if spec.user:
        config["User"] = spec.user
    if spec.workdir:
        config["WorkingDir"] = spec.workdir
    if spec.exposed_ports:
        config["ExposedPorts"] = {p: {} for p in sorted(spec.exposed_ports)}
    if spec.labels:
        config["Labels"] = dict(sorted(spec.labels.items()))
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": CREATED, "created_by": "switchboard tests/images/pack.py"}
                    for _ in diff_ids],
    }


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, mtime
    tar.addfile(info, io.BytesIO(data))


def pack(spec: ImageSpec, output: Path) -> str:
    """Write the docker-archive for spec to output (atomically); return the image id."""
    if not spec.refs:
        raise PackError("--ref: at least one image reference is needed")
    if not spec.layers:
        raise PackError("no layers: give --layer-dir or --layer-tar at least once")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".pack-") as tmp:
        staged = []
        seen: set[str] = set()
        for i, layer in enumerate(spec.layers):
            dest = Path(tmp) / f"layer{i}.tar"
            digest, paths = stage_layer(spec, layer, dest)
            staged.append((dest, digest))
            seen |= paths
        check_paths_exist(spec, seen)
        diff_ids = [digest for _, digest in staged]
        config = canonical_json(image_config(spec, diff_ids))
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        config_name = image_id.removeprefix("sha256:") + ".json"
        layer_names = [digest.removeprefix("sha256:") + "/layer.tar" for digest in diff_ids]
        manifest = [{"Config": config_name, "RepoTags": spec.refs, "Layers": layer_names}]
        partial = Path(tmp) / "image.tar"
        with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
            written = set()
            for (dest, _), name in zip(staged, layer_names):
                if name in written:  # the same layer twice in one image is stored once
                    continue
                written.add(name)
                dir_info = tarfile.TarInfo(name.split("/")[0])
                dir_info.type, dir_info.mode, dir_info.mtime = tarfile.DIRTYPE, 0o755, spec.mtime
                tar.addfile(dir_info)
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = dest.stat().st_size, 0o644, spec.mtime
                with open(dest, "rb") as data:
                    tar.addfile(info, data)
            add_bytes(tar, config_name, config, spec.mtime)
            add_bytes(tar, "manifest.json", canonical_json(manifest), spec.mtime)
        os.replace(partial, output)
    return image_id


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


class AppendLayer(argparse.Action):
    """--layer-dir and --layer-tar share one list, so their order on the line is the layer order."""

    def __call__(self, parser, namespace, values, option_string=None):
        kind = "dir" if option_string == "--layer-dir" else "tar"
        layers = getattr(namespace, "layers", None) or []
        layers.append(Layer(kind, Path(values)))
        namespace.layers = layers


def json_argv(text: str, what: str) -> list[str]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise PackError(f"{what}: not JSON ({err.msg}); give a JSON array like '[\"/pause\"]'")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PackError(f"{what}: expected a JSON array of strings, got {text!r}")
    return value


def key_value(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise PackError(f"{what}: expected KEY=VALUE, got {text!r}")
    return key, value


def port(text: str) -> str:
    number, _, proto = text.partition("/")
    proto = proto or "tcp"
    if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("tcp", "udp", "sctp"):
        raise PackError(f"--expose: expected PORT or PORT/tcp|udp|sctp, got {text!r}")
    return f"{int(number)}/{proto}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Pack directories or layer tars into a docker-archive image tarball.")
    p.add_argument("--ref", action="append", default=[], required=True,
                   help="image reference for RepoTags, e.g. switchboard.local/pause:dev (repeatable)")
    p.add_argument("--layer-dir", action=AppendLayer, metavar="DIR", dest="layers",
                   help="a root filesystem directory to pack as one layer (repeatable)")
    p.add_argument("--layer-tar", action=AppendLayer, metavar="TAR", dest="layers",
                   help="an existing layer tarball (plain or gzip), used as it is (repeatable)")
    p.add_argument("--entrypoint", help="JSON array, e.g. '[\"/usr/local/bin/app\"]'")
    p.add_argument("--cmd", help="JSON array of default arguments")
    p.add_argument("--user", help="the image's User, e.g. 65532:65532")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment variable (repeatable); a default PATH is added unless given")
    p.add_argument("--workdir", help="the image's WorkingDir")
    p.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--owner", default="0:0", metavar="UID:GID",
                   help="owner of every entry in --layer-dir layers (default 0:0)")
    p.add_argument("--keep-owner", action="store_true",
                   help="keep the numeric owners found on disk instead of --owner")
    p.add_argument("--chown", action="append", default=[], metavar="PATH=UID:GID",
                   help="owner of PATH and everything below it (repeatable; deepest wins)")
    p.add_argument("--chmod", action="append", default=[], metavar="PATH=MODE",
                   help="octal permission bits of the entry PATH (repeatable)")
    p.add_argument("--mtime", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")),
                   help="mtime of every entry (default $SOURCE_DATE_EPOCH or 0)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the archive to write")
    return p


def spec_from_args(args: argparse.Namespace) -> ImageSpec:
    spec = ImageSpec(refs=args.ref, layers=args.layers or [])
    if args.entrypoint is not None:
        spec.entrypoint = json_argv(args.entrypoint, "--entrypoint")
    if args.cmd is not None:
        spec.cmd = json_argv(args.cmd, "--cmd")
    spec.user = args.user
    for e in args.env:
        key_value(e, "--env")
    spec.env = args.env
    spec.workdir = args.workdir
    spec.exposed_ports = [port(p) for p in args.expose]
    spec.labels = dict(key_value(label, "--label") for label in args.label)
    spec.owner = Owner.parse(args.owner, "--owner")
    spec.keep_owner = args.keep_owner
    for item in args.chown:
        path, owner = key_value(item, "--chown")
        spec.chown[image_path(path)] = Owner.parse(owner, f"--chown {path}")
    for item in args.chmod:
        path, mode = key_value(item, "--chmod")
        try:
            spec.chmod[image_path(path)] = int(mode, 8) & 0o7777
        except ValueError:
            raise PackError(f"--chmod {path}: expected octal bits like 0755, got {mode!r}")
    if args.mtime < 0:
        raise PackError(f"--mtime: must not be negative, got {args.mtime}")
    spec.mtime = args.mtime
    return spec


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        image_id = pack(spec_from_args(args), args.output)
    except PackError as err:
        print(f"pack.py: {err}", file=sys.stderr)
        return EX_USAGE
    print(image_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
