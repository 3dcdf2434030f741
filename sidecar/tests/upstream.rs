//! How the sidecar finds and logs in to the backplane: a password kept apart from the URL, a
//! primary found through Sentinel and followed across a failover, and channels spread over
//! shards. Every test runs real `redis-server` / `redis-sentinel` processes on loopback ports.

use switchboard_sidecar_support as support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::resp::{Value, parse};
use support::{
    RawClient, RedisServer, SentinelGroup, Sidecar, SidecarOptions, command, show, wait_for,
};

const PASSWORD: &str = "s3cret-upstream-pw";

#[test]
fn the_upstream_password_comes_from_its_own_variable_and_is_never_logged() {
    let redis = RedisServer::start_with_password(Some(PASSWORD));
    // The operator's way: the URL from a ConfigMap (no password), the password from a Secret.
    let sidecar = SidecarOptions::default()
        .env("SWITCHBOARD_UPSTREAM_URL", &redis.url_without_password())
        .env("SWITCHBOARD_UPSTREAM_PASSWORD", PASSWORD)
        .log("debug")
        .start();
    let mut sub = RawClient::connect(sidecar.addr, "sub");
    sub.call(command(&[b"SUBSCRIBE", b"news"]));
    let mut client = RawClient::connect(sidecar.addr, "client");
    assert_eq!(
        client.call(command(&[b"PUBLISH", b"news", b"hi"])),
        b":1\r\n"
    );
    assert_eq!(
        sub.read_frame(),
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
    );
    // Pass-through links log in with it too.
    assert_eq!(client.call(command(&[b"SET", b"ot:k", b"v"])), b"+OK\r\n");
    // The local listener has no password: SWITCHBOARD_PASSWORD is a different setting.
    assert_eq!(
        client.call(command(&[b"AUTH", b"x"])),
        &b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"[..]
    );

    // It replaces a password in the URL.
    let wrong_in_url = format!("redis://default:wrong@127.0.0.1:{}", redis.port());
    let overridden = SidecarOptions::upstream(wrong_in_url)
        .arg("--upstream-password", PASSWORD)
        .start();
    let mut c = RawClient::connect(overridden.addr, "c");
    assert_eq!(c.call(command(&[b"GET", b"ot:k"])), b"$1\r\nv\r\n");

    // A wrong one keeps the sidecar unready, says why, and shows no password anywhere.
    let refused = SidecarOptions::default()
        .env("SWITCHBOARD_UPSTREAM_URL", &redis.url_without_password())
        .env("SWITCHBOARD_UPSTREAM_PASSWORD", "not-the-password")
        .no_wait()
        .start();
    wait_for("the refusal to be logged", Duration::from_secs(10), || {
        refused.log_text().contains("WRONGPASS")
    });
    wait_for("/readyz to say not ready", Duration::from_secs(10), || {
        refused.readyz() == Ok(503)
    });
    for log in [
        sidecar.log_text(),
        overridden.log_text(),
        refused.log_text(),
    ] {
        assert!(!log.contains(PASSWORD), "a password was logged:\n{log}");
        assert!(
            !log.contains("not-the-password"),
            "a password was logged:\n{log}"
        );
    }
}

/// Publishers on several sidecars, each sending numbered messages on one channel from its own
/// thread until stopped, through whatever happens to the backplane meanwhile.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Vec<Arc<AtomicUsize>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(channel: &str, publishers: &[(&'static str, SocketAddr)]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut sent = Vec::new();
        let mut threads = Vec::new();
        for &(name, addr) in publishers {
            let count = Arc::new(AtomicUsize::new(0));
            let (stop, c, channel) = (stop.clone(), count.clone(), channel.to_owned());
            let mut client = RawClient::connect(addr, name);
            threads.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!("{name}-{i:06}");
                    let reply =
                        client.call(command(&[b"PUBLISH", channel.as_bytes(), body.as_bytes()]));
                    assert!(reply.starts_with(b":"), "{name}: {}", show(&reply));
                    i += 1;
                    c.store(i, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
            sent.push(count);
        }
        Traffic {
            stop,
            sent,
            threads,
        }
    }

    /// Total publishes acknowledged so far.
    fn total(&self) -> usize {
        self.sent.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Waits until `more` further publishes were acknowledged.
    fn wait_for_more(&self, more: usize) {
        let target = self.total() + more;
        wait_for("more publishes", Duration::from_secs(30), || {
            self.total() >= target
        });
    }

    /// Stops the publishers; returns how many each sent, in order.
    fn stop(self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a publisher failed");
        }
        self.sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// Reads `subscriber`'s messages until every publisher's every message arrived, each once and
/// in its publisher's order. (A publish the backplane may not have delivered when its links
/// died is sent again, announced, and the sidecars that delivered it drop the copy.)
fn expect_every_message(subscriber: &mut RawClient, publishers: &[&str], sent: &[usize]) {
    let mut next = vec![0usize; publishers.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().zip(sent).any(|(n, s)| n < s) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match subscriber.try_read_frame(left) {
            Ok(f) => f,
            Err(e) => panic!(
                "{}: stopped receiving: {e:?}; received up to {next:?} of {sent:?}",
                subscriber.name
            ),
        };
        let Value::Aggregate(_, Some(items)) = parse(&frame).unwrap() else {
            panic!("not a message: {}", show(&frame))
        };
        let body = String::from_utf8(items[2].as_bytes().unwrap().to_vec()).unwrap();
        let (who, n) = body.rsplit_once('-').unwrap();
        let p = publishers.iter().position(|x| *x == who).unwrap();
        let n: usize = n.parse().unwrap();
        assert!(
            n >= next[p],
            "{}: {who}'s message {n} arrived twice",
            subscriber.name
        );
        assert_eq!(
            n, next[p],
            "{}: {who}'s message {} is missing (got {n} next)",
            subscriber.name, next[p]
        );
        next[p] += 1;
    }
}

fn metric(http: SocketAddr, name: &str) -> f64 {
    let mut s = std::net::TcpStream::connect(http).expect("connect to the metrics port");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

fn sentinel_sidecar(group: &SentinelGroup, id: &str) -> Sidecar {
    SidecarOptions::default()
        .env("SWITCHBOARD_UPSTREAM_URL", &group.url())
        .env("SWITCHBOARD_UPSTREAM_PASSWORD", PASSWORD)
        .arg("--sidecar-id", id)
        .arg("--heartbeat-ms", "250")
        .arg("--peer-ttl-ms", "3000")
        .arg("--reconnect-max-ms", "250")
        .arg("--flush-grace-ms", "15000")
        .start()
}

#[test]
fn sentinel_failovers_lose_no_message_and_no_app_connection() {
    let mut group = SentinelGroup::start("chat", 2, 3, Some(PASSWORD));
    let a = sentinel_sidecar(&group, "pod-a");
    let b = sentinel_sidecar(&group, "pod-b");
    let mut subscribers: Vec<RawClient> = [("sub-a", a.addr), ("sub-b", b.addr)]
        .into_iter()
        .map(|(name, addr)| {
            let mut s = RawClient::connect(addr, name);
            s.call(command(&[b"SUBSCRIBE", b"news"]));
            s
        })
        .collect();
    let mut probe = RawClient::connect(a.addr, "probe");
    wait_for(
        "both pods to count in NUMSUB",
        Duration::from_secs(10),
        || probe.call(command(&[b"PUBSUB", b"NUMSUB", b"news"])) == b"*2\r\n$4\r\nnews\r\n:2\r\n",
    );
    assert_eq!(
        probe.call(command(&[b"SET", b"ot:before", b"1"])),
        b"+OK\r\n",
        "pass-through reaches the primary through Sentinel"
    );
    let publishers = ["pub-a", "pub-b"];

    // 1. The primary dies: the Sentinels promote a replica.
    let traffic = Traffic::start("news", &[(publishers[0], a.addr), (publishers[1], b.addr)]);
    traffic.wait_for_more(50);
    let first = group.servers[0].port();
    group.server(first).stop();
    group.wait_for_new_primary(first);
    wait_for("both sidecars ready again", Duration::from_secs(30), || {
        a.readyz() == Ok(200) && b.readyz() == Ok(200)
    });
    traffic.wait_for_more(50);
    let sent = traffic.stop();
    for s in &mut subscribers {
        expect_every_message(s, &publishers, &sent);
        eprintln!(
            "{}: all of {sent:?} messages after the primary died, once each",
            s.name
        );
    }
    for sidecar in [&a, &b] {
        assert!(
            metric(
                sidecar.http_addr,
                "switchboard_sidecar_upstream_reconnects_total"
            ) >= 1.0
        );
    }

    // 2. A live primary is demoted (`SENTINEL FAILOVER`): Sentinel closes its clients when it
    //    reconfigures it, and the sidecars must land on the new primary, not the demoted one.
    //    The group is asked which server is the primary before and after: on a loaded machine
    //    the Sentinels may have failed over once more on their own.
    let before = group.settled_primary();
    let traffic = Traffic::start("news", &[(publishers[0], a.addr), (publishers[1], b.addr)]);
    traffic.wait_for_more(50);
    group.force_failover();
    group.wait_for_new_primary(before);
    let primary = group.settled_primary();
    wait_for("both sidecars ready again", Duration::from_secs(30), || {
        a.readyz() == Ok(200) && b.readyz() == Ok(200)
    });
    traffic.wait_for_more(50);
    let sent = traffic.stop();
    for s in &mut subscribers {
        expect_every_message(s, &publishers, &sent);
        eprintln!(
            "{}: all of {sent:?} messages across SENTINEL FAILOVER, once each",
            s.name
        );
    }

    for (name, sidecar) in [("pod-a", &a), ("pod-b", &b)] {
        let m = |n| metric(sidecar.http_addr, n);
        eprintln!(
            "{name}: {} publishes replayed, {} copies dropped",
            m("switchboard_sidecar_publishes_replayed_total"),
            m("switchboard_sidecar_messages_deduplicated_total")
        );
    }

    // The sidecars are on the new primary: their links are there, and so are their writes.
    let clients = support::sentinel::query(
        SocketAddr::from(([127, 0, 0, 1], primary)),
        Some(PASSWORD),
        &["CLIENT", "LIST"],
    )
    .unwrap();
    let clients = String::from_utf8_lossy(clients.as_bytes().unwrap()).into_owned();
    for link in ["switchboard-sub:pod-a", "switchboard-ctl:pod-b"] {
        assert!(
            clients.contains(link),
            "{link} not on the new primary:\n{clients}"
        );
    }
    let mut after = RawClient::connect(b.addr, "after");
    assert_eq!(
        after.call(command(&[b"SET", b"ot:after", b"2"])),
        b"+OK\r\n"
    );
    assert_eq!(
        support::sentinel::query(
            SocketAddr::from(([127, 0, 0, 1], primary)),
            Some(PASSWORD),
            &["GET", "ot:after"]
        )
        .unwrap()
        .as_bytes(),
        Some(&b"2"[..])
    );
    // The app's subscriber connections were never closed: they still answer on the same socket.
    for s in &mut subscribers {
        assert_eq!(
            s.call(command(&[b"PING"])),
            b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"
        );
    }
}

#[test]
fn sentinel_errors_name_the_url_and_the_master() {
    let group = SentinelGroup::start("chat", 0, 1, None);
    let unknown = format!(
        "redis+sentinel://127.0.0.1:{}/nosuchmaster",
        group.sentinels[0].port
    );
    let sidecar = SidecarOptions::upstream(unknown).no_wait().start();
    wait_for(
        "the unknown master to be reported",
        Duration::from_secs(10),
        || {
            sidecar
                .log_text()
                .contains("knows a master named \"nosuchmaster\"")
        },
    );
    let port = support::free_port();
    let nobody = format!("redis+sentinel://127.0.0.1:{port}/chat");
    let sidecar = SidecarOptions::upstream(nobody.clone()).no_wait().start();
    wait_for(
        "the silent Sentinels to be reported",
        Duration::from_secs(10),
        || {
            sidecar
                .log_text()
                .contains(&format!("no Sentinel of {nobody} answered"))
        },
    );
    // Polled: the health port may open just after the first log line.
    wait_for("/readyz to say not ready", Duration::from_secs(10), || {
        sidecar.readyz() == Ok(503)
    });
}

/// The shard a channel lives on, computed independently of the sidecar: CRC-16/XMODEM of the
/// prefixed name, Redis Cluster's slot, modulo the shard count.
fn shard_of(prefixed: &str, shards: usize) -> usize {
    let mut crc: u16 = 0;
    for b in prefixed.bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    usize::from(crc) % 16384 % shards
}

/// The first name `stem<n>` that lives on `shard` of 2 under `prefix`.
fn name_on(stem: &str, prefix: &str, shard: usize) -> String {
    (0..)
        .map(|n| format!("{stem}{n}"))
        .find(|c| shard_of(&format!("{prefix}{c}"), 2) == shard)
        .unwrap()
}

fn server_says(redis: &RedisServer, args: &[&str]) -> Vec<u8> {
    let mut admin = redis.admin();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    admin.call(command(&args))
}

#[test]
fn channels_live_on_their_shard_and_one_shard_down_stalls_no_other() {
    let shard0 = &RedisServer::start();
    let mut shard1 = RedisServer::start();
    let urls = format!("{}  {}", shard0.url(), shard1.url());
    let prefix = "app:";
    let start = |id: &str| {
        SidecarOptions::default()
            .env("SWITCHBOARD_UPSTREAM_URL", &urls)
            .arg("--channel-prefix", prefix)
            .arg("--sidecar-id", id)
            .arg("--heartbeat-ms", "250")
            .arg("--peer-ttl-ms", "3000")
            .arg("--reconnect-max-ms", "250")
            .arg("--flush-grace-ms", "15000")
            .start()
    };
    let (a, b) = (start("pod-a"), start("pod-b"));
    let (c0, c1) = (name_on("chan", prefix, 0), name_on("chan", prefix, 1));
    let (s0, s1) = (name_on("shard", prefix, 0), name_on("shard", prefix, 1));
    let (r0, r1) = (name_on("room:", prefix, 0), name_on("room:", prefix, 1));

    let subscribe = |addr, name: &str, verb: &str, channels: &[&str]| {
        let mut c = RawClient::connect(addr, name);
        for ch in channels {
            c.call(command(&[verb.as_bytes(), ch.as_bytes()]));
        }
        c
    };
    let mut sub0_a = subscribe(a.addr, "sub0-a", "SUBSCRIBE", &[&c0]);
    let mut sub0_b = subscribe(b.addr, "sub0-b", "SUBSCRIBE", &[&c0]);
    let mut sub1_b = subscribe(b.addr, "sub1-b", "SUBSCRIBE", &[&c1]);
    let mut ssub_b = subscribe(b.addr, "ssub-b", "SSUBSCRIBE", &[&s0, &s1]);
    let mut psub_b = subscribe(b.addr, "psub-b", "PSUBSCRIBE", &["room:*"]);

    // Each shard carries only its own channels (and the sidecars' announcements of replays,
    // which every sidecar hears on every shard); patterns are on both.
    let list = |names: &[&str]| {
        let items: Vec<Vec<u8>> = names
            .iter()
            .map(|n| format!("${}\r\n{n}\r\n", n.len()).into_bytes())
            .collect();
        let mut out = format!("*{}\r\n", names.len()).into_bytes();
        items.iter().for_each(|i| out.extend(i));
        out
    };
    let apps = format!("{prefix}[^_]*");
    let announcements = format!("{prefix}__switchboard:replays");
    for (server, c, s) in [(shard0, &c0, &s0), (&shard1, &c1, &s1)] {
        assert_eq!(
            server_says(server, &["PUBSUB", "CHANNELS", &apps]),
            list(&[&format!("{prefix}{c}")]),
            "shard on port {}",
            server.port()
        );
        assert_eq!(
            server_says(server, &["PUBSUB", "NUMSUB", &announcements]),
            format!(
                "*2\r\n${}\r\n{announcements}\r\n:2\r\n",
                announcements.len()
            )
            .into_bytes()
        );
        assert_eq!(
            server_says(server, &["PUBSUB", "SHARDCHANNELS"]),
            list(&[&format!("{prefix}{s}")])
        );
        assert_eq!(server_says(server, &["PUBSUB", "NUMPAT"]), b":1\r\n");
    }
    // The registry and pass-through commands are on shard 0 only.
    let mut client = RawClient::connect(a.addr, "client");
    assert_eq!(client.call(command(&[b"SET", b"ot:k", b"v"])), b"+OK\r\n");
    assert_eq!(server_says(shard0, &["GET", "ot:k"]), b"$1\r\nv\r\n");
    assert_eq!(server_says(&shard1, &["GET", "ot:k"]), b"$-1\r\n");
    assert_eq!(
        server_says(shard0, &["EXISTS", "app:switchboard:peers"]),
        b":1\r\n"
    );
    assert_eq!(server_says(&shard1, &["DBSIZE"]), b":0\r\n");
    wait_for("fleet-wide counts", Duration::from_secs(10), || {
        client.call(command(&[
            b"PUBSUB",
            b"NUMSUB",
            c0.as_bytes(),
            c1.as_bytes(),
        ])) == format!(
            "*4\r\n${}\r\n{c0}\r\n:2\r\n${}\r\n{c1}\r\n:1\r\n",
            c0.len(),
            c1.len()
        )
        .into_bytes()
    });

    // Messages route: across pods, on either shard, and patterns hear both shards.
    let message = |word: &str, ch: &str, body: &str| {
        format!(
            "*3\r\n${}\r\n{word}\r\n${}\r\n{ch}\r\n${}\r\n{body}\r\n",
            word.len(),
            ch.len(),
            body.len()
        )
        .into_bytes()
    };
    assert_eq!(
        client.call(command(&[b"PUBLISH", c1.as_bytes(), b"one"])),
        b":1\r\n"
    );
    assert_eq!(sub1_b.read_frame(), message("message", &c1, "one"));
    for s in [&s0, &s1] {
        client.call(command(&[b"SPUBLISH", s.as_bytes(), b"sharded"]));
        assert_eq!(ssub_b.read_frame(), message("smessage", s, "sharded"));
    }
    for r in [&r0, &r1] {
        client.call(command(&[b"PUBLISH", r.as_bytes(), b"hi"]));
        let expected = format!(
            "*4\r\n$8\r\npmessage\r\n$6\r\nroom:*\r\n${}\r\n{r}\r\n$2\r\nhi\r\n",
            r.len()
        );
        assert_eq!(String::from_utf8_lossy(&psub_b.read_frame()), expected);
    }

    // Shard 1 goes down: shard 0's traffic keeps flowing meanwhile, shard 1's is held and
    // delivered after it is back, in order.
    let publishers = ["pub-a", "pub-b"];
    let traffic = Traffic::start(&c0, &[(publishers[0], a.addr), (publishers[1], b.addr)]);
    traffic.wait_for_more(20);
    shard1.stop();
    wait_for(
        "/readyz to report a shard down",
        Duration::from_secs(10),
        || a.readyz() == Ok(503),
    );
    for i in 0..5 {
        client.call(command(&[
            b"PUBLISH",
            c1.as_bytes(),
            format!("held{i}").as_bytes(),
        ]));
    }
    traffic.wait_for_more(50);
    let sent = traffic.stop();
    for s in [&mut sub0_a, &mut sub0_b] {
        expect_every_message(s, &publishers, &sent);
    }
    shard1.start_again();
    for i in 0..5 {
        assert_eq!(
            sub1_b.read_frame(),
            message("message", &c1, &format!("held{i}"))
        );
    }
    wait_for("both ready again", Duration::from_secs(10), || {
        a.readyz() == Ok(200) && b.readyz() == Ok(200)
    });
    assert_eq!(
        server_says(&shard1, &["PUBSUB", "CHANNELS", &apps]),
        list(&[&format!("{prefix}{c1}")])
    );
}

#[test]
fn a_sentinel_failover_over_tls_loses_no_message() {
    let dir = support::TempDir::new("sentinel-tls");
    let certs = support::tls::Certificates::generate(dir.path());
    let mut group = SentinelGroup::start_with_tls("chat", 1, 3, None, Some(&certs.server_files()));
    let url = group.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let sidecar = |id: &str| {
        SidecarOptions::default()
            .env("SWITCHBOARD_UPSTREAM_URL", &url)
            .env(
                "SWITCHBOARD_UPSTREAM_TLS_CA_FILE",
                certs.ca.to_str().unwrap(),
            )
            .arg("--sidecar-id", id)
            .arg("--heartbeat-ms", "250")
            .arg("--peer-ttl-ms", "3000")
            .arg("--reconnect-max-ms", "250")
            .arg("--flush-grace-ms", "15000")
            .start()
    };
    let (a, b) = (sidecar("tls-a"), sidecar("tls-b"));
    let mut sub = RawClient::connect(b.addr, "sub-b");
    sub.call(command(&[b"SUBSCRIBE", b"news"]));
    let mut probe = RawClient::connect(a.addr, "probe");
    wait_for("b to count in NUMSUB", Duration::from_secs(10), || {
        probe.call(command(&[b"PUBSUB", b"NUMSUB", b"news"])) == b"*2\r\n$4\r\nnews\r\n:1\r\n"
    });
    let publishers = ["pub-a"];
    let traffic = Traffic::start("news", &[(publishers[0], a.addr)]);
    traffic.wait_for_more(50);
    let first = group.servers[0].port();
    group.server(first).stop();
    group.wait_for_new_primary(first);
    wait_for("both sidecars ready again", Duration::from_secs(30), || {
        a.readyz() == Ok(200) && b.readyz() == Ok(200)
    });
    traffic.wait_for_more(50);
    let sent = traffic.stop();
    expect_every_message(&mut sub, &publishers, &sent);
    assert!(
        a.log_text().contains("rediss+sentinel://"),
        "the log names the TLS URL"
    );
}
