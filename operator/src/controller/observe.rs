//! The `observe` stage: pure functions from what the API server returned (the applied children,
//! the external backplane's Secret, the selected pods from the Controller's cache) to what the
//! status needs ([`Observed`]). No client: the reconcile does the reads and hands them over.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use super::apply::{Applied, Route};
use super::status::{self, Observed, ShardReadiness};
use super::validate;
use crate::api::{PodCounts, RealtimeCluster};
use crate::names::CONFIG_HASH_ANNOTATION;
pub use crate::names::SIDECAR_CONTAINER;

/// The backplane's state for the status, and the upstream URL (without a password) the sidecar
/// ConfigMap gets, when there is a usable one.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub backplane: status::Backplane,
    pub upstream: Option<String>,
    /// What is wrong with the TLS Secret the user brings for a managed backplane
    /// ([`backplane_tls::check`](super::backplane_tls::check)); it outranks the shards'
    /// readiness, since the sidecars cannot verify Redis while it stands.
    pub tls_problem: Option<super::backplane_tls::SecretProblem>,
}

/// The external-Secret decision: `secret` is what the API server returned for
/// `spec.backplane.external.urlSecretRef.name` (`None`: it does not exist). For a managed
/// backplane the URL is the operator's own and the Secret is not consulted; its readiness comes
/// from the applied StatefulSets ([`observe`]).
pub fn resolve_backplane(rtc: &RealtimeCluster, secret: Option<&Secret>) -> Resolved {
    let Some(external) = &rtc.spec.backplane.external else {
        return Resolved {
            backplane: status::Backplane::Managed(Vec::new()),
            upstream: super::backplane::upstream_url(rtc),
            tls_problem: None,
        };
    };
    let reference = &external.url_secret_ref;
    let (backplane, upstream) = match secret.map(|s| secret_value(s, &reference.key)) {
        None => (
            status::Backplane::SecretMissing {
                secret: reference.name.clone(),
            },
            None,
        ),
        Some(None) => (
            status::Backplane::SecretKeyMissing {
                secret: reference.name.clone(),
                key: reference.key.clone(),
            },
            None,
        ),
        Some(Some(url)) => match validate::external_url(rtc, &url) {
            Ok(redacted) => (
                status::Backplane::External {
                    url: redacted.clone(),
                },
                Some(redacted),
            ),
            Err(e) => (status::Backplane::InvalidUrl(e.to_string()), None),
        },
    };
    Resolved {
        backplane,
        upstream,
        tls_problem: None,
    }
}

/// Everything the status reports, from the applied set, the resolved backplane and the pods
/// (any pods: those `spec.selector` does not select in `rtc`'s namespace are ignored here).
pub fn observe(
    rtc: &RealtimeCluster,
    resolved: &Resolved,
    applied: &Applied,
    pods: &[Arc<Pod>],
) -> Observed {
    let pods = selected(rtc, pods);
    let backplane = match (&resolved.backplane, &resolved.tls_problem) {
        (status::Backplane::Managed(_), Some(problem)) => {
            status::Backplane::TlsSecret(problem.clone())
        }
        (status::Backplane::Managed(_), None) => {
            status::Backplane::Managed(applied.stateful_sets.iter().map(shard_readiness).collect())
        }
        (other, _) => other.clone(),
    };
    Observed {
        backplane,
        ingress: ingress_state(rtc, applied),
        pods: pod_counts(&pods),
        selector: selector_text(rtc),
        uninjected: uninjected(&pods),
        outdated: applied
            .config_hash
            .as_deref()
            .map(|hash| outdated(&pods, hash))
            .unwrap_or_default(),
        sidecar_not_ready: sidecar_not_ready(&pods),
        no_sidecar_ready_since: no_sidecar_ready_since(&pods),
    }
}

/// The pods of `pods` that `spec.selector` matches in `rtc`'s namespace. An unparsable
/// selector (the API server checked its syntax, `validate` the rest) selects nothing rather
/// than everything.
pub fn selected(rtc: &RealtimeCluster, pods: &[Arc<Pod>]) -> Vec<Pod> {
    let Ok(selector) = Selector::try_from(rtc.spec.selector.clone()) else {
        return Vec::new();
    };
    let namespace = rtc.namespace();
    pods.iter()
        .filter(|p| p.namespace() == namespace && selector.matches(p.labels()))
        .map(|p| (**p).clone())
        .collect()
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

/// `spec.selector` as `kubectl get pods -l` would take it, for messages.
pub fn selector_text(rtc: &RealtimeCluster) -> String {
    Selector::try_from(rtc.spec.selector.clone())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// The route into the app: the applied Ingress or HTTPRoute and what it is waiting for.
fn ingress_state(rtc: &RealtimeCluster, applied: &Applied) -> status::Ingress {
    if let Some(ingress) = &applied.ingress {
        return status::Ingress::Applied {
            kind: "Ingress",
            name: ingress.name_any(),
            address: ingress_address(ingress),
            waiting: match ingress
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref())
            {
                Some(class) => format!(
                    "no address published; is an ingress controller for class {class} running?"
                ),
                None => "no address published; is there a default IngressClass and its controller?"
                    .into(),
            },
        };
    }
    match &applied.route {
        Route::NotRequested => status::Ingress::NotRequested,
        Route::GatewayApiMissing => status::Ingress::GatewayApiMissing,
        Route::SessionPersistenceUnsupported { name } => {
            status::Ingress::SessionPersistenceUnsupported { name: name.clone() }
        }
        Route::Applied(route) => status::Ingress::Applied {
            kind: "HTTPRoute",
            name: route.name_any(),
            address: route_acceptance(route),
            waiting: format!(
                "no parent Gateway has accepted it; is the Gateway's controller running, and does its listener allow routes from namespace {}?",
                rtc.namespace().unwrap_or_default()
            ),
        },
    }
}

fn live(pods: &[Pod]) -> impl Iterator<Item = &Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
}

/// Names of the live injected pods whose sidecar container runs but is not ready (its `/readyz`
/// answers 503: the backplane link is down, or the app in the pod stopped listening), sorted.
/// A sidecar that has not started yet is not judged: the pod is still starting.
pub fn sidecar_not_ready(pods: &[Pod]) -> Vec<String> {
    let mut names: Vec<String> = live(pods)
        .filter(|p| injected(p))
        .filter(|p| {
            sidecar_status(p)
                .is_some_and(|c| !c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
        .map(|p| p.name_any())
        .collect();
    names.sort();
    names
}

/// When every live injected pod's sidecar is running and none is ready: the latest of their
/// start times. `None` when one is ready, one is not running (starting, restarting: too early to
/// judge), or there is none.
pub fn no_sidecar_ready_since(pods: &[Pod]) -> Option<Timestamp> {
    let mut latest: Option<Timestamp> = None;
    for pod in live(pods).filter(|p| injected(p)) {
        let sidecar = sidecar_status(pod)?;
        if sidecar.ready {
            return None;
        }
        let running = sidecar.state.as_ref()?.running.as_ref()?;
        let started = running.started_at.as_ref()?.0;
        latest = Some(latest.map_or(started, |l| l.max(started)));
    }
    latest
}

/// The sidecar's container status: an init container (native sidecar) or a plain one.
fn sidecar_status(pod: &Pod) -> Option<&ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == SIDECAR_CONTAINER)
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

/// A shard's readiness from its StatefulSet as the API server returned it.
pub fn shard_readiness(set: &StatefulSet) -> ShardReadiness {
    let desired = set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = set
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    ShardReadiness {
        name: set.name_any(),
        ready,
        desired,
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::controller::status::{Backplane, Ingress as IngressState};

    const MINIMAL: &str = include_str!("../../tests/fixtures/minimal.yaml");
    const EXTERNAL: &str = include_str!("../../tests/fixtures/external.yaml");
    const PODS: &str = include_str!("../../tests/fixtures/pods.yaml");

    fn rtc(yaml: &str) -> RealtimeCluster {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn pods() -> Vec<Arc<Pod>> {
        let pods: Vec<Pod> = serde_yaml::from_str(PODS).unwrap();
        pods.into_iter().map(Arc::new).collect()
    }

    fn secret(key: &str, value: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    #[test]
    fn pods_are_sorted_into_what_the_status_names() {
        let rtc = rtc(MINIMAL);
        let applied = Applied {
            config_hash: Some("CURRENT".into()),
            ..Applied::default()
        };
        let resolved = resolve_backplane(&rtc, None);
        let observed = observe(&rtc, &resolved, &applied, &pods());
        // Not counted: the pod being deleted, the other namespace's, the other app's.
        assert_eq!(
            observed.pods,
            PodCounts {
                matched: 5,
                injected: 4,
                ready: 2
            }
        );
        assert_eq!(observed.uninjected, ["chat-bare"]);
        assert_eq!(observed.outdated, ["chat-old"]);
        // Running but failing its readiness probe; a sidecar still starting is not judged.
        assert_eq!(observed.sidecar_not_ready, ["chat-deaf"]);
        // Some sidecars are ready: the backplane is reachable.
        assert_eq!(observed.no_sidecar_ready_since, None);
        assert_eq!(observed.selector, "app=chat");
        assert_eq!(observed.ingress, IngressState::NotRequested);
    }

    #[test]
    fn no_sidecar_ready_since_the_last_of_them_started() {
        let pod = |name: &str, state: &str, ready: bool| -> Pod {
            serde_yaml::from_str(&format!(
                "metadata: {{ name: {name} }}\nspec:\n  initContainers: [{{ name: switchboard-sidecar, image: s, restartPolicy: Always }}]\n  containers: [{{ name: app, image: a }}]\nstatus:\n  initContainerStatuses: [{{ name: switchboard-sidecar, ready: {ready}, restartCount: 0, image: s, imageID: '', state: {state} }}]"
            ))
            .unwrap()
        };
        let at = |t: &str| format!("{{ running: {{ startedAt: '{t}' }} }}");
        let (early, late) = ("2026-12-01T10:00:00Z", "2026-12-01T10:00:20Z");
        let stuck = [pod("a", &at(early), false), pod("b", &at(late), false)];
        assert_eq!(no_sidecar_ready_since(&stuck), Some(late.parse().unwrap()));
        let one_ready = [pod("a", &at(early), false), pod("b", &at(late), true)];
        assert_eq!(no_sidecar_ready_since(&one_ready), None);
        let one_starting = [
            pod("a", &at(early), false),
            pod("b", "{ waiting: { reason: PodInitializing } }", false),
        ];
        assert_eq!(no_sidecar_ready_since(&one_starting), None);
        assert_eq!(no_sidecar_ready_since(&[]), None);
    }

    #[test]
    fn a_managed_backplane_is_as_ready_as_its_applied_stateful_sets() {
        let rtc = rtc(MINIMAL);
        let resolved = resolve_backplane(&rtc, None);
        assert_eq!(
            resolved.upstream.as_deref(),
            Some("rediss://chat-redis-0.apps.svc:6379")
        );
        let set: StatefulSet = serde_yaml::from_str(
            "metadata: { name: chat-redis-0 }\nspec: { replicas: 3, selector: {}, template: {}, serviceName: x }\nstatus: { replicas: 3, readyReplicas: 2 }",
        )
        .unwrap();
        let applied = Applied {
            stateful_sets: vec![set],
            ..Applied::default()
        };
        let observed = observe(&rtc, &resolved, &applied, &[]);
        assert_eq!(
            observed.backplane,
            Backplane::Managed(vec![ShardReadiness {
                name: "chat-redis-0".into(),
                ready: 2,
                desired: 3
            }])
        );
    }

    #[test]
    fn the_external_secret_decision() {
        let rtc = rtc(EXTERNAL);
        let missing = resolve_backplane(&rtc, None);
        assert_eq!(
            missing.backplane,
            Backplane::SecretMissing {
                secret: "shared-redis".into()
            }
        );
        assert_eq!(missing.upstream, None);

        let no_key = resolve_backplane(&rtc, Some(&secret("other", "redis://x:6379")));
        assert_eq!(
            no_key.backplane,
            Backplane::SecretKeyMissing {
                secret: "shared-redis".into(),
                key: "url".into()
            }
        );

        let bad = resolve_backplane(&rtc, Some(&secret("url", "http://x:6379")));
        assert!(matches!(bad.backplane, Backplane::InvalidUrl(ref m) if m.contains("rediss")));
        assert_eq!(bad.upstream, None);

        let good = resolve_backplane(
            &rtc,
            Some(&secret("url", "redis://:hunter2@redis.example:6379")),
        );
        assert_eq!(
            good.backplane,
            Backplane::External {
                url: "redis://redis.example:6379".into()
            }
        );
        assert_eq!(good.upstream.as_deref(), Some("redis://redis.example:6379"));
    }
}
