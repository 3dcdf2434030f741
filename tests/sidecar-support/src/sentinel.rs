//! A real Sentinel deployment on loopback: one primary, its replicas, and a quorum of
//! `redis-sentinel` processes, all killed on drop. Waits are polls with deadlines on what the
//! Sentinels themselves report, never fixed sleeps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{RedisServer, TempDir, free_port, wait_for};
use super::resp::{Value, command, frame_len, parse};

/// Failover timing small enough for a test: a primary is down after a second of silence.
const DOWN_AFTER_MS: u64 = 1000;
const FAILOVER_TIMEOUT_MS: u64 = 3000;
/// Sentinels find each other and the replicas through hello messages every 2 s and INFO every
/// 10 s; on a loaded machine that takes a while.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(60);

/// One command on a fresh connection (authenticated first when `password` is set); `Err` when
/// the process is down or does not answer in time.
pub fn query(addr: SocketAddr, password: Option<&str>, args: &[&str]) -> Result<Value, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(p) = password {
        out.extend(command(&[b"AUTH", p.as_bytes()]));
    }
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    out.extend(command(&args));
    s.write_all(&out).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let wanted = if password.is_some() { 2 } else { 1 };
    while frames.len() < wanted {
        match frame_len(&buf)? {
            Some(n) => frames.push(parse(&buf.drain(..n).collect::<Vec<u8>>())?),
            None => {
                let mut chunk = [0u8; 16 * 1024];
                let n = s.read(&mut chunk).map_err(|e| format!("{addr}: {e}"))?;
                if n == 0 {
                    return Err(format!("{addr}: closed"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    Ok(frames.pop().expect("one frame per command"))
}

fn text(v: &Value) -> String {
    String::from_utf8_lossy(v.as_bytes().unwrap_or_default()).into_owned()
}

fn elements(v: &Value) -> &[Value] {
    match v {
        Value::Aggregate(_, Some(items)) => items,
        _ => &[],
    }
}

/// PEM files for a group that speaks TLS: every server and Sentinel serves `cert` (valid for
/// 127.0.0.1) and trusts `ca`; replication and the Sentinels' own links use TLS too.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The `redis-server` / `redis-sentinel` settings serving TLS on `port`.
    fn settings(&self, port: u16) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        [
            ("tls-port", port.to_string()),
            ("tls-cert-file", path(&self.cert)),
            ("tls-key-file", path(&self.key)),
            ("tls-ca-cert-file", path(&self.ca)),
            ("tls-auth-clients", "no".into()),
            ("tls-replication", "yes".into()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [format!("--{k}"), v])
        .collect()
    }
}

/// A `redis-sentinel` process with its own (rewritable) config file.
pub struct SentinelProcess {
    pub port: u16,
    /// Its TLS port, in a TLS group (the plain `port` stays for the test's own queries).
    pub tls_port: Option<u16>,
    dir: TempDir,
    child: Option<Child>,
}

impl SentinelProcess {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A primary, replicas and Sentinels monitoring them as `master`.
pub struct SentinelGroup {
    pub master: String,
    /// Every data server; the first one starts as the primary.
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProcess>,
    password: Option<String>,
    /// In a TLS group, each server's TLS port (what the Sentinels name), in `servers` order.
    tls_ports: Vec<u16>,
}

impl SentinelGroup {
    /// Starts everything and waits until every Sentinel knows the primary, all replicas and
    /// every other Sentinel (what a failover needs).
    pub fn start(master: &str, replicas: usize, sentinels: usize, password: Option<&str>) -> Self {
        Self::start_with_tls(master, replicas, sentinels, password, None)
    }

    /// The same, every server and Sentinel also serving TLS (see [`TlsFiles`]); the Sentinels
    /// monitor and name the TLS ports.
    pub fn start_with_tls(
        master: &str,
        replicas: usize,
        sentinels: usize,
        password: Option<&str>,
        tls: Option<&TlsFiles>,
    ) -> Self {
        let tls_ports: Vec<u16> = match tls {
            Some(_) => (0..=replicas).map(|_| free_port()).collect(),
            None => Vec::new(),
        };
        let server_args = |i: usize| -> Vec<String> {
            let mut args = tls.map(|t| t.settings(tls_ports[i])).unwrap_or_default();
            if let Some(p) = password {
                args.extend(["--masterauth".to_string(), p.to_string()]);
            }
            args
        };
        let args0 = server_args(0);
        let args0: Vec<&str> = args0.iter().map(String::as_str).collect();
        let primary = RedisServer::start_with_args(password, &args0);
        // Replicas follow the port the Sentinels will name: the TLS one in a TLS group.
        let primary_port = tls_ports.first().copied().unwrap_or(primary.port());
        let mut servers = vec![primary];
        for i in 1..=replicas {
            let mut args = vec![
                "--replicaof".to_string(),
                "127.0.0.1".to_string(),
                primary_port.to_string(),
            ];
            args.extend(server_args(i));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            servers.push(RedisServer::start_with_args(password, &args));
        }
        let quorum = sentinels / 2 + 1;
        let sentinels = (0..sentinels)
            .map(|_| start_sentinel(master, primary_port, quorum, password, tls))
            .collect();
        let group = Self {
            master: master.to_string(),
            servers,
            sentinels,
            password: password.map(str::to_string),
            tls_ports,
        };
        group.wait_until_settled(group.servers[0].port());
        group
    }

    /// The URL the operator writes: every Sentinel, the master's name, no password
    /// (`rediss+sentinel://` and the TLS ports in a TLS group).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.tls_port.unwrap_or(s.port)))
            .collect();
        let scheme = if self.tls_ports.is_empty() {
            "redis+sentinel"
        } else {
            "rediss+sentinel"
        };
        format!("{scheme}://{}/{}", hosts.join(","), self.master)
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// What one Sentinel says the primary's port is (its plain port, in a TLS group too).
    pub fn primary_port_per(&self, sentinel: &SentinelProcess) -> Option<u16> {
        let reply = query(
            sentinel.addr(),
            self.password(),
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master],
        )
        .ok()?;
        let named: u16 = text(elements(&reply).get(1)?).parse().ok()?;
        if self.tls_ports.is_empty() {
            return Some(named);
        }
        let i = self.tls_ports.iter().position(|p| *p == named)?;
        Some(self.servers[i].port())
    }

    /// The data server on `port`.
    pub fn server(&mut self, port: u16) -> &mut RedisServer {
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no data server on port {port}"))
    }

    /// `ROLE`'s first word for the server on `port` (`master`, `slave`), if it answers.
    pub fn role(&self, port: u16) -> Option<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let reply = query(addr, self.password(), &["ROLE"]).ok()?;
        elements(&reply).first().map(text)
    }

    /// Waits until every Sentinel names `primary`, which says it is a master, and each knows
    /// the other Sentinels and the live replicas.
    pub fn wait_until_settled(&self, primary: u16) {
        let replicas = self.servers.len() - 1;
        let others = self.sentinels.len() - 1;
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let mut last = String::new();
            let settled = self.role(primary).as_deref() == Some("master")
                && self.sentinels.iter().all(|s| {
                    let named = self.primary_port_per(s);
                    let known = |what: &str| {
                        query(s.addr(), self.password(), &["SENTINEL", what, &self.master])
                            .map(|r| {
                                elements(&r)
                                    .iter()
                                    .filter(|entry| !flags_of(entry).contains("down"))
                                    .count()
                            })
                            .unwrap_or(0)
                    };
                    let (r, o) = (known("REPLICAS"), known("SENTINELS"));
                    last = format!(
                        "sentinel {} names {named:?}, knows {r} replicas and {o} sentinels",
                        s.port
                    );
                    named == Some(primary) && r >= replicas && o >= others
                });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels did not settle on primary {primary} within {SETTLE_DEADLINE:?} ({last}); log:\n{}",
                self.sentinels[0].log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every Sentinel names a primary other than `old` and that server says it is
    /// a master; returns its port.
    pub fn wait_for_new_primary(&self, old: u16) -> u16 {
        let mut new = None;
        wait_for(
            "the Sentinels to agree on a new primary",
            SETTLE_DEADLINE,
            || {
                let named: Vec<Option<u16>> = self
                    .sentinels
                    .iter()
                    .map(|s| self.primary_port_per(s))
                    .collect();
                new = named[0].filter(|p| *p != old);
                new.is_some()
                    && named.iter().all(|n| *n == new)
                    && self.role(new.unwrap()).as_deref() == Some("master")
            },
        );
        new.expect("checked above")
    }

    /// Waits until the group has settled after a failover and returns its primary: every
    /// Sentinel names it, it says it is a master, and every other server that answers says it
    /// is a replica of it. A former primary that is still up is demoted only on an INFO reply
    /// that comes at least 8 s after the Sentinels named it a replica, and on a loaded machine
    /// the Sentinels may fail over once more on their own, so a test asks the group which
    /// server is the primary now instead of assuming it. On a timeout the message carries what
    /// every server and Sentinel said.
    pub fn settled_primary(&self) -> u16 {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .map(|s| self.primary_port_per(s))
                .collect();
            if let Some(primary) = named[0].filter(|_| named.iter().all(|n| *n == named[0])) {
                let settled = self.servers.iter().all(|s| {
                    let role = self.roles(s.port());
                    if s.port() == primary {
                        role.first().map(String::as_str) == Some("master")
                    } else {
                        role.is_empty()
                            || role.first().map(String::as_str) == Some("slave")
                                && role.get(2) == Some(&self.named_port(primary).to_string())
                    }
                });
                if settled {
                    return primary;
                }
            }
            if Instant::now() >= deadline {
                let servers: Vec<String> = self
                    .servers
                    .iter()
                    .map(|s| format!("server {} ROLE {:?}", s.port(), self.roles(s.port())))
                    .collect();
                let logs: Vec<String> = self
                    .sentinels
                    .iter()
                    .map(|s| format!("-- sentinel {} --\n{}", s.port, s.log_tail()))
                    .collect();
                panic!(
                    "the group did not settle within {SETTLE_DEADLINE:?}: the Sentinels name {named:?}\n{}\n{}",
                    servers.join("\n"),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ROLE`'s reply for the server on `port` as text (empty when it does not answer): for a
    /// replica, `slave`, its primary's host and port, and the link state.
    fn roles(&self, port: u16) -> Vec<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        query(addr, self.password(), &["ROLE"])
            .map(|reply| elements(&reply).iter().map(text).collect())
            .unwrap_or_default()
    }

    /// The port replicas name for the server whose plain port is `port` (its TLS port in a
    /// TLS group, where replication runs over TLS).
    fn named_port(&self, port: u16) -> u16 {
        match self.servers.iter().position(|s| s.port() == port) {
            Some(i) if !self.tls_ports.is_empty() => self.tls_ports[i],
            _ => port,
        }
    }

    /// `SENTINEL FAILOVER`, retried while the Sentinel has no replica it considers fit yet.
    pub fn force_failover(&self) {
        let sentinel = &self.sentinels[0];
        wait_for(
            "SENTINEL FAILOVER to be accepted (it refuses while no replica looks fit)",
            SETTLE_DEADLINE,
            || {
                matches!(
                    query(
                        sentinel.addr(),
                        self.password(),
                        &["SENTINEL", "FAILOVER", &self.master]
                    ),
                    Ok(Value::Line(b'+', _))
                )
            },
        );
    }
}

/// The `flags` field of one `SENTINEL REPLICAS/SENTINELS` entry (a flat key/value list).
fn flags_of(entry: &Value) -> String {
    let items = elements(entry);
    items
        .chunks(2)
        .find(|kv| kv.first().map(text).as_deref() == Some("flags"))
        .and_then(|kv| kv.get(1))
        .map(text)
        .unwrap_or_default()
}

fn start_sentinel(
    master: &str,
    primary: u16,
    quorum: usize,
    password: Option<&str>,
    tls: Option<&TlsFiles>,
) -> SentinelProcess {
    let dir = TempDir::new("sentinel");
    let port = free_port();
    let tls_port = tls.map(|_| free_port());
    let mut conf = format!(
        "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
         sentinel monitor {master} 127.0.0.1 {primary} {quorum}\n\
         sentinel down-after-milliseconds {master} {DOWN_AFTER_MS}\n\
         sentinel failover-timeout {master} {FAILOVER_TIMEOUT_MS}\n\
         sentinel parallel-syncs {master} 2\n",
        dir = dir.path().display()
    );
    if let Some(p) = password {
        conf.push_str(&format!(
            "sentinel auth-pass {master} {p}\nrequirepass {p}\n"
        ));
    }
    if let (Some(tls), Some(tls_port)) = (tls, tls_port) {
        for pair in tls.settings(tls_port).chunks(2) {
            conf.push_str(&format!(
                "{} {}\n",
                pair[0].trim_start_matches("--"),
                pair[1]
            ));
        }
    }
    let path = dir.path().join("sentinel.conf");
    std::fs::write(&path, conf).expect("write sentinel.conf");
    let child = Command::new("redis-sentinel")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn redis-sentinel (apt-get install redis-sentinel): {e}"));
    let sentinel = SentinelProcess {
        port,
        tls_port,
        dir,
        child: Some(child),
    };
    wait_for("redis-sentinel to answer", Duration::from_secs(30), || {
        query(sentinel.addr(), password, &["PING"]).is_ok()
    });
    sentinel
}
