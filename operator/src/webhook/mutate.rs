//! What the injector does to one Pod: a pure decision from the Pod, its namespace's
//! RealtimeClusters and the operator's settings. No client, no clock: the handler reads the
//! clusters and the ConfigMap's hash, calls [`mutate`], and turns the [`Decision`] into an
//! admission response and, for a skip, an Event.
//!
//! Selection: the label [`CLUSTER_LABEL`] names the cluster outright (it wins over selectors);
//! otherwise the pod belongs to the one RealtimeCluster of its namespace whose `spec.selector`
//! matches its labels. Two or more matches are refused rather than guessed.
//!
//! The patch adds only: it never removes or replaces anything the pod already has, and it is
//! written by hand rather than diffed from a rebuilt Pod, because the API server applies it to
//! the Pod as it was sent, which may carry fields this build's Pod type does not know about; an
//! array diff would shift such fields onto the wrong element.

use std::borrow::Borrow;
use std::fmt;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde_json::Value;

use super::sidecar;
use crate::api::RealtimeCluster;
use crate::names::{CONFIG_HASH_ANNOTATION, SIDECAR_CONTAINER};

pub use super::settings::InjectSettings;
pub use crate::names::{CLUSTER_LABEL, INJECT_ANNOTATION, INJECTED_BY_ANNOTATION};

/// Why a selected Pod was not injected; each is reported as an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    OptedOut,
    AlreadyInjected,
    HostNetwork,
    OperatorNamespace,
    AmbiguousClusters(Vec<String>),
    UnknownCluster(String),
}

impl SkipReason {
    /// The Event's `reason`: CamelCase, stable, one per variant.
    pub fn reason(&self) -> &'static str {
        match self {
            SkipReason::OptedOut => "InjectionDisabled",
            SkipReason::AlreadyInjected => "AlreadyInjected",
            SkipReason::HostNetwork => "HostNetwork",
            SkipReason::OperatorNamespace => "OperatorNamespace",
            SkipReason::AmbiguousClusters(_) => "AmbiguousClusters",
            SkipReason::UnknownCluster(_) => "UnknownCluster",
        }
    }
}

/// The Event's message: what happened and what to do about it.
impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::OptedOut => write!(
                f,
                "sidecar not injected: the pod is annotated {INJECT_ANNOTATION}: \"false\""
            ),
            SkipReason::AlreadyInjected => write!(
                f,
                "sidecar not injected: the pod already has a container named {SIDECAR_CONTAINER}"
            ),
            SkipReason::HostNetwork => write!(
                f,
                "sidecar not injected: the pod uses hostNetwork, where the sidecar's loopback \
                 listener would be the node's; run the socket server without hostNetwork"
            ),
            SkipReason::OperatorNamespace => write!(
                f,
                "sidecar not injected: pods in the operator's own namespace are never injected; \
                 run the socket server in another namespace"
            ),
            SkipReason::AmbiguousClusters(names) => write!(
                f,
                "sidecar not injected: the selectors of several RealtimeClusters match the pod \
                 ({}); label the pod {CLUSTER_LABEL}=<name> to pick one, or narrow the selectors",
                names.join(", ")
            ),
            SkipReason::UnknownCluster(name) => write!(
                f,
                "sidecar not injected: the pod's label {CLUSTER_LABEL}={name} names no \
                 RealtimeCluster in its namespace; create it or fix the label"
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// No RealtimeCluster wants this pod: admit it unchanged, say nothing.
    NotSelected,
    /// A pod that asked for injection (by selector or label) and did not get it; `cluster` is
    /// the RealtimeCluster it belongs to, when there is exactly one.
    Skip {
        cluster: Option<String>,
        reason: SkipReason,
    },
    Inject {
        cluster: String,
        patch: json_patch::Patch,
    },
}

/// Decides what happens to `pod`, being created in `namespace`. `clusters` may hold clusters of
/// any namespace (only `namespace`'s count); `config_hash` is
/// [`config_hash`](crate::controller::sidecar_config::config_hash) of the chosen cluster's
/// sidecar ConfigMap, when it exists. A pod without a spec is left to the API server's
/// validation, which refuses it.
pub fn mutate<C: Borrow<RealtimeCluster>>(
    pod: &Pod,
    namespace: &str,
    clusters: &[C],
    settings: &InjectSettings,
    config_hash: Option<&str>,
) -> Decision {
    let rtc = match select(pod, namespace, clusters) {
        Ok(Some(rtc)) => rtc,
        Ok(None) => return Decision::NotSelected,
        Err(reason) => {
            return Decision::Skip {
                cluster: None,
                reason,
            };
        }
    };
    let Some(spec) = pod.spec.as_ref() else {
        return Decision::NotSelected;
    };
    let cluster = rtc.name_any();
    if let Some(reason) = skip_reason(pod, spec, namespace, settings) {
        return Decision::Skip {
            cluster: Some(cluster),
            reason,
        };
    }
    let patch = injection_patch(pod, spec, rtc, settings, config_hash);
    Decision::Inject { cluster, patch }
}

/// The RealtimeCluster `pod` belongs to, if any (the same choice [`mutate`] makes), so the
/// caller can look up that cluster's ConfigMap hash before deciding. Clusters of other
/// namespaces and clusters being deleted (their ConfigMap is about to be collected, which would
/// keep the pod from starting) do not count.
pub fn select<'a, C: Borrow<RealtimeCluster>>(
    pod: &Pod,
    namespace: &str,
    clusters: &'a [C],
) -> Result<Option<&'a RealtimeCluster>, SkipReason> {
    let mut candidates = clusters
        .iter()
        .map(Borrow::borrow)
        .filter(|rtc: &&RealtimeCluster| {
            rtc.metadata.namespace.as_deref() == Some(namespace)
                && rtc.metadata.deletion_timestamp.is_none()
        });
    let labels = pod.labels();
    if let Some(name) = labels.get(CLUSTER_LABEL) {
        return candidates
            .find(|rtc| rtc.metadata.name.as_deref() == Some(name.as_str()))
            .map(Some)
            .ok_or_else(|| SkipReason::UnknownCluster(name.clone()));
    }
    let mut selecting: Vec<&RealtimeCluster> = candidates
        .filter(|rtc| selects(&rtc.spec.selector, labels))
        .collect();
    if selecting.len() > 1 {
        let mut names: Vec<String> = selecting.iter().map(|rtc| rtc.name_any()).collect();
        names.sort();
        names.dedup();
        return Err(SkipReason::AmbiguousClusters(names));
    }
    Ok(selecting.pop())
}

/// Whether `selector` matches `labels`. An empty selector selects nothing here, although
/// Kubernetes reads it as "everything": the CRD refuses one, and should one get through anyway,
/// injecting every pod of the namespace is the worse mistake. So does one that does not parse.
fn selects(selector: &LabelSelector, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    !empty && Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// Why a pod that belongs to a cluster must still not be injected.
fn skip_reason(
    pod: &Pod,
    spec: &PodSpec,
    namespace: &str,
    settings: &InjectSettings,
) -> Option<SkipReason> {
    if namespace == settings.operator_namespace {
        return Some(SkipReason::OperatorNamespace);
    }
    let opted_out = pod
        .annotations()
        .get(INJECT_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    if opted_out {
        return Some(SkipReason::OptedOut);
    }
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_CONTAINER);
    if has_sidecar {
        return Some(SkipReason::AlreadyInjected);
    }
    if spec.host_network == Some(true) {
        return Some(SkipReason::HostNetwork);
    }
    None
}

/// The JSON patch injecting `rtc`'s sidecar into `pod`: `add` operations only, each valid on the
/// pod as sent (a missing `env`, `initContainers` or `annotations` is added whole).
fn injection_patch(
    pod: &Pod,
    spec: &PodSpec,
    rtc: &RealtimeCluster,
    settings: &InjectSettings,
    config_hash: Option<&str>,
) -> Patch {
    let mut ops = Vec::new();

    // Application containers first: their indexes are the pod's as sent, before the sidecar
    // may be appended after them.
    let wanted = sidecar::app_env(rtc);
    for (index, container) in spec.containers.iter().enumerate() {
        let missing = sidecar::missing_env(container, &wanted);
        if missing.is_empty() {
            continue;
        }
        let index = index.to_string();
        let env = ["spec", "containers", index.as_str(), "env"];
        if container.env.is_none() {
            ops.push(add(&env, json(&missing)));
        } else {
            for var in &missing {
                ops.push(add(&[&env[..], &["-"]].concat(), json(var)));
            }
        }
    }

    // The Secrets the sidecar mounts: the backplane's TLS, the front's secret.
    let volumes: Vec<Value> = sidecar::volumes(rtc).iter().map(|(v, _)| json(v)).collect();
    if !volumes.is_empty() {
        if spec.volumes.is_none() {
            ops.push(add(&["spec", "volumes"], Value::Array(volumes)));
        } else {
            for v in volumes {
                ops.push(add(&["spec", "volumes", "-"], v));
            }
        }
    }

    let container = json(&sidecar::container(rtc, settings));
    if settings.native_sidecars {
        // First, so the app's own init containers (migrations, cache warmers) can use it too.
        match spec.init_containers {
            Some(_) => ops.push(add(&["spec", "initContainers", "0"], container)),
            None => ops.push(add(
                &["spec", "initContainers"],
                Value::Array(vec![container]),
            )),
        }
    } else {
        ops.push(add(&["spec", "containers", "-"], container));
    }

    let mut annotations = vec![(INJECTED_BY_ANNOTATION, rtc.name_any())];
    if let Some(hash) = config_hash {
        annotations.push((CONFIG_HASH_ANNOTATION, hash.to_owned()));
    }
    if pod.metadata.annotations.is_none() {
        let map = annotations
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        ops.push(add(&["metadata", "annotations"], Value::Object(map)));
    } else {
        for (key, value) in annotations {
            ops.push(add(&["metadata", "annotations", key], Value::String(value)));
        }
    }

    Patch(ops)
}

/// An `add` at the path made of `tokens` (escaped here: annotation keys contain `/`).
fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

/// Kubernetes types always serialize; `Null` would be refused by the API server, never admitted.
fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}
