//! Prometheus metrics of the operator, served on `/metrics` by [`crate::http`].
//!
//! Names follow Prometheus conventions (`_total` counters, seconds); errors are labelled by
//! [`Error::metric_label`](crate::Error::metric_label), a short fixed set, so the series count
//! stays bounded whatever users put in their specs.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectionLabels {
    /// `injected`, `skipped` or `failed`.
    pub outcome: &'static str,
    /// Why a pod was skipped (empty when injected).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get` (a read or a list), `watch`, `create`, `patch`, `update`, `delete`.
    pub verb: &'static str,
}

pub struct Metrics {
    pub reconciles: Counter,
    pub api_requests: Family<RequestLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub leader: Gauge,
    pub injections: Family<InjectionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            api_requests: Family::default(),
            reconcile_errors: Family::default(),
            // 5 ms .. ~20 s: a reconcile is a handful of API round trips.
            reconcile_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 13),
            ),
            leader: Gauge::default(),
            injections: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            histogram: &self.reconcile_duration,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, reason: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels { reason })
            .inc();
    }

    /// Counts one request to the API server, by verb (from its method and `watch` parameter).
    pub fn api_request(&self, method: &str, query: Option<&str>) {
        let watch =
            query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let verb = match method {
            "GET" if watch => "watch",
            "GET" => "get",
            "POST" => "create",
            "PATCH" => "patch",
            "PUT" => "update",
            "DELETE" => "delete",
            _ => "other",
        };
        self.api_requests
            .get_or_create(&RequestLabels { verb })
            .inc();
    }

    pub fn injection(&self, outcome: &'static str, reason: &'static str) {
        self.injections
            .get_or_create(&InjectionLabels { outcome, reason })
            .inc();
    }

    /// Encodes every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut r = Registry::with_prefix("switchboard_operator");
        r.register(
            "reconciles",
            "Reconciles of RealtimeClusters started",
            self.reconciles.clone(),
        );
        r.register(
            "api_requests",
            "Requests this replica sent to the API server, by verb (watches count once per (re)start)",
            self.api_requests.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            self.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            self.reconcile_duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controller",
            self.leader.clone(),
        );
        r.register(
            "injections",
            "Pods the admission webhook saw that a RealtimeCluster selects, by outcome",
            self.injections.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}

pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
