//! The relay: pub/sub between the pod's local connections and the rest of the fleet.
//!
//! Local connections subscribe and publish through [`Relay`]. In embedded mode (no backplane)
//! it is a broker for this pod alone; with a backplane it keeps one upstream subscription per
//! topic (see [`backplane`]) on the topic's shard (see [`shard`]), and answers `PUBSUB` with
//! fleet-wide counts (see [`fleet`]) from the registry on shard 0.
//!
//! The relay owns no sockets of local clients: sessions hand it their [`Outbox`] and their
//! [`Subscriptions`], and it keeps both consistent with the [`Table`].

pub mod backplane;
pub mod buffer;
pub mod fleet;
pub mod registry;
pub mod shard;
pub mod table;
pub(crate) mod topology;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use self::backplane::{Part, Request, Shared};
use self::fleet::Fleet;
use self::shard::Router;
use crate::metrics::Metrics;
use crate::pubsub::{Kind, Outbox, Subscriptions, Topic};
use crate::resp::Reply;

/// A (un)subscribe confirmation: `[subscribe, channel, count]`, a push frame in RESP3.
fn confirmation(
    outbox: &Outbox,
    kind: Kind,
    subscribing: bool,
    name: Option<&Bytes>,
    count: i64,
) -> Bytes {
    Reply::Push(vec![
        Reply::bulk_str(kind.confirmation(subscribing)),
        name.map_or(Reply::NullBulk, |n| Reply::Bulk(n.clone())),
        Reply::Integer(count),
    ])
    .to_bytes(outbox.protocol())
}

pub struct Relay {
    id: String,
    shared: Arc<Shared>,
    /// One backplane task per shard, in shard order; empty when embedded.
    shards: Vec<mpsc::Sender<Request>>,
    router: Router,
    /// On a cluster with pattern copies: the shard that gets every all-messages copy of this
    /// sidecar's publishes (see [`backplane::Part`]).
    copy_shard: Option<usize>,
    /// Local subscriptions made since [`Relay::take_recent_topics`] was last called: the
    /// listening check samples the table once a second, and an app whose listener subscribed
    /// and died between two looks must still arm it. At most [`RECENT_TOPICS`] are kept.
    recent: Mutex<Vec<Topic>>,
}

/// Bound of [`Relay::take_recent_topics`]: beyond it new subscriptions are not recorded (the
/// table still shows every one held), so nothing grows when nobody takes them.
const RECENT_TOPICS: usize = 256;

impl Relay {
    /// A relay for one pod alone.
    pub fn embedded(metrics: Arc<Metrics>) -> Self {
        let shared = Shared::new(0, metrics);
        Relay {
            id: String::new(),
            shared,
            shards: Vec::new(),
            router: Router::new(Bytes::new(), 1),
            copy_shard: None,
            recent: Mutex::default(),
        }
    }

    /// A relay bridged to a backplane of `endpoints.len()` shards; spawns one task per shard.
    /// On a Redis Cluster, `slots` maps each slot to its shard (one per primary).
    pub fn bridged(
        endpoints: Vec<crate::upstream::Endpoint>,
        slots: Option<Arc<crate::upstream::cluster::SlotMap>>,
        settings: backplane::Settings,
        registry: registry::Registry,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shared = Shared::new(endpoints.len(), metrics);
        let router = match &slots {
            Some(slots) => Router::cluster(settings.channel_prefix.clone(), slots.clone()),
            None => Router::new(settings.channel_prefix.clone(), endpoints.len()),
        };
        let id = registry.id().to_owned();
        let copy_shard = (slots.is_some() && settings.pattern_copies)
            .then(|| shard::copy_shard(&id, endpoints.len()));
        let channels: Vec<_> = endpoints.iter().map(|_| mpsc::channel(4096)).collect();
        let peers: Vec<_> = channels.iter().map(|(tx, _)| tx.downgrade()).collect();
        if let Some(map) = slots {
            tokio::spawn(topology::watch(
                endpoints[0].clone(),
                map,
                peers.clone(),
                shared.clone(),
            ));
        }
        let mut shards = Vec::new();
        for (shard, (endpoint, (tx, rx))) in endpoints.into_iter().zip(channels).enumerate() {
            let task = backplane::Backplane::new(
                endpoint,
                shard,
                settings.clone(),
                registry.clone(),
                backplane::Wiring {
                    requests: rx,
                    peers: peers.clone(),
                },
                &router,
                shared.clone(),
            );
            tokio::spawn(task.run());
            shards.push(tx);
        }
        Relay {
            id,
            shared,
            shards,
            router,
            copy_shard,
            recent: Mutex::default(),
        }
    }

    /// Ready to serve: always when embedded; while every shard is connected otherwise.
    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Why the backplane could not be reached the last time a shard tried, while not ready.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error()
    }

    /// The cluster said a slot moved (`-MOVED` to a pass-through command): the topology
    /// watcher reads the slot map again.
    pub fn slots_moved(&self) {
        self.shared.topology.notify_one();
    }

    pub fn is_embedded(&self) -> bool {
        self.shards.is_empty()
    }

    /// The topics this pod's local connections hold now, by their own names (read-only; the
    /// listening check's one look into the relay).
    pub fn local_topics(&self) -> Vec<Topic> {
        self.shared.table.counts().into_keys().collect()
    }

    /// The local subscriptions made since the last call (see `recent`), oldest first.
    pub fn take_recent_topics(&self) -> Vec<Topic> {
        std::mem::take(&mut *self.recent.lock().expect("recent topics lock poisoned"))
    }

    /// Asks one shard's task; `None` when embedded (or the task is gone).
    async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Option<T> {
        let backplane = self.shards.get(shard)?;
        let (tx, rx) = oneshot::channel();
        backplane.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Subscribes upstream on each topic's shard(s) and counts the topics in the registry, all
    /// at once; the first refusal, if any.
    async fn acquire(&self, topics: &[Topic]) -> Result<(), String> {
        let mut waits = Vec::new();
        for (shard, topics) in self.router.split(topics).into_iter().enumerate() {
            if !topics.is_empty() {
                waits.push(self.send_and_wait(shard, |done| Request::Acquire { topics, done }));
            }
        }
        let deltas = topics.iter().map(|t| (t.clone(), 1)).collect();
        let registered = self.ask(0, |done| Request::Register { deltas, done });
        let (answers, _) = futures::join!(futures::future::join_all(waits), registered);
        match answers.into_iter().flatten().find_map(Result::err) {
            None => Ok(()),
            Some(refusal) => {
                self.release(topics).await;
                Err(refusal)
            }
        }
    }

    /// The reverse of [`Relay::acquire`].
    async fn release(&self, topics: &[Topic]) {
        let mut waits = Vec::new();
        for (shard, topics) in self.router.split(topics).into_iter().enumerate() {
            if !topics.is_empty() {
                waits.push(self.send_and_wait(shard, |done| Request::Release { topics, done }));
            }
        }
        let deltas = topics.iter().map(|t| (t.clone(), -1)).collect();
        let registered = self.ask(0, |done| Request::Register { deltas, done });
        futures::join!(futures::future::join_all(waits), registered);
    }

    /// Queues a request now (so shards' requests go out in order) and waits for its answer.
    fn send_and_wait<T: Send + 'static>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> futures::future::BoxFuture<'static, Option<T>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.shards[shard].try_send(make(tx));
        let backplane = self.shards[shard].clone();
        Box::pin(async move {
            if let Err(mpsc::error::TrySendError::Full(request)) = sent {
                backplane.send(request).await.ok()?;
            }
            rx.await.ok()
        })
    }

    /// SUBSCRIBE / PSUBSCRIBE / SSUBSCRIBE: confirms each name in order, after the backplane
    /// has the subscription, so no message published after the confirmation can be missed.
    pub async fn subscribe(
        &self,
        outbox: &Outbox,
        subs: &mut Subscriptions,
        kind: Kind,
        names: &[Bytes],
    ) -> Result<(), Reply> {
        let mut fresh: Vec<Topic> = Vec::new();
        for name in names {
            let topic = Topic::new(kind, name.clone());
            if !subs.contains(kind, name) && !fresh.contains(&topic) {
                fresh.push(topic);
            }
        }
        if !fresh.is_empty()
            && !self.is_embedded()
            && let Err(e) = self.acquire(&fresh).await
        {
            return Err(Reply::error(format!(
                "ERR switchboard: the backplane refused {}: {e}",
                kind.subscribe_command()
            )));
        }
        for name in names {
            if subs.insert(kind, name.clone()) {
                let frame = confirmation(outbox, kind, true, Some(name), subs.count(kind));
                let topic = Topic::new(kind, name.clone());
                {
                    let mut recent = self.recent.lock().expect("recent topics lock poisoned");
                    if recent.len() < RECENT_TOPICS {
                        recent.push(topic.clone());
                    }
                }
                self.shared.table.insert(topic, outbox, frame);
                self.shared.metrics.local_subscriptions.inc();
            } else {
                outbox.reply(confirmation(
                    outbox,
                    kind,
                    true,
                    Some(name),
                    subs.count(kind),
                ));
            }
        }
        Ok(())
    }

    /// UNSUBSCRIBE / PUNSUBSCRIBE / SUNSUBSCRIBE (no names: all of that kind).
    pub async fn unsubscribe(
        &self,
        outbox: &Outbox,
        subs: &mut Subscriptions,
        kind: Kind,
        names: Vec<Bytes>,
    ) {
        let names = if names.is_empty() {
            subs.sorted(kind)
        } else {
            names
        };
        if names.is_empty() {
            outbox.reply(confirmation(outbox, kind, false, None, subs.count(kind)));
            return;
        }
        let mut leaving: Vec<Topic> = Vec::new();
        for name in &names {
            let topic = Topic::new(kind, name.clone());
            if subs.contains(kind, name) && !leaving.contains(&topic) {
                leaving.push(topic);
            }
        }
        if !leaving.is_empty() && !self.is_embedded() {
            self.release(&leaving).await;
        }
        for name in &names {
            if subs.remove(kind, name) {
                let frame = confirmation(outbox, kind, false, Some(name), subs.count(kind));
                self.shared
                    .table
                    .remove(&Topic::new(kind, name.clone()), outbox, Some(frame));
                self.shared.metrics.local_subscriptions.dec();
            } else {
                outbox.reply(confirmation(
                    outbox,
                    kind,
                    false,
                    Some(name),
                    subs.count(kind),
                ));
            }
        }
    }

    /// Drops every subscription without confirmations (connection closed, or RESET).
    pub async fn leave_all(&self, outbox: &Outbox, subs: &mut Subscriptions) {
        for kind in Kind::ALL {
            let names = subs.sorted(kind);
            if names.is_empty() {
                continue;
            }
            let topics: Vec<Topic> = names.iter().map(|n| Topic::new(kind, n.clone())).collect();
            if !self.is_embedded() {
                self.release(&topics).await;
            }
            for topic in &topics {
                self.shared.table.remove(topic, outbox, None);
                self.shared.metrics.local_subscriptions.dec();
            }
            subs.clear(kind);
        }
    }

    /// PUBLISH / SPUBLISH. Returns how many application connections receive it: exact in
    /// embedded mode; with a backplane, exact for this pod plus the other pods' counts as of the
    /// last registry read (at most one heartbeat old).
    pub async fn publish(&self, kind: Kind, channel: Bytes, payload: Bytes) -> i64 {
        let metrics = &self.shared.metrics;
        metrics.publishes.inc();
        let shard = self.router.shard_of(kind, &channel);
        let Some(backplane) = self.shards.get(shard) else {
            let n = self.shared.table.publish_locally(kind, &channel, &payload);
            metrics.messages_delivered.inc_by(n as u64);
            return n as i64;
        };
        let remote = self
            .shared
            .peer_totals
            .read()
            .expect("peers lock poisoned")
            .receivers(kind, &channel);
        let local = self.shared.table.receivers(kind, &channel);
        match self.copy_shard {
            Some(copies) if kind == Kind::Channel && copies != shard => {
                let copy = Request::Publish {
                    kind,
                    channel: channel.clone(),
                    payload: payload.clone(),
                    part: Part::Copy,
                };
                let main = Request::Publish {
                    kind,
                    channel,
                    payload,
                    part: Part::Main,
                };
                let _ = backplane.send(main).await;
                let _ = self.shards[copies].send(copy).await;
            }
            _ => {
                let both = Request::Publish {
                    kind,
                    channel,
                    payload,
                    part: Part::Both,
                };
                let _ = backplane.send(both).await;
            }
        }
        local + remote
    }

    /// The fleet for PUBSUB answers: a fresh registry read, or the cached one if the backplane
    /// is unreachable right now; this pod's own counts are always current.
    async fn fleet(&self) -> Fleet {
        let peers = match self.ask(0, |done| Request::ReadFleet { done }).await {
            Some(Ok(fleet)) => fleet,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "answering PUBSUB from the last registry read");
                self.shared
                    .peers
                    .read()
                    .expect("peers lock poisoned")
                    .clone()
            }
            None => Fleet::default(),
        };
        peers.with_own(&self.id, self.shared.table.counts())
    }

    pub async fn numsub(&self, kind: Kind, channels: &[Bytes]) -> Vec<i64> {
        let fleet = self.fleet().await;
        channels.iter().map(|c| fleet.numsub(kind, c)).collect()
    }

    pub async fn numpat(&self) -> i64 {
        self.fleet().await.numpat()
    }

    pub async fn channels(&self, kind: Kind, pattern: Option<&[u8]>) -> Vec<Bytes> {
        self.fleet().await.channels(kind, pattern)
    }

    /// Graceful shutdown: leaves the registry so the fleet's counts drop at once rather than
    /// after the entry's TTL.
    pub async fn leave(&self) {
        self.ask(0, |done| Request::Leave { done }).await;
    }
}
