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
//! reconnect, publishes are held in a bounded [`PublishBuffer`], and publishes not proven
//! delivered when the link died are put back in front of them, to be announced and replayed
//! without reaching anyone twice (see [`replay`]). After reconnecting, the buffer is
//! flushed only once every sidecar that was alive before the outage has resubscribed on the same
//! server (or `--flush-grace-ms` passed), so the other pods are subscribed again when the
//! messages arrive; publishes made meanwhile wait behind them.
//!
//! The logic lives in [`machine`], which does no I/O; this module is its driver: it opens the
//! links, reads frames and requests into the machine, writes what the machine queued, delivers
//! the messages it returns to the local table, and runs the timers.

mod machine;
mod replay;
// The fuzz harness checks the subscriber's in-place message reader against the full parser.
pub(crate) use machine::split_message;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use self::machine::{Lost, Machine, Message, Outbound};
use super::fleet::Fleet;
use super::registry::Registry;
use super::table::{Delivery, Table};
use crate::metrics::Metrics;
use crate::pubsub::{Kind, Topic};
use crate::resp::Protocol;
use crate::upstream::{Endpoint, FrameReader, ReadHalf, UpstreamError, WriteHalf};

/// What the relay asks of the backplane task.
#[derive(Debug)]
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
    /// A publish from the app. On a cluster a channel message has two parts (see [`Part`]):
    /// the relay gives the channel's shard the `Main` one and the publisher's copy shard the
    /// `Copy`, or one shard `Both` when that is the same shard.
    Publish {
        kind: Kind,
        channel: Bytes,
        payload: Bytes,
        part: Part,
    },
    /// A fresh read of the fleet registry (for `PUBSUB` counts).
    ReadFleet {
        done: oneshot::Sender<Result<Fleet, String>>,
    },
    /// Graceful shutdown: leave the registry.
    Leave { done: oneshot::Sender<()> },
    /// On a cluster, first step after the slot map changed (a resharding): the shard hands the
    /// subscriptions and held publishes that are no longer its own to their shards at once.
    Replan { done: oneshot::Sender<()> },
    /// Second step, once every shard has handed over: the shard rebuilds its links with what
    /// it holds now (see `relay::topology`).
    Rebuild,
    /// On a cluster: subscription count changes handed over by another shard (a resharding),
    /// or sent to the wrong shard just before one.
    Adopt { counts: Vec<(Topic, i64)> },
    /// On a cluster: one half of a channel publish handed over by another shard (a resharding
    /// moved its slot after the other half went out).
    PublishPart {
        kind: Kind,
        channel: Bytes,
        payload: Bytes,
        part: Part,
    },
}

/// On a cluster, a channel message is published twice (see `machine::Cluster`): to the
/// channel's subscribers on the node of its slot, and as a copy for pattern subscribers on the
/// publisher's *copy shard*, one shard per sidecar, so that every copy of one publisher rides
/// one node and one link and a pattern subscriber gets them in the order they were published
/// (as Redis gives), whichever shards the channels are on. These are the halves; a resharding
/// moves only the first with its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Both,
    /// To the channel's subscribers.
    Main,
    /// To the shard's all-messages channel, for pattern subscribers.
    Copy,
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
    /// On a Redis Cluster, copy every channel message to the all-messages channel of the
    /// publisher's copy shard so that pattern subscribers get it (see `machine::Cluster`).
    /// Off, a publish costs the cluster one command instead of two, and `PSUBSCRIBE` is
    /// refused.
    pub pattern_copies: bool,
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
    /// Why the last connection attempt failed, while a shard is down (for `/readyz`).
    last_error: RwLock<Option<String>>,
    shards: usize,
    pub metrics: Arc<Metrics>,
    /// On a cluster: a shard lost its links, maybe because slots moved; the topology watcher
    /// looks at the slot map again (see `relay::topology`).
    pub topology: tokio::sync::Notify,
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
            last_error: RwLock::new(None),
            shards,
            metrics,
            topology: tokio::sync::Notify::new(),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.connected.load(Ordering::Relaxed) == self.shards
    }

    /// Why a shard could not connect the last time it tried (cleared once every shard is up).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().expect("lock poisoned").clone()
    }

    fn set_last_error(&self, error: Option<String>) {
        *self.last_error.write().expect("lock poisoned") = error;
    }

    pub(crate) fn set_connected(&self, up: bool) {
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

/// Most subscriber-link frames handled in one go before the task looks at its other inputs.
const SUB_BURST: usize = 256;

/// How long a lost connection's subscriber link is still read for messages already sent.
const LOSS_DRAIN: Duration = Duration::from_millis(100);

/// The task of one shard: drives its [`Machine`] with the links' frames, the relay's requests
/// and the timers.
pub struct Backplane {
    endpoint: Endpoint,
    shard: usize,
    settings: Settings,
    /// For the links' client names.
    sidecar_id: String,
    requests: mpsc::Receiver<Request>,
    /// Shard 0's requests, for the other shards (weak, so the relay's drop still ends shard 0).
    registry_shard: Option<mpsc::WeakSender<Request>>,
    /// Every shard's requests (weak), for what a resharding hands from one to another.
    peers: Vec<mpsc::WeakSender<Request>>,
    shared: Arc<Shared>,
    machine: Machine,
}

/// The sockets of a connected pair of links.
struct Links {
    sub_in: FrameReader<ReadHalf>,
    sub_out: WriteHalf,
    ctl_in: FrameReader<ReadHalf>,
    ctl_out: WriteHalf,
    /// A registry read asked of shard 0 for a peer check (shards other than 0).
    peer_check_reply: Option<oneshot::Receiver<Result<Fleet, String>>>,
}

/// Why the task stopped serving one connection.
enum Stop {
    Lost(String),
    Shutdown,
}

impl From<UpstreamError> for Stop {
    fn from(e: UpstreamError) -> Self {
        Stop::Lost(e.to_string())
    }
}

impl From<Lost> for Stop {
    fn from(e: Lost) -> Self {
        Stop::Lost(e.0)
    }
}

/// How a shard's task hears the relay and reaches the other shards.
pub struct Wiring {
    pub requests: mpsc::Receiver<Request>,
    /// Every shard's requests, this one's too (weak, so the relay's drop still ends the tasks):
    /// shard 0 keeps the registry, and a resharding hands requests between shards.
    pub peers: Vec<mpsc::WeakSender<Request>>,
}

impl Backplane {
    /// The task for shard `shard`.
    pub fn new(
        endpoint: Endpoint,
        shard: usize,
        settings: Settings,
        registry: Registry,
        wiring: Wiring,
        router: &crate::relay::shard::Router,
        shared: Arc<Shared>,
    ) -> Self {
        let Wiring { requests, peers } = wiring;
        let registry_shard = (shard > 0).then(|| peers[0].clone());
        let mut machine = Machine::new(
            shard,
            settings.clone(),
            registry.clone(),
            endpoint.checks_role(),
            shared.clone(),
        );
        if let crate::upstream::Target::Cluster {
            shard: Some((index, map)),
            ..
        } = &endpoint.target
        {
            let tag = crate::upstream::cluster::tag_for_slot(map.first_slot(*index).unwrap_or(0));
            machine = machine.in_cluster(machine::Cluster::new(&tag), router.clone());
        }
        Backplane {
            endpoint,
            shard,
            settings,
            sidecar_id: registry.id().to_owned(),
            requests,
            registry_shard,
            peers,
            shared,
            machine,
        }
    }

    /// Runs until the relay is dropped.
    pub async fn run(mut self) {
        let mut first = true;
        loop {
            let Some((server, mut links)) = self.reconnect(first).await else {
                return;
            };
            first = false;
            self.machine.connected(server, Instant::now());
            let stop = self.serve(&mut links).await;
            if matches!(stop, Stop::Lost(_)) {
                self.drain_messages(&mut links).await;
            }
            self.machine.disconnected();
            self.send_outbound(&mut links);
            match stop {
                Stop::Shutdown => return,
                Stop::Lost(e) => {
                    if self.endpoint.is_cluster() {
                        self.shared.topology.notify_one();
                    }
                    self.shared.metrics.upstream_reconnects.inc();
                    tracing::warn!(
                        shard = self.shard,
                        endpoint = %self.endpoint,
                        error = %e,
                        buffered = self.machine.buffered(),
                        "lost the backplane; local connections stay open, publishes are buffered until it is back"
                    );
                }
            }
        }
    }

    /// Connects both links, retrying with jittered exponential backoff while answering requests
    /// offline. `None` when the relay is gone.
    async fn reconnect(&mut self, first: bool) -> Option<(Bytes, Links)> {
        let mut delay = self.settings.reconnect_min;
        let mut attempt: u64 = 0;
        loop {
            match self.connect().await {
                Ok(connected) => {
                    self.shared.set_last_error(None);
                    tracing::info!(
                        shard = self.shard,
                        endpoint = %self.endpoint,
                        attempts = attempt + 1,
                        subscriptions = self.machine.subscriptions(),
                        buffered = self.machine.buffered(),
                        "connected to the backplane"
                    );
                    return Some(connected);
                }
                Err(e) => {
                    self.shared.set_last_error(Some(e.to_string()));
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
                        Some(r) => {
                            self.machine.request(r);
                            self.forward_to_registry_shard();
                        }
                        None => return None,
                    },
                }
            }
        }
    }

    async fn connect(&self) -> Result<(Bytes, Links), UpstreamError> {
        let name = |role: &str| {
            let id: String = self
                .sidecar_id
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
        let mut server = ctl.server_id().await?;
        if let crate::upstream::Target::Cluster {
            shard: Some((_, map)),
            ..
        } = &self.endpoint.target
        {
            // Peers that follow another slot map are not "back" on this server yet.
            server = format!("{}@{:x}", String::from_utf8_lossy(&server), map.epoch()).into();
        }
        tracing::debug!(endpoint = %self.endpoint, %addr, server = %String::from_utf8_lossy(&server), "backplane links open");
        let (mut sub_in, sub_out) = sub.into_parts();
        let (ctl_in, ctl_out) = ctl.into_parts();
        // Messages are as large as anything a client may publish, and no larger.
        sub_in.set_limits(crate::resp::Limits::for_upstream(
            self.settings.max_bulk + 4096,
        ));
        Ok((
            server,
            Links {
                sub_in,
                sub_out,
                ctl_in,
                ctl_out,
                peer_check_reply: None,
            },
        ))
    }

    async fn serve(&mut self, links: &mut Links) -> Stop {
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        heartbeat.tick().await;
        loop {
            self.send_outbound(links);
            if let Err(e) = self.write_out(links).await {
                return e.into();
            }
            let peer_check = self.machine.next_peer_check();
            let step: Result<(), Stop> = tokio::select! {
                frame = links.sub_in.next_frame() => match frame {
                    Ok(frame) => self.on_sub_frames(links, frame),
                    Err(e) => Err(e.into()),
                },
                frame = links.ctl_in.next_value() => match frame {
                    Ok(v) => self.machine.ctl_frame(v, Instant::now()).map_err(Stop::from),
                    Err(e) => Err(e.into()),
                },
                request = self.requests.recv() => match request {
                    Some(r) => {
                        self.machine.request(r);
                        // Batch whatever else is queued into the same write.
                        while let Ok(r) = self.requests.try_recv() {
                            self.machine.request(r);
                        }
                        Ok(())
                    }
                    None => Err(Stop::Shutdown),
                },
                _ = heartbeat.tick() => self.machine.heartbeat(Instant::now()).map_err(Stop::from),
                _ = sleep_until(peer_check.unwrap_or_else(Instant::now)), if peer_check.is_some() => {
                    self.machine.peer_check_due();
                    Ok(())
                }
                fleet = async { links.peer_check_reply.as_mut().expect("guarded").await }, if links.peer_check_reply.is_some() => {
                    links.peer_check_reply = None;
                    self.machine.peers_answered(fleet.ok().and_then(Result::ok), Instant::now());
                    Ok(())
                }
            };
            let step = step.and_then(|()| {
                if self.machine.take_replan() {
                    Err(Stop::Lost("the cluster's slot map changed: rebuilding this shard's links and subscriptions (its publishes are all delivered)".into()))
                } else {
                    Ok(())
                }
            });
            if let Err(stop) = step {
                if matches!(stop, Stop::Shutdown) {
                    let _ = self.write_out(links).await;
                }
                return stop;
            }
        }
    }

    /// Handles `frame` and every further frame already read (up to [`SUB_BURST`]), so a burst
    /// of messages costs one trip through the task's `select!`, not one per message.
    fn on_sub_frames(&mut self, links: &mut Links, first: Bytes) -> Result<(), Stop> {
        let mut frame = Some(first);
        let mut handled = 0;
        while let Some(f) = frame.take() {
            let message = self.machine.sub_raw(f).map_err(|e| Stop::Lost(e.0))?;
            if let Some(m) = message {
                self.deliver(m);
            }
            while let Some(m) = self.machine.take_fanout() {
                self.deliver(m);
            }
            handled += 1;
            if handled == SUB_BURST {
                break;
            }
            // Polled once: a frame already buffered (or readable without waiting), else done.
            match links.sub_in.next_frame().now_or_never() {
                Some(Ok(next)) => frame = Some(next),
                Some(Err(e)) => return Err(e.into()),
                None => {}
            }
        }
        Ok(())
    }

    /// The control link failed first, but messages may have reached the subscriber link
    /// before the server went away (a server that shuts down delivers, replies, then closes
    /// both links): deliver them rather than drop them with the link. Bounded by
    /// [`LOSS_DRAIN`], for a server that hangs instead of closing.
    async fn drain_messages(&mut self, links: &mut Links) {
        let until = Instant::now() + LOSS_DRAIN;
        while let Ok(Ok(frame)) = tokio::time::timeout_at(until, links.sub_in.next_frame()).await {
            if let Ok(Some(m)) = self.machine.sub_raw(frame) {
                self.deliver(m);
            }
            while let Some(m) = self.machine.take_fanout() {
                self.deliver(m);
            }
        }
    }

    /// Hands a message from the backplane to the local subscribers of its topic.
    fn deliver(&self, m: Message) {
        let delivery = Delivery::new(m.kind, m.pattern.as_deref(), &m.channel, &m.payload)
            .with_resp2(m.resp2.clone());
        let done = self.shared.table.deliver(&m.topic(), &delivery);
        let metrics = &self.shared.metrics;
        metrics.messages_received.inc();
        metrics.messages_delivered.inc_by(done.queued as u64);
    }

    /// Passes on what the machine asked of shard 0's task.
    fn send_outbound(&mut self, links: &mut Links) {
        for outbound in self.machine.take_outbound() {
            match outbound {
                Outbound::Registry(request) => self.to_registry_shard(request),
                Outbound::Forward(shard, request) => self.to_shard(shard, request),
                Outbound::Done(done) => {
                    let _ = done.send(());
                }
                Outbound::SlotsMoved => self.shared.topology.notify_one(),
                Outbound::PeerCheck => {
                    let (tx, rx) = oneshot::channel();
                    self.to_registry_shard(Request::ReadFleet { done: tx });
                    links.peer_check_reply = Some(rx);
                }
            }
        }
    }

    /// While disconnected only marks can be outbound; they go at once.
    fn forward_to_registry_shard(&mut self) {
        for outbound in self.machine.take_outbound() {
            match outbound {
                Outbound::Registry(request) => self.to_registry_shard(request),
                Outbound::Forward(shard, request) => self.to_shard(shard, request),
                Outbound::Done(done) => {
                    let _ = done.send(());
                }
                Outbound::SlotsMoved => self.shared.topology.notify_one(),
                Outbound::PeerCheck => {}
            }
        }
    }

    /// Hands a request to another shard's task, without blocking this one. Requests keep their
    /// order unless that shard's queue is full (4096 waiting), which a resharding's hand-over
    /// does not come near.
    fn to_shard(&self, shard: usize, request: Request) {
        let Some(tx) = self.peers.get(shard).and_then(|w| w.upgrade()) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(request)) = tx.try_send(request) {
            tokio::spawn(async move {
                let _ = tx.send(request).await;
            });
        }
    }

    /// Sends to shard 0 without waiting (shards other than 0).
    fn to_registry_shard(&self, request: Request) {
        if let Some(tx) = self.registry_shard.as_ref().and_then(|w| w.upgrade()) {
            let _ = tx.try_send(request);
        }
    }

    /// Writes what the machine queued. Bounded in time, so a backplane that stops reading is
    /// detected like one that stops answering.
    async fn write_out(&mut self, links: &mut Links) -> Result<(), UpstreamError> {
        let limit = self.settings.heartbeat * 3;
        let sub = self.machine.take_sub_writes();
        let ctl = self.machine.take_ctl_writes();
        write_within(limit, &mut links.sub_out, &sub).await?;
        write_within(limit, &mut links.ctl_out, &ctl).await
    }
}

async fn write_within(
    limit: Duration,
    out: &mut WriteHalf,
    bytes: &BytesMut,
) -> Result<(), UpstreamError> {
    if bytes.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(limit, out.send(bytes))
        .await
        .map_err(|_| {
            UpstreamError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the backplane stopped reading",
            ))
        })?
        .map_err(UpstreamError::from)
}
