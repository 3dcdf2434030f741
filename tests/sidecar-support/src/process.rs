//! Child processes the tests run against: a real `redis-server` and the sidecar binary. Both are
//! killed on drop, so a failing (panicking) test cleans up too; the sidecar's stderr goes to a
//! file whose tail is printed when the test fails.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::client::{RawClient, ReadError};
use super::resp::show;

const REDIS_SERVER: &str = "redis-server";
const START_DEADLINE: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchboard-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nobody listens on right now, for a child process to bind.
///
/// Not one the OS picks with port 0: those come from the ephemeral range, where every outgoing
/// connection (the tests open thousands) also takes its source port, so one could take it
/// between our release and the child's bind ("Address already in use", about one run in ten).
/// Ports below the ephemeral range are never handed out that way. Each process walks its own
/// stretch of them (seeded by its PID) so test binaries running side by side do not collide,
/// and checks each port is free before handing it out.
pub fn free_port() -> u16 {
    const LOW: u32 = 15_000;
    const SPAN: u32 = 17_000; // up to 31_999, below Linux's default ephemeral start (32768)
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let seed = (u64::from(std::process::id()) * 977 % u64::from(SPAN)) as u32;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let port = (LOW + (seed + step) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A real `redis-server` on a loopback port, with no persistence, in its own directory.
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    /// Further `redis-server` arguments (`--replicaof`, `--masterauth`, …).
    args: Vec<String>,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// With `requirepass`, for comparing the sidecar's local authentication with Redis's own.
    pub fn start_with_password(password: Option<&str>) -> Self {
        Self::start_with_args(password, &[])
    }

    /// With extra `redis-server` arguments, e.g. `["--replicaof", "127.0.0.1", "6380"]`.
    pub fn start_with_args(password: Option<&str>, args: &[&str]) -> Self {
        Self::start_on_port(free_port(), password, args)
    }

    /// On a port the caller picked (with [`free_port`]), for arguments that must name the port
    /// before the server starts: a cluster node's `--cluster-config-file <dir>/nodes-<port>.conf`.
    pub fn start_on_port(port: u16, password: Option<&str>, args: &[&str]) -> Self {
        let mut server = Self {
            port,
            password: password.map(str::to_string),
            args: args.iter().map(|a| a.to_string()).collect(),
            dir: TempDir::new("redis"),
            child: None,
        };
        server.start_again();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The URL the sidecar's `--upstream` takes, with credentials when the server has a password.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://default:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The URL without credentials, as the operator's ConfigMap carries it.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would: no shutdown handshake). The port stays reserved for
    /// [`RedisServer::start_again`].
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server on the same port (after [`RedisServer::stop`]) and waits until it answers.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "redis-server on {} is already running",
            self.port
        );
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.args);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {REDIS_SERVER} (is it installed?): {e}"));
        self.child = Some(child);
        self.wait_until_answering(&log);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// The running server's process id (the benchmark reads its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The server's log so far (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("redis.log"), lines)
    }

    fn wait_until_answering(&mut self, log: &Path) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server on port {} exited with {status}; log:\n{}",
                    self.port,
                    tail(log, 30)
                );
            }
            if let Ok(mut s) = TcpStream::connect(self.addr()) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0u8; 64];
                // A server with requirepass answers NOAUTH: it is up all the same.
                if s.write_all(b"PING\r\n").is_ok()
                    && matches!(s.read(&mut reply), Ok(n) if n > 0 && (reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH")))
                {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {} not answering after {START_DEADLINE:?}; log:\n{}",
                    self.port,
                    tail(log, 30)
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// A direct, authenticated connection for setting up and inspecting state behind a test's back.
    pub fn admin(&self) -> RawClient {
        let mut c = RawClient::connect(self.addr(), "admin");
        if let Some(p) = &self.password {
            let reply = c.call(super::resp::command(&[b"AUTH", p.as_bytes()]));
            assert_eq!(reply, b"+OK\r\n", "admin AUTH: {}", show(&reply));
        }
        c
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// How to start a sidecar: upstream or embedded, with or without a local password, extra flags.
#[derive(Default, Clone)]
pub struct SidecarOptions {
    pub upstream: Option<String>,
    pub password: Option<String>,
    pub extra_args: Vec<String>,
    /// Another build of the sidecar (default: the one cargo built for this test or bench).
    pub binary: Option<PathBuf>,
    /// `RUST_LOG` for the sidecar (default: the caller's `RUST_LOG`, else `info`).
    pub log: Option<String>,
    /// `SWITCHBOARD_*` variables, as the operator sets them.
    pub env: Vec<(String, String)>,
    /// Return at once instead of waiting for `/readyz` (for a sidecar that must not get ready).
    pub no_wait: bool,
}

impl SidecarOptions {
    pub fn upstream(url: String) -> Self {
        Self {
            upstream: Some(url),
            ..Self::default()
        }
    }

    /// No `--upstream`: the sidecar is its own pub/sub broker.
    pub fn embedded() -> Self {
        Self::default()
    }

    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_string());
        self
    }

    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.extra_args
            .extend([flag.to_string(), value.to_string()]);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn no_wait(mut self) -> Self {
        self.no_wait = true;
        self
    }

    pub fn binary(mut self, path: PathBuf) -> Self {
        self.binary = Some(path);
        self
    }

    pub fn log(mut self, filter: &str) -> Self {
        self.log = Some(filter.to_string());
        self
    }

    pub fn start(self) -> Sidecar {
        Sidecar::start(self)
    }
}

/// Overrides where [`sidecar_binary`] looks (any build of the sidecar).
pub const SIDECAR_BIN_ENV: &str = "SWITCHBOARD_SIDECAR_BIN";

/// The `switchboard-sidecar` binary cargo built for the running test or bench:
/// `target/<profile>/switchboard-sidecar`, the parent of the `deps/` directory the test executable
/// runs from (`SWITCHBOARD_SIDECAR_BIN` overrides it). Panics, naming the path, if it is not there.
pub fn sidecar_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(SIDECAR_BIN_ENV) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let profile_dir = exe
        .parent()
        .filter(|d| d.ends_with("deps"))
        .and_then(Path::parent)
        .or_else(|| exe.parent())
        .expect("the test executable has a directory");
    let binary = profile_dir.join(format!(
        "switchboard-sidecar{}",
        std::env::consts::EXE_SUFFIX
    ));
    assert!(
        binary.is_file(),
        "no sidecar binary at {} (run the tests through `cargo test -p switchboard-sidecar`, which builds it, or set {SIDECAR_BIN_ENV})",
        binary.display()
    );
    binary
}

/// The sidecar binary under test, listening on free loopback ports.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    stderr_path: PathBuf,
    _dir: TempDir,
    child: Option<Child>,
}

impl Sidecar {
    fn start(options: SidecarOptions) -> Self {
        let dir = TempDir::new("sidecar");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stderr_path = dir.path().join("stderr.log");
        // Logs go to stdout or stderr depending on the subscriber; keep both, in order.
        let stderr = File::create(&stderr_path).expect("create the sidecar's stderr file");
        let stdout = stderr.try_clone().expect("clone the log file handle");
        let binary = options.binary.clone().unwrap_or_else(sidecar_binary);
        let mut cmd = Command::new(binary);
        cmd.args([
            "--listen",
            &addr.to_string(),
            "--http-listen",
            &http_addr.to_string(),
        ])
        .args(&options.extra_args)
        .env(
            "RUST_LOG",
            options
                .log
                .clone()
                .or_else(|| std::env::var("RUST_LOG").ok())
                .unwrap_or_else(|| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
        // Keep the process environment from configuring what the flags leave unset.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        if let Some(url) = &options.upstream {
            cmd.args(["--upstream", url]);
        }
        if let Some(p) = &options.password {
            cmd.args(["--password", p]);
        }
        let child = cmd.spawn().expect("spawn the switchboard-sidecar binary");
        let mut sidecar = Self {
            addr,
            http_addr,
            stderr_path,
            _dir: dir,
            child: Some(child),
        };
        if !options.no_wait {
            sidecar.wait_until_ready();
        }
        sidecar
    }

    /// Everything the sidecar logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Polls `/readyz` until it answers 200: the upstream is connected (or the sidecar is embedded).
    pub fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            self.assert_running();
            let last = match http_get(self.http_addr, "/readyz") {
                Ok(200) => return,
                Ok(status) => format!("HTTP {status}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "sidecar /readyz on {} not 200 after {START_DEADLINE:?} (last: {last}); \
                     stderr:\n{}",
                    self.http_addr,
                    self.stderr_tail(40)
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// `/readyz`'s status code right now.
    pub fn readyz(&self) -> Result<u16, String> {
        http_get(self.http_addr, "/readyz")
    }

    /// Fails the test if the sidecar has exited (it must never crash, whatever it is sent).
    pub fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            self.child = None;
            panic!(
                "the sidecar exited with {status}; stderr:\n{}",
                self.stderr_tail(60)
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Polls until the sidecar exits (a sidecar that must refuse to start); fails the test, with
    /// its stderr, if it still runs after `deadline`. Returns its exit status.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + deadline;
        loop {
            let child = self
                .child
                .as_mut()
                .expect("the sidecar's exit was already collected");
            if let Some(status) = child.try_wait().expect("poll the sidecar process") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < until,
                "the sidecar still runs {deadline:?} after start; stderr:\n{}",
                self.stderr_tail(40)
            );
            std::thread::sleep(POLL_EVERY);
        }
    }

    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr_path, lines)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        kill(&mut self.child);
        if std::thread::panicking() {
            // A panic's message comes before its backtrace, which a tail would keep alone.
            let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
            if let Some(at) = text.find("panicked at") {
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let panic: Vec<&str> = text[start..].lines().take(12).collect();
                eprintln!(
                    "---- sidecar {} PANICKED ----\n{}\n----",
                    self.addr,
                    panic.join("\n")
                );
            }
            eprintln!(
                "---- sidecar {} stderr (last 60 lines) ----\n{}\n---- end of sidecar stderr ----",
                self.addr,
                self.stderr_tail(60)
            );
        }
    }
}

/// The raw response of a bare HTTP/1.0 GET (no client crate: health and metrics need no more).
fn fetch(addr: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    Ok(response)
}

/// A bare HTTP/1.0 GET; returns the status code. Enough for health endpoints.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let response = fetch(addr, path)?;
    let head = String::from_utf8_lossy(&response);
    let status_line = head.lines().next().unwrap_or_default();
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", show(&response)))
}

/// The body of an HTTP GET (for `/metrics`).
pub fn http_body(addr: SocketAddr, path: &str) -> Result<String, String> {
    let text = String::from_utf8_lossy(&fetch(addr, path)?).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .ok_or_else(|| format!("not an HTTP response: {text:?}"))
}

/// Whether a read error means the peer is gone.
pub fn is_closed(e: &ReadError) -> bool {
    matches!(e, ReadError::Closed(p) if p.is_empty())
}

/// Polls `done` every 20 ms until it holds; fails the test naming `what` after `deadline`.
pub fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(POLL_EVERY);
    }
}
