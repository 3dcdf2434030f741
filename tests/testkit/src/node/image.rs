//! Images without a registry: one static binary packed as a one-layer docker-archive tarball
//! (`manifest.json`, the config JSON, the layer tar), which `ctr -n k8s.io images import` accepts.
//! Enough for the node's own images (pause, probe, traefik); the app images come from
//! `tests/images/` (pack.py, build.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// What goes into one image.
pub struct StaticImage<'a> {
    /// `registry/name:tag`, as pods name it.
    pub reference: &'a str,
    /// The binary, installed as `/bin/<file name>`.
    pub binary: &'a Path,
    /// The entrypoint's arguments after the binary.
    pub args: &'a [&'a str],
}

/// Writes `<dir>/<name>.tar` and returns its path.
pub fn pack(dir: &Path, image: &StaticImage<'_>) -> Result<PathBuf, Error> {
    let file_name = image
        .binary
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad(format!("{} has no file name", image.binary.display())))?;
    let work = dir.join(format!("image-{file_name}"));
    let rootfs = work.join("rootfs");
    // The mount points runc and the kubelet need exist in every image; /tmp is writable scratch.
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev", "var/run"] {
        mkdir(&rootfs.join(sub))?;
    }
    std::fs::copy(image.binary, rootfs.join("bin").join(file_name))
        .map_err(|e| Error::io(format!("copying {}", image.binary.display()), e))?;
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "--mtime=@0",
            "-C",
        ])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let diff_id = sha256(&layer)?;
    let mut entrypoint = vec![format!("/bin/{file_name}")];
    entrypoint.extend(image.args.iter().map(|a| a.to_string()));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    });
    write(&work.join("config.json"), &config.to_string())?;
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [image.reference],
        "Layers": ["layer.tar"],
    }]);
    write(&work.join("manifest.json"), &manifest.to_string())?;
    let tarball = dir.join(format!("{file_name}.tar"));
    // Renamed into place when complete: an interrupted pack never leaves a tarball that looks done.
    let partial = dir.join(format!("{file_name}.tar.partial"));
    run(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(&partial)
        .args(["manifest.json", "config.json", "layer.tar"]))?;
    std::fs::rename(&partial, &tarball)
        .map_err(|e| Error::io(format!("renaming {}", partial.display()), e))?;
    std::fs::remove_dir_all(&work)
        .map_err(|e| Error::io(format!("removing {}", work.display()), e))?;
    Ok(tarball)
}

/// `ctr -n k8s.io images import` into the node's containerd.
pub fn import(ctr: &Path, address: &Path, tarball: &Path) -> Result<(), Error> {
    run(Command::new(ctr)
        .arg("--address")
        .arg(address)
        .args(["-n", "k8s.io", "images", "import"])
        .arg(tarball))
}

fn sha256(path: &Path) -> Result<String, Error> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| Error::io("running sha256sum", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(sum) if out.status.success() && sum.len() == 64 => Ok(sum.to_owned()),
        _ => Err(bad(format!(
            "sha256sum {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ))),
    }
}

pub(crate) fn run(command: &mut Command) -> Result<(), Error> {
    let what = format!("{command:?}");
    let out = command
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(bad(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn bad(message: String) -> Error {
    Error::Node(message)
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
