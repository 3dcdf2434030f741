//! Scale check (a benchmark, not a test): N RealtimeClusters applied at once against a real
//! control plane with kwok; reports the time until all are `Ready` and the operator's peak memory.
//!
//!     cargo bench -p switchboard-operator --bench scale            # 200 clusters
//!     SCALE_CLUSTERS=50 cargo bench -p switchboard-operator --bench scale
//!
//! Besides time to Ready and peak memory it prints the requests the operator sent to the API
//! server per reconcile (from `switchboard_operator_api_requests_total`, watches apart), the
//! reconcile duration's p50/p99 (from its histogram: the bucket's upper bound), and the machine's
//! load average at start and end (the machine is shared; read the numbers with it).
//!
//! Each cluster gets one app pod that already carries a container named like the injected
//! sidecar (injection is the webhook's job, measured separately), so `Ready` means: the managed
//! Redis StatefulSet is ready (kwok runs it), the sidecar ConfigMap is written, and the pod is
//! counted ready. Nothing here asserts a time: shared machines are noisy; read the numbers.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::{Operator, until};
use switchboard_operator::api::RealtimeCluster;

const NAMESPACE: &str = "scale";

#[tokio::main]
async fn main() {
    let clusters: usize = std::env::var("SCALE_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let Some(cp) = support::control_plane().await else {
        eprintln!("no control plane binaries: run tests/controlplane/build.sh first");
        return;
    };
    let client = cp.client().await.unwrap();
    // The testkit's node takes 110 pods; this run needs two per cluster.
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": "kwok-scale",
            "annotations": { "kwok.x-k8s.io/node": "fake" },
            "labels": { "type": "kwok", "kubernetes.io/hostname": "kwok-scale", "kubernetes.io/os": "linux" },
        },
        "status": {
            "allocatable": { "cpu": "1000", "memory": "4Ti", "pods": "5000" },
            "capacity": { "cpu": "1000", "memory": "4Ti", "pods": "5000" },
        },
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    support::namespace(&client, NAMESPACE).await;
    let operator = Operator::start(cp, NAMESPACE, "switchboard-operator", "op-scale");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let rtcs: Api<RealtimeCluster> = Api::namespaced(client.clone(), NAMESPACE);

    let load_at_start = load_average();
    // "At once": 32 writers in parallel, pod and RealtimeCluster per cluster.
    let start = Instant::now();
    futures::stream::iter(0..clusters)
        .for_each_concurrent(32, |i| {
            let (pods, rtcs) = (pods.clone(), rtcs.clone());
            async move {
                let name = format!("chat-{i}");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": { "name": format!("{name}-pod"), "labels": { "app": name } },
                    "spec": { "containers": [
                        { "name": "app", "image": "chat:never-pulled" },
                        { "name": "switchboard-sidecar", "image": "sidecar:never-pulled" },
                    ] },
                }))
                .unwrap();
                pods.create(&PostParams::default(), &pod).await.unwrap();
                let rtc: RealtimeCluster = serde_json::from_value(json!({
                    "apiVersion": "switchboard.dev/v1alpha1",
                    "kind": "RealtimeCluster",
                    "metadata": { "name": name },
                    "spec": { "selector": { "matchLabels": { "app": name } }, "framework": "python-socketio" },
                }))
                .unwrap();
                rtcs.create(&PostParams::default(), &rtc).await.unwrap();
            }
        })
        .await;
    let created = start.elapsed();

    let mut peak_rss_kib = 0;
    let mut all_observed = None;
    until(
        &format!("{clusters} RealtimeClusters Ready"),
        1800,
        async || {
            peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(operator.pid()));
            // About once a second, from the API server's watch cache (`resourceVersion=0`): the
            // polling must not be what loads the API server at a thousand clusters.
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
            let listed = rtcs
                .list(&ListParams::default().match_any())
                .await
                .unwrap()
                .items;
            let observed = listed
                .iter()
                .filter(|rtc| rtc.status.as_ref().and_then(|s| s.observed_generation) == Some(1))
                .count();
            if observed == clusters && all_observed.is_none() {
                all_observed = Some(start.elapsed());
            }
            listed
                .iter()
                .filter(|rtc| {
                    rtc.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count()
        },
        |ready| *ready == clusters,
    )
    .await;
    let all_ready = start.elapsed();
    peak_rss_kib = peak_rss_kib.max(vm_hwm_kib(operator.pid()));
    let reconciles = operator
        .metric("switchboard_operator_reconciles_total")
        .await
        .unwrap_or_default();
    let errors: f64 = operator
        .metric("switchboard_operator_reconcile_errors_total")
        .await
        .unwrap_or_default();

    println!(
        "scale: {clusters} RealtimeClusters (+{clusters} app pods, {clusters} Redis StatefulSets) on kwok"
    );
    println!(
        "  created (API writes by the benchmark) {:>8.1} s",
        created.as_secs_f64()
    );
    println!(
        "  all reconciled once (status written)  {:>8.1} s",
        all_observed.unwrap_or(all_ready).as_secs_f64()
    );
    println!(
        "  all Ready after                       {:>8.1} s  (waits on kube-controller-manager and kwok running {clusters} Redis pods)",
        all_ready.as_secs_f64()
    );
    println!(
        "  operator peak RSS (VmHWM)             {:>8.1} MiB",
        peak_rss_kib as f64 / 1024.0
    );
    println!(
        "  reconciles                            {reconciles:>8.0}  ({:.1} per cluster)",
        reconciles / clusters as f64
    );
    println!("  reconcile errors (first series)       {errors:>8.0}");
    let text = operator.metrics_text().await.unwrap_or_default();
    let requests = |verb: &str| {
        series(
            &text,
            &format!("switchboard_operator_api_requests_total{{verb=\"{verb}\"}}"),
        )
    };
    let calls: f64 = ["get", "create", "patch", "update", "delete"]
        .iter()
        .map(|v| requests(v))
        .sum();
    println!(
        "  API requests (not watches)            {calls:>8.0}  ({:.1} per reconcile: get {:.0}, patch {:.0}, create {:.0}, delete {:.0}; watches started {:.0})",
        calls / reconciles.max(1.0),
        requests("get"),
        requests("patch"),
        requests("create"),
        requests("delete"),
        requests("watch"),
    );
    let (p50, p99) = (
        histogram_quantile(
            &text,
            "switchboard_operator_reconcile_duration_seconds",
            0.50,
        ),
        histogram_quantile(
            &text,
            "switchboard_operator_reconcile_duration_seconds",
            0.99,
        ),
    );
    println!(
        "  reconcile duration p50 / p99          ≤{p50:.3} s / ≤{p99:.3} s (histogram bucket bounds)"
    );
    println!(
        "  load average (1 min) start / end      {:>8.2} / {:.2}  (2 cores, shared)",
        load_at_start,
        load_average()
    );
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The value of the series named exactly `name` (with its labels) in a Prometheus text body.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The upper bound of the histogram bucket holding quantile `q` of `name`.
fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map_or(f64::NAN, |b| b.0)
}

/// Peak resident memory of `pid` in KiB (Linux `/proc/<pid>/status`, `VmHWM`).
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
