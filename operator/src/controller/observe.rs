//! Reads the controller needs besides its own children: the external backplane's Secret and the
//! selected pods. Pure helpers turn what was read into [`status`](super::status) inputs.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use kube::core::Selector;
use kube::{Client, ResourceExt};

use super::sidecar_config::CONFIG_HASH_ANNOTATION;
use crate::api::{PodCounts, RealtimeCluster};
use crate::error::{Error, Result};

/// The name of the container the injector adds; a pod with it (as a container or a native
/// sidecar init container) counts as injected.
pub const SIDECAR_CONTAINER: &str = "switchboard-sidecar";

/// The external backplane's Secret, if it exists.
pub async fn secret(client: &Client, namespace: &str, name: &str) -> Result<Option<Secret>> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading Secret {name}")))
}

/// The value of `key` in `secret`, as text.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(value.0.clone()).ok();
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

/// The pods `spec.selector` matches in the RealtimeCluster's namespace.
pub async fn selected_pods(client: &Client, rtc: &RealtimeCluster) -> Result<Vec<Pod>> {
    // `validate` ran first and the API server checked the selector's syntax; an unparsable
    // one would select nothing rather than everything.
    let Ok(selector) = Selector::try_from(rtc.spec.selector.clone()) else {
        return Ok(Vec::new());
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), &rtc.namespace().unwrap_or_default());
    api.list(&ListParams::default().labels_from(&selector))
        .await
        .map(|list| list.items)
        .map_err(Error::kube("listing the selected pods"))
}

/// `spec.selector` as `kubectl get pods -l` would take it, for messages.
pub fn selector_text(rtc: &RealtimeCluster) -> String {
    Selector::try_from(rtc.spec.selector.clone())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn live(pods: &[Pod]) -> impl Iterator<Item = &Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
}

fn injected(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers.iter().any(|c| c.name == SIDECAR_CONTAINER)
            || spec
                .init_containers
                .iter()
                .flatten()
                .any(|c| c.name == SIDECAR_CONTAINER)
    })
}

/// Names of the live pods that run without the sidecar (created while the webhook was down, or
/// before the RealtimeCluster existed), sorted.
pub fn uninjected(pods: &[Pod]) -> Vec<String> {
    let mut names: Vec<String> = live(pods)
        .filter(|p| !injected(p))
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// Names of the live injected pods that started with another sidecar configuration than
/// `current_hash` (their `switchboard.dev/sidecar-config-hash` differs), sorted. Pods without the
/// annotation (the sidecar added by hand) are not judged.
pub fn outdated(pods: &[Pod], current_hash: &str) -> Vec<String> {
    let mut names: Vec<String> = live(pods)
        .filter(|p| injected(p))
        .filter(|p| {
            p.annotations()
                .get(CONFIG_HASH_ANNOTATION)
                .is_some_and(|hash| hash != current_hash)
        })
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// How many of `pods` are running, have the sidecar, and are ready with it.
pub fn pod_counts(pods: &[Pod]) -> PodCounts {
    let mut counts = PodCounts::default();
    for pod in live(pods) {
        counts.matched += 1;
        if !injected(pod) {
            continue;
        }
        counts.injected += 1;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            counts.ready += 1;
        }
    }
    counts
}

/// `(name, ready servers, desired servers)` of a StatefulSet as the API server returned it.
pub fn shard_readiness(set: &StatefulSet) -> (String, i32, i32) {
    let desired = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = set
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    (set.name_any(), ready, desired)
}

/// The first address the ingress controller published on `ingress`, if any.
pub fn ingress_address(ingress: &Ingress) -> Option<String> {
    let entry = ingress
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .clone();
    entry.hostname.or(entry.ip)
}

/// `Gateway <name>` once a parent Gateway has accepted `route` (its `status.parents[]`
/// conditions), else `None`.
pub fn route_acceptance(route: &kube::api::DynamicObject) -> Option<String> {
    let parents = route.data["status"]["parents"].as_array()?;
    parents.iter().find_map(|parent| {
        let accepted = parent["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Accepted" && c["status"] == "True");
        accepted.then(|| {
            format!(
                "Gateway {}",
                parent["parentRef"]["name"].as_str().unwrap_or("?")
            )
        })
    })
}
