//! Prometheus metrics, served on `/metrics`. Names follow Prometheus conventions
//! (`_total` counters, base units); everything is about this one sidecar.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct Metrics {
    pub local_connections: Gauge,
    pub local_connections_refused: Counter,
    pub local_subscriptions: Gauge,
    pub upstream_subscriptions: Gauge,
    pub upstream_connected: Gauge,
    pub upstream_reconnects: Counter,
    pub publishes: Counter,
    pub publishes_sent: Counter,
    pub publishes_buffered: Gauge,
    pub publishes_dropped: Counter,
    pub publishes_replayed: Counter,
    pub messages_deduplicated: Counter,
    pub messages_received: Counter,
    pub messages_delivered: Counter,
    pub messages_dropped_slow_client: Counter,
    pub commands_forwarded: Counter,
    pub commands_redirected: Counter,
    pub protocol_errors: Counter,
    /// Pass-through links open to the backplane, by kind (`pool`, `dedicated`).
    pub upstream_connections: Family<Vec<(String, String)>, Gauge>,
    pub app_not_listening: Gauge,
    pub app_listener_lost: Counter,
    /// HTTP front requests on the Engine.IO path, by route (`local`, `forwarded`, `unknown`).
    pub front_requests_by_route: Family<Vec<(String, String)>, Counter>,
    pub front_forwards_refused: Counter,
    pub front_requests_malformed: Counter,
    pub front_sessions: Gauge,
    pub front_sessions_unrecorded: Counter,
}

/// What a pass-through link is for: shared by every client, or lent to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    Pool,
    Dedicated,
}

impl LinkKind {
    pub fn label(self) -> &'static str {
        match self {
            LinkKind::Pool => "pool",
            LinkKind::Dedicated => "dedicated",
        }
    }
}

impl Metrics {
    /// The gauge of open pass-through links of one kind.
    pub fn upstream_links(&self, kind: LinkKind) -> Gauge {
        self.upstream_connections
            .get_or_create(&vec![("kind".to_owned(), kind.label().to_owned())])
            .clone()
    }

    /// The counter of front requests that took `route`.
    pub fn front_requests(&self, route: &str) -> Counter {
        self.front_requests_by_route
            .get_or_create(&vec![("route".to_owned(), route.to_owned())])
            .clone()
    }

    /// Encodes every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("switchboard_sidecar");
        let m = self;
        r.register(
            "local_connections",
            "Application connections open now",
            m.local_connections.clone(),
        );
        r.register(
            "local_connections_refused",
            "Application connections refused at --max-clients",
            m.local_connections_refused.clone(),
        );
        r.register(
            "local_subscriptions",
            "Channel, pattern and shard subscriptions held by application connections",
            m.local_subscriptions.clone(),
        );
        r.register(
            "upstream_subscriptions",
            "Subscriptions this sidecar holds on the backplane (one per topic in use)",
            m.upstream_subscriptions.clone(),
        );
        r.register(
            "upstream_connected",
            "1 while the backplane links are up",
            m.upstream_connected.clone(),
        );
        r.register(
            "upstream_reconnects",
            "Times the backplane links were lost and rebuilt",
            m.upstream_reconnects.clone(),
        );
        r.register(
            "publishes",
            "PUBLISH and SPUBLISH commands from application connections",
            m.publishes.clone(),
        );
        r.register(
            "publishes_sent",
            "Publishes written to the backplane",
            m.publishes_sent.clone(),
        );
        r.register(
            "publishes_buffered",
            "Publishes held while the backplane is unreachable",
            m.publishes_buffered.clone(),
        );
        r.register(
            "publishes_dropped",
            "Publishes dropped because the outage buffer was full",
            m.publishes_dropped.clone(),
        );
        r.register(
            "publishes_replayed",
            "Publishes sent again after the backplane links died before proving them delivered",
            m.publishes_replayed.clone(),
        );
        r.register(
            "messages_deduplicated",
            "Replayed messages dropped because this sidecar had delivered them already",
            m.messages_deduplicated.clone(),
        );
        r.register(
            "messages_received",
            "Messages received from the backplane",
            m.messages_received.clone(),
        );
        r.register(
            "messages_delivered",
            "Messages queued to application connections",
            m.messages_delivered.clone(),
        );
        r.register(
            "messages_dropped_slow_client",
            "Messages dropped because an application connection was over --client-buffer-bytes",
            m.messages_dropped_slow_client.clone(),
        );
        r.register(
            "commands_forwarded",
            "Commands passed through to the backplane",
            m.commands_forwarded.clone(),
        );
        r.register(
            "commands_redirected",
            "Pass-through commands a Redis Cluster answered -MOVED or -ASK, run again on the node it named",
            m.commands_redirected.clone(),
        );
        r.register(
            "protocol_errors",
            "Connections closed for malformed or oversized input",
            m.protocol_errors.clone(),
        );
        r.register(
            "upstream_connections",
            "Pass-through connections open to the backplane, by kind: pool (shared by every client) or dedicated (lent to one client for a transaction, WATCH, a blocking command, another database or user)",
            m.upstream_connections.clone(),
        );
        r.register(
            "app_not_listening",
            "1 while the app holds none of its expected subscriptions (--expect-subscription) past the grace period",
            m.app_not_listening.clone(),
        );
        r.register(
            "app_listener_lost",
            "Times the app stopped listening (held none of its expected subscriptions past the grace period)",
            m.app_listener_lost.clone(),
        );
        r.register(
            "front_requests",
            "HTTP front requests on the Engine.IO path, by route: local (this pod's app), forwarded (to the pod owning the session), unknown (a session nobody records; the local app answers)",
            m.front_requests_by_route.clone(),
        );
        r.register(
            "front_forwards_refused",
            "HTTP front requests refused (403): claiming to be forwarded without the fleet's secret, forwarded to the public port, or not forwarded at the peer port",
            m.front_forwards_refused.clone(),
        );
        r.register(
            "front_requests_malformed",
            "HTTP front connections cut for a malformed request, a head over the size limit, or a head too slow to arrive",
            m.front_requests_malformed.clone(),
        );
        r.register(
            "front_sessions",
            "Engine.IO sessions this pod owns and records in the backplane",
            m.front_sessions.clone(),
        );
        r.register(
            "front_sessions_unrecorded",
            "New Engine.IO sessions not recorded (--front-max-sessions reached, or the backplane unreachable)",
            m.front_sessions_unrecorded.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}
