//! The oracle pattern: one scenario, written once against an [`Endpoint`], runs first on a
//! connection to a real `redis-server` and then on the sidecar, and the two transcripts of reply
//! bytes must be equal after normalising only what legitimately differs (see [`norm`]).
//!
//! Runs are sequential on the same Redis (the sidecar's upstream), so a scenario's keys and
//! channels are the same bytes on both sides. Between the runs the harness waits until Redis has
//! closed every connection of the first run and deletes its keys (named `ot:*` by convention), so
//! the second run starts from the same state.
//!
//! `SWITCHBOARD_ORACLE_SELF_CHECK=1` validates the harness itself: the "sidecar" side is then
//! Redis too, and every comparison must pass.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::RawClient;
use super::process::{RedisServer, Sidecar, SidecarOptions};
use super::resp::{Value, command, parse, show};

pub const SELF_CHECK_ENV: &str = "SWITCHBOARD_ORACLE_SELF_CHECK";

/// True when both sides are Redis (harness validation).
pub fn self_check() -> bool {
    std::env::var(SELF_CHECK_ENV).is_ok_and(|v| v == "1")
}

/// `SWITCHBOARD_ORACLE_PRINT=1` prints every transcript, also when the two sides agree.
pub const PRINT_ENV: &str = "SWITCHBOARD_ORACLE_PRINT";

/// The prefix of every key a scenario writes; the harness deletes them between the two runs.
pub const KEY_PREFIX: &str = "ot:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Redis,
    Sidecar,
}

/// Where a scenario connects, and which connections it opened (so the harness can wait for Redis
/// to forget them).
pub struct Endpoint {
    pub addr: SocketAddr,
    pub side: Side,
    opened: RefCell<Vec<SocketAddr>>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, side: Side) -> Self {
        Self {
            addr,
            side,
            opened: RefCell::new(Vec::new()),
        }
    }

    /// A new connection; `name` labels its lines in the transcript.
    pub fn connect(&self, name: &str) -> Conn {
        let side = match self.side {
            Side::Redis => "redis",
            Side::Sidecar => "sidecar",
        };
        let raw = RawClient::connect(self.addr, &format!("{side}:{name}"));
        self.opened.borrow_mut().push(raw.local_addr());
        Conn {
            name: name.to_string(),
            raw,
        }
    }
}

/// The replies one run produced, each labelled with the connection and the command that caused it.
#[derive(Default)]
pub struct Transcript {
    entries: Vec<(String, Vec<u8>)>,
}

impl Transcript {
    pub fn record(&mut self, label: impl Into<String>, reply: Vec<u8>) {
        self.entries.push((label.into(), reply));
    }

    /// Asserts `other` (the sidecar's) equals `self` (Redis's), reporting every line side by side.
    pub fn assert_same(&self, other: &Transcript) {
        let mut report = String::new();
        let mut first_diff = None;
        for i in 0..self.entries.len().max(other.entries.len()) {
            let expected = self.entries.get(i);
            let got = other.entries.get(i);
            let same = expected == got;
            if !same && first_diff.is_none() {
                first_diff = Some(i);
            }
            let label = expected
                .or(got)
                .map(|(l, _)| l.as_str())
                .unwrap_or_default();
            let _ = writeln!(report, "{} [{i}] {label}", if same { "   " } else { "!!!" });
            match (expected, got) {
                (Some((_, e)), Some(_)) if same => {
                    let _ = writeln!(report, "        both:    {}", show(e));
                }
                _ => {
                    let e = expected.map(|(l, b)| format!("{} ({l})", show(b)));
                    let g = got.map(|(l, b)| format!("{} ({l})", show(b)));
                    let _ = writeln!(report, "        redis:   {}", e.unwrap_or("<none>".into()));
                    let _ = writeln!(report, "        sidecar: {}", g.unwrap_or("<none>".into()));
                }
            }
        }
        if let Some(i) = first_diff {
            panic!("the sidecar's replies differ from redis-server's (first at [{i}]):\n{report}");
        }
        if std::env::var(PRINT_ENV).is_ok_and(|v| v == "1") {
            eprintln!("transcripts agree:\n{report}");
        }
    }
}

/// A connection in a scenario. Commands are written as raw text (`"PING\r\n"`); each reply frame
/// is recorded in the transcript under `"<name>> <command>"`.
pub struct Conn {
    pub name: String,
    pub raw: RawClient,
}

impl Conn {
    fn label(&self, cmd: &[u8]) -> String {
        format!("{}> {}", self.name, show(cmd))
    }

    /// Sends `cmd`, records one reply.
    pub fn run(&mut self, t: &mut Transcript, cmd: impl AsRef<[u8]>) {
        self.run_n(t, cmd, 1);
    }

    /// Sends `cmd` (possibly several pipelined commands), records `n` reply frames.
    pub fn run_n(&mut self, t: &mut Transcript, cmd: impl AsRef<[u8]>, n: usize) {
        self.run_norm(t, cmd, n, |f| f);
    }

    /// Sends `cmd`, records `n` reply frames after passing each through `norm`.
    pub fn run_norm(
        &mut self,
        t: &mut Transcript,
        cmd: impl AsRef<[u8]>,
        n: usize,
        norm: fn(Vec<u8>) -> Vec<u8>,
    ) {
        let cmd = cmd.as_ref();
        self.raw.send(cmd);
        let label = self.label(cmd);
        for frame in self.raw.read_frames(n) {
            t.record(label.clone(), norm(frame));
        }
    }

    /// Sends a command given as arguments (multibulk), records one reply.
    pub fn run_args(&mut self, t: &mut Transcript, args: &[&[u8]]) {
        self.run(t, command(args));
    }

    /// Records `n` frames that arrive without a command (deliveries), labelled `what`.
    pub fn expect(&mut self, t: &mut Transcript, what: &str, n: usize) {
        let label = format!("{}< {what}", self.name);
        for frame in self.raw.read_frames(n) {
            t.record(label.clone(), frame);
        }
    }

    /// Sends `cmd` and records every frame until the server closes the connection, then `<closed>`.
    pub fn run_until_closed(&mut self, t: &mut Transcript, cmd: impl AsRef<[u8]>) {
        let cmd = cmd.as_ref();
        self.raw.send_allow_close(cmd);
        let label = self.label(cmd);
        for frame in self.raw.read_until_closed() {
            t.record(label.clone(), frame);
        }
        t.record(label, b"<closed>".to_vec());
    }

    /// Sends `cmd` and records `n` frames whose order is not defined (replies from walking a hash
    /// table, e.g. UNSUBSCRIBE with no arguments). Each frame is recorded in arrival order with
    /// its channel (element 1) replaced by `<channel>`, which keeps the running counts exact, and
    /// then the sorted channel names as one extra line.
    pub fn run_unordered_confirmations(
        &mut self,
        t: &mut Transcript,
        cmd: impl AsRef<[u8]>,
        n: usize,
    ) {
        let cmd = cmd.as_ref();
        self.raw.send(cmd);
        let label = self.label(cmd);
        let mut channels = Vec::new();
        for frame in self.raw.read_frames(n) {
            let (shape, channel) = norm::split_channel(&frame);
            channels.push(channel);
            t.record(label.clone(), shape);
        }
        channels.sort();
        t.record(format!("{label} (channels, sorted)"), channels.concat());
    }

    /// Sends `cmd`, records `n` frames as a sorted multiset: for frames whose relative order is an
    /// implementation detail (a publisher's own push versus the reply to its PUBLISH).
    pub fn run_unordered(&mut self, t: &mut Transcript, cmd: impl AsRef<[u8]>, n: usize) {
        let cmd = cmd.as_ref();
        self.raw.send(cmd);
        let label = format!("{} (any order)", self.label(cmd));
        let mut frames = self.raw.read_frames(n);
        frames.sort();
        for frame in frames {
            t.record(label.clone(), frame);
        }
    }

    /// Repeats `cmd` until its reply is `want` (state that settles asynchronously, such as counts
    /// after a connection closes), then records the last reply — which differs from Redis's if the
    /// deadline passed first.
    pub fn poll_until(&mut self, t: &mut Transcript, cmd: impl AsRef<[u8]>, want: &[u8]) {
        let cmd = cmd.as_ref();
        let deadline = Instant::now() + Duration::from_secs(10);
        let reply = loop {
            let reply = self.raw.call(cmd);
            if reply == want || Instant::now() > deadline {
                break reply;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        t.record(format!("{} (settled)", self.label(cmd)), reply);
    }

    /// Sends without recording (setup whose reply the scenario checks some other way).
    pub fn send(&mut self, cmd: impl AsRef<[u8]>) {
        self.raw.send(cmd);
    }
}

/// Normalisations: each replaces only a value that legitimately differs between two servers (or
/// two runs) with a fixed placeholder, leaving every other byte to be compared.
pub mod norm {
    use super::*;

    /// HELLO's reply: `id` is a per-connection counter (differs between any two connections) and
    /// `version` is the server's version (the sidecar may report its own). Everything else —
    /// the map or array type, `server`, `proto`, `mode`, `role`, `modules` — is compared.
    pub fn hello(frame: Vec<u8>) -> Vec<u8> {
        let Ok(Value::Aggregate(kind @ (b'%' | b'*'), Some(mut items))) = parse(&frame) else {
            return frame; // an error reply: compare as is
        };
        for pair in items.chunks_mut(2) {
            if let [key, value] = pair {
                match key.as_bytes() {
                    Some(b"id") => *value = Value::Line(b':', b"<id>".to_vec()),
                    Some(b"version") => *value = Value::Bulk(b'$', Some(b"<version>".to_vec())),
                    _ => {}
                }
            }
        }
        Value::Aggregate(kind, Some(items)).encode()
    }

    /// An integer reply whose value is a connection id (CLIENT ID).
    pub fn any_integer(frame: Vec<u8>) -> Vec<u8> {
        match parse(&frame) {
            Ok(Value::Line(b':', _)) => b":<n>\r\n".to_vec(),
            _ => frame,
        }
    }

    /// An aggregate whose element order comes from a hash table (PUBSUB CHANNELS): sorted.
    pub fn sorted(frame: Vec<u8>) -> Vec<u8> {
        match parse(&frame) {
            Ok(Value::Aggregate(kind, Some(mut items))) if kind != b'%' => {
                items.sort_by_key(|v| v.encode());
                Value::Aggregate(kind, Some(items)).encode()
            }
            _ => frame,
        }
    }

    /// `CLIENT SETINFO` exists from Redis 7.2 (`+OK`); 7.0 answers "unknown subcommand". Clients
    /// ignore the error, and a sidecar may follow either version, so that one 7.0 error is read as
    /// the 7.2 `+OK`. Any other reply is compared as is.
    pub fn setinfo(frame: Vec<u8>) -> Vec<u8> {
        if frame == b"-ERR unknown subcommand 'SETINFO'. Try CLIENT HELP.\r\n" {
            b"+OK\r\n".to_vec()
        } else {
            frame
        }
    }

    /// Error texts that changed wording between Redis versions, read as the newest wording; the
    /// sidecar may follow either. Each entry is (7.0 text, 7.2+ text), whole replies.
    const REWORDED: &[(&[u8], &[u8])] = &[(
        // 7.2 added `<proto>` to the hint.
        b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the \
          HELLO AUTH <user> <pass> option can be used to authenticate the client and select the \
          RESP protocol version at the same time\r\n",
        b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the \
          HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
          select the RESP protocol version at the same time\r\n",
    )];

    /// See [`REWORDED`]; any other reply is compared as is.
    pub fn reworded(frame: Vec<u8>) -> Vec<u8> {
        match REWORDED.iter().find(|(old, _)| *old == frame.as_slice()) {
            Some((_, new)) => new.to_vec(),
            None => frame,
        }
    }

    /// Splits a (un)subscribe confirmation into its shape (channel replaced) and its channel.
    pub fn split_channel(frame: &[u8]) -> (Vec<u8>, Vec<u8>) {
        match parse(frame) {
            Ok(Value::Aggregate(kind, Some(mut items))) if items.len() == 3 => {
                let channel = items[1].encode();
                items[1] = Value::Bulk(b'$', Some(b"<channel>".to_vec()));
                (Value::Aggregate(kind, Some(items)).encode(), channel)
            }
            _ => (frame.to_vec(), Vec::new()),
        }
    }
}

/// A Redis and the sidecar under test (or, in self-check mode, a stand-in Redis).
pub struct Oracle {
    // Dropped first, so it does not log the loss of its upstream on the way out.
    pub sidecar: Option<Sidecar>,
    pub redis: RedisServer,
    /// Embedded self-check only: the Redis that stands in for an embedded sidecar.
    stand_in: Option<RedisServer>,
    embedded: bool,
}

impl Oracle {
    /// A Redis, and a sidecar whose upstream is that Redis.
    pub fn start() -> Self {
        let redis = RedisServer::start();
        let sidecar = (!self_check()).then(|| SidecarOptions::upstream(redis.url()).start());
        Self {
            redis,
            sidecar,
            stand_in: None,
            embedded: false,
        }
    }

    /// A Redis with `requirepass`, and a sidecar with the same `--password` whose upstream is that
    /// Redis (authenticating with the URL's credentials).
    pub fn with_password(password: &str) -> Self {
        let redis = RedisServer::start_with_password(Some(password));
        let sidecar = (!self_check()).then(|| {
            SidecarOptions::upstream(redis.url())
                .password(password)
                .start()
        });
        Self {
            redis,
            sidecar,
            stand_in: None,
            embedded: false,
        }
    }

    /// A Redis, and an embedded sidecar (no upstream) that must behave like it for pub/sub.
    pub fn embedded() -> Self {
        let redis = RedisServer::start();
        let (sidecar, stand_in) = if self_check() {
            (None, Some(RedisServer::start()))
        } else {
            (Some(SidecarOptions::embedded().start()), None)
        };
        Self {
            redis,
            sidecar,
            stand_in,
            embedded: true,
        }
    }

    pub fn sidecar_addr(&self) -> SocketAddr {
        match (&self.sidecar, &self.stand_in) {
            (Some(s), _) => s.addr,
            (None, Some(r)) => r.addr(),
            (None, None) => self.redis.addr(),
        }
    }

    /// Runs `scenario` on Redis, then on the sidecar, and asserts the transcripts are equal.
    pub fn compare(&self, scenario: impl Fn(&Endpoint, &mut Transcript)) {
        let direct = Endpoint::new(self.redis.addr(), Side::Redis);
        let mut expected = Transcript::default();
        scenario(&direct, &mut expected);
        if !self.embedded {
            self.reset_redis(&direct);
        }
        let via_sidecar = Endpoint::new(self.sidecar_addr(), Side::Sidecar);
        let mut got = Transcript::default();
        scenario(&via_sidecar, &mut got);
        expected.assert_same(&got);
    }

    /// Waits until Redis has closed every connection `ep` opened (their subscriptions count no
    /// more), then deletes the scenario's keys.
    fn reset_redis(&self, ep: &Endpoint) {
        let mut admin = self.redis.admin();
        let ours: Vec<String> = ep
            .opened
            .borrow()
            .iter()
            .map(|a| format!("addr={a} "))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = admin.call("CLIENT LIST\r\n");
            let list = String::from_utf8_lossy(&list).into_owned();
            if !ours.iter().any(|a| list.contains(a.as_str())) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis still lists the first run's connections"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let keys = admin.call(format!("KEYS {KEY_PREFIX}*\r\n"));
        if let Ok(Value::Aggregate(_, Some(keys))) = parse(&keys) {
            for key in keys {
                let key = key.as_bytes().expect("KEYS returns bulk strings").to_vec();
                admin.call(command(&[b"DEL", &key]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(replies: &[&[u8]]) -> Transcript {
        let mut t = Transcript::default();
        for r in replies {
            t.record("c> X", r.to_vec());
        }
        t
    }

    #[test]
    #[should_panic(expected = "differ from redis-server's (first at [1])")]
    fn a_different_reply_fails() {
        transcript(&[b"+OK\r\n", b":1\r\n"]).assert_same(&transcript(&[b"+OK\r\n", b":2\r\n"]));
    }

    #[test]
    #[should_panic(expected = "first at [1]")]
    fn a_missing_reply_fails() {
        transcript(&[b"+OK\r\n", b":1\r\n"]).assert_same(&transcript(&[b"+OK\r\n"]));
    }

    #[test]
    fn hello_normalises_only_id_and_version() {
        let redis = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n\
            $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:4\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
            $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
        let other = String::from_utf8_lossy(redis)
            .replace(":4\r\n", ":981\r\n")
            .replace("$6\r\n7.0.15", "$5\r\n0.1.0");
        assert_eq!(
            norm::hello(redis.to_vec()),
            norm::hello(other.clone().into_bytes())
        );
        let wrong_proto = other.replace(":3\r\n", ":2\r\n");
        assert_ne!(
            norm::hello(redis.to_vec()),
            norm::hello(wrong_proto.into_bytes())
        );
        let as_array = other.replace("%7", "*14");
        assert_ne!(
            norm::hello(redis.to_vec()),
            norm::hello(as_array.into_bytes())
        );
    }

    #[test]
    fn unordered_confirmations_keep_counts_in_order() {
        let a = b">3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n";
        let (shape, channel) = norm::split_channel(a);
        assert_eq!(
            shape,
            b">3\r\n$11\r\nunsubscribe\r\n$9\r\n<channel>\r\n:1\r\n"
        );
        assert_eq!(channel, b"$1\r\na\r\n");
        assert_eq!(
            norm::sorted(b"*2\r\n$1\r\nb\r\n$1\r\na\r\n".to_vec()),
            b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
    }
}

#[cfg(test)]
mod reworded_tests {
    use super::norm;

    #[test]
    fn old_hello_noauth_text_reads_as_the_new_one() {
        let old = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
        let new = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
        assert_eq!(norm::reworded(old.to_vec()), new.to_vec());
        assert_eq!(norm::reworded(new.to_vec()), new.to_vec());
        assert_eq!(
            norm::reworded(b"-NOAUTH x\r\n".to_vec()),
            b"-NOAUTH x\r\n".to_vec()
        );
    }
}
