//! Relay benchmark: the same pub/sub clients against `redis-server` directly and through sidecars.
//!
//! ```text
//! cargo bench -p switchboard-sidecar --bench relay
//! ```
//!
//! One run starts one `redis-server` and two sidecars ("pods" A and B) bridged to it, all on free
//! 127.0.0.1 ports, and measures, side by side:
//!
//! 1. **throughput**: one publisher pipelines [`THROUGHPUT_MESSAGES`] publishes; the
//!    [`THROUGHPUT_SUBSCRIBERS`] subscribers must each receive all of them;
//! 2. **latency**: one publish at a time, its send time in the payload, the subscriber takes the
//!    difference;
//! 3. **upstream egress**: the bytes Redis writes for the same publishes when every pod's N local
//!    subscribers connect to Redis themselves versus through their pod's sidecar (one upstream
//!    subscription per pod);
//! 4. **busy pod**: publish rate while the publisher's pod also holds many other subscriptions
//!    (a publish should cost the same however many rooms the pod serves).
//!
//! Through sidecars the publisher is on pod A and the subscribers on pod B, as in production
//! (a message crosses the backplane); directly, everyone talks to Redis.
//!
//! The sidecar binary is the one cargo builds for this bench (`CARGO_BIN_EXE_switchboard-sidecar`;
//! under `cargo bench` that is the `bench` profile, which inherits `release`, in target/release).
//! `SIDECAR_BENCH_BIN=/path/to/switchboard-sidecar` overrides it, e.g. to compare two builds.
//!
//! The clients speak raw RESP2 over tokio sockets, so the client is as cheap as it can be and
//! identical on both sides. Everything is killed on drop, also when the bench panics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use procs::{RedisServer, Sidecar, cpu_time};
use resp::{Connection, Frame};

/// Size of every published payload.
const PAYLOAD_BYTES: usize = 100;
const THROUGHPUT_MESSAGES: u64 = 200_000;
const THROUGHPUT_SUBSCRIBERS: usize = 4;
/// Throughput is measured this many times per side, alternating; the median round is shown.
const THROUGHPUT_ROUNDS: usize = 3;
const LATENCY_SAMPLES: usize = 20_000;
/// Publishes before the latency samples start: connections, allocators and caches warm up.
const LATENCY_WARMUP: usize = 1_000;
const EGRESS_MESSAGES: u64 = 5_000;
/// Channels another connection on the publisher's pod is subscribed to in the busy-pod run (a
/// socket server with one channel per room has thousands).
const BUSY_POD_CHANNELS: usize = 20_000;
const BUSY_POD_MESSAGES: u64 = 50_000;
const EGRESS_SUBSCRIBERS_PER_POD: [usize; 3] = [1, 10, 50];
const PODS: usize = 2;
/// How far the publisher may run ahead of the slowest subscriber. Unbounded, the backlog would
/// pile up in Redis's output buffers until it disconnects the subscriber (`client-output-buffer-
/// limit pubsub 32mb 8mb 60`), and we would measure buffering instead of sustained throughput.
/// 20k × ~140 bytes stays under the 8 MB soft limit.
const PUBLISH_WINDOW: u64 = 20_000;
/// Publishes written per `write_all`: pipelining as a busy adapter would.
const PIPELINE_BATCH: u64 = 256;
/// Longest any one measurement may take before it reports what it got.
const PHASE_DEADLINE: Duration = Duration::from_secs(60);

fn main() {
    // The server also serves TLS on a second port, for the pods of measurement 5.
    let dir = support::TempDir::new("bench-tls");
    let certs = support::tls::Certificates::generate(dir.path());
    let tls_port = support::free_port();
    let tls_args = procs::tls_args(&certs, tls_port);
    let redis = RedisServer::start_with_args(
        None,
        &tls_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut pods: Vec<Sidecar> = (0..PODS)
        .map(|i| procs::start_sidecar(redis.url(), &format!("bench-pod-{}", pod_name(i))))
        .collect();
    let mut tls_pods: Vec<Sidecar> = (0..PODS)
        .map(|i| {
            procs::start_tls_sidecar(
                format!("rediss://localhost:{tls_port}"),
                &certs.ca,
                &format!("bench-tls-pod-{}", pod_name(i)),
            )
        })
        .collect();
    print_context(&pods);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    runtime.block_on(async {
        let direct = Side::direct(&redis);
        let via_sidecars = Side::via_sidecars(&pods);
        let processes = Processes {
            redis: &redis,
            sidecars: &pods,
        };

        // Alternating rounds, so a burst of load from a neighbour hurts both sides alike.
        let mut direct_rounds = Vec::new();
        let mut sidecar_rounds = Vec::new();
        for round in 0..THROUGHPUT_ROUNDS {
            direct_rounds.push(measure_throughput(&direct, &processes, round).await);
            sidecar_rounds.push(measure_throughput(&via_sidecars, &processes, round).await);
        }
        report::throughput(direct_rounds, sidecar_rounds);

        let direct_lat = measure_latency(&direct).await;
        let sidecar_lat = measure_latency(&via_sidecars).await;
        report::latency(&direct_lat, &sidecar_lat);

        let mut egress = Vec::new();
        for per_pod in EGRESS_SUBSCRIBERS_PER_POD {
            let d = measure_egress(&direct, redis.addr(), per_pod).await;
            let s = measure_egress(&via_sidecars, redis.addr(), per_pod).await;
            egress.push((per_pod, d, s));
        }
        report::egress(&egress);

        let mut busy = Vec::new();
        for side in [&direct, &via_sidecars] {
            let idle = measure_publish_rate(side, 0).await;
            let loaded = measure_publish_rate(side, BUSY_POD_CHANNELS).await;
            busy.push((idle, loaded));
        }
        report::busy_pod(&busy[0], &busy[1]);

        // 5. The same path with TLS between the sidecars and Redis, against clear text.
        let over_tls = Side::via_sidecars(&tls_pods);
        let tls_processes = Processes {
            redis: &redis,
            sidecars: &tls_pods,
        };
        let mut clear_rounds = Vec::new();
        let mut tls_rounds = Vec::new();
        for round in 0..THROUGHPUT_ROUNDS {
            clear_rounds.push(measure_throughput(&via_sidecars, &processes, round + 10).await);
            tls_rounds.push(measure_throughput(&over_tls, &tls_processes, round + 10).await);
        }
        let clear_lat = measure_latency(&via_sidecars).await;
        let tls_lat = measure_latency(&over_tls).await;
        report::tls(clear_rounds, tls_rounds, &clear_lat, &tls_lat);
    });
    drop(runtime);
    for pod in pods.iter_mut().chain(tls_pods.iter_mut()) {
        procs::assert_healthy(pod);
    }
}

fn pod_name(i: usize) -> char {
    (b'a' + i as u8) as char
}

/// Where the clients of one side of the comparison connect.
struct Side {
    name: &'static str,
    /// Where the publisher connects (pod A's sidecar, or Redis).
    publisher: SocketAddr,
    /// Where each pod's subscribers connect (that pod's sidecar, or Redis for all).
    pods: Vec<SocketAddr>,
}

impl Side {
    fn direct(redis: &RedisServer) -> Self {
        Side {
            name: "direct",
            publisher: redis.addr(),
            pods: vec![redis.addr(); PODS],
        }
    }

    fn via_sidecars(sidecars: &[Sidecar]) -> Self {
        Side {
            // Both names start differently, so each side's channels are its own.
            name: if sidecars[0].log_text().contains("rediss://") {
                "tls"
            } else {
                "sidecar"
            },
            publisher: sidecars[0].addr,
            pods: sidecars.iter().map(|s| s.addr).collect(),
        }
    }

    /// The pod the subscribers of the throughput and latency runs live on: another pod than the
    /// publisher's, so through sidecars a message crosses the backplane.
    fn remote_pod(&self) -> SocketAddr {
        self.pods[PODS - 1]
    }

    /// A channel no earlier measurement used, so leftover subscriptions cannot skew this one.
    /// Both sides' names have the same length, so their messages have the same size.
    fn channel(&self, measurement: &str) -> String {
        format!("bench:{measurement}:{}", &self.name[..1])
    }
}

/// The server processes whose CPU time a measurement reports.
struct Processes<'a> {
    redis: &'a RedisServer,
    sidecars: &'a [Sidecar],
}

impl Processes<'_> {
    /// CPU seconds used so far by (Redis, all sidecars).
    fn cpu(&self) -> (Duration, Duration) {
        let sidecars = self.sidecars.iter().map(|s| cpu_time(s.pid())).sum();
        (cpu_time(self.redis.pid()), sidecars)
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

struct Throughput {
    run: FanoutRun,
    redis_cpu: Duration,
    sidecar_cpu: Duration,
}

async fn measure_throughput(side: &Side, processes: &Processes<'_>, round: usize) -> Throughput {
    let subscribers = vec![side.remote_pod(); THROUGHPUT_SUBSCRIBERS];
    let channel = side.channel(&format!("throughput-{round}"));
    let fanout = Fanout::subscribe(&subscribers, &channel).await;
    let (redis_before, sidecars_before) = processes.cpu();
    let run = fanout.run(side.publisher, THROUGHPUT_MESSAGES).await;
    let (redis_after, sidecars_after) = processes.cpu();
    Throughput {
        run,
        redis_cpu: redis_after.saturating_sub(redis_before),
        sidecar_cpu: sidecars_after.saturating_sub(sidecars_before),
    }
}

struct Latencies {
    /// One-way publish-to-delivery times, sorted.
    sorted: Vec<Duration>,
}

impl Latencies {
    fn quantile(&self, q: f64) -> Duration {
        let i = ((self.sorted.len() as f64 * q) as usize).min(self.sorted.len() - 1);
        self.sorted[i]
    }

    fn mean(&self) -> Duration {
        self.sorted.iter().sum::<Duration>() / self.sorted.len() as u32
    }
}

/// One publish in flight at a time: the next goes out once the previous was delivered, so the
/// samples are the unloaded path latency, not queueing behind the benchmark's own messages.
async fn measure_latency(side: &Side) -> Latencies {
    let channel = side.channel("latency");
    let mut subscriber = Connection::subscribed(side.remote_pod(), &channel).await;
    let mut publisher = Connection::connect(side.publisher).await;
    let epoch = Instant::now();
    let deadline = tokio::time::Instant::now() + PHASE_DEADLINE;
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_WARMUP + LATENCY_SAMPLES {
        let sent_at = epoch.elapsed();
        let payload = timestamped_payload(sent_at);
        publisher
            .send(&resp::command(&[b"PUBLISH", channel.as_bytes(), &payload]))
            .await;
        let message = subscriber
            .next_message(deadline)
            .await
            .unwrap_or_else(|e| panic!("{} latency sample {i}: {e}", side.name));
        let received_at = epoch.elapsed();
        if i >= LATENCY_WARMUP {
            samples.push(received_at - read_timestamp(&message));
        }
        publisher.expect_integer(deadline).await;
    }
    samples.sort_unstable();
    Latencies { sorted: samples }
}

/// A payload of [`PAYLOAD_BYTES`] that starts with the send time (nanoseconds since the epoch of
/// the measurement, in decimal) and is padded with dots.
fn timestamped_payload(sent_at: Duration) -> Vec<u8> {
    let mut payload = format!("{:020}", sent_at.as_nanos()).into_bytes();
    payload.resize(PAYLOAD_BYTES, b'.');
    payload
}

fn read_timestamp(payload: &[u8]) -> Duration {
    let digits = std::str::from_utf8(&payload[..20]).expect("timestamp digits");
    Duration::from_nanos(digits.parse().expect("a timestamp in the payload"))
}

struct Egress {
    /// Subscribers Redis itself sees on the channel (`PUBSUB NUMSUB`).
    upstream_subscribers: i64,
    /// `total_net_output_bytes` growth during the publishes, minus our own INFO reply.
    redis_output_bytes: u64,
    run: FanoutRun,
}

/// `per_pod` subscribers on every pod; the publisher on pod A publishes [`EGRESS_MESSAGES`].
async fn measure_egress(side: &Side, redis: SocketAddr, per_pod: usize) -> Egress {
    let channel = side.channel(&format!("egress-{per_pod}"));
    let subscribers: Vec<SocketAddr> = side
        .pods
        .iter()
        .flat_map(|&pod| std::iter::repeat_n(pod, per_pod))
        .collect();
    let fanout = Fanout::subscribe(&subscribers, &channel).await;
    let mut admin = Connection::connect(redis).await;
    let upstream_subscribers = admin.numsub(&channel).await;
    let (before, info_reply_len) = admin.net_output_bytes().await;
    let run = fanout.run(side.publisher, EGRESS_MESSAGES).await;
    let (after, _) = admin.net_output_bytes().await;
    Egress {
        upstream_subscribers,
        // The first INFO reply was written after its snapshot, so it is part of the growth.
        redis_output_bytes: after.saturating_sub(before + info_reply_len as u64),
        run,
    }
}

/// Publishes/s to one subscriber on the remote pod while another connection on the publisher's
/// pod holds `other_channels` subscriptions: a publish should not cost more on a busy pod.
async fn measure_publish_rate(side: &Side, other_channels: usize) -> FanoutRun {
    let names: Vec<String> = (0..other_channels)
        .map(|i| format!("{}:{i}", side.channel("room")))
        .collect();
    // Held until the run is over; dropping it unsubscribes everything.
    let _rooms = Connection::subscribed_to_all(side.publisher, &names).await;
    let channel = side.channel(&format!("busy-pod-{other_channels}"));
    let fanout = Fanout::subscribe(&[side.remote_pod()], &channel).await;
    fanout.run(side.publisher, BUSY_POD_MESSAGES).await
}

// ---------------------------------------------------------------------------------------------
// Fan-out: one pipelining publisher, many subscribers, flow-controlled by the slowest
// ---------------------------------------------------------------------------------------------

/// Subscribers ready to receive on one channel.
struct Fanout {
    channel: String,
    subscribers: Vec<Connection>,
}

#[derive(Clone)]
struct FanoutRun {
    /// From the first publish to the last subscriber receiving the last message.
    elapsed: Duration,
    /// Messages received, all subscribers together.
    delivered: u64,
    expected: u64,
    /// RESP bytes the subscribers read: what the applications receive.
    delivered_bytes: u64,
}

impl FanoutRun {
    fn deliveries_per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    fn complete(&self) -> bool {
        self.delivered == self.expected
    }
}

/// How many messages each subscriber has received; the publisher waits on the slowest.
struct Progress {
    received: Vec<AtomicU64>,
    changed: tokio::sync::Notify,
}

impl Progress {
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Waits until the publisher may have `published` messages out; false at the deadline.
    async fn wait_for_room(&self, published: u64, deadline: tokio::time::Instant) -> bool {
        loop {
            // Registered before the check, so a notification in between is not lost.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if published.saturating_sub(self.slowest()) <= PUBLISH_WINDOW {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }
}

impl Fanout {
    /// Connects and subscribes everyone; returns once every subscription is confirmed (through a
    /// sidecar that means the upstream subscription is in place too).
    async fn subscribe(addrs: &[SocketAddr], channel: &str) -> Self {
        let mut subscribers = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            subscribers.push(Connection::subscribed(addr, channel).await);
        }
        Fanout {
            channel: channel.to_owned(),
            subscribers,
        }
    }

    async fn run(self, publisher: SocketAddr, messages: u64) -> FanoutRun {
        let publisher = Connection::connect(publisher).await;
        let progress = Arc::new(Progress {
            received: (0..self.subscribers.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            changed: tokio::sync::Notify::new(),
        });
        let expected = messages * self.subscribers.len() as u64;
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + PHASE_DEADLINE;

        let receivers: Vec<_> = self
            .subscribers
            .into_iter()
            .enumerate()
            .map(|(i, sub)| tokio::spawn(receive_all(sub, i, messages, progress.clone(), deadline)))
            .collect();
        let (replies, writer) = publisher.into_split();
        let acks = tokio::spawn(count_publish_replies(replies, messages, deadline));
        publish_pipelined(writer, &self.channel, messages, &progress, deadline).await;

        let mut delivered = 0;
        let mut delivered_bytes = 0;
        for receiver in receivers {
            let (n, bytes) = receiver.await.expect("a subscriber task panicked");
            delivered += n;
            delivered_bytes += bytes;
        }
        let elapsed = start.elapsed();
        let acked = acks.await.expect("the publish-reply task panicked");
        assert_eq!(acked, messages, "publish replies missing");
        FanoutRun {
            elapsed,
            delivered,
            expected,
            delivered_bytes,
        }
    }
}

/// Writes `messages` publishes in batches, never more than [`PUBLISH_WINDOW`] ahead of the
/// slowest subscriber. Stops early (and the run reports it incomplete) at the deadline.
async fn publish_pipelined(
    mut writer: resp::Writer,
    channel: &str,
    messages: u64,
    progress: &Progress,
    deadline: tokio::time::Instant,
) {
    let mut payload = vec![b'x'; PAYLOAD_BYTES];
    let mut batch = Vec::with_capacity(PIPELINE_BATCH as usize * (PAYLOAD_BYTES + 64));
    let mut published = 0;
    while published < messages {
        let n = PIPELINE_BATCH.min(messages - published);
        if !progress.wait_for_room(published + n, deadline).await {
            return;
        }
        batch.clear();
        for seq in published..published + n {
            // A sequence number up front: not checked, but the bytes differ like real messages.
            payload[..20].copy_from_slice(format!("{seq:020}").as_bytes());
            resp::append_command(&mut batch, &[b"PUBLISH", channel.as_bytes(), &payload]);
        }
        writer.send(&batch).await;
        published += n;
    }
}

/// Reads the publisher's integer replies; returns how many arrived before the deadline.
async fn count_publish_replies(
    mut replies: resp::Reader,
    messages: u64,
    deadline: tokio::time::Instant,
) -> u64 {
    let mut acked = 0;
    while acked < messages {
        match replies.next_frame(deadline).await {
            Ok(Frame::Integer(_)) => acked += 1,
            Ok(other) => panic!("PUBLISH answered {other:?}"),
            Err(_) => break,
        }
    }
    acked
}

/// Receives until `messages` arrived or the deadline; returns (messages, bytes) received.
async fn receive_all(
    mut subscriber: Connection,
    index: usize,
    messages: u64,
    progress: Arc<Progress>,
    deadline: tokio::time::Instant,
) -> (u64, u64) {
    let mut received = 0;
    while received < messages {
        if subscriber.next_message(deadline).await.is_err() {
            break;
        }
        received += 1;
        progress.received[index].store(received, Ordering::Relaxed);
        // Waking the publisher for every message would cost more than the messages.
        if received % 1024 == 0 {
            progress.changed.notify_waiters();
        }
    }
    progress.received[index].store(received, Ordering::Relaxed);
    progress.changed.notify_waiters();
    (received, subscriber.bytes_read())
}

// ---------------------------------------------------------------------------------------------
// Context and tables
// ---------------------------------------------------------------------------------------------

fn print_context(sidecars: &[Sidecar]) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    println!("switchboard-sidecar relay benchmark");
    println!(
        "  machine: {cores} cores (nproc), load average {}",
        load.join(" ")
    );
    println!("  NOTE: a shared, noisy machine (other builds run on the same cores); compare the");
    println!("        direct and sidecar columns of one run, not absolute numbers across runs.");
    println!("  redis-server: {}", procs::redis_version());
    println!("  sidecar binary: {}", procs::sidecar_binary().display());
    println!(
        "  sidecars: {} (pods {}), one redis-server; all on 127.0.0.1",
        sidecars.len(),
        (0..sidecars.len())
            .map(pod_name)
            .map(String::from)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  payload {PAYLOAD_BYTES} B; RESP2 raw-socket clients on a 2-worker tokio runtime in the bench process"
    );
    println!();
}

mod report {
    use super::*;

    fn ratio(sidecar: f64, direct: f64) -> String {
        if direct == 0.0 {
            "-".into()
        } else {
            format!("{:.2}x", sidecar / direct)
        }
    }

    fn row(label: &str, direct: String, sidecar: String, ratio: String) {
        println!("  {label:<32} {direct:>14} {sidecar:>14} {ratio:>14}");
    }

    fn header(first: &str, last: &str) {
        row(first, "direct".into(), "sidecar".into(), last.into());
        println!("  {}", "-".repeat(32 + 3 * 15));
    }

    fn micros(d: Duration) -> String {
        format!("{:.0} us", d.as_secs_f64() * 1e6)
    }

    /// The round with the median delivery rate.
    fn median(mut rounds: Vec<Throughput>) -> (Throughput, String) {
        rounds.sort_by(|a, b| {
            a.run
                .deliveries_per_sec()
                .total_cmp(&b.run.deliveries_per_sec())
        });
        let all = rounds
            .iter()
            .map(|r| format!("{:.0}k", r.run.deliveries_per_sec() / 1e3))
            .collect::<Vec<_>>()
            .join(" ");
        (rounds.swap_remove(rounds.len() / 2), all)
    }

    pub fn throughput(direct: Vec<Throughput>, sidecar: Vec<Throughput>) {
        println!(
            "1. pub/sub throughput: 1 publisher pipelining {THROUGHPUT_MESSAGES} x {PAYLOAD_BYTES} B, \
             {THROUGHPUT_SUBSCRIBERS} subscribers (sidecar: publisher on pod a, subscribers on pod b);"
        );
        println!("   median of {THROUGHPUT_ROUNDS} alternating rounds");
        let incomplete: Vec<FanoutRun> = direct
            .iter()
            .chain(&sidecar)
            .filter(|r| !r.run.complete())
            .map(|r| r.run.clone())
            .collect();
        let ((direct, direct_all), (sidecar, sidecar_all)) = (median(direct), median(sidecar));
        let (direct, sidecar) = (&direct, &sidecar);
        header("", "sidecar/direct");
        let (d, s) = (&direct.run, &sidecar.run);
        row(
            "deliveries/s (all subscribers)",
            format!("{:.0}", d.deliveries_per_sec()),
            format!("{:.0}", s.deliveries_per_sec()),
            ratio(s.deliveries_per_sec(), d.deliveries_per_sec()),
        );
        let publishes = |r: &FanoutRun| r.deliveries_per_sec() / THROUGHPUT_SUBSCRIBERS as f64;
        row(
            "publishes/s (each to all)",
            format!("{:.0}", publishes(d)),
            format!("{:.0}", publishes(s)),
            ratio(publishes(s), publishes(d)),
        );
        row(
            "elapsed",
            format!("{:.2} s", d.elapsed.as_secs_f64()),
            format!("{:.2} s", s.elapsed.as_secs_f64()),
            ratio(s.elapsed.as_secs_f64(), d.elapsed.as_secs_f64()),
        );
        row(
            "delivered / expected",
            format!("{}/{}", d.delivered, d.expected),
            format!("{}/{}", s.delivered, s.expected),
            String::new(),
        );
        row(
            "redis-server CPU",
            format!("{:.2} s", direct.redis_cpu.as_secs_f64()),
            format!("{:.2} s", sidecar.redis_cpu.as_secs_f64()),
            ratio(
                sidecar.redis_cpu.as_secs_f64(),
                direct.redis_cpu.as_secs_f64(),
            ),
        );
        row(
            "sidecars CPU (both pods)",
            "-".into(),
            format!("{:.2} s", sidecar.sidecar_cpu.as_secs_f64()),
            String::new(),
        );
        // CPU per delivered message: what each process spends to get one message to one
        // subscriber. The target: both sidecars together no more than redis-server alone directly.
        let per =
            |cpu: Duration, run: &FanoutRun| cpu.as_secs_f64() * 1e9 / run.delivered.max(1) as f64;
        let (redis_direct, redis_relayed, sidecars) = (
            per(direct.redis_cpu, d),
            per(sidecar.redis_cpu, s),
            per(sidecar.sidecar_cpu, s),
        );
        row(
            "CPU/delivery, redis-server",
            format!("{redis_direct:.0} ns"),
            format!("{redis_relayed:.0} ns"),
            ratio(redis_relayed, redis_direct),
        );
        row(
            "CPU/delivery, sidecars",
            "-".into(),
            format!("{sidecars:.0} ns"),
            format!("{} of redis", ratio(sidecars, redis_direct)),
        );
        println!("  all rounds, deliveries/s: direct {direct_all}; sidecar {sidecar_all}");
        warn_incomplete(&incomplete.iter().collect::<Vec<_>>());
        println!();
    }

    /// Measurement 5: the sidecars' path with TLS to Redis against clear text.
    pub fn tls(
        clear: Vec<Throughput>,
        tls: Vec<Throughput>,
        clear_lat: &Latencies,
        tls_lat: &Latencies,
    ) {
        println!(
            "5. TLS to the backplane: measurements 1 and 2 through sidecars whose links to \
             redis-server are TLS (rediss://, rustls) vs clear text; median of \
             {THROUGHPUT_ROUNDS} alternating rounds"
        );
        let ((clear, clear_all), (tls, tls_all)) = (median(clear), median(tls));
        println!(
            "  {:<32} {:>14} {:>14} {:>14}",
            "", "clear", "tls", "tls/clear"
        );
        println!("  {}", "-".repeat(32 + 3 * 15));
        let (c, t) = (&clear.run, &tls.run);
        row(
            "deliveries/s (all subscribers)",
            format!("{:.0}", c.deliveries_per_sec()),
            format!("{:.0}", t.deliveries_per_sec()),
            ratio(t.deliveries_per_sec(), c.deliveries_per_sec()),
        );
        row(
            "delivered / expected",
            format!("{}/{}", c.delivered, c.expected),
            format!("{}/{}", t.delivered, t.expected),
            String::new(),
        );
        let per =
            |cpu: Duration, run: &FanoutRun| cpu.as_secs_f64() * 1e9 / run.delivered.max(1) as f64;
        let (cs, ts) = (per(clear.sidecar_cpu, c), per(tls.sidecar_cpu, t));
        row(
            "CPU/delivery, sidecars",
            format!("{cs:.0} ns"),
            format!("{ts:.0} ns"),
            ratio(ts, cs),
        );
        let (cr, tr) = (per(clear.redis_cpu, c), per(tls.redis_cpu, t));
        row(
            "CPU/delivery, redis-server",
            format!("{cr:.0} ns"),
            format!("{tr:.0} ns"),
            ratio(tr, cr),
        );
        for (label, q) in [("latency p50", 0.50), ("latency p99", 0.99)] {
            let (c, t) = (clear_lat.quantile(q), tls_lat.quantile(q));
            row(
                label,
                micros(c),
                micros(t),
                ratio(t.as_secs_f64(), c.as_secs_f64()),
            );
        }
        println!("  all rounds, deliveries/s: clear {clear_all}; tls {tls_all}");
        println!();
    }

    pub fn latency(direct: &Latencies, sidecar: &Latencies) {
        println!(
            "2. end-to-end latency, publish -> delivery: {LATENCY_SAMPLES} samples after \
             {LATENCY_WARMUP} warm-up, one message in flight (sidecar: pod a -> redis -> pod b)"
        );
        header("", "sidecar/direct");
        let quantiles = [("p50", 0.50), ("p99", 0.99), ("p999", 0.999), ("max", 1.0)];
        for (label, q) in quantiles {
            let (d, s) = (direct.quantile(q), sidecar.quantile(q));
            row(
                label,
                micros(d),
                micros(s),
                ratio(s.as_secs_f64(), d.as_secs_f64()),
            );
        }
        let (d, s) = (direct.mean(), sidecar.mean());
        row(
            "mean",
            micros(d),
            micros(s),
            ratio(s.as_secs_f64(), d.as_secs_f64()),
        );
        println!();
    }

    pub fn egress(rows: &[(usize, Egress, Egress)]) {
        println!(
            "3. upstream egress: {EGRESS_MESSAGES} publishes x {PAYLOAD_BYTES} B to N subscribers \
             on each of {PODS} pods; bytes redis-server wrote (INFO total_net_output_bytes delta)"
        );
        println!(
            "  {:<8} {:>11} {:>11} {:>14} {:>14} {:>14} {:>16}",
            "N/pod",
            "redis subs",
            "redis subs",
            "redis out",
            "redis out",
            "saving",
            "delivered to apps"
        );
        println!(
            "  {:<8} {:>11} {:>11} {:>14} {:>14} {:>14} {:>16}",
            "", "direct", "sidecar", "direct", "sidecar", "direct/sidecar", "(both sides)"
        );
        println!("  {}", "-".repeat(8 + 11 * 2 + 14 * 3 + 16 + 6));
        for (per_pod, d, s) in rows {
            let mb = |b: u64| format!("{:.2} MB", b as f64 / 1e6);
            let saving = d.redis_output_bytes as f64 / s.redis_output_bytes.max(1) as f64;
            println!(
                "  {:<8} {:>11} {:>11} {:>14} {:>14} {:>14} {:>16}",
                per_pod,
                d.upstream_subscribers,
                s.upstream_subscribers,
                mb(d.redis_output_bytes),
                mb(s.redis_output_bytes),
                format!("{saving:.1}x"),
                if d.run.delivered_bytes == s.run.delivered_bytes {
                    mb(d.run.delivered_bytes)
                } else {
                    format!(
                        "{} / {}",
                        mb(d.run.delivered_bytes),
                        mb(s.run.delivered_bytes)
                    )
                },
            );
            warn_incomplete(&[&d.run, &s.run]);
        }
        println!(
            "  (redis out includes PUBLISH replies and, through sidecars, their registry heartbeats)"
        );
        println!();
    }

    pub fn busy_pod(direct: &(FanoutRun, FanoutRun), sidecar: &(FanoutRun, FanoutRun)) {
        println!(
            "4. busy pod: publishes/s of {BUSY_POD_MESSAGES} pipelined publishes to 1 remote subscriber, \
             while another connection on the publisher's pod (or on redis, direct) is subscribed to N other channels"
        );
        header("", "sidecar/direct");
        let rate = |r: &FanoutRun| r.deliveries_per_sec();
        row(
            "publishes/s, N = 0",
            format!("{:.0}", rate(&direct.0)),
            format!("{:.0}", rate(&sidecar.0)),
            ratio(rate(&sidecar.0), rate(&direct.0)),
        );
        row(
            &format!("publishes/s, N = {BUSY_POD_CHANNELS}"),
            format!("{:.0}", rate(&direct.1)),
            format!("{:.0}", rate(&sidecar.1)),
            ratio(rate(&sidecar.1), rate(&direct.1)),
        );
        row(
            "slowdown (N = 0 / N = max)",
            format!("{:.2}x", rate(&direct.0) / rate(&direct.1)),
            format!("{:.2}x", rate(&sidecar.0) / rate(&sidecar.1)),
            String::new(),
        );
        warn_incomplete(&[&direct.0, &direct.1, &sidecar.0, &sidecar.1]);
        println!();
    }

    fn warn_incomplete(runs: &[&FanoutRun]) {
        for run in runs.iter().filter(|r| !r.complete()) {
            println!(
                "  WARNING: only {} of {} deliveries arrived within {PHASE_DEADLINE:?}",
                run.delivered, run.expected
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal RESP2 client
// ---------------------------------------------------------------------------------------------

mod resp {
    use std::net::SocketAddr;

    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::time::Instant;

    #[derive(Debug)]
    pub enum Frame {
        /// Only ever printed (an unexpected reply in a panic message).
        Simple(#[expect(dead_code, reason = "read through Debug only")] Vec<u8>),
        Error(Vec<u8>),
        Integer(i64),
        Bulk(Option<Vec<u8>>),
        Array(Option<Vec<Frame>>),
    }

    /// Appends one command as a RESP array of bulk strings.
    pub fn append_command(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn command(args: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        append_command(&mut out, args);
        out
    }

    /// Parses one frame from the front of `buf`: `Ok(None)` if it is not all there yet.
    fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
        let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[1..line_end];
        let after_line = line_end + 2;
        let number = || -> Result<i64, String> {
            std::str::from_utf8(line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(line)))
        };
        let frame = match buf.first() {
            Some(b'+') => (Frame::Simple(line.to_vec()), after_line),
            Some(b'-') => (Frame::Error(line.to_vec()), after_line),
            Some(b':') => (Frame::Integer(number()?), after_line),
            Some(b'$') => match number()? {
                -1 => (Frame::Bulk(None), after_line),
                n => {
                    let end = after_line + n as usize;
                    if buf.len() < end + 2 {
                        return Ok(None);
                    }
                    (Frame::Bulk(Some(buf[after_line..end].to_vec())), end + 2)
                }
            },
            Some(b'*') => match number()? {
                -1 => (Frame::Array(None), after_line),
                n => {
                    let mut items = Vec::with_capacity(n as usize);
                    let mut at = after_line;
                    for _ in 0..n {
                        let Some((item, used)) = parse(&buf[at..])? else {
                            return Ok(None);
                        };
                        items.push(item);
                        at += used;
                    }
                    (Frame::Array(Some(items)), at)
                }
            },
            other => return Err(format!("not RESP2: first byte {other:?}")),
        };
        Ok(Some(frame))
    }

    pub struct Reader {
        half: OwnedReadHalf,
        buf: BytesMut,
        bytes_read: u64,
    }

    impl Reader {
        /// The next frame; reads from the socket only when the buffer holds no whole frame, so
        /// the deadline's timer is armed only when we actually wait.
        pub async fn next_frame(&mut self, deadline: Instant) -> Result<Frame, String> {
            loop {
                if let Some((frame, used)) = parse(&self.buf)? {
                    self.buf.advance(used);
                    return match frame {
                        Frame::Error(e) => {
                            Err(format!("error reply: {}", String::from_utf8_lossy(&e)))
                        }
                        frame => Ok(frame),
                    };
                }
                self.buf.reserve(64 * 1024);
                match tokio::time::timeout_at(deadline, self.half.read_buf(&mut self.buf)).await {
                    Err(_) => return Err("deadline passed".into()),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Ok(Ok(0)) => return Err("connection closed".into()),
                    Ok(Ok(n)) => self.bytes_read += n as u64,
                }
            }
        }
    }

    pub struct Writer(OwnedWriteHalf);

    impl Writer {
        pub async fn send(&mut self, bytes: &[u8]) {
            self.0.write_all(bytes).await.expect("write to the server");
        }
    }

    /// One connection to Redis or a sidecar.
    pub struct Connection {
        reader: Reader,
        writer: Writer,
    }

    impl Connection {
        pub async fn connect(addr: SocketAddr) -> Self {
            let stream = TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            // Clients (and adapters) disable Nagle; latency samples would otherwise wait on it.
            stream.set_nodelay(true).expect("set TCP_NODELAY");
            let (read, write) = stream.into_split();
            Connection {
                reader: Reader {
                    half: read,
                    buf: BytesMut::with_capacity(64 * 1024),
                    bytes_read: 0,
                },
                writer: Writer(write),
            }
        }

        /// Connected and subscribed to `channel`, the confirmation read.
        pub async fn subscribed(addr: SocketAddr, channel: &str) -> Self {
            let mut conn = Self::connect(addr).await;
            conn.send(&command(&[b"SUBSCRIBE", channel.as_bytes()]))
                .await;
            match conn.next_frame().await {
                Frame::Array(Some(items)) if matches!(&items[0], Frame::Bulk(Some(k)) if k == b"subscribe") =>
                    {}
                other => panic!("SUBSCRIBE {channel} at {addr} answered {other:?}"),
            }
            conn
        }

        /// Connected and subscribed to every channel in `channels` (one SUBSCRIBE command).
        pub async fn subscribed_to_all(addr: SocketAddr, channels: &[String]) -> Self {
            let mut conn = Self::connect(addr).await;
            if channels.is_empty() {
                return conn;
            }
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(channels.iter().map(|c| c.as_bytes()));
            conn.send(&command(&args)).await;
            for _ in channels {
                conn.next_frame().await;
            }
            conn
        }

        pub fn into_split(self) -> (Reader, Writer) {
            (self.reader, self.writer)
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            self.writer.send(bytes).await;
        }

        /// The payload of the next pub/sub message.
        pub async fn next_message(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
            match self.reader.next_frame(deadline).await? {
                Frame::Array(Some(mut items)) if items.len() == 3 => match items.pop() {
                    Some(Frame::Bulk(Some(payload))) => Ok(payload),
                    other => Err(format!("message without a payload: {other:?}")),
                },
                other => Err(format!("expected a message, got {other:?}")),
            }
        }

        pub async fn expect_integer(&mut self, deadline: Instant) -> i64 {
            match self.reader.next_frame(deadline).await {
                Ok(Frame::Integer(n)) => n,
                other => panic!("expected an integer reply, got {other:?}"),
            }
        }

        pub fn bytes_read(&self) -> u64 {
            self.reader.bytes_read
        }

        async fn next_frame(&mut self) -> Frame {
            let deadline = Instant::now() + super::PHASE_DEADLINE;
            self.reader
                .next_frame(deadline)
                .await
                .unwrap_or_else(|e| panic!("reading a reply: {e}"))
        }

        /// `PUBSUB NUMSUB channel`: subscribers as Redis counts them.
        pub async fn numsub(&mut self, channel: &str) -> i64 {
            self.send(&command(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()]))
                .await;
            match self.next_frame().await {
                Frame::Array(Some(items)) => match items.get(1) {
                    Some(Frame::Integer(n)) => *n,
                    other => panic!("PUBSUB NUMSUB count: {other:?}"),
                },
                other => panic!("PUBSUB NUMSUB answered {other:?}"),
            }
        }

        /// `total_net_output_bytes` from `INFO stats`, and the length of the reply it came in.
        pub async fn net_output_bytes(&mut self) -> (u64, usize) {
            self.send(&command(&[b"INFO", b"stats"])).await;
            let Frame::Bulk(Some(info)) = self.next_frame().await else {
                panic!("INFO stats: not a bulk string");
            };
            let reply_len = info.len() + format!("${}\r\n\r\n", info.len()).len();
            let text = String::from_utf8_lossy(&info);
            let bytes = text
                .lines()
                .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("total_net_output_bytes in INFO stats");
            (bytes, reply_len)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server processes
// ---------------------------------------------------------------------------------------------

/// The real processes, started by the same support code the integration tests use.
use switchboard_sidecar_support as support;

mod procs {
    use std::path::PathBuf;
    use std::process::Command;
    use std::time::Duration;

    use super::support::SidecarOptions;
    pub use super::support::{RedisServer, Sidecar};

    /// The sidecar under test; `SIDECAR_BENCH_BIN` swaps in another build to compare two.
    pub fn sidecar_binary() -> PathBuf {
        std::env::var_os("SIDECAR_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_switchboard-sidecar")))
    }

    /// One "pod"'s sidecar, logging warnings only: logging must not be what we measure.
    pub fn start_sidecar(upstream: String, id: &str) -> Sidecar {
        SidecarOptions::upstream(upstream)
            .arg("--sidecar-id", id)
            .binary(sidecar_binary())
            .log("warn")
            .start()
    }

    /// A pod whose sidecar reaches Redis over TLS, trusting `ca`.
    pub fn start_tls_sidecar(upstream: String, ca: &std::path::Path, id: &str) -> Sidecar {
        SidecarOptions::upstream(upstream)
            .arg("--sidecar-id", id)
            .arg("--upstream-tls-ca-file", ca.to_str().expect("a UTF-8 path"))
            .binary(sidecar_binary())
            .log("info")
            .start()
    }

    /// redis-server's settings serving TLS on `port` with the bench's certificates.
    pub fn tls_args(certs: &super::support::tls::Certificates, port: u16) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&certs.server_cert),
            "--tls-key-file".into(),
            path(&certs.server_key),
            "--tls-ca-cert-file".into(),
            path(&certs.ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }

    /// Panics (with the sidecar's log) if it crashed during the bench or is not ready.
    pub fn assert_healthy(sidecar: &mut Sidecar) {
        sidecar.assert_running();
        assert_eq!(sidecar.readyz(), Ok(200), "sidecar /readyz after the bench");
    }

    pub fn redis_version() -> String {
        Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// User plus system CPU time a process has used so far (0 if it cannot be read).
    pub fn cpu_time(pid: u32) -> Duration {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return Duration::ZERO;
        };
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            return Duration::ZERO;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        // USER_HZ is 100 on every Linux we run on; reading it needs libc.
        Duration::from_millis(ticks * 10)
    }
}
