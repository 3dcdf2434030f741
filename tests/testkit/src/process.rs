//! The control plane's child processes, and the guardian that cleans up after them.
//!
//! A test that panics unwinds and runs `Drop`, but a test binary that is killed (a timeout, Ctrl-C,
//! SIGKILL) does not, and a `static` control plane is never dropped. So every component's process
//! group is also registered with a guardian: a tiny `sh` in its own process group that reads pids on
//! its stdin. When its stdin closes without the word `done`, its owner is gone, and it terminates
//! every registered group and removes the temporary directory.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::Error;

const GUARDIAN: &str = r#"
pids=
while read -r line; do
  case $line in
    done) rm -rf "$1"; exit 0 ;;
    keep) exit 0 ;;
    *) pids="$pids $line" ;;
  esac
done
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
rm -rf "$1"
"#;

/// Kills whatever was registered with it once its owner disappears, even without `Drop`.
pub struct Guardian {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guardian {
    pub fn start(root: &Path) -> Result<Self, Error> {
        let mut child = Command::new("sh")
            .args(["-c", GUARDIAN, "switchboard-testkit-guardian"])
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its own process group, so a Ctrl-C aimed at the test run does not kill it before it
            // has cleaned up.
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("starting the cleanup guardian (sh)", e))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
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
        let log = log_dir.join(format!("{name}.log"));
        let out =
            File::create(&log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("duplicating a log file handle", e))?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", binary.display()), e))?;
        let component = Self { name, log, child };
        guardian.register(component.child.id())?;
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
        let mut guardian = Guardian::start(&root).unwrap();
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
    fn orderly_finish_removes_the_directory() {
        let root = crate::make_root().unwrap();
        let mut guardian = Guardian::start(&root).unwrap();
        guardian.finish(false);
        assert!(!root.exists());
    }
}
