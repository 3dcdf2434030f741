//! `switchboard-sidecar`: a Redis-protocol listener on the pod's loopback that bridges the
//! application's unmodified Redis adapter to a shared pub/sub backplane.
//!
//! - [`resp`]: the protocol (decoding, encoding), pure and fuzzed;
//! - `pubsub`: the leaf both of the next two use: topics, a connection's subscriptions and outbox;
//! - `session`: one local connection: local commands, pass-through of the rest;
//! - `relay`: pub/sub across the fleet: one upstream subscription per topic, fleet-wide
//!   counts, surviving backplane outages;
//! - `upstream`: connections to the backplane;
//! - `http`, `metrics`: health, readiness and Prometheus metrics;
//! - `front`: the HTTP front (preview) that routes Engine.IO sessions to the pods owning them;
//! - `listening`: whether the app still holds the subscription its adapter listens on;
//! - [`config`]: flags and `SWITCHBOARD_*` variables, read once at start.

// The operator parses what it renders with the sidecar's own flag parser, and the protocol is
// public for fuzzing; `fuzzing` drives the decoders and the command parser for the fuzz target and
// its corpus test (hidden: not an API); everything else is this crate's own.
pub mod config;
pub(crate) mod front;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod glob;
pub(crate) mod http;
pub(crate) mod listening;
pub(crate) mod metrics;
pub(crate) mod pubsub;
pub(crate) mod relay;
pub mod resp;
pub(crate) mod session;
pub(crate) mod upstream;

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::relay::backplane::Settings;
use crate::relay::registry::Registry;
use crate::resp::{Limits, Reply};
use crate::session::Context;
use crate::upstream::Endpoint;

/// Runs the sidecar until `shutdown` resolves; then stops accepting, closes local connections,
/// and leaves the fleet registry.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let password = config.upstream_password.as_ref().map(|p| p.expose());
    let shards = config
        .upstreams
        .iter()
        .map(|url| Endpoint::parse(url).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, String>>()
        .map_err(std::io::Error::other)?;
    let tls = if shards.iter().any(|s| s.secure) {
        if config.upstream_tls_insecure_skip_verify {
            tracing::warn!(
                "--upstream-tls-insecure-skip-verify: the backplane's certificates are NOT checked; anyone on the path can pose as it"
            );
        }
        Some(upstream::Tls::new(&config.tls_options()).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let shards: Vec<Endpoint> = shards
        .into_iter()
        .map(|s| s.with_password(password).with_tls(tls.as_ref()))
        .collect();
    let (shards, cluster) = match shards.first() {
        Some(seed) if seed.is_cluster() => {
            if shards.len() > 1 {
                return Err(std::io::Error::other(
                    "--upstream: a redis+cluster:// URL names the whole cluster (its seeds, comma-separated); give it alone",
                ));
            }
            let (shards, slots, specs) = cluster_shards(seed, &config.channel_prefix).await?;
            (shards, Some((slots, specs)))
        }
        _ => (shards, None),
    };
    let pool = |endpoint: &Endpoint| {
        Arc::new(upstream::pool::Pool::new(
            endpoint.clone(),
            config.passthrough_pool_size,
            metrics.clone(),
        ))
    };
    // Pass-through commands go to shard 0 (client-side shards are for pub/sub only), or on a
    // cluster to the primary of their key's slot.
    let (routes, slots) = match cluster {
        Some((slots, specs)) => {
            let pools = shards.iter().map(pool).collect();
            let routes = upstream::routing::Routes::cluster(pools, slots.clone(), specs);
            (Some(Arc::new(routes)), Some(slots))
        }
        None => (
            shards
                .first()
                .map(|s| Arc::new(upstream::routing::Routes::single(pool(s)))),
            None,
        ),
    };
    // Both kinds show from the start, at 0.
    let _ = metrics.upstream_links(metrics::LinkKind::Pool);
    let _ = metrics.upstream_links(metrics::LinkKind::Dedicated);
    let relay = Arc::new(if shards.is_empty() {
        Relay::embedded(metrics.clone())
    } else {
        let id = config.sidecar_id.clone().unwrap_or_else(default_sidecar_id);
        let settings = Settings {
            channel_prefix: Bytes::from(config.channel_prefix.clone()),
            heartbeat: config.heartbeat(),
            flush_grace: config.flush_grace(),
            reconnect_min: std::time::Duration::from_millis(config.reconnect_min_ms),
            reconnect_max: std::time::Duration::from_millis(config.reconnect_max_ms),
            buffer_bytes: config.publish_buffer_bytes,
            buffer_messages: config.publish_buffer_messages,
            max_bulk: config.max_bulk_bytes,
            pattern_copies: config.cluster_pattern_copies,
        };
        let registry = if slots.is_some() {
            Registry::for_cluster(&config.channel_prefix, &id, config.peer_ttl_ms)
        } else {
            Registry::new(&config.channel_prefix, &id, config.peer_ttl_ms)
        };
        let backplane: Vec<String> = shards.iter().map(Endpoint::to_string).collect();
        tracing::info!(sidecar_id = %id, backplane = %backplane.join(" "), shards = shards.len(), prefix = %config.channel_prefix, "relaying pub/sub through the backplane");
        Relay::bridged(shards, slots, settings, registry, metrics.clone())
    });
    if relay.is_embedded() {
        tracing::info!("no --upstream: running embedded, a pub/sub broker for this pod alone");
    }
    let (front_stop, front_stopped) = watch::channel(false);
    let mut front_task = None;
    if let Some(listen) = config.front_listen {
        let secret = match &config.front_secret_file {
            Some(path) => Some(front::read_secret(path).map_err(std::io::Error::other)?),
            None => None,
        };
        let settings = front::Settings {
            listen,
            peer_listen: config.front_peer_listen,
            app: config.front_app.clone(),
            advertise: config.front_advertise().unwrap_or(listen),
            path: config.front_path.clone(),
            secret,
            ttl: std::time::Duration::from_millis(config.session_ttl_ms),
            max_sessions: config.front_max_sessions,
            drain: std::time::Duration::from_secs(config.front_drain_seconds),
        };
        let routes = routes.clone();
        let prefix = config.channel_prefix.clone();
        let metrics = metrics.clone();
        front_task = Some(tokio::spawn(async move {
            if let Err(e) = front::serve(settings, routes, &prefix, metrics, front_stopped).await {
                tracing::error!(error = %e, "cannot serve the HTTP front");
                std::process::exit(1);
            }
        }));
    }
    let ctx = Arc::new(Context {
        relay: relay.clone(),
        routes,
        max_in_flight: config.max_in_flight,
        passthrough_wait: std::time::Duration::from_millis(config.passthrough_wait_ms),
        password: config.password.clone(),
        channel_prefix: Bytes::from(config.channel_prefix.clone()),
        limits: Limits {
            max_bulk: config.max_bulk_bytes,
            max_elements: config.max_args,
            max_depth: 1,
        },
        client_buffer_bytes: config.client_buffer_bytes,
        metrics: metrics.clone(),
    });

    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {} (--listen): {e}", config.listen),
        )
    })?;
    if !config.listen.ip().is_loopback() {
        tracing::warn!(addr = %config.listen, "listening beyond loopback: anything that reaches this address can use the backplane");
    }
    tracing::info!(addr = %config.listen, "accepting Redis connections");
    let listening = listening::Check::new(config.listening(), metrics.clone());
    let listening_task = tokio::spawn(listening.clone().run(relay.clone()));
    let http_listener = {
        let relay = relay.clone();
        let metrics = metrics.clone();
        let addr = config.http_listen;
        tokio::spawn(async move {
            if let Err(e) = http::serve(addr, relay, metrics, listening).await {
                tracing::error!(%addr, error = %e, "cannot serve health and metrics (--http-listen)");
                std::process::exit(1);
            }
        })
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(config.max_clients));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics.local_connections_refused.inc();
                    tracing::warn!(max = config.max_clients, "refusing a local connection: --max-clients reached");
                    refuse(stream).await;
                    continue;
                };
                let ctx = ctx.clone();
                let stop = stop_rx.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    metrics.local_connections.inc();
                    session::serve(stream, ctx, stop).await;
                    metrics.local_connections.dec();
                    drop(slot);
                });
            }
            () = &mut shutdown => break,
        }
    }
    if let Some(task) = front_task {
        // First: other pods' sessions may have requests passing through this front.
        let _ = front_stop.send(true);
        let _ = task.await;
    }
    tracing::info!("shutting down: closing local connections and leaving the fleet registry");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), relay.leave()).await;
    http_listener.abort();
    listening_task.abort();
    Ok(())
}

/// One shard per primary of the cluster `seed` names, the slot map, and the key positions of
/// its commands, asked of its seeds until one answers (retrying like any outage: the sidecar is
/// not ready meanwhile). Shard 0 is the primary of the registry's slot; the others follow by
/// their first slot, so every sidecar numbers the shards alike.
async fn cluster_shards(
    seed: &Endpoint,
    channel_prefix: &str,
) -> std::io::Result<(
    Vec<Endpoint>,
    Arc<upstream::cluster::SlotMap>,
    upstream::routing::KeySpecs,
)> {
    let registry_slot =
        upstream::cluster::key_slot(Registry::cluster_tag(channel_prefix).as_bytes());
    let mut attempt = 0u32;
    loop {
        let failure = match upstream::cluster::discover(seed).await {
            Ok(topology) => match topology.slot_table() {
                Some(_) => {
                    let mut primaries = topology.primaries;
                    let registry = primaries
                        .iter()
                        .position(|p| p.owns(registry_slot))
                        .expect("every slot has a primary");
                    let first = primaries.remove(registry);
                    primaries.insert(0, first);
                    let ordered = upstream::cluster::Topology { primaries };
                    let slots = ordered.slot_table().expect("checked above");
                    let slots = Arc::new(upstream::cluster::SlotMap::new(slots.into()));
                    let shards: Vec<Endpoint> = (0..ordered.primaries.len())
                        .map(|i| seed.cluster_shard(i, &slots))
                        .collect();
                    let map: Vec<String> = ordered
                        .primaries
                        .iter()
                        .map(|p| format!("{} {:?}", p.addr, p.ranges))
                        .collect();
                    match key_specs(&shards[0]).await {
                        Ok(specs) => {
                            tracing::info!(cluster = %seed, primaries = %map.join(", "), "found the cluster's slot map: one shard per primary");
                            return Ok((shards, slots, specs));
                        }
                        Err(e) => format!("cannot read its command table (COMMAND): {e}"),
                    }
                }
                None => {
                    "some slots have no primary (is the cluster still being created?)".to_owned()
                }
            },
            Err(e @ upstream::UpstreamError::NotCluster { .. }) => {
                return Err(std::io::Error::other(format!("--upstream: {e}")));
            }
            Err(e) => e.to_string(),
        };
        attempt += 1;
        tracing::warn!(cluster = %seed, error = %failure, attempt, "cannot read the cluster's slot map yet; retrying");
        tokio::time::sleep(std::time::Duration::from_millis(
            200 * u64::from(attempt.min(10)),
        ))
        .await;
    }
}

/// The key positions of the cluster's commands (`COMMAND`), asked of one primary.
async fn key_specs(shard: &Endpoint) -> Result<upstream::routing::KeySpecs, String> {
    let mut link = shard
        .connect(resp::Protocol::Resp2, Some("switchboard-discovery"))
        .await
        .map_err(|e| e.to_string())?;
    let reply = link
        .call(&upstream::command(&["COMMAND"]).raw)
        .await
        .map_err(|e| e.to_string())?;
    upstream::routing::KeySpecs::from_command(&reply)
}

/// Tells a client over the connection limit why, as Redis does, then closes.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let reply = Reply::error("ERR max number of clients reached").to_bytes(resp::Protocol::Resp2);
    let _ = stream.write_all(&reply).await;
}

/// The pod's host name plus a random suffix, so two sidecars never share a registry entry.
fn default_sidecar_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sidecar".into());
    format!("{host}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}
