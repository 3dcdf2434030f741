//! Following a Redis Cluster's resharding: the topology watcher.
//!
//! The slot map ([`SlotMap`]) is read at start. Afterwards one task per sidecar asks the seeds
//! again whenever a shard lost its links (a `-MOVED`, a `sunsubscribe` the sidecar did not ask
//! for, a failover all end that way) and every [`POLL`] otherwise. When the slots moved between
//! the primaries, it swaps the map (each primary keeps the shard number of the slots it mostly
//! kept, see [`Topology::table_over`]) and tells every shard to replan: each rebuilds its links,
//! hands the subscriptions and held publishes of slots it no longer serves to the shard that
//! does, and takes up those handed to it. The outage rules then keep messages: a shard holds its
//! publishes until every peer is subscribed again on the same server *under the same map* (the
//! registry mark carries the map's epoch), and replays what was not proven delivered.
//!
//! Not followed: a primary added or removed (the shards are fixed at start; the watcher logs
//! that the sidecars must restart), and the registry's own slot moving off shard 0.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::backplane::{Request, Shared};
use crate::upstream::Endpoint;
use crate::upstream::cluster::{SlotMap, discover};

/// How often the slot map is read when nothing prompts it.
const POLL: Duration = Duration::from_secs(2);

/// Watches the cluster `seed` names until the relay is gone (every shard's sender dropped).
pub(crate) async fn watch(
    seed: Endpoint,
    map: Arc<SlotMap>,
    shards: Vec<mpsc::WeakSender<Request>>,
    shared: Arc<Shared>,
) {
    let mut warned = false;
    loop {
        tokio::select! {
            () = shared.topology.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        let Ok(topology) = discover(&seed).await else {
            continue; // the shards say why they cannot connect
        };
        let current = map.table();
        let Some(table) = topology.table_over(&current, shards.len()) else {
            if topology.slot_table().is_some() && !warned {
                warned = true;
                tracing::error!(
                    primaries = topology.primaries.len(),
                    shards = shards.len(),
                    "the cluster now has a different number of primaries than at start: restart the sidecars to use them (slots on a new primary are not reached)"
                );
            }
            continue;
        };
        if !map.replace(table.into()) {
            continue;
        }
        let moved = current
            .iter()
            .zip(map.table().iter())
            .filter(|(a, b)| a != b)
            .count();
        tracing::info!(
            slots_moved = moved,
            epoch = format!("{:x}", map.epoch()),
            "the cluster was resharded: every shard rebuilds its links and moves its subscriptions to the slots' new primaries"
        );
        // Two steps, so that what one shard hands to another is queued there before that
        // shard rebuilds its links and tells the fleet its subscriptions are in place.
        let senders: Vec<_> = shards
            .iter()
            .filter_map(mpsc::WeakSender::upgrade)
            .collect();
        if senders.is_empty() {
            return;
        }
        let mut handed = Vec::new();
        for tx in &senders {
            let (done, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Request::Replan { done }).await;
            handed.push(rx);
        }
        futures::future::join_all(handed).await;
        for tx in &senders {
            let _ = tx.send(Request::Rebuild).await;
        }
    }
}
