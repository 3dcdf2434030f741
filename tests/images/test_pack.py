"""Unit tests for pack.py: pack real directories and tars, then read the archive back as an
importer would (manifest -> config -> diff_ids -> layer entries).

Run from tests/images/: python3 -m unittest -v
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import tarfile
import tempfile
import unittest
from pathlib import Path

import pack


class Archive:
    """An image archive read back: its manifest, config and layers, checked for consistency."""

    def __init__(self, path: Path):
        self.bytes = path.read_bytes()
        with tarfile.open(path) as tar:
            self.members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        manifest = json.loads(self.members["manifest.json"])
        assert len(manifest) == 1, manifest
        self.manifest = manifest[0]
        config_bytes = self.members[self.manifest["Config"]]
        self.image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        self.config = json.loads(config_bytes)
        self.layers = [self.members[name] for name in self.manifest["Layers"]]

    def layer_entries(self, index: int) -> dict[str, tarfile.TarInfo]:
        with tarfile.open(fileobj=io.BytesIO(self.layers[index])) as tar:
            return {m.name: m for m in tar}

    def layer_file(self, index: int, name: str) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(self.layers[index])) as tar:
            return tar.extractfile(name).read()


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = pack.main(list(argv))
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return code, out.getvalue().strip(), err.getvalue()


class PackTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="pack-test-"))
        self.addCleanup(lambda: os.system(f"rm -rf '{self.tmp}'"))
        self.root = self.tmp / "root"
        (self.root / "usr/local/bin").mkdir(parents=True)
        (self.root / "data").mkdir()
        (self.root / "data/seed").write_text("seed\n")
        app = self.root / "usr/local/bin/app"
        app.write_text("#!/bin/sh\necho app\n")
        app.chmod(0o755)
        (self.root / "usr/local/bin/app-link").symlink_to("app")
        os.link(app, self.root / "usr/local/bin/app-hard")
        (self.root / "etc").mkdir()
        (self.root / "etc/secret").write_text("s")
        (self.root / "etc/secret").chmod(0o600)
        self.out = self.tmp / "out.tar"

    def pack(self, *extra: str, out: Path | None = None) -> Archive:
        out = out or self.out
        code, stdout, stderr = run("--ref", "switchboard.local/app:dev", "-o", str(out), *extra)
        self.assertEqual(code, 0, stderr)
        archive = Archive(out)
        self.assertEqual(stdout, archive.image_id)
        return archive

    def test_manifest_config_and_diff_ids_agree(self):
        a = self.pack("--layer-dir", str(self.root),
                      "--entrypoint", '["/usr/local/bin/app"]', "--cmd", '["--flag"]',
                      "--user", "65532:65532", "--env", "A=1", "--workdir", "/data",
                      "--expose", "6379", "--expose", "9091/tcp", "--label", "k=v=w")
        self.assertEqual(a.manifest["RepoTags"], ["switchboard.local/app:dev"])
        self.assertEqual(a.manifest["Config"], a.image_id.removeprefix("sha256:") + ".json")
        diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in a.layers]
        self.assertEqual(a.config["rootfs"], {"type": "layers", "diff_ids": diff_ids})
        self.assertEqual((a.config["architecture"], a.config["os"]), ("amd64", "linux"))
        c = a.config["config"]
        self.assertEqual(c["Entrypoint"], ["/usr/local/bin/app"])
        self.assertEqual(c["Cmd"], ["--flag"])
        self.assertEqual(c["User"], "65532:65532")
        self.assertEqual(c["Env"], [pack.DEFAULT_PATH, "A=1"])
        self.assertEqual(c["WorkingDir"], "/data")
        self.assertEqual(c["ExposedPorts"], {"6379/tcp": {}, "9091/tcp": {}})
        self.assertEqual(c["Labels"], {"k": "v=w"})

    def test_given_path_replaces_default_path(self):
        a = self.pack("--layer-dir", str(self.root), "--env", "PATH=/bin")
        self.assertEqual(a.config["config"]["Env"], ["PATH=/bin"])

    def test_entries_keep_type_mode_and_links(self):
        entries = self.pack("--layer-dir", str(self.root)).layer_entries(0)
        self.assertNotIn(".", entries)
        self.assertFalse(any(name.startswith(("/", "./")) for name in entries))
        app = entries["usr/local/bin/app"]
        self.assertTrue(app.isreg())
        self.assertEqual(app.mode, 0o755)
        self.assertEqual(entries["etc/secret"].mode, 0o600)
        self.assertTrue(entries["usr/local/bin/app-link"].issym())
        self.assertEqual(entries["usr/local/bin/app-link"].linkname, "app")
        # The hard link's name sorts after the file it links to, so it is the link.
        hard = entries["usr/local/bin/app-hard"]
        self.assertTrue(hard.islnk() or app.islnk())
        link, target = (hard, app) if hard.islnk() else (app, hard)
        self.assertEqual(link.linkname, target.name)
        self.assertTrue(entries["data"].isdir())

    def test_parents_come_before_children(self):
        names = list(self.pack("--layer-dir", str(self.root)).layer_entries(0))
        for i, name in enumerate(names):
            parent = name.rsplit("/", 1)[0]
            if "/" in name:
                self.assertIn(parent, names[:i], f"{name} before its directory")

    def test_owner_default_root_and_chown_subtree_deepest_wins(self):
        (self.root / "data/sub").mkdir()
        (self.root / "data/sub/f").write_text("x")
        entries = self.pack("--layer-dir", str(self.root), "--chown", "/data=999:1000",
                            "--chown", "data/sub/=7:8", "--chmod", "/data=0770").layer_entries(0)
        self.assertEqual((entries["usr/local/bin/app"].uid, entries["usr/local/bin/app"].gid),
                         (0, 0))
        self.assertEqual((entries["data"].uid, entries["data"].gid), (999, 1000))
        self.assertEqual(entries["data"].mode, 0o770)
        self.assertEqual((entries["data/seed"].uid, entries["data/seed"].gid), (999, 1000))
        self.assertEqual((entries["data/sub/f"].uid, entries["data/sub/f"].gid), (7, 8))
        self.assertTrue(all(e.uname == "" and e.gname == "" for e in entries.values()))

    def test_owner_option_applies_to_everything(self):
        entries = self.pack("--layer-dir", str(self.root), "--owner", "5:6").layer_entries(0)
        self.assertEqual({(e.uid, e.gid) for e in entries.values()}, {(5, 6)})

    @unittest.skipUnless(os.geteuid() == 0, "chown on disk needs root")
    def test_keep_owner_keeps_numeric_ids_on_disk(self):
        os.chown(self.root / "data/seed", 4242, 4343)
        entries = self.pack("--layer-dir", str(self.root), "--keep-owner").layer_entries(0)
        self.assertEqual((entries["data/seed"].uid, entries["data/seed"].gid), (4242, 4343))
        self.assertEqual(entries["etc/secret"].uid, 0)

    @unittest.skipUnless(os.geteuid() == 0, "mknod needs root")
    def test_device_nodes_are_skipped_and_fifos_kept(self):
        (self.root / "dev").mkdir()
        os.mknod(self.root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
        os.mkfifo(self.root / "dev/fifo")
        entries = self.pack("--layer-dir", str(self.root)).layer_entries(0)
        self.assertIn("dev", entries)
        self.assertNotIn("dev/null", entries)
        self.assertTrue(entries["dev/fifo"].isfifo())

    def test_same_input_same_bytes_whatever_the_mtimes(self):
        first = self.pack("--layer-dir", str(self.root), out=self.tmp / "a.tar")
        for path in [self.root, *self.root.rglob("*")]:
            os.utime(path, (1_700_000_000, 1_700_000_000), follow_symlinks=False)
        second = self.pack("--layer-dir", str(self.root), out=self.tmp / "b.tar")
        self.assertEqual(first.image_id, second.image_id)
        self.assertEqual(first.bytes, second.bytes)
        self.assertEqual({e.mtime for e in second.layer_entries(0).values()}, {0})

    def test_content_mode_and_options_change_the_id(self):
        base = self.pack("--layer-dir", str(self.root)).image_id
        (self.root / "data/seed").write_text("changed\n")
        changed = self.pack("--layer-dir", str(self.root)).image_id
        self.assertNotEqual(base, changed)
        (self.root / "data/seed").chmod(0o640)
        self.assertNotEqual(changed, self.pack("--layer-dir", str(self.root)).image_id)
        self.assertNotEqual(changed, self.pack("--layer-dir", str(self.root),
                                               "--user", "1:1").image_id)

    def test_mtime_option_is_used(self):
        entries = self.pack("--layer-dir", str(self.root), "--mtime", "1234").layer_entries(0)
        self.assertEqual({e.mtime for e in entries.values()}, {1234})

    def test_layer_tars_in_order_and_gzip_decompressed(self):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            info = tarfile.TarInfo("base.txt")
            info.size = 4
            tar.addfile(info, io.BytesIO(b"base"))
        (self.tmp / "base.tar.gz").write_bytes(gzip.compress(raw.getvalue()))
        a = self.pack("--layer-tar", str(self.tmp / "base.tar.gz"),
                      "--layer-dir", str(self.root), "--ref", "switchboard.local/app:other")
        self.assertEqual(a.manifest["RepoTags"],
                         ["switchboard.local/app:dev", "switchboard.local/app:other"])
        self.assertEqual(len(a.layers), 2)
        self.assertEqual(a.layers[0], raw.getvalue())
        self.assertEqual(a.config["rootfs"]["diff_ids"][0],
                         "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest())
        self.assertEqual(a.layer_file(0, "base.txt"), b"base")
        self.assertIn("usr/local/bin/app", a.layer_entries(1))


class BadInputTest(unittest.TestCase):
    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="pack-bad-"))
        self.addCleanup(lambda: os.system(f"rm -rf '{self.tmp}'"))
        (self.tmp / "root").mkdir()
        (self.tmp / "root/f").write_text("f")
        self.out = self.tmp / "out.tar"

    def refused(self, *argv: str, naming: str) -> None:
        code, stdout, stderr = run("--ref", "x.local/y:z", "-o", str(self.out), *argv)
        self.assertEqual(code, pack.EX_USAGE, stderr)
        self.assertIn(naming, stderr)
        self.assertEqual(stdout, "")
        self.assertFalse(self.out.exists(), "no archive is written for bad input")
        self.assertEqual(list(self.tmp.glob(".pack-*")), [], "temporary files are removed")

    def test_missing_directory(self):
        self.refused("--layer-dir", str(self.tmp / "nope"), naming="--layer-dir")

    def test_no_layers(self):
        self.refused(naming="no layers")

    def test_entrypoint_not_json_array(self):
        root = str(self.tmp / "root")
        self.refused("--layer-dir", root, "--entrypoint", "/pause", naming="--entrypoint")
        self.refused("--layer-dir", root, "--entrypoint", '"/pause"', naming="--entrypoint")
        self.refused("--layer-dir", root, "--cmd", "[1]", naming="--cmd")

    def test_bad_owner_env_label_port_mode(self):
        root = str(self.tmp / "root")
        self.refused("--layer-dir", root, "--owner", "root:root", naming="--owner")
        self.refused("--layer-dir", root, "--chown", "/f=1", naming="--chown /f")
        self.refused("--layer-dir", root, "--chown", "f", naming="--chown")
        self.refused("--layer-dir", root, "--env", "NOEQUALS", naming="--env")
        self.refused("--layer-dir", root, "--label", "=v", naming="--label")
        self.refused("--layer-dir", root, "--expose", "70000", naming="--expose")
        self.refused("--layer-dir", root, "--expose", "80/icmp", naming="--expose")
        self.refused("--layer-dir", root, "--chmod", "/f=rwx", naming="--chmod /f")
        self.refused("--layer-dir", root, "--chown", "/../etc=1:1", naming="'..'")

    def test_chown_of_missing_path_is_a_typo(self):
        self.refused("--layer-dir", str(self.tmp / "root"), "--chown", "/dat=1:1",
                     naming="--chown /dat")

    def test_layer_tar_that_is_not_a_tar(self):
        (self.tmp / "junk.tar").write_bytes(b"not a tar at all" * 100)
        self.refused("--layer-tar", str(self.tmp / "junk.tar"), naming="junk.tar")
        self.refused("--layer-tar", str(self.tmp / "missing.tar"), naming="missing.tar")


if __name__ == "__main__":
    unittest.main()
