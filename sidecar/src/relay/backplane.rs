//! The sidecar's two links to one backplane shard, owned by one task per shard (so one shard's
//! outage stalls no other):
//!
//! - the **subscriber link** holds ONE upstream subscription per topic that any local
//!   connection wants (subscribed when the first local subscriber arrives, unsubscribed when the
//!   last leaves) and hands every message to the local [`Table`];
//! - the **control link** carries publishes (pipelined, in order) and, on shard 0 only, the fleet
//!   registry: this sidecar's entry (its local counts and, per shard, the server its
//!   subscriptions are on) and the reads of everyone's. Other shards ask shard 0's task.
//!
//! When either link fails, both are dropped and rebuilt with jittered exponential backoff.
//! Meanwhile local connections notice nothing: subscriptions are recorded and restored on
//! reconnect, publishes are held in a bounded [`PublishBuffer`], and publishes that were in
//! flight when the link died are put back in front of them. After reconnecting, the buffer is
//! flushed only once every sidecar that was alive before the outage has resubscribed on the same
//! server (or `--flush-grace-ms` passed), so the other pods are subscribed again when the
//! messages arrive; publishes made meanwhile wait behind them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use super::buffer::PublishBuffer;
use super::fleet::Fleet;
use super::registry::Registry;
use super::table::{Delivery, Table};
use super::topic::{Kind, Topic};
use crate::metrics::Metrics;
use crate::resp::{Command, Protocol, Value};
use crate::upstream::{Endpoint, FrameReader, UpstreamError};

/// What the relay asks of the backplane task.
pub enum Request {
    /// Local connections now want these topics (one more subscriber each); answered once the
    /// upstream subscription is confirmed.
    Acquire {
        topics: Vec<Topic>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// One subscriber fewer for each topic.
    Release {
        topics: Vec<Topic>,
        done: oneshot::Sender<()>,
    },
    /// Shard 0: changes this sidecar's counts in the registry; answered once written.
    Register {
        deltas: Vec<(Topic, i64)>,
        done: oneshot::Sender<()>,
    },
    /// Shard 0: shard `shard`'s subscriptions are in place on server `server` (`None`: they
    /// are not, the shard is reconnecting).
    Mark { shard: usize, server: Option<Bytes> },
    Publish {
        kind: Kind,
        channel: Bytes,
        payload: Bytes,
    },
    /// A fresh read of the fleet registry (for `PUBSUB` counts).
    ReadFleet {
        done: oneshot::Sender<Result<Fleet, String>>,
    },
    /// Graceful shutdown: leave the registry.
    Leave { done: oneshot::Sender<()> },
}

/// Timing and limits, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub channel_prefix: Bytes,
    pub heartbeat: Duration,
    pub flush_grace: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub buffer_bytes: usize,
    pub buffer_messages: usize,
    pub max_bulk: usize,
}

/// State shared with the relay and the health endpoint.
pub struct Shared {
    pub table: Arc<Table>,
    /// The last registry read, without this sidecar (its own counts are always local).
    pub peers: RwLock<Fleet>,
    /// `peers` summed, for PUBLISH's reply.
    pub peer_totals: RwLock<super::fleet::Totals>,
    /// Shards connected right now, out of `shards`.
    connected: AtomicUsize,
    shards: usize,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// Ready once every one of `shards` backplane shards is connected (embedded: 0 shards,
    /// ready from the start).
    pub fn new(shards: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Shared {
            table: Arc::new(Table::default()),
            peers: Default::default(),
            peer_totals: Default::default(),
            connected: AtomicUsize::new(0),
            shards,
            metrics,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed) == self.shards
    }

    fn set_connected(&self, up: bool) {
        if up {
            self.connected.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connected.fetch_sub(1, Ordering::Relaxed);
        }
        self.metrics
            .upstream_connected
            .set(i64::from(self.is_ready()));
    }
}

pub struct Backplane {
    endpoint: Endpoint,
    /// Which shard this is; shard 0 keeps the registry.
    shard: usize,
    settings: Settings,
    registry: Registry,
    requests: mpsc::Receiver<Request>,
    /// Shard 0's requests, for the other shards (weak, so the relay's drop still ends shard 0).
    registry_shard: Option<mpsc::WeakSender<Request>>,
    shared: Arc<Shared>,
    /// Local subscribers per topic on this shard: drives upstream (un)subscribes.
    refcounts: HashMap<Topic, i64>,
    /// Upstream subscriptions last added to the gauge (every shard adds its own).
    gauged: i64,
    buffer: PublishBuffer,
    /// Peers seen before the last outage; flushing waits for them to come back.
    awaited_peers: HashSet<String>,
    /// Shard 0: this sidecar's registry entry, local subscribers per topic of every shard.
    registered: HashMap<Topic, i64>,
    /// Shard 0: this sidecar's server marks in the registry (see `registry`), by shard.
    marks: HashMap<usize, Bytes>,
}

/// Replies the subscriber link owes, in order: one per channel for (un)subscribes, one per PING.
struct SubPending {
    replies: usize,
    done: Option<oneshot::Sender<Result<(), String>>>,
    heartbeat: bool,
    /// The PING after the reconnect's resubscriptions: once answered, they are all in place.
    restored: bool,
}

/// Replies the control link owes, in order.
enum CtlPending {
    Publish(Bytes),
    Adjust(Option<oneshot::Sender<()>>),
    Snapshot,
    Touch,
    /// The heartbeat of shards without the registry; behind Sentinel, also checks the server
    /// is still the primary.
    Role,
    RefreshPeers,
    PeerCheck,
    ReadFleet(oneshot::Sender<Result<Fleet, String>>),
    Leave(oneshot::Sender<()>),
}

/// A connected pair of links.
struct Live {
    /// The server both links are on (its `run_id`).
    server: Bytes,
    sub_in: FrameReader<OwnedReadHalf>,
    sub_out: OwnedWriteHalf,
    sub_buf: BytesMut,
    sub_pending: VecDeque<SubPending>,
    ctl_in: FrameReader<OwnedReadHalf>,
    ctl_out: OwnedWriteHalf,
    ctl_buf: BytesMut,
    ctl_pending: VecDeque<CtlPending>,
    /// While set, publishes still go to the buffer: it is flushed once peers are back or at
    /// this deadline.
    flush_deadline: Option<Instant>,
    next_peer_check: Option<Instant>,
    /// A registry read asked of shard 0 for a peer check (shards other than 0).
    peer_check_reply: Option<oneshot::Receiver<Result<Fleet, String>>>,
    heartbeats_unanswered: usize,
    heartbeat_deadline: Option<Instant>,
}

/// Why the task stopped serving one connection.
enum Stop {
    Lost(UpstreamError),
    Shutdown,
}

impl From<UpstreamError> for Stop {
    fn from(e: UpstreamError) -> Self {
        Stop::Lost(e)
    }
}

impl Backplane {
    /// The task for shard `shard`; `registry_shard` reaches shard 0 (`None` for shard 0).
    pub fn new(
        endpoint: Endpoint,
        shard: usize,
        settings: Settings,
        registry: Registry,
        requests: mpsc::Receiver<Request>,
        registry_shard: Option<mpsc::WeakSender<Request>>,
        shared: Arc<Shared>,
    ) -> Self {
        let buffer = PublishBuffer::new(settings.buffer_bytes, settings.buffer_messages);
        Backplane {
            endpoint,
            shard,
            settings,
            registry,
            requests,
            registry_shard,
            shared,
            refcounts: HashMap::new(),
            gauged: 0,
            buffer,
            awaited_peers: HashSet::new(),
            registered: HashMap::new(),
            marks: HashMap::new(),
        }
    }

    fn keeps_registry(&self) -> bool {
        self.shard == 0
    }

    /// Sends to shard 0 without waiting (shards other than 0).
    fn to_registry_shard(&self, request: Request) {
        if let Some(tx) = self.registry_shard.as_ref().and_then(|w| w.upgrade()) {
            let _ = tx.try_send(request);
        }
    }

    /// Runs until the relay is dropped.
    pub async fn run(mut self) {
        let mut first = true;
        loop {
            let Some(mut live) = self.reconnect(first).await else {
                return;
            };
            first = false;
            self.restore(&mut live);
            self.set_ready(true);
            let stop = self.serve(&mut live).await;
            self.set_ready(false);
            self.salvage(live);
            match stop {
                Stop::Shutdown => return,
                Stop::Lost(e) => {
                    self.shared.metrics.upstream_reconnects.inc();
                    tracing::warn!(
                        shard = self.shard,
                        endpoint = %self.endpoint,
                        error = %e,
                        buffered = self.buffer.len(),
                        "lost the backplane; local connections stay open, publishes are buffered until it is back"
                    );
                }
            }
        }
    }

    fn set_ready(&self, ready: bool) {
        self.shared.set_connected(ready);
    }

    /// Connects both links, retrying with jittered exponential backoff while answering requests
    /// offline. `None` when the relay is gone.
    async fn reconnect(&mut self, first: bool) -> Option<Live> {
        let mut delay = self.settings.reconnect_min;
        let mut attempt: u64 = 0;
        loop {
            match self.connect().await {
                Ok(live) => {
                    tracing::info!(
                        shard = self.shard,
                        endpoint = %self.endpoint,
                        attempts = attempt + 1,
                        subscriptions = self.refcounts.len(),
                        buffered = self.buffer.len(),
                        "connected to the backplane"
                    );
                    return Some(live);
                }
                Err(e) => {
                    attempt += 1;
                    if attempt == 1 && first {
                        tracing::warn!(shard = self.shard, endpoint = %self.endpoint, error = %e, "cannot reach the backplane yet; retrying (the sidecar is not ready until it connects)");
                    } else if attempt.is_multiple_of(10) {
                        tracing::warn!(shard = self.shard, endpoint = %self.endpoint, error = %e, attempt, "still cannot reach the backplane");
                    } else {
                        tracing::debug!(endpoint = %self.endpoint, error = %e, attempt, "reconnect failed");
                    }
                }
            }
            let wait = rand::rng().random_range(delay / 2..=delay);
            delay = (delay * 2).min(self.settings.reconnect_max);
            let until = Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = sleep_until(until) => break,
                    request = self.requests.recv() => match request {
                        Some(r) => self.offline(r),
                        None => return None,
                    },
                }
            }
        }
    }

    async fn connect(&self) -> Result<Live, UpstreamError> {
        let name = |role: &str| {
            let id: String = self
                .registry
                .id()
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '_' })
                .collect();
            format!("switchboard-{role}:{id}")
        };
        // Resolved once, so both links are on the same primary even mid-failover.
        let addr = self.endpoint.resolve().await?;
        let sub = self
            .endpoint
            .connect_to(&addr, Protocol::Resp2, Some(&name("sub")))
            .await?;
        let mut ctl = self
            .endpoint
            .connect_to(&addr, Protocol::Resp2, Some(&name("ctl")))
            .await?;
        let server = ctl.server_id().await?;
        tracing::debug!(endpoint = %self.endpoint, %addr, server = %String::from_utf8_lossy(&server), "backplane links open");
        let (mut sub_in, sub_out) = sub.into_parts();
        let (ctl_in, ctl_out) = ctl.into_parts();
        // Messages are as large as anything a client may publish, and no larger.
        sub_in.set_limits(crate::resp::Limits::for_upstream(
            self.settings.max_bulk + 4096,
        ));
        Ok(Live {
            server,
            sub_in,
            sub_out,
            sub_buf: BytesMut::new(),
            sub_pending: VecDeque::new(),
            ctl_in,
            ctl_out,
            ctl_buf: BytesMut::new(),
            ctl_pending: VecDeque::new(),
            flush_deadline: None,
            next_peer_check: None,
            peer_check_reply: None,
            heartbeats_unanswered: 0,
            heartbeat_deadline: None,
        })
    }

    /// Re-establishes every subscription and this sidecar's registry entry; arranges the flush.
    fn restore(&mut self, live: &mut Live) {
        for kind in Kind::ALL {
            let names: Vec<Bytes> = self
                .refcounts
                .keys()
                .filter(|t| t.kind == kind)
                .map(|t| t.name.clone())
                .collect();
            for chunk in names.chunks(1024) {
                self.write_sub(live, kind.subscribe_command(), chunk, None);
            }
        }
        live.sub_buf
            .extend_from_slice(&crate::upstream::command(&["PING"]).raw);
        live.sub_pending.push_back(SubPending {
            replies: 1,
            done: None,
            heartbeat: false,
            restored: true,
        });
        if self.keeps_registry() {
            self.resnapshot_quietly(live);
        }
        // Peers from before the outage may not be subscribed again yet (after a failover they
        // all reconnect at once): hold even fresh publishes until they are, or they miss them.
        if self.buffer.is_empty() && self.awaited_peers.is_empty() {
            if self.keeps_registry() {
                push_ctl(live, &self.registry.read(), CtlPending::RefreshPeers);
            }
        } else {
            live.flush_deadline = Some(Instant::now() + self.settings.flush_grace);
            live.next_peer_check = Some(Instant::now());
        }
        self.update_gauges();
    }

    async fn serve(&mut self, live: &mut Live) -> Stop {
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.tick().await;
        loop {
            if let Err(e) = self.write_out(live).await {
                return Stop::Lost(e);
            }
            let peer_check = live.next_peer_check;
            let step: Result<(), Stop> = tokio::select! {
                frame = live.sub_in.next_value() => match frame {
                    Ok(v) => self.on_sub_frame(live, v),
                    Err(e) => Err(e.into()),
                },
                frame = live.ctl_in.next_value() => match frame {
                    Ok(v) => self.on_ctl_frame(live, v),
                    Err(e) => Err(e.into()),
                },
                request = self.requests.recv() => match request {
                    Some(r) => {
                        self.online(live, r);
                        // Batch whatever else is queued into the same write.
                        while let Ok(r) = self.requests.try_recv() {
                            self.online(live, r);
                        }
                        Ok(())
                    }
                    None => Err(Stop::Shutdown),
                },
                _ = heartbeat.tick() => self.on_heartbeat(live),
                _ = sleep_until(peer_check.unwrap_or_else(Instant::now)), if peer_check.is_some() => {
                    live.next_peer_check = None;
                    self.ask_for_peers(live);
                    Ok(())
                }
                fleet = async { live.peer_check_reply.as_mut().expect("guarded").await }, if live.peer_check_reply.is_some() => {
                    live.peer_check_reply = None;
                    self.peers_checked(live, fleet.ok().and_then(Result::ok));
                    Ok(())
                }
            };
            if let Err(stop) = step {
                if matches!(stop, Stop::Shutdown) {
                    let _ = self.write_out(live).await;
                }
                return stop;
            }
        }
    }

    /// Writes what the handlers queued. Bounded in time, so a backplane that stops reading is
    /// detected like one that stops answering.
    async fn write_out(&mut self, live: &mut Live) -> Result<(), UpstreamError> {
        let limit = self.settings.heartbeat * 3;
        let timed_out = || {
            UpstreamError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the backplane stopped reading",
            ))
        };
        if !live.sub_buf.is_empty() {
            tokio::time::timeout(limit, live.sub_out.write_all(&live.sub_buf))
                .await
                .map_err(|_| timed_out())??;
            live.sub_buf.clear();
        }
        if !live.ctl_buf.is_empty() {
            tokio::time::timeout(limit, live.ctl_out.write_all(&live.ctl_buf))
                .await
                .map_err(|_| timed_out())??;
            live.ctl_buf.clear();
        }
        Ok(())
    }

    fn on_heartbeat(&mut self, live: &mut Live) -> Result<(), Stop> {
        if live.heartbeats_unanswered > 0 {
            if live.heartbeat_deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Stop::Lost(UpstreamError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no heartbeat reply within {:?}", self.heartbeat_limit()),
                ))));
            }
            return Ok(());
        }
        live.heartbeats_unanswered = 2;
        live.heartbeat_deadline = Some(Instant::now() + self.heartbeat_limit());
        live.sub_buf
            .extend_from_slice(&crate::upstream::command(&["PING"]).raw);
        live.sub_pending.push_back(SubPending {
            replies: 1,
            done: None,
            heartbeat: true,
            restored: false,
        });
        if self.keeps_registry() {
            push_ctl(live, &self.registry.touch(), CtlPending::Touch);
            push_ctl(live, &self.registry.read(), CtlPending::RefreshPeers);
        } else {
            push_ctl(live, &crate::upstream::command(&["ROLE"]), CtlPending::Role);
        }
        Ok(())
    }

    /// A registry read for the peer check: on our own control link on shard 0, else from
    /// shard 0's task.
    fn ask_for_peers(&mut self, live: &mut Live) {
        if self.keeps_registry() {
            push_ctl(live, &self.registry.read(), CtlPending::PeerCheck);
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.to_registry_shard(Request::ReadFleet { done: tx });
        live.peer_check_reply = Some(rx);
    }

    /// Flushes once every awaited peer is subscribed again on this shard's server (or the
    /// grace period is over); otherwise looks again shortly.
    fn peers_checked(&mut self, live: &mut Live, fleet: Option<Fleet>) {
        let fleet = fleet.unwrap_or_default();
        let missing = fleet.not_back_on(&self.awaited_peers, self.shard, &live.server);
        let expired = live.flush_deadline.is_some_and(|d| Instant::now() >= d);
        if missing.is_empty() || expired {
            if !missing.is_empty() {
                tracing::warn!(
                    shard = self.shard,
                    ?missing,
                    "flushing buffered publishes although some sidecars have not re-registered (gone, or still reconnecting)"
                );
            }
            self.flush(live);
        } else {
            live.next_peer_check = Some(Instant::now() + Duration::from_millis(100));
        }
    }

    fn heartbeat_limit(&self) -> Duration {
        (self.settings.heartbeat * 2).max(Duration::from_secs(3))
    }

    fn heartbeat_answered(live: &mut Live) {
        live.heartbeats_unanswered = live.heartbeats_unanswered.saturating_sub(1);
        if live.heartbeats_unanswered == 0 {
            live.heartbeat_deadline = None;
        }
    }

    /// A request while connected.
    fn online(&mut self, live: &mut Live, request: Request) {
        match request {
            Request::Acquire { topics, done } => {
                let fresh = self.count(&topics, 1);
                if let Some(kind) = fresh.first().map(|t| t.kind) {
                    let names: Vec<Bytes> = fresh.iter().map(|t| t.name.clone()).collect();
                    self.write_sub(live, kind.subscribe_command(), &names, Some(done));
                } else {
                    let _ = done.send(Ok(()));
                }
            }
            Request::Release { topics, done } => {
                let gone = self.count(&topics, -1);
                if let Some(kind) = gone.first().map(|t| t.kind) {
                    let names: Vec<Bytes> = gone.iter().map(|t| t.name.clone()).collect();
                    self.write_sub(live, kind.unsubscribe_command(), &names, None);
                }
                let _ = done.send(());
            }
            Request::Register { deltas, done } => {
                self.register(&deltas);
                push_ctl(
                    live,
                    &self.registry.adjust(deltas.iter().map(|(t, d)| (t, *d))),
                    CtlPending::Adjust(Some(done)),
                );
            }
            Request::Mark { shard, server } => {
                let command = self.registry.mark(shard, server.as_ref());
                match server {
                    Some(s) => self.marks.insert(shard, s),
                    None => self.marks.remove(&shard),
                };
                push_ctl(live, &command, CtlPending::Adjust(None));
            }
            Request::Publish {
                kind,
                channel,
                payload,
            } => {
                let command = self.publish_command(kind, &channel, payload);
                if live.flush_deadline.is_some() {
                    self.hold(command);
                } else {
                    self.shared.metrics.publishes_sent.inc();
                    push_ctl(live, &command, CtlPending::Publish(command.raw.clone()));
                }
            }
            Request::ReadFleet { done } => {
                push_ctl(live, &self.registry.read(), CtlPending::ReadFleet(done))
            }
            Request::Leave { done } => {
                push_ctl(live, &self.registry.leave(), CtlPending::Leave(done))
            }
        }
        self.update_gauges();
    }

    /// A request while disconnected: record it so the reconnect restores it.
    fn offline(&mut self, request: Request) {
        match request {
            Request::Acquire { topics, done } => {
                self.count(&topics, 1);
                let _ = done.send(Ok(()));
            }
            Request::Release { topics, done } => {
                self.count(&topics, -1);
                let _ = done.send(());
            }
            Request::Register { deltas, done } => {
                self.register(&deltas);
                let _ = done.send(());
            }
            Request::Mark { shard, server } => {
                match server {
                    Some(s) => self.marks.insert(shard, s),
                    None => self.marks.remove(&shard),
                };
            }
            Request::Publish {
                kind,
                channel,
                payload,
            } => {
                let command = self.publish_command(kind, &channel, payload);
                self.hold(command);
            }
            Request::ReadFleet { done } => {
                let _ = done.send(Err("the backplane is unreachable".into()));
            }
            Request::Leave { done } => {
                let _ = done.send(());
            }
        }
        self.update_gauges();
    }

    /// Applies `delta` to each topic's count; returns the topics whose upstream subscription
    /// changes (first subscriber arrived, or last one left).
    fn count(&mut self, topics: &[Topic], delta: i64) -> Vec<Topic> {
        let mut changed = Vec::new();
        for topic in topics {
            let n = self.refcounts.entry(topic.clone()).or_insert(0);
            *n += delta;
            if (delta > 0 && *n == 1) || (delta < 0 && *n <= 0) {
                changed.push(topic.clone());
            }
            if *n <= 0 {
                self.refcounts.remove(topic);
            }
        }
        changed
    }

    /// Applies count changes to this sidecar's registry entry (shard 0).
    fn register(&mut self, deltas: &[(Topic, i64)]) {
        for (topic, d) in deltas {
            let n = self.registered.entry(topic.clone()).or_insert(0);
            *n += d;
            if *n <= 0 {
                self.registered.remove(topic);
            }
        }
    }

    fn publish_command(&self, kind: Kind, channel: &[u8], payload: Bytes) -> Command {
        let verb: &'static [u8] = if kind == Kind::Shard {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        Command::from_args([Bytes::from_static(verb), self.prefixed(channel), payload])
    }

    /// Holds a publish for later; counts and logs it if the buffer is full.
    fn hold(&mut self, command: Command) {
        if self.buffer.push(command.raw) {
            self.shared
                .metrics
                .publishes_buffered
                .set(self.buffer.len() as i64);
            return;
        }
        self.shared.metrics.publishes_dropped.inc();
        let dropped = self.shared.metrics.publishes_dropped.get();
        if dropped == 1 || dropped.is_multiple_of(1000) {
            tracing::error!(
                buffered = self.buffer.len(),
                buffered_bytes = self.buffer.bytes(),
                dropped_total = dropped,
                "publish buffer full while the backplane is unreachable: dropping publishes (raise --publish-buffer-bytes / --publish-buffer-messages)"
            );
        }
    }

    fn prefixed(&self, name: &[u8]) -> Bytes {
        if self.settings.channel_prefix.is_empty() {
            return Bytes::copy_from_slice(name);
        }
        let mut v = self.settings.channel_prefix.to_vec();
        v.extend_from_slice(name);
        v.into()
    }

    fn unprefixed(&self, name: &Bytes) -> Option<Bytes> {
        name.starts_with(&self.settings.channel_prefix)
            .then(|| name.slice(self.settings.channel_prefix.len()..))
    }

    fn write_sub(
        &self,
        live: &mut Live,
        verb: &str,
        names: &[Bytes],
        done: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        let mut args = vec![Bytes::copy_from_slice(verb.as_bytes())];
        args.extend(names.iter().map(|n| self.prefixed(n)));
        live.sub_buf
            .extend_from_slice(&Command::from_args(args).raw);
        live.sub_pending.push_back(SubPending {
            replies: names.len(),
            done,
            heartbeat: false,
            restored: false,
        });
    }

    fn on_sub_frame(&mut self, live: &mut Live, frame: Value) -> Result<(), Stop> {
        let items = match &frame {
            Value::Array(items) | Value::Push(items) => items.as_slice(),
            Value::Simple(s) if &s[..] == b"PONG" => return self.sub_answered(live, Ok(())),
            Value::Error(e) => {
                return self.sub_answered(live, Err(String::from_utf8_lossy(e).into_owned()));
            }
            _ => return Ok(()),
        };
        let word = items.first().and_then(Value::as_bytes).map(|b| &b[..]);
        let bytes = |i: usize| items.get(i).and_then(Value::as_bytes);
        match word {
            Some(b"message") | Some(b"smessage") => {
                let kind = if word == Some(b"message") {
                    Kind::Channel
                } else {
                    Kind::Shard
                };
                if let (Some(channel), Some(payload)) =
                    (bytes(1).and_then(|c| self.unprefixed(c)), bytes(2))
                {
                    let m = Delivery::new(kind, None, &channel, payload);
                    self.delivered(
                        self.shared
                            .table
                            .deliver(&Topic::new(kind, channel.clone()), &m),
                    );
                }
            }
            Some(b"pmessage") => {
                let pattern = bytes(1).and_then(|p| self.unprefixed(p));
                let channel = bytes(2).and_then(|c| self.unprefixed(c));
                if let (Some(pattern), Some(channel), Some(payload)) = (pattern, channel, bytes(3))
                {
                    let m = Delivery::new(Kind::Pattern, Some(&pattern), &channel, payload);
                    self.delivered(
                        self.shared
                            .table
                            .deliver(&Topic::new(Kind::Pattern, pattern.clone()), &m),
                    );
                }
            }
            Some(
                b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe"
                | b"sunsubscribe" | b"pong",
            ) => return self.sub_answered(live, Ok(())),
            _ => tracing::debug!(
                ?frame,
                "ignoring an unexpected frame on the subscriber link"
            ),
        }
        Ok(())
    }

    fn delivered(&self, d: super::table::Delivered) {
        let m = &self.shared.metrics;
        m.messages_received.inc();
        m.messages_delivered.inc_by(d.queued as u64);
    }

    fn sub_answered(&mut self, live: &mut Live, result: Result<(), String>) -> Result<(), Stop> {
        let Some(front) = live.sub_pending.front_mut() else {
            return Ok(());
        };
        if result.is_ok() && front.replies > 1 {
            front.replies -= 1;
            return Ok(());
        }
        let done = live.sub_pending.pop_front().expect("front exists");
        if done.heartbeat {
            Self::heartbeat_answered(live);
        }
        if done.restored {
            // Every resubscription before this PING is in place: tell the fleet.
            let server = Some(live.server.clone());
            if self.keeps_registry() {
                self.online(live, Request::Mark { shard: 0, server });
            } else {
                self.to_registry_shard(Request::Mark {
                    shard: self.shard,
                    server,
                });
            }
        }
        if let Err(e) = &result {
            // The relay releases what it acquired, so counts stay truthful.
            tracing::warn!(shard = self.shard, error = %e, "the backplane refused a subscription command");
        }
        if let Some(tx) = done.done {
            let _ = tx.send(result);
        }
        Ok(())
    }

    fn on_ctl_frame(&mut self, live: &mut Live, frame: Value) -> Result<(), Stop> {
        let refused = match &frame {
            Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
            _ => None,
        };
        if let Some(e) = refused.as_deref().filter(|e| e.starts_with("READONLY")) {
            // This server was demoted (a failover it was not told to announce by closing our
            // links): it would accept publishes and deliver them to no one. Re-resolve.
            return Err(Stop::Lost(UpstreamError::Io(std::io::Error::other(
                format!("the backplane became a replica: {e}"),
            ))));
        }
        let Some(pending) = live.ctl_pending.pop_front() else {
            return Ok(());
        };
        match pending {
            CtlPending::Publish(_) => {
                if let Some(e) = refused {
                    tracing::warn!(error = %e, "the backplane refused a publish");
                }
            }
            CtlPending::Adjust(done) => {
                if frame == Value::Integer(0) {
                    self.resnapshot(live);
                } else if let Some(e) = refused {
                    tracing::warn!(error = %e, "the backplane refused a registry update");
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            CtlPending::Snapshot => {
                if let Some(e) = refused {
                    tracing::error!(error = %e, "cannot write this sidecar's registry entry; fleet-wide PUBSUB counts will be wrong (does the backplane allow EVAL?)");
                }
            }
            CtlPending::Touch => {
                Self::heartbeat_answered(live);
                if frame == Value::Integer(0) {
                    self.resnapshot(live);
                }
            }
            CtlPending::Role => {
                Self::heartbeat_answered(live);
                let role = frame
                    .as_elements()
                    .and_then(|r| r.first()?.as_bytes().cloned());
                if self.endpoint.is_sentinel() && role.as_deref() != Some(b"master") {
                    return Err(Stop::Lost(UpstreamError::Io(std::io::Error::other(
                        format!("the backplane is no longer the primary (ROLE: {frame:?})"),
                    ))));
                }
            }
            CtlPending::RefreshPeers => {
                self.remember(&frame);
            }
            CtlPending::PeerCheck => {
                let fleet = self.remember(&frame);
                self.peers_checked(live, fleet);
            }
            CtlPending::ReadFleet(done) => {
                let fleet = self
                    .remember(&frame)
                    .ok_or_else(|| refused.unwrap_or_else(|| "unexpected registry reply".into()));
                let _ = done.send(fleet);
            }
            CtlPending::Leave(done) => {
                let _ = done.send(());
            }
        }
        Ok(())
    }

    /// Caches a registry read (without this sidecar) and returns it.
    fn remember(&mut self, frame: &Value) -> Option<Fleet> {
        let mut fleet = Fleet::from_registry(frame)?;
        fleet.peers.remove(self.registry.id());
        *self
            .shared
            .peer_totals
            .write()
            .expect("peers lock poisoned") = fleet.totals();
        *self.shared.peers.write().expect("peers lock poisoned") = fleet.clone();
        Some(fleet)
    }

    fn resnapshot(&self, live: &mut Live) {
        tracing::info!(
            "this sidecar's registry entry was gone (backplane restarted or entry expired); rewriting it"
        );
        self.resnapshot_quietly(live);
    }

    fn resnapshot_quietly(&self, live: &mut Live) {
        let snapshot = self.registry.snapshot(
            self.registered.iter().map(|(t, n)| (t, *n)),
            self.marks.iter().map(|(s, m)| (*s, m)),
        );
        push_ctl(live, &snapshot, CtlPending::Snapshot);
    }

    fn flush(&mut self, live: &mut Live) {
        live.flush_deadline = None;
        let n = self.buffer.len();
        for raw in self.buffer.drain() {
            live.ctl_buf.extend_from_slice(&raw);
            live.ctl_pending.push_back(CtlPending::Publish(raw));
        }
        self.shared.metrics.publishes_sent.inc_by(n as u64);
        self.shared.metrics.publishes_buffered.set(0);
        if n > 0 {
            tracing::info!(
                publishes = n,
                "flushed the publishes held during the outage"
            );
        }
    }

    /// After a connection died: keeps what can be kept, answers what cannot wait.
    fn salvage(&mut self, live: Live) {
        let mut in_flight = Vec::new();
        for pending in live.ctl_pending {
            match pending {
                CtlPending::Publish(raw) => in_flight.push(raw),
                CtlPending::Adjust(Some(done)) => {
                    let _ = done.send(());
                }
                CtlPending::ReadFleet(done) => {
                    let _ = done.send(Err("the backplane connection was lost".into()));
                }
                CtlPending::Leave(done) => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
        if !in_flight.is_empty() {
            tracing::info!(
                publishes = in_flight.len(),
                "re-queued publishes the backplane never acknowledged"
            );
        }
        self.buffer.requeue_front(in_flight);
        for pending in live.sub_pending {
            if let Some(done) = pending.done {
                // Recorded in the refcounts: the reconnect subscribes it.
                let _ = done.send(Ok(()));
            }
        }
        self.awaited_peers = self.shared.peers.read().expect("peers lock poisoned").ids();
        // Not subscribed anywhere until the reconnect restores it.
        if self.keeps_registry() {
            self.marks.remove(&0);
        } else {
            self.to_registry_shard(Request::Mark {
                shard: self.shard,
                server: None,
            });
        }
        self.shared
            .metrics
            .publishes_buffered
            .set(self.buffer.len() as i64);
    }

    fn update_gauges(&mut self) {
        let now = self.refcounts.len() as i64;
        self.shared
            .metrics
            .upstream_subscriptions
            .inc_by(now - self.gauged);
        self.gauged = now;
    }
}

fn push_ctl(live: &mut Live, command: &Command, pending: CtlPending) {
    live.ctl_buf.extend_from_slice(&command.raw);
    live.ctl_pending.push_back(pending);
}
