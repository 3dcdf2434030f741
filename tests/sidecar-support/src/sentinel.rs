//! A real Sentinel deployment on loopback: one primary, its replicas, and a quorum of
//! `redis-sentinel` processes, all killed on drop. Waits are polls with deadlines on what the
//! Sentinels themselves report, never fixed sleeps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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

/// A `redis-sentinel` process with its own (rewritable) config file.
pub struct SentinelProcess {
    pub port: u16,
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
}

impl SentinelGroup {
    /// Starts everything and waits until every Sentinel knows the primary, all replicas and
    /// every other Sentinel (what a failover needs).
    pub fn start(master: &str, replicas: usize, sentinels: usize, password: Option<&str>) -> Self {
        let primary = RedisServer::start_with_password(password);
        let primary_port = primary.port().to_string();
        let mut servers = vec![primary];
        for _ in 0..replicas {
            let mut args = vec!["--replicaof", "127.0.0.1", &primary_port];
            if let Some(p) = password {
                args.extend(["--masterauth", p]);
            }
            servers.push(RedisServer::start_with_args(password, &args));
        }
        let quorum = sentinels / 2 + 1;
        let sentinels = (0..sentinels)
            .map(|_| start_sentinel(master, servers[0].port(), quorum, password))
            .collect();
        let group = Self {
            master: master.to_string(),
            servers,
            sentinels,
            password: password.map(str::to_string),
        };
        group.wait_until_settled(group.servers[0].port());
        group
    }

    /// The URL the operator writes: every Sentinel, the master's name, no password.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), self.master)
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// What one Sentinel says the primary's port is.
    pub fn primary_port_per(&self, sentinel: &SentinelProcess) -> Option<u16> {
        let reply = query(
            sentinel.addr(),
            self.password(),
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master],
        )
        .ok()?;
        text(elements(&reply).get(1)?).parse().ok()
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
) -> SentinelProcess {
    let dir = TempDir::new("sentinel");
    let port = free_port();
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
        dir,
        child: Some(child),
    };
    wait_for("redis-sentinel to answer", Duration::from_secs(30), || {
        query(sentinel.addr(), password, &["PING"]).is_ok()
    });
    sentinel
}
