//! The control plane's child processes, and the guardian that cleans up after them.
//!
//! A test that panics unwinds and runs `Drop`, but a test binary that is killed (a timeout, Ctrl-C,
//! SIGKILL) does not, and a `static` control plane is never dropped. So every component's process
//! group is also registered with a guardian: a tiny `sh` in its own process group that reads pids on
//! its stdin. When its stdin closes without the word `done`, its owner is gone, and it terminates
//! every registered group and removes the temporary directory.
//!
//! In node mode the guardian also holds the machine-wide node lock and runs the run directory's
//! `teardown.sh` (see `node`) before it kills anything: on `teardown` from an orderly stop, and on
//! its own when its owner vanished.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::Error;

const GUARDIAN: &str = r#"
root=$1 lock=$2
if [ -n "$lock" ]; then
  # One node run per machine. The lock is this shell's, so it is held until the cleanup is over,
  # even when the test process is long gone. A run whose guardian died too (the machine's own
  # processes killed) left its directory in the lock file: undo it before starting.
  exec 9>>"$lock"
  flock -w "$3" 9 || { echo "timeout"; exit 75; }
  prev=$(cat "$lock")
  if [ -n "$prev" ] && [ "$prev" != "$root" ] && [ -x "$prev/teardown.sh" ]; then
    "$prev/teardown.sh" "$prev" >>"$prev/teardown.log" 2>&1
    rm -rf --one-file-system "$prev"
  fi
  echo "$root" >"$lock"
fi
echo ready
teardown() {
  if [ -x "$root/teardown.sh" ]; then "$root/teardown.sh" "$root" >>"$root/teardown.log" 2>&1; fi
}
unlock() { if [ -n "$lock" ]; then : >"$lock"; fi; }
pids=
while read -r line; do
  case $line in
    teardown) teardown; echo torn-down ;;
    done) rm -rf --one-file-system "$root"; unlock; exit 0 ;;
    keep) unlock; exit 0 ;;
    *) pids="$pids $line" ;;
  esac
done
teardown
for p in $pids; do kill -TERM "-$p" 2>/dev/null; done
i=0
while [ $i -lt 50 ]; do
  alive=
  for p in $pids; do kill -0 "-$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1
  i=$((i + 1))
done
for p in $pids; do kill -KILL "-$p" 2>/dev/null; done
rm -rf --one-file-system "$1"
unlock
"#;

/// Kills whatever was registered with it once its owner disappears, even without `Drop`.
pub struct Guardian {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

/// A machine-wide lock the guardian takes (and holds until its cleanup is done) before it reports
/// ready, waiting up to `wait` for an earlier holder.
pub struct Lock<'a> {
    pub path: &'a Path,
    pub wait: Duration,
}

impl Guardian {
    pub fn start(root: &Path, lock: Option<Lock<'_>>) -> Result<Self, Error> {
        let (lock_path, wait) = lock.map_or((Path::new(""), 0), |l| (l.path, l.wait.as_secs()));
        let mut child = Command::new("sh")
            .args(["-c", GUARDIAN, "switchboard-testkit-guardian"])
            .arg(root)
            .arg(lock_path)
            .arg(wait.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its own process group, so a Ctrl-C aimed at the test run does not kill it before it
            // has cleaned up.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("starting the cleanup guardian (sh)", e))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("guardian stdout is piped"));
        let mut guardian = Self {
            child,
            stdin,
            stdout,
        };
        match guardian.read_line()?.as_str() {
            "ready" => Ok(guardian),
            "timeout" => Err(Error::Timeout {
                what: format!("the node lock {}", lock_path.display()),
                waited: Duration::from_secs(wait),
                context: format!(
                    "; another node run holds it (its directory: {})",
                    std::fs::read_to_string(lock_path)
                        .unwrap_or_default()
                        .trim()
                ),
            }),
            other => Err(Error::io(
                "starting the cleanup guardian",
                std::io::Error::other(format!("unexpected reply {other:?}")),
            )),
        }
    }

    fn read_line(&mut self) -> Result<String, Error> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| Error::io("reading from the cleanup guardian", e))?;
        Ok(line.trim().to_owned())
    }

    /// Runs the run directory's `teardown.sh` now, while the control plane still runs, and waits
    /// for it to finish.
    pub fn teardown(&mut self) -> Result<(), Error> {
        let stdin = self
            .stdin
            .as_mut()
            .expect("guardian stdin is open until finish()");
        writeln!(stdin, "teardown").map_err(|e| Error::io("asking for the teardown", e))?;
        match self.read_line()?.as_str() {
            "torn-down" => Ok(()),
            other => Err(Error::io(
                "waiting for the teardown",
                std::io::Error::other(format!("the guardian replied {other:?}")),
            )),
        }
    }

    fn register(&mut self, pid: u32) -> Result<(), Error> {
        let stdin = self
            .stdin
            .as_mut()
            .expect("guardian stdin is open until finish()");
        writeln!(stdin, "{pid}")
            .map_err(|e| Error::io("registering a process with the guardian", e))
    }

    /// Orderly end: the components are already stopped; remove the directory unless `keep`.
    pub fn finish(&mut self, keep: bool) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{}", if keep { "keep" } else { "done" });
        }
        let _ = self.child.wait();
    }
}

/// One running component (etcd, kube-apiserver, ...), its output going to `log`.
pub struct Component {
    pub name: &'static str,
    pub log: PathBuf,
    child: Child,
}

impl Component {
    pub fn spawn(
        guardian: &mut Guardian,
        name: &'static str,
        binary: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> Result<Self, Error> {
        Self::spawn_with_env(guardian, name, binary, args, &[], log_dir)
    }

    /// As [`Component::spawn`], with extra environment variables, and the PID recorded in
    /// `<log_dir>/pids/<name>` for `teardown.sh`.
    pub fn spawn_with_env(
        guardian: &mut Guardian,
        name: &'static str,
        binary: &Path,
        args: &[String],
        env: &[(&str, String)],
        log_dir: &Path,
    ) -> Result<Self, Error> {
        let log = log_dir.join(format!("{name}.log"));
        let out =
            File::create(&log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("duplicating a log file handle", e))?;
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", binary.display()), e))?;
        let component = Self { name, log, child };
        guardian.register(component.child.id())?;
        let pids = log_dir.join("pids");
        std::fs::create_dir_all(&pids)
            .and_then(|()| std::fs::write(pids.join(name), component.child.id().to_string()))
            .map_err(|e| Error::io(format!("recording the PID of {name}"), e))?;
        Ok(component)
    }

    /// `Err` with the end of its log if the process has already exited.
    pub fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::Exited {
                component: self.name,
                status: status.to_string(),
                log_tail: self.log_tail(),
            }),
            _ => Ok(()),
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Tests need no graceful shutdown: the data dies with the temporary directory.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn guardian_stops_everything_when_its_owner_vanishes() {
        let root = crate::make_root().unwrap();
        let mut guardian = Guardian::start(&root, None).unwrap();
        let mut sleeper = Component::spawn(
            &mut guardian,
            "sleeper",
            Path::new("sleep"),
            &["600".into()],
            &root,
        )
        .unwrap();
        // What a killed test binary amounts to: stdin closes without the word `done`.
        drop(guardian.stdin.take());

        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            // Reap here: until then the sleeper is our zombie and still counts as alive.
            if let Some(status) = sleeper.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the guardian did not stop the sleeper"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(15), "stopped by SIGTERM: {status}");
        guardian.child.wait().unwrap();
        assert!(!root.exists(), "{} was not removed", root.display());
    }

    #[test]
    fn a_second_guardian_waits_for_the_lock_and_gives_up_at_its_deadline() {
        let (first_root, second_root) = (crate::make_root().unwrap(), crate::make_root().unwrap());
        let lock = first_root.with_extension("lock");
        let lock_for = |secs| {
            Some(Lock {
                path: &lock,
                wait: Duration::from_secs(secs),
            })
        };
        let mut first = Guardian::start(&first_root, lock_for(5)).unwrap();
        match Guardian::start(&second_root, lock_for(1)) {
            Err(Error::Timeout { what, .. }) => assert!(what.contains("lock"), "{what}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("two guardians held one lock"),
        }
        // The lock file names the holder's directory (so a later run can undo a dead one's).
        assert_eq!(
            std::fs::read_to_string(&lock).unwrap().trim(),
            first_root.display().to_string()
        );
        first.finish(false);
        let mut second = Guardian::start(&second_root, lock_for(5)).unwrap();
        second.finish(false);
        assert_eq!(std::fs::read_to_string(&lock).unwrap(), "");
        std::fs::remove_file(&lock).unwrap();
    }

    #[test]
    fn the_guardian_runs_the_teardown_when_its_owner_vanishes() {
        let root = crate::make_root().unwrap();
        let marker = root.with_extension("torn-down");
        std::fs::write(
            root.join("teardown.sh"),
            format!("#!/bin/sh\necho \"$1\" > {}\n", marker.display()),
        )
        .unwrap();
        std::fs::set_permissions(
            root.join("teardown.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut guardian = Guardian::start(&root, None).unwrap();
        drop(guardian.stdin.take());
        guardian.child.wait().unwrap();
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap().trim(),
            root.display().to_string()
        );
        assert!(!root.exists());
        std::fs::remove_file(&marker).unwrap();
    }

    #[test]
    fn orderly_finish_removes_the_directory() {
        let root = crate::make_root().unwrap();
        let mut guardian = Guardian::start(&root, None).unwrap();
        guardian.finish(false);
        assert!(!root.exists());
    }
}
