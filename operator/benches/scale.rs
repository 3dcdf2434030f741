//! Scale check (a benchmark, not a test): N RealtimeClusters applied at once against a real
//! control plane with kwok; reports the time until all are `Ready` and the operator's peak memory.
//!
//!     cargo bench -p switchboard-operator --bench scale            # 200 clusters
//!     SCALE_CLUSTERS=50 cargo bench -p switchboard-operator --bench scale
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
            let listed = rtcs.list(&ListParams::default()).await.unwrap().items;
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
