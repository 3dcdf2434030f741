//! The logic of one backplane shard, without I/O: frames and requests in, bytes to write and
//! messages to deliver out. The driver (see the parent module) owns the sockets and the timers
//! and feeds this machine; nothing here awaits, sleeps or reads the clock, so a test can play a
//! whole outage frame by frame (see `tests`).
//!
//! It owns the subscription refcounts (which upstream subscriptions exist), the replies each
//! link still owes, the outage buffer and its flush (held until the peers from before the outage
//! are subscribed again on the same server, or the grace period ends), the heartbeats and the
//! failover checks (`READONLY`, `ROLE`), and on shard 0 this sidecar's registry entry.
//!
//! On a Redis Cluster ([`Cluster`]) the app's channels ride sharded pub/sub underneath, so a
//! message costs the cluster the one node that owns its slot instead of a flood over the cluster
//! bus: `SUBSCRIBE`/`PUBLISH` become `SSUBSCRIBE`/`SPUBLISH` of the prefixed name marked
//! [`CLASSIC`] (apart from the app's own shard channels, which keep their names), and the frames
//! come back as `message` to the app. Sharded messages never reach `PSUBSCRIBE`, so
//! patterns are served from each shard's *all-messages channel* (its name carries a hash tag of
//! the shard's own first slot, so it lives on the shard's node): a publisher also `SPUBLISH`es
//! every channel message, as `<channel length>:<channel><payload>`, to the one of its *copy
//! shard*, the same shard for all its publishes, so its copies keep their order on their way
//! to a pattern subscriber (see [`Part`]); a sidecar whose app holds patterns subscribes the
//! all-messages channel of every shard and matches the patterns itself. Each message reaches
//! each pattern exactly once, and the publisher needs to know nothing about who holds patterns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::replay::{self, Dedup, Recent, Unconfirmed};
use super::{Part, Request, Settings, Shared};
use crate::pubsub::{Kind, Topic};
use crate::relay::buffer::PublishBuffer;
use crate::relay::fleet::Fleet;
use crate::relay::registry::Registry;
use crate::relay::shard::CLASSIC;
use crate::resp::{Command, ProtocolError, Value, value};

/// What a shard of a Redis Cluster calls its own channels (after the channel prefix): both
/// carry the hash tag of the shard's first slot, so they live on its node.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    /// Where the shard's replays are announced (standalone: [`replay::CHANNEL`]).
    pub(crate) replays: Bytes,
    /// Every channel message published on the shard, for pattern subscribers.
    pub(crate) all: Bytes,
}

impl Cluster {
    /// The names for the shard whose first slot has hash tag `tag`.
    pub(crate) fn new(tag: &str) -> Self {
        let name = |what: &str| Bytes::from(format!("__switchboard:{what}:{tag}"));
        Cluster {
            replays: name("replays"),
            all: name("all"),
        }
    }
}

/// An app's classic channel as named upstream on a cluster (before the prefix).
fn classic(channel: &[u8]) -> Bytes {
    let mut name = Vec::with_capacity(CLASSIC.len() + channel.len());
    name.extend_from_slice(CLASSIC);
    name.extend_from_slice(channel);
    name.into()
}

/// `<channel length>:<channel><payload>`: a message on the all-messages channel.
fn envelope(channel: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(channel.len() + payload.len() + 8);
    out.extend_from_slice(channel.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(channel);
    out.extend_from_slice(payload);
    out
}

/// The channel and payload of an [`envelope`] (slices of it).
fn open_envelope(body: &Bytes) -> Option<(Bytes, Bytes)> {
    let colon = body.iter().take(21).position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&body[..colon]).ok()?.parse().ok()?;
    let start = colon + 1;
    let end = start.checked_add(len).filter(|&e| e <= body.len())?;
    Some((body.slice(start..end), body.slice(end..)))
}

/// Why the links must be dropped and rebuilt (the server was demoted, stopped answering...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lost(pub(crate) String);

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message that arrived on the subscriber link, for the local table. Its parts are slices of
/// the frame it came in, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) kind: Kind,
    /// The pattern that matched, for `pmessage`, without the channel prefix.
    pub(crate) pattern: Option<Bytes>,
    /// Without the channel prefix.
    pub(crate) channel: Bytes,
    pub(crate) payload: Bytes,
    /// The frame as it arrived, when it is already what a RESP2 subscriber must receive (no
    /// channel prefix to take off): delivered as is, without encoding it again.
    pub(crate) resp2: Option<Bytes>,
}

impl Message {
    /// The topic whose local subscribers receive it (the pattern itself for `pmessage`).
    pub(crate) fn topic(&self) -> Topic {
        match &self.pattern {
            Some(p) => Topic::new(Kind::Pattern, p.clone()),
            None => Topic::new(self.kind, self.channel.clone()),
        }
    }
}

/// What the machine needs from outside that is not a write on its own links.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A request that belongs to another shard now (a resharding moved its slot).
    Forward(usize, Request),
    /// Answered once the outbound before it has been handed on (the first step of a replan).
    Done(oneshot::Sender<()>),
    /// The cluster refused a slot to this shard: the topology watcher should look again.
    SlotsMoved,
    /// A request for shard 0's task (shards other than 0).
    Registry(Request),
    /// A registry read from shard 0 for the peer check; answer with
    /// [`Machine::peers_answered`] (shards other than 0).
    PeerCheck,
}

/// Replies the subscriber link owes, in order: one per channel for (un)subscribes, one per PING.
#[derive(Debug)]
struct SubPending {
    replies: usize,
    done: Option<oneshot::Sender<Result<(), String>>>,
    heartbeat: bool,
    /// The PING after the reconnect's resubscriptions: once answered, they are all in place.
    restored: bool,
    /// A PING's [`Unconfirmed::mark`]: once answered, what was acknowledged before it went out
    /// has been delivered.
    confirms: Option<u64>,
    /// The PING that ends a drain (see [`Machine::start_drain`]).
    drained: bool,
}

/// Replies the control link owes, in order.
#[derive(Debug)]
enum CtlPending {
    Publish(Bytes),
    /// An announcement of replays (see [`replay`]): not sent again, the next flush announces
    /// whatever is replayed then.
    Announce,
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

/// The state of one connected pair of links.
struct Live {
    /// The server both links are on (its `run_id`).
    server: Bytes,
    sub_out: BytesMut,
    sub_pending: VecDeque<SubPending>,
    ctl_out: BytesMut,
    ctl_pending: VecDeque<CtlPending>,
    /// While set, publishes still go to the buffer: it is flushed once peers are back or at
    /// this deadline.
    flush_deadline: Option<Instant>,
    next_peer_check: Option<Instant>,
    /// A peer check is waiting for shard 0's answer (shards other than 0).
    peer_check_asked: bool,
    heartbeats_unanswered: usize,
    heartbeat_deadline: Option<Instant>,
    /// Publishes acknowledged on this connection, kept until a subscriber-link PING proves
    /// them delivered.
    unconfirmed: Unconfirmed,
    /// What the server confirmed this subscriber link subscribes (kind and name upstream,
    /// without the prefix). An announced replay is expected only there: a subscription
    /// confirmed before the announcement arrived was made before the replay was published, so
    /// the replay comes; one still unconfirmed may miss it, and expecting it would drop the next
    /// publish of the same payload (a possible duplicate is taken instead).
    subscribed: HashSet<(Kind, Bytes)>,
    /// On a cluster, the links are to be rebuilt for a new slot map: new publishes are held,
    /// and once every sent one is proven delivered the machine asks for new links. So a
    /// resharding replays nothing (a replay handed to another shard could not be deduplicated
    /// by the receivers of this one).
    draining: bool,
    drain_ping_sent: bool,
    /// On a cluster, the slot map changed and the links are about to be rebuilt: publishes
    /// are held (see [`Request::Replan`]).
    holding: bool,
    /// The first step of a replan is done once every publish sent before it is answered (a
    /// `-MOVED` one handed to its new shard), so nothing of this shard's reaches a slot's new
    /// shard after that shard starts sending its own.
    replanned: Option<oneshot::Sender<()>>,
}

impl Live {
    /// Whether the replay of `publish`, delivered through `pattern`, reaches this link.
    fn receives(&self, (kind, channel, _): &replay::Publish, pattern: Option<&Bytes>) -> bool {
        let key = match pattern {
            Some(pattern) => (Kind::Pattern, pattern.clone()),
            None => (*kind, channel.clone()),
        };
        self.subscribed.contains(&key)
    }
}

pub(crate) struct Machine {
    /// Which shard this is; shard 0 keeps the registry.
    shard: usize,
    settings: Settings,
    registry: Registry,
    /// Behind Sentinel or in a cluster, the heartbeat also checks the server is still the
    /// primary.
    checks_role: bool,
    /// On a Redis Cluster: the shard's own channel names (see [`Cluster`]).
    cluster: Option<Cluster>,
    /// Pattern messages opened from one all-messages frame, beyond the first (see
    /// [`Machine::take_fanout`]).
    fanout: Vec<Message>,
    /// On a cluster: which shard each channel is on now (the slot map can change).
    router: Option<crate::relay::shard::Router>,
    /// A [`Request::Replan`] arrived while connected: the links must be rebuilt.
    replan: bool,
    shared: Arc<Shared>,
    /// Local subscribers per topic on this shard: drives upstream (un)subscribes.
    refcounts: HashMap<Topic, i64>,
    /// Upstream subscriptions last added to the gauge (every shard adds its own).
    gauged: i64,
    buffer: PublishBuffer,
    /// How many publishes at the front of `buffer` are replays (sent before, maybe delivered):
    /// the flush announces them first.
    replays: usize,
    /// How many publishes after the replays in `buffer` precede everything else it holds:
    /// those another shard handed over in a resharding, and those the cluster refused with
    /// `-MOVED` (sent before anything held since). See [`Machine::hold_early`].
    early: usize,
    /// On a cluster: the slot map this shard's links were built under. A publish for a slot
    /// the shard did not serve then is held until the links are rebuilt, because the slot's
    /// previous shard may still hand over older publishes for it (they go in front).
    built: Option<Arc<[u16]>>,
    /// Frames delivered lately, and those set aside after a loss or an announcement, so a
    /// replay of one is not delivered twice.
    recent: Recent,
    dedup: Dedup,
    /// Peers seen before the last outage; flushing waits for them to come back.
    awaited_peers: HashSet<String>,
    /// Shard 0: this sidecar's registry entry, local subscribers per topic of every shard.
    registered: HashMap<Topic, i64>,
    /// Shard 0: this sidecar's server marks in the registry (see `registry`), by shard.
    marks: HashMap<usize, Bytes>,
    live: Option<Live>,
    outbound: Vec<Outbound>,
}

impl Machine {
    pub(crate) fn new(
        shard: usize,
        settings: Settings,
        registry: Registry,
        checks_role: bool,
        shared: Arc<Shared>,
    ) -> Self {
        let buffer = PublishBuffer::new(settings.buffer_bytes, settings.buffer_messages);
        Machine {
            shard,
            settings,
            registry,
            checks_role,
            cluster: None,
            fanout: Vec::new(),
            router: None,
            replan: false,
            shared,
            refcounts: HashMap::new(),
            gauged: 0,
            buffer,
            replays: 0,
            early: 0,
            built: None,
            recent: Recent::default(),
            dedup: Dedup::default(),
            awaited_peers: HashSet::new(),
            registered: HashMap::new(),
            marks: HashMap::new(),
            live: None,
            outbound: Vec::new(),
        }
    }

    /// This shard is part of a Redis Cluster, with these names of its own, routing by `router`.
    pub(crate) fn in_cluster(
        mut self,
        cluster: Cluster,
        router: crate::relay::shard::Router,
    ) -> Self {
        self.cluster = Some(cluster);
        self.router = Some(router);
        self
    }

    /// A [`Request::Replan`] asks for new links (taken: asked once).
    pub(crate) fn take_replan(&mut self) -> bool {
        std::mem::take(&mut self.replan)
    }

    /// The shard `topic` belongs on now (patterns: every shard, so this one).
    fn home(&self, topic: &Topic) -> usize {
        match &self.router {
            Some(r) if topic.kind != Kind::Pattern => r.shard_of(topic.kind, &topic.name),
            _ => self.shard,
        }
    }

    /// After the slot map changed: the shard's own channel names follow its first slot, the
    /// subscriptions and held publishes of slots it no longer serves go to their shards.
    fn rehome(&mut self) {
        let Some(router) = self.router.clone() else {
            return;
        };
        if let Some(slot) = router.first_slot(self.shard) {
            self.cluster = Some(Cluster::new(&crate::upstream::cluster::tag_for_slot(slot)));
        }
        self.hand_over();
    }

    /// The subscriptions and held publishes of slots this shard no longer serves, to their
    /// shards (the channel names stay until the links are rebuilt).
    fn hand_over(&mut self) {
        let Some(router) = self.router.clone() else {
            return;
        };
        let mut leaving: HashMap<usize, Vec<(Topic, i64)>> = HashMap::new();
        self.refcounts.retain(|topic, n| {
            let home = match topic.kind {
                Kind::Pattern => return true,
                kind => router.shard_of(kind, &topic.name),
            };
            if home != self.shard {
                leaving.entry(home).or_default().push((topic.clone(), *n));
            }
            home == self.shard
        });
        for (shard, counts) in leaving {
            tracing::info!(
                shard = self.shard,
                to = shard,
                subscriptions = counts.len(),
                "the cluster was resharded: handing subscriptions to the shard that serves their slots now"
            );
            self.outbound
                .push(Outbound::Forward(shard, Request::Adopt { counts }));
        }
        // Held publishes are encoded for this shard's names: read back and encoded again (or
        // handed on), in order. The all-messages copies are made again with them.
        // The replays, then the early publishes, keep their places at the front.
        let held: Vec<Bytes> = self.buffer.drain().collect();
        let replays = std::mem::take(&mut self.replays);
        let early = std::mem::take(&mut self.early);
        let (mut kept_replays, mut kept_early) = (0, 0);
        for (i, raw) in held.into_iter().enumerate() {
            let Some((kind, channel, payload, part)) = self.read_publish(&raw) else {
                continue;
            };
            let (stays, leaves) = self.split_publish(kind, &channel, part);
            if let Some((home, part)) = leaves {
                self.outbound.push(Outbound::Forward(
                    home,
                    Request::PublishPart {
                        kind,
                        channel: channel.clone(),
                        payload: payload.clone(),
                        part,
                    },
                ));
            }
            let Some(part) = stays else {
                continue;
            };
            for raw in self.publish_raws(kind, &channel, &payload, part) {
                let before = self.buffer.len();
                self.hold(raw);
                let kept = usize::from(self.buffer.len() > before);
                if i < replays {
                    kept_replays += kept;
                } else if i < replays + early {
                    kept_early += kept;
                }
            }
        }
        self.replays = kept_replays;
        self.early = kept_early;
    }

    /// A held publish read back: the app's kind, channel and payload, and which half of a
    /// channel publish it is.
    fn read_publish(&self, raw: &Bytes) -> Option<(Kind, Bytes, Bytes, Part)> {
        let limits = crate::resp::Limits::for_upstream(raw.len());
        let mut rest = BytesMut::from(&raw[..]);
        let crate::resp::request::Decoded::Command(c) =
            crate::resp::request::decode(&mut rest, &limits, true).ok()?
        else {
            return None;
        };
        let [_, channel, payload] = &c.args[..] else {
            return None;
        };
        let channel = self.unprefixed(channel)?;
        if channel.starts_with(b"__switchboard:all:") {
            let (name, body) = open_envelope(payload)?;
            return Some((Kind::Channel, name, body, Part::Copy));
        }
        if channel.starts_with(b"__switchboard:") {
            return None;
        }
        Some(match channel.strip_prefix(CLASSIC) {
            Some(name) => (
                Kind::Channel,
                channel.slice_ref(name),
                payload.clone(),
                Part::Main,
            ),
            None => (Kind::Shard, channel, payload.clone(), Part::Both),
        })
    }

    /// On a cluster, a request some of whose topics are another shard's now (split before a
    /// resharding): those go on; the rest, if any, is returned.
    fn route(&mut self, request: Request) -> Option<Request> {
        if self.router.is_none() {
            return Some(request);
        }
        match request {
            Request::Acquire { topics, done } => {
                let (mine, others): (Vec<Topic>, Vec<Topic>) =
                    topics.into_iter().partition(|t| self.home(t) == self.shard);
                self.hand_on(others, 1);
                Some(Request::Acquire { topics: mine, done })
            }
            Request::Release { topics, done } => {
                let (mine, others): (Vec<Topic>, Vec<Topic>) =
                    topics.into_iter().partition(|t| self.home(t) == self.shard);
                self.hand_on(others, -1);
                Some(Request::Release { topics: mine, done })
            }
            Request::Adopt { counts } => {
                let (mine, others): (Vec<_>, Vec<_>) = counts
                    .into_iter()
                    .partition(|(t, _)| self.home(t) == self.shard);
                for (topic, n) in others {
                    let home = self.home(&topic);
                    self.outbound.push(Outbound::Forward(
                        home,
                        Request::Adopt {
                            counts: vec![(topic, n)],
                        },
                    ));
                }
                Some(Request::Adopt { counts: mine })
            }
            Request::Publish {
                kind,
                channel,
                payload,
                part,
            } => {
                self.route_publish(kind, channel, payload, part)
                    .map(|(channel, payload, part)| Request::Publish {
                        kind,
                        channel,
                        payload,
                        part,
                    })
            }
            Request::PublishPart {
                kind,
                channel,
                payload,
                part,
            } => {
                self.route_publish(kind, channel, payload, part)
                    .map(|(channel, payload, part)| Request::PublishPart {
                        kind,
                        channel,
                        payload,
                        part,
                    })
            }
            other => Some(other),
        }
    }

    /// A publish whose channel's slot may have moved: the main half goes on to the channel's
    /// shard now; what is this shard's (the copy always: it rides the publisher's copy shard
    /// whatever the slot) is returned.
    fn route_publish(
        &mut self,
        kind: Kind,
        channel: Bytes,
        payload: Bytes,
        part: Part,
    ) -> Option<(Bytes, Bytes, Part)> {
        let (stays, leaves) = self.split_publish(kind, &channel, part);
        if let Some((home, part)) = leaves {
            self.pass_on(home, kind, channel.clone(), payload.clone(), part);
        }
        stays.map(|part| (channel, payload, part))
    }

    /// Which part of a publish stays on this shard, and which goes to which other shard: the
    /// main half lives on the channel's shard, the copy of a channel message stays where the
    /// relay put it.
    fn split_publish(
        &self,
        kind: Kind,
        channel: &[u8],
        part: Part,
    ) -> (Option<Part>, Option<(usize, Part)>) {
        let home = match &self.router {
            Some(router) => router.shard_of(kind, channel),
            None => self.shard,
        };
        match part {
            _ if home == self.shard => (Some(part), None),
            Part::Copy => (Some(Part::Copy), None),
            Part::Both if kind == Kind::Channel => (Some(Part::Copy), Some((home, Part::Main))),
            part => (None, Some((home, part))),
        }
    }

    /// A publish routed here by the slot map before the last one: it precedes what the slot's
    /// new shard was given directly, so it goes there as an early one; but behind this
    /// shard's own that are held or unanswered, which are handed over first.
    fn pass_on(&mut self, home: usize, kind: Kind, channel: Bytes, payload: Bytes, part: Part) {
        let queued = !self.buffer.is_empty()
            || self
                .live
                .as_ref()
                .is_some_and(|l| l.replanned.is_some() || Self::publishes_unanswered(l));
        if queued {
            for raw in self.publish_raws(kind, &channel, &payload, part) {
                self.hold(raw);
            }
            return;
        }
        self.outbound.push(Outbound::Forward(
            home,
            Request::PublishPart {
                kind,
                channel,
                payload,
                part,
            },
        ));
    }

    fn hand_on(&mut self, topics: Vec<Topic>, delta: i64) {
        for topic in topics {
            let home = self.home(&topic);
            self.outbound.push(Outbound::Forward(
                home,
                Request::Adopt {
                    counts: vec![(topic, delta)],
                },
            ));
        }
    }

    fn keeps_registry(&self) -> bool {
        self.shard == 0
    }

    /// The channel replays are announced on, after the prefix.
    fn replays_channel(&self) -> &[u8] {
        match &self.cluster {
            Some(c) => &c.replays,
            None => replay::CHANNEL,
        }
    }

    /// A pattern message that the last subscriber frame opened, beyond the one returned.
    pub(crate) fn take_fanout(&mut self) -> Option<Message> {
        self.fanout.pop()
    }

    fn holds_patterns(&self) -> bool {
        self.refcounts.keys().any(|t| t.kind == Kind::Pattern)
    }

    /// Upstream subscriptions this shard holds (or will restore on reconnect).
    pub(crate) fn subscriptions(&self) -> usize {
        self.refcounts.len()
    }

    /// Publishes held until the backplane is back (and the peers are).
    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes to write on the subscriber link, taken (empty when there are none).
    pub(crate) fn take_sub_writes(&mut self) -> BytesMut {
        self.live
            .as_mut()
            .map(|l| l.sub_out.split())
            .unwrap_or_default()
    }

    /// Bytes to write on the control link, taken (empty when there are none).
    pub(crate) fn take_ctl_writes(&mut self) -> BytesMut {
        self.live
            .as_mut()
            .map(|l| l.ctl_out.split())
            .unwrap_or_default()
    }

    /// What must reach shard 0's task, taken.
    pub(crate) fn take_outbound(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbound)
    }

    /// When the next peer check is due, if one is.
    pub(crate) fn next_peer_check(&self) -> Option<Instant> {
        self.live.as_ref().and_then(|l| l.next_peer_check)
    }

    /// Both links are open on `server`: re-establishes every subscription and this sidecar's
    /// registry entry, and arranges the flush of what the outage buffered.
    pub(crate) fn connected(&mut self, server: Bytes, now: Instant) {
        self.rehome();
        let mut live = Live {
            server,
            sub_out: BytesMut::new(),
            sub_pending: VecDeque::new(),
            ctl_out: BytesMut::new(),
            ctl_pending: VecDeque::new(),
            subscribed: HashSet::new(),
            flush_deadline: None,
            next_peer_check: None,
            peer_check_asked: false,
            heartbeats_unanswered: 0,
            heartbeat_deadline: None,
            unconfirmed: Unconfirmed::default(),
            draining: false,
            drain_ping_sent: false,
            holding: false,
            replanned: None,
        };
        self.built = self
            .router
            .as_ref()
            .and_then(crate::relay::shard::Router::table);
        for kind in Kind::ALL {
            let mut topics: Vec<Topic> = self
                .refcounts
                .keys()
                .filter(|t| t.kind == kind)
                .cloned()
                .collect();
            topics.sort();
            for chunk in topics.chunks(1024) {
                self.subscribe(&mut live, chunk, true, None);
            }
        }
        // Every sidecar hears every announcement of replays on every shard.
        let channel = [Bytes::copy_from_slice(self.replays_channel())];
        let verb = if self.cluster.is_some() {
            "SSUBSCRIBE"
        } else {
            "SUBSCRIBE"
        };
        self.write_sub(&mut live, verb, &channel, None);
        live.sub_out
            .extend_from_slice(&crate::upstream::command(&["PING"]).raw);
        live.sub_pending.push_back(SubPending {
            replies: 1,
            done: None,
            heartbeat: false,
            restored: true,
            confirms: None,
            drained: false,
        });
        if self.keeps_registry() {
            self.resnapshot_quietly(&mut live);
        }
        // Peers from before the outage may not be subscribed again yet (after a failover they
        // all reconnect at once): hold even fresh publishes until they are, or they miss them.
        if self.buffer.is_empty() && self.awaited_peers.is_empty() {
            if self.keeps_registry() {
                push_ctl(&mut live, &self.registry.read(), CtlPending::RefreshPeers);
            }
        } else {
            live.flush_deadline = Some(now + self.settings.flush_grace);
            live.next_peer_check = Some(now);
        }
        self.live = Some(live);
        self.shared.set_connected(true);
        self.update_gauges();
    }

    /// The links are gone: keeps what can be kept (publishes not proven delivered go back in
    /// front of the buffer, subscriptions stay counted for the reconnect, what was delivered
    /// lately is set aside against replays) and answers what cannot wait.
    pub(crate) fn disconnected(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        self.shared.set_connected(false);
        self.set_aside_recent();
        let mut in_flight: Vec<Bytes> = live.unconfirmed.take().collect();
        let acknowledged = in_flight.len();
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
                unacknowledged = in_flight.len() - acknowledged,
                acknowledged_unproven = acknowledged,
                "re-queued the publishes not proven delivered (never acknowledged, or acknowledged by a server that went away before flushing them); they are announced and sent again after the reconnect, and sidecars that already delivered one drop the copy"
            );
        }
        self.replays += in_flight.len();
        self.shared
            .metrics
            .publishes_replayed
            .inc_by(in_flight.len() as u64);
        self.buffer.requeue_front(in_flight);
        for pending in live.sub_pending {
            if let Some(done) = pending.done {
                // Recorded in the refcounts: the reconnect subscribes it.
                let _ = done.send(Ok(()));
            }
        }
        if let Some(done) = live.replanned {
            // Lost during the first step of a replan: what went unanswered is handed on too.
            self.hand_over();
            self.outbound.push(Outbound::Done(done));
        }
        self.awaited_peers = self.shared.peers.read().expect("peers lock poisoned").ids();
        // Not subscribed anywhere until the reconnect restores it.
        if self.keeps_registry() {
            self.marks.remove(&0);
        } else {
            self.outbound.push(Outbound::Registry(Request::Mark {
                shard: self.shard,
                server: None,
            }));
        }
        self.shared
            .metrics
            .publishes_buffered
            .set(self.buffer.len() as i64);
    }

    /// A request from the relay, connected or not.
    pub(crate) fn request(&mut self, request: Request) {
        let request = match request {
            Request::Replan { done } => {
                // From now until the links are rebuilt and the peers are back under the new
                // map, publishes wait: a peer may not have moved its subscriptions yet. The
                // hand-over waits for the answers to what went out before (see
                // `Live::replanned`).
                match self.live.take() {
                    Some(mut live) => {
                        live.holding = true;
                        live.replanned = Some(done);
                        self.finish_replan_if_done(&mut live);
                        self.live = Some(live);
                    }
                    None => {
                        self.hand_over();
                        self.outbound.push(Outbound::Done(done));
                    }
                }
                return;
            }
            Request::Acquire { topics, done }
                if self.cluster.is_some()
                    && !self.settings.pattern_copies
                    && topics.iter().any(|t| t.kind == Kind::Pattern) =>
            {
                let _ = done.send(Err("pattern subscriptions on a Redis Cluster backplane need --cluster-pattern-copies (turned off for this sidecar)".into()));
                return;
            }
            other => other,
        };
        let Some(request) = self.route(request) else {
            return;
        };
        match self.live.take() {
            Some(mut live) => {
                self.online(&mut live, request);
                self.live = Some(live);
            }
            None => self.offline(request),
        }
        self.update_gauges();
    }

    /// A raw frame from the subscriber link. Messages, nearly all its traffic, are read in
    /// place (slices of `frame`, nothing parsed into values); anything else goes to
    /// [`Machine::sub_frame`].
    pub(crate) fn sub_raw(&mut self, frame: Bytes) -> Result<Option<Message>, ProtocolError> {
        let Some((kind, parts)) = split_message(&frame) else {
            let frame = value::parse(&frame)?;
            if let Some(reason) = self.dropped_by_cluster(&frame) {
                tracing::info!(shard = self.shard, %reason, "rebuilding this shard's links once its publishes are delivered");
                self.outbound.push(Outbound::SlotsMoved);
                if let Some(mut live) = self.live.take() {
                    self.start_drain(&mut live);
                    self.live = Some(live);
                }
                return Ok(None);
            }
            return Ok(self.sub_frame(frame));
        };
        let [first, second, third] = parts;
        let (pattern, channel, payload) = if kind == Kind::Pattern {
            let Some(pattern) = self.unprefixed(&first) else {
                return Ok(None);
            };
            (Some(pattern), second, third)
        } else {
            (None, first, second)
        };
        let Some(channel) = self.unprefixed(&channel) else {
            return Ok(None);
        };
        if &channel[..] == self.replays_channel() {
            if kind == Kind::Channel || self.cluster.is_some() {
                self.on_announcement(&payload);
            }
            return Ok(None);
        }
        let message = Message {
            kind,
            pattern,
            channel,
            payload,
            resp2: None,
        };
        if self.dedup.is_replay(&message) {
            self.shared.metrics.messages_deduplicated.inc();
            return Ok(None);
        }
        if self.live.is_some() {
            let (messages, bytes) = self.limits();
            self.recent.record(&frame, messages, bytes);
        }
        if self.cluster.is_some() && kind == Kind::Shard {
            return Ok(self.as_subscribed(message));
        }
        let resp2 = self.settings.channel_prefix.is_empty().then_some(frame);
        Ok(Some(Message { resp2, ..message }))
    }

    /// A `sunsubscribe` we did not ask for: the cluster node stopped serving a slot we hold a
    /// shard channel on (demoted, or the slot migrated), so the links are rebuilt on the
    /// primary of now, and the subscriptions with them.
    fn dropped_by_cluster(&self, frame: &Value) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        let items = frame.as_elements()?;
        if items.first().and_then(Value::as_bytes)?.as_ref() != b"sunsubscribe" {
            return None;
        }
        let name = self.unprefixed(items.get(1)?.as_bytes()?)?;
        let topic = match name.strip_prefix(CLASSIC) {
            Some(channel) => Topic::new(Kind::Channel, name.slice_ref(channel)),
            None => Topic::new(Kind::Shard, name.clone()),
        };
        let held = self.refcounts.contains_key(&topic)
            || (name == cluster.all && self.holds_patterns())
            || name == cluster.replays;
        held.then(|| {
            format!(
                "the cluster ended the shard subscription to {:?} (its slot moved or its node was demoted)",
                String::from_utf8_lossy(&name)
            )
        })
    }

    /// A sharded message from a cluster, as the app subscribed it: on the all-messages channel,
    /// a `pmessage` for each local pattern that matches; else a `message` for a classic
    /// channel (named [`CLASSIC`]`<channel>` upstream), an `smessage` for a shard channel.
    fn as_subscribed(&mut self, message: Message) -> Option<Message> {
        let cluster = self.cluster.as_ref()?;
        if message.channel == cluster.all {
            let (channel, payload) = open_envelope(&message.payload)?;
            self.fanout.extend(
                self.refcounts
                    .keys()
                    .filter(|t| t.kind == Kind::Pattern && crate::glob::matches(&t.name, &channel))
                    .map(|t| Message {
                        kind: Kind::Pattern,
                        pattern: Some(t.name.clone()),
                        channel: channel.clone(),
                        payload: payload.clone(),
                        resp2: None,
                    }),
            );
            return self.fanout.pop();
        }
        match message.channel.strip_prefix(CLASSIC) {
            Some(channel) => Some(Message {
                kind: Kind::Channel,
                channel: message.channel.slice_ref(channel),
                ..message
            }),
            None => Some(message),
        }
    }

    /// The outage buffer's limits, which also bound what is kept against replays.
    fn limits(&self) -> (usize, usize) {
        (self.settings.buffer_messages, self.settings.buffer_bytes)
    }

    /// Another sidecar (or this one) is about to replay publishes: what was delivered of them
    /// is set aside and their copies will be dropped.
    fn on_announcement(&mut self, payload: &Bytes) {
        self.set_aside_recent();
        let Some(live) = self.live.as_ref() else {
            return;
        };
        self.dedup.announced(
            payload,
            &self.settings.channel_prefix,
            |publish, pattern| live.receives(publish, pattern),
        );
    }

    fn set_aside_recent(&mut self) {
        // Long enough for every peer to reconnect and flush (within the grace period).
        let memory = self.settings.flush_grace * 2 + Duration::from_secs(10);
        let ttl = memory.as_millis() / self.settings.heartbeat.as_millis().max(1) + 1;
        let limits = self.limits();
        self.dedup.set_aside(
            &mut self.recent,
            &self.settings.channel_prefix,
            u32::try_from(ttl).unwrap_or(u32::MAX),
            limits,
        );
    }

    /// A frame from the subscriber link: a message for the local table, or a reply it owed.
    pub(crate) fn sub_frame(&mut self, frame: Value) -> Option<Message> {
        let mut live = self.live.take()?;
        let message = self.on_sub_frame(&mut live, frame);
        self.live = Some(live);
        let message = message.filter(|m| &m.channel[..] != self.replays_channel())?;
        if self.cluster.is_some() && message.kind == Kind::Shard {
            return self.as_subscribed(message);
        }
        Some(message)
    }

    /// A frame from the control link.
    pub(crate) fn ctl_frame(&mut self, frame: Value, now: Instant) -> Result<(), Lost> {
        let Some(mut live) = self.live.take() else {
            return Ok(());
        };
        let result = self.on_ctl_frame(&mut live, frame, now);
        self.finish_drain_if_done(&mut live);
        self.finish_replan_if_done(&mut live);
        self.live = Some(live);
        result
    }

    /// The heartbeat tick: pings both links, renews the registry entry (shard 0) or checks the
    /// server is still the primary (other shards). Lost if the last heartbeat went unanswered
    /// for too long.
    pub(crate) fn heartbeat(&mut self, now: Instant) -> Result<(), Lost> {
        let limit = self.heartbeat_limit();
        let registry = self.keeps_registry();
        self.recent.rotate();
        self.dedup.tick();
        let Some(live) = self.live.as_mut() else {
            return Ok(());
        };
        if live.heartbeats_unanswered > 0 {
            if live.heartbeat_deadline.is_some_and(|d| now >= d) {
                return Err(Lost(format!("no heartbeat reply within {limit:?}")));
            }
            return Ok(());
        }
        live.heartbeats_unanswered = 2;
        live.heartbeat_deadline = Some(now + limit);
        live.sub_out
            .extend_from_slice(&crate::upstream::command(&["PING"]).raw);
        live.sub_pending.push_back(SubPending {
            replies: 1,
            done: None,
            heartbeat: true,
            restored: false,
            confirms: Some(live.unconfirmed.mark()),
            drained: false,
        });
        if registry {
            push_ctl(live, &self.registry.touch(), CtlPending::Touch);
            push_ctl(live, &self.registry.read(), CtlPending::RefreshPeers);
        } else {
            push_ctl(live, &crate::upstream::command(&["ROLE"]), CtlPending::Role);
        }
        Ok(())
    }

    /// The peer check is due: asks for a registry read, on our own control link on shard 0,
    /// else from shard 0's task.
    pub(crate) fn peer_check_due(&mut self) {
        let registry = self.keeps_registry();
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.next_peer_check = None;
        if registry {
            push_ctl(live, &self.registry.read(), CtlPending::PeerCheck);
        } else if !live.peer_check_asked {
            live.peer_check_asked = true;
            self.outbound.push(Outbound::PeerCheck);
        }
    }

    /// Shard 0's answer to [`Outbound::PeerCheck`] (`None`: it could not read the registry).
    pub(crate) fn peers_answered(&mut self, fleet: Option<Fleet>, now: Instant) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        live.peer_check_asked = false;
        self.peers_checked(&mut live, fleet, now);
        self.live = Some(live);
    }

    /// Flushes once every awaited peer is subscribed again on this shard's server (or the
    /// grace period is over); otherwise looks again shortly.
    fn peers_checked(&mut self, live: &mut Live, fleet: Option<Fleet>, now: Instant) {
        let fleet = fleet.unwrap_or_default();
        let missing = fleet.not_back_on(&self.awaited_peers, self.shard, &live.server);
        let expired = live.flush_deadline.is_some_and(|d| now >= d);
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
            live.next_peer_check = Some(now + Duration::from_millis(100));
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

    fn online(&mut self, live: &mut Live, request: Request) {
        match request {
            Request::Acquire { topics, done } => {
                let had_patterns = self.holds_patterns();
                let fresh = self.count(&topics, 1);
                let first_pattern = !had_patterns && self.holds_patterns();
                self.subscribe(live, &fresh, first_pattern, Some(done));
            }
            Request::Release { topics, done } => {
                let had_patterns = self.holds_patterns();
                let gone = self.count(&topics, -1);
                let last_pattern = had_patterns && !self.holds_patterns();
                self.unsubscribe(live, &gone, last_pattern);
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
                part,
            } => self.publish_online(live, kind, &channel, &payload, part, false),
            Request::PublishPart {
                kind,
                channel,
                payload,
                part,
            } => self.publish_online(live, kind, &channel, &payload, part, true),
            Request::ReadFleet { done } => {
                push_ctl(live, &self.registry.read(), CtlPending::ReadFleet(done))
            }
            Request::Leave { done } => {
                push_ctl(live, &self.registry.leave(), CtlPending::Leave(done))
            }
            // New links are made (and the subscriptions re-homed) by the driver's reconnect.
            Request::Rebuild => self.start_drain(live),
            Request::Replan { .. } => unreachable!("handled in request"),
            Request::Adopt { counts } => self.adopt_online(live, &counts),
        }
    }

    /// A publish while connected; `early` when another shard handed it over (see
    /// [`Machine::hold_early`]).
    fn publish_online(
        &mut self,
        live: &mut Live,
        kind: Kind,
        channel: &[u8],
        payload: &[u8],
        part: Part,
        early: bool,
    ) {
        let waiting = live.flush_deadline.is_some() || live.draining || live.holding;
        let (main, copy) = self.publish_commands(kind, channel, payload, part);
        // Only the main half lives on the channel's slot; the copy's order is the copy
        // shard's own.
        let main = main.map(|raw| (raw, waiting || self.gained(kind, channel)));
        for (raw, held) in main.into_iter().chain(copy.map(|raw| (raw, waiting))) {
            if held && early {
                self.hold_early(raw);
            } else if held {
                self.hold(raw);
            } else {
                self.shared.metrics.publishes_sent.inc();
                // Kept until acknowledged, to resend if the link dies first.
                live.ctl_out.extend_from_slice(&raw);
                live.ctl_pending.push_back(CtlPending::Publish(raw));
            }
        }
    }

    fn adopt_online(&mut self, live: &mut Live, counts: &[(Topic, i64)]) {
        let had_patterns = self.holds_patterns();
        let (fresh, gone) = self.adopt(counts);
        let first_pattern = !had_patterns && self.holds_patterns();
        let last_pattern = had_patterns && !self.holds_patterns();
        for kind in Kind::ALL {
            let of = |v: &[Topic]| {
                v.iter()
                    .filter(|t| t.kind == kind)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            self.subscribe(live, &of(&fresh), first_pattern, None);
            self.unsubscribe(live, &of(&gone), last_pattern);
        }
    }

    /// Applies count changes handed over by another shard; the topics subscribed fresh and
    /// those whose last subscriber left.
    fn adopt(&mut self, counts: &[(Topic, i64)]) -> (Vec<Topic>, Vec<Topic>) {
        let (mut fresh, mut gone) = (Vec::new(), Vec::new());
        for (topic, delta) in counts {
            let changed = self.count(std::slice::from_ref(topic), *delta);
            if !changed.is_empty() {
                if *delta > 0 {
                    fresh.push(topic.clone());
                } else {
                    gone.push(topic.clone());
                }
            }
        }
        (fresh, gone)
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
                part,
            } => {
                for raw in self.publish_raws(kind, &channel, &payload, part) {
                    self.hold(raw);
                }
            }
            Request::PublishPart {
                kind,
                channel,
                payload,
                part,
            } => {
                for raw in self.publish_raws(kind, &channel, &payload, part) {
                    self.hold_early(raw);
                }
            }
            Request::ReadFleet { done } => {
                let _ = done.send(Err("the backplane is unreachable".into()));
            }
            Request::Leave { done } => {
                let _ = done.send(());
            }
            // The reconnect rebuilds the links (and names) anyway.
            Request::Rebuild => {}
            Request::Replan { .. } => unreachable!("handled in request"),
            Request::Adopt { counts } => {
                self.adopt(&counts);
            }
        }
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

    /// The commands of `part` of a publish: the publish of the message, and on a cluster for
    /// a channel message its copy on this shard's all-messages channel (for pattern
    /// subscribers; see [`Cluster`]). A copy is nothing where no copies are made.
    fn publish_raws(&self, kind: Kind, channel: &[u8], payload: &[u8], part: Part) -> Vec<Bytes> {
        let (main, copy) = self.publish_commands(kind, channel, payload, part);
        main.into_iter().chain(copy).collect()
    }

    /// The main half and the copy of `part` of a publish, each encoded only if asked for (the
    /// main half is every publish's hot path).
    fn publish_commands(
        &self,
        kind: Kind,
        channel: &[u8],
        payload: &[u8],
        part: Part,
    ) -> (Option<Bytes>, Option<Bytes>) {
        let main = part != Part::Copy;
        let copy = part != Part::Main;
        match &self.cluster {
            Some(c) if kind == Kind::Channel => (
                main.then(|| self.publish_command(kind, &classic(channel), payload)),
                (copy && self.settings.pattern_copies)
                    .then(|| self.publish_command(kind, &c.all, &envelope(channel, payload))),
            ),
            _ => (
                main.then(|| self.publish_command(kind, channel, payload)),
                None,
            ),
        }
    }

    /// `PUBLISH <prefix><channel> <payload>` (`SPUBLISH` for a shard channel, and for every
    /// channel on a cluster), encoded in one allocation: no argument vector, no prefixed copy
    /// of the channel.
    fn publish_command(&self, kind: Kind, channel: &[u8], payload: &[u8]) -> Bytes {
        let verb: &[u8] = if kind == Kind::Shard || self.cluster.is_some() {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        };
        let prefix = &self.settings.channel_prefix[..];
        let mut out = BytesMut::with_capacity(payload.len() + channel.len() + prefix.len() + 48);
        let out = &mut out;
        out.extend_from_slice(b"*3\r\n");
        write_bulk_header(out, verb.len());
        out.extend_from_slice(verb);
        out.extend_from_slice(b"\r\n");
        write_bulk_header(out, prefix.len() + channel.len());
        out.extend_from_slice(prefix);
        out.extend_from_slice(channel);
        out.extend_from_slice(b"\r\n");
        write_bulk_header(out, payload.len());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        out.split().freeze()
    }

    /// Holds a publish for later; counts and logs it if the buffer is full.
    /// Whether `channel`'s slot is one this shard did not serve when its links were built (see
    /// `Machine::built`).
    fn gained(&self, kind: Kind, channel: &[u8]) -> bool {
        let (Some(built), Some(router)) = (&self.built, &self.router) else {
            return false;
        };
        router
            .slot_of(kind, channel)
            .is_some_and(|slot| usize::from(built[usize::from(slot)]) != self.shard)
    }

    /// Holds a publish that precedes everything held since it was made: handed over by the
    /// slot's previous shard, or refused by the cluster after it went out. It goes after the
    /// replays and the earlier such publishes, before the rest, so a publisher's order on a
    /// channel survives its slot changing shards.
    fn hold_early(&mut self, raw: Bytes) {
        if self.buffer.insert(self.replays + self.early, raw.clone()) {
            self.early += 1;
            self.shared
                .metrics
                .publishes_buffered
                .set(self.buffer.len() as i64);
            return;
        }
        self.hold(raw);
    }

    fn hold(&mut self, raw: Bytes) {
        if self.buffer.push(raw) {
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

    /// Subscribes `topics` (all of one kind) upstream; `done` is answered once all are in
    /// place. On a cluster channels are shard channels, one command each (a command's shard
    /// channels must share a slot), and patterns are served by the all-messages channel,
    /// subscribed with the first (`first_pattern`).
    fn subscribe(
        &self,
        live: &mut Live,
        topics: &[Topic],
        first_pattern: bool,
        done: Option<oneshot::Sender<Result<(), String>>>,
    ) {
        let Some(kind) = topics.first().map(|t| t.kind) else {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
            return;
        };
        let names: Vec<Bytes> = topics.iter().map(|t| t.name.clone()).collect();
        let Some(cluster) = &self.cluster else {
            self.write_sub(live, kind.subscribe_command(), &names, done);
            return;
        };
        let names = match kind {
            Kind::Pattern if first_pattern => vec![cluster.all.clone()],
            Kind::Pattern => Vec::new(),
            Kind::Channel => names.iter().map(|n| classic(n)).collect(),
            Kind::Shard => names,
        };
        let Some((last, rest)) = names.split_last() else {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
            return;
        };
        for name in rest {
            self.write_sub(live, "SSUBSCRIBE", std::slice::from_ref(name), None);
        }
        self.write_sub(live, "SSUBSCRIBE", std::slice::from_ref(last), done);
    }

    /// Unsubscribes `topics` (all of one kind) upstream; see [`Machine::subscribe`].
    fn unsubscribe(&self, live: &mut Live, topics: &[Topic], last_pattern: bool) {
        let Some(kind) = topics.first().map(|t| t.kind) else {
            return;
        };
        let names: Vec<Bytes> = topics.iter().map(|t| t.name.clone()).collect();
        let Some(cluster) = &self.cluster else {
            self.write_sub(live, kind.unsubscribe_command(), &names, None);
            return;
        };
        let names = match kind {
            Kind::Pattern if last_pattern => vec![cluster.all.clone()],
            Kind::Pattern => Vec::new(),
            Kind::Channel => names.iter().map(|n| classic(n)).collect(),
            Kind::Shard => names,
        };
        for name in &names {
            self.write_sub(live, "SUNSUBSCRIBE", std::slice::from_ref(name), None);
        }
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
        live.sub_out
            .extend_from_slice(&Command::from_args(args).raw);
        live.sub_pending.push_back(SubPending {
            replies: names.len(),
            done,
            heartbeat: false,
            restored: false,
            confirms: None,
            drained: false,
        });
    }

    fn on_sub_frame(&mut self, live: &mut Live, frame: Value) -> Option<Message> {
        let items = match frame {
            Value::Array(items) | Value::Push(items) => items,
            Value::Simple(s) if &s[..] == b"PONG" => {
                self.sub_answered(live, Ok(()));
                return None;
            }
            Value::Error(e) => {
                self.sub_answered(live, Err(String::from_utf8_lossy(&e).into_owned()));
                return None;
            }
            _ => return None,
        };
        let word = items.first().and_then(Value::as_bytes).map(|b| &b[..]);
        let bytes = |i: usize| items.get(i).and_then(Value::as_bytes);
        match word {
            Some(b"message" | b"smessage") => {
                let kind = if word == Some(b"message") {
                    Kind::Channel
                } else {
                    Kind::Shard
                };
                let channel = bytes(1).and_then(|c| self.unprefixed(c))?;
                Some(Message {
                    kind,
                    pattern: None,
                    channel,
                    payload: bytes(2)?.clone(),
                    resp2: None,
                })
            }
            Some(b"pmessage") => Some(Message {
                kind: Kind::Pattern,
                pattern: Some(bytes(1).and_then(|p| self.unprefixed(p))?),
                channel: bytes(2).and_then(|c| self.unprefixed(c))?,
                payload: bytes(3)?.clone(),
                resp2: None,
            }),
            Some(
                word @ (b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe"
                | b"punsubscribe" | b"sunsubscribe"),
            ) => {
                let (kind, subscribed) = match word {
                    b"subscribe" => (Kind::Channel, true),
                    b"psubscribe" => (Kind::Pattern, true),
                    b"ssubscribe" => (Kind::Shard, true),
                    b"unsubscribe" => (Kind::Channel, false),
                    b"punsubscribe" => (Kind::Pattern, false),
                    _ => (Kind::Shard, false),
                };
                if let Some(name) = bytes(1).and_then(|n| self.unprefixed(n)) {
                    if subscribed {
                        live.subscribed.insert((kind, name));
                    } else {
                        live.subscribed.remove(&(kind, name));
                        self.dedup
                            .forget_unreceived(|publish, pattern| live.receives(publish, pattern));
                    }
                }
                self.sub_answered(live, Ok(()));
                None
            }
            Some(b"pong") => {
                self.sub_answered(live, Ok(()));
                None
            }
            _ => {
                tracing::debug!(
                    ?items,
                    "ignoring an unexpected frame on the subscriber link"
                );
                None
            }
        }
    }

    fn sub_answered(&mut self, live: &mut Live, result: Result<(), String>) {
        let Some(front) = live.sub_pending.front_mut() else {
            return;
        };
        if result.is_ok() && front.replies > 1 {
            front.replies -= 1;
            return;
        }
        let done = live.sub_pending.pop_front().expect("front exists");
        if let Some(mark) = done.confirms {
            live.unconfirmed.confirm(mark);
        }
        if done.heartbeat {
            Self::heartbeat_answered(live);
        }
        if done.drained {
            self.replan = true;
        }
        if done.restored {
            // Every resubscription before this PING is in place: tell the fleet.
            let server = Some(live.server.clone());
            if self.keeps_registry() {
                self.online(live, Request::Mark { shard: 0, server });
            } else {
                self.outbound.push(Outbound::Registry(Request::Mark {
                    shard: self.shard,
                    server,
                }));
            }
        }
        if let Err(e) = &result {
            // The relay releases what it acquired, so counts stay truthful.
            tracing::warn!(shard = self.shard, error = %e, "the backplane refused a subscription command");
        }
        if let Some(tx) = done.done {
            let _ = tx.send(result);
        }
    }

    fn on_ctl_frame(&mut self, live: &mut Live, frame: Value, now: Instant) -> Result<(), Lost> {
        let refused = match &frame {
            Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
            _ => None,
        };
        if let Some(e) = refused.as_deref().filter(|e| e.starts_with("READONLY")) {
            // This server was demoted (a failover it was not told to announce by closing our
            // links): it would accept publishes and deliver them to no one. Re-resolve.
            return Err(Lost(format!("the backplane became a replica: {e}")));
        }
        if let Some(e) = refused.as_deref().filter(|e| e.starts_with("MOVED")) {
            // A cluster node that no longer serves this slot (the slot migrated, or the node
            // was demoted). A publish it refused did not run: it is held in front of what was
            // held since, and handed to the slot's new shard with the rest once the slot map
            // is read again (see `relay::topology`) and what went out before is answered.
            self.outbound.push(Outbound::SlotsMoved);
            if let Some(CtlPending::Publish(raw)) = live.ctl_pending.front() {
                let raw = raw.clone();
                live.ctl_pending.pop_front();
                tracing::info!(shard = self.shard, error = %e, "a publish went to a slot that moved; held for the slot's new primary");
                self.hold_early(raw);
                self.start_drain(live);
                self.finish_drain_if_done(live);
                return Ok(());
            }
            return Err(Lost(format!(
                "the cluster moved a slot of this shard ({e})"
            )));
        }
        let Some(pending) = live.ctl_pending.pop_front() else {
            return Ok(());
        };
        match pending {
            CtlPending::Publish(raw) => match refused {
                Some(e) => tracing::warn!(error = %e, "the backplane refused a publish"),
                None => {
                    let (messages, bytes) = self.limits();
                    live.unconfirmed.acked(raw, messages, bytes);
                }
            },
            CtlPending::Announce => {}
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
                if self.checks_role && role.as_deref() != Some(b"master") {
                    return Err(Lost(format!(
                        "the backplane is no longer the primary (ROLE: {frame:?})"
                    )));
                }
            }
            CtlPending::RefreshPeers => {
                self.remember(&frame);
            }
            CtlPending::PeerCheck => {
                let fleet = self.remember(&frame);
                self.peers_checked(live, fleet, now);
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

    /// Whether a publish (or an announcement of replays) awaits the server's answer.
    fn publishes_unanswered(live: &Live) -> bool {
        live.ctl_pending
            .iter()
            .any(|p| matches!(p, CtlPending::Publish(_) | CtlPending::Announce))
    }

    /// Ends the first step of a replan (see `Live::replanned`) once nothing sent is unanswered.
    fn finish_replan_if_done(&mut self, live: &mut Live) {
        if live.replanned.is_some() && !Self::publishes_unanswered(live) {
            let done = live.replanned.take().expect("checked");
            // What the cluster refused is held in front by now: everything goes in order,
            // and the step ends after it (see `Outbound::Done`).
            self.hand_over();
            self.outbound.push(Outbound::Done(done));
        }
    }

    /// Starts rebuilding the links for a new slot map (see `Live::draining`).
    fn start_drain(&mut self, live: &mut Live) {
        if !live.draining {
            live.draining = true;
            self.finish_drain_if_done(live);
        }
    }

    /// Once no publish awaits its acknowledgement, a PING on the subscriber link proves every
    /// acknowledged one delivered; its answer asks for new links.
    fn finish_drain_if_done(&mut self, live: &mut Live) {
        if !live.draining || live.drain_ping_sent || Self::publishes_unanswered(live) {
            return;
        }
        live.drain_ping_sent = true;
        live.sub_out
            .extend_from_slice(&crate::upstream::command(&["PING"]).raw);
        live.sub_pending.push_back(SubPending {
            replies: 1,
            done: None,
            heartbeat: false,
            restored: false,
            confirms: Some(live.unconfirmed.mark()),
            drained: true,
        });
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

    /// Sends what the outage held: the replays first, each run after its announcement.
    fn flush(&mut self, live: &mut Live) {
        live.flush_deadline = None;
        live.next_peer_check = None;
        let n = self.buffer.len();
        let mut held = self.buffer.drain();
        let replays: Vec<Bytes> = held.by_ref().take(self.replays).collect();
        // The early publishes come first among the rest already.
        let fresh: Vec<Bytes> = held.collect();
        self.replays = 0;
        self.early = 0;
        for (announcement, run) in replay::announcements(replays, self.settings.max_bulk) {
            if let Some(listed) = announcement {
                let raw = self.publish_command(Kind::Channel, self.replays_channel(), &listed);
                live.ctl_out.extend_from_slice(&raw);
                live.ctl_pending.push_back(CtlPending::Announce);
            }
            for raw in run {
                live.ctl_out.extend_from_slice(&raw);
                live.ctl_pending.push_back(CtlPending::Publish(raw));
            }
        }
        for raw in fresh {
            live.ctl_out.extend_from_slice(&raw);
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
    live.ctl_out.extend_from_slice(&command.raw);
    live.ctl_pending.push_back(pending);
}

/// `$<len>\r\n`, without going through `format!`.
fn write_bulk_header(out: &mut BytesMut, len: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(b"$");
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Recognises `message`, `smessage` and `pmessage` frames (RESP2 arrays of bulk strings, which a
/// frame reader has already checked whole) and slices out their parts: channel, payload and an
/// empty slice, or for `pmessage` pattern, channel and payload. `None` for any other frame.
pub(crate) fn split_message(frame: &Bytes) -> Option<(Kind, [Bytes; 3])> {
    const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n";
    const SMESSAGE: &[u8] = b"*3\r\n$8\r\nsmessage\r\n";
    const PMESSAGE: &[u8] = b"*4\r\n$8\r\npmessage\r\n";
    let (kind, mut at, count) = if frame.starts_with(MESSAGE) {
        (Kind::Channel, MESSAGE.len(), 2)
    } else if frame.starts_with(SMESSAGE) {
        (Kind::Shard, SMESSAGE.len(), 2)
    } else if frame.starts_with(PMESSAGE) {
        (Kind::Pattern, PMESSAGE.len(), 3)
    } else {
        return None;
    };
    let mut parts: [Bytes; 3] = Default::default();
    for part in parts.iter_mut().take(count) {
        let rest = frame.get(at..)?;
        let header = rest.strip_prefix(b"$")?;
        let digits = header.iter().position(|&b| b == b'\r')?;
        let len: usize = std::str::from_utf8(&header[..digits]).ok()?.parse().ok()?;
        let start = at + 1 + digits + 2;
        let end = start.checked_add(len)?;
        if frame.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        *part = frame.slice(start..end);
        at = end + 2;
    }
    (at == frame.len()).then_some((kind, parts))
}
