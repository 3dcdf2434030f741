//! The `update_status` stage's pure half: what was observed, turned into the conditions a user
//! reads (`kubectl get rtc`, `kubectl describe rtc`). Every `False` condition says what is missing
//! and what to do, and keeps its `lastTransitionTime` while its status does not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::backplane_tls::SecretProblem;
use crate::api::{PodCounts, RealtimeClusterStatus};

pub const READY: &str = "Ready";
pub const BACKPLANE_READY: &str = "BackplaneReady";
pub const INGRESS_READY: &str = "IngressReady";
pub const SIDECARS_READY: &str = "SidecarsReady";

/// One managed shard as its StatefulSet reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardReadiness {
    /// The StatefulSet's name.
    pub name: String,
    /// Redis servers ready.
    pub ready: i32,
    /// Redis servers wanted.
    pub desired: i32,
}

/// The backplane as the controller found it.
#[derive(Clone, Debug, PartialEq)]
pub enum Backplane {
    /// Managed shards, in shard order.
    Managed(Vec<ShardReadiness>),
    /// The external URL was read from its Secret and is well formed.
    External {
        url: String,
    },
    SecretMissing {
        secret: String,
    },
    SecretKeyMissing {
        secret: String,
        key: String,
    },
    /// The URL in the Secret is unusable; the message names the Secret and the fix.
    InvalidUrl(String),
    /// The TLS Secret brought for a managed backplane cannot be served as it is.
    TlsSecret(SecretProblem),
}

/// The route into the app as the controller found it.
#[derive(Clone, Debug, PartialEq)]
pub enum Ingress {
    NotRequested,
    /// Applied; `address` is what the ingress controller (or the Gateway) published, if anything
    /// yet, and `waiting` says what a route without one is waiting for.
    Applied {
        kind: &'static str,
        name: String,
        address: Option<String>,
        waiting: String,
    },
    /// An HTTPRoute was asked for but the cluster has no Gateway API CRDs.
    GatewayApiMissing,
    /// Cookie affinity was asked for, but the installed HTTPRoute CRD (standard channel) has no
    /// `sessionPersistence`, so the route was not applied.
    SessionPersistenceUnsupported {
        name: String,
    },
}

/// Everything `update_status` reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub backplane: Backplane,
    pub ingress: Ingress,
    pub pods: PodCounts,
    /// `spec.selector` rendered for messages, e.g. `app=chat`.
    pub selector: String,
    /// Selected pods without the sidecar, by name (sorted).
    pub uninjected: Vec<String>,
    /// Injected pods that started with an older sidecar ConfigMap, by name (sorted).
    pub outdated: Vec<String>,
    /// Injected pods whose running sidecar is not ready, by name (sorted).
    pub sidecar_not_ready: Vec<String>,
    /// When no sidecar is ready although every injected pod's sidecar runs: the latest of their
    /// start times. With an external backplane, past [`UNREACHABLE_AFTER`] that says the
    /// sidecars cannot reach it (the operator itself never dials the user's Redis).
    pub no_sidecar_ready_since: Option<Timestamp>,
}

/// How long every sidecar may stay not ready after starting before an external backplane is
/// reported unreachable: a sidecar connects within a second or two when it can, and retries
/// with backoff when it cannot.
pub const UNREACHABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// The status for `observed`, carrying over transition times from `previous`.
pub fn status(
    generation: Option<i64>,
    observed: &Observed,
    previous: Option<&RealtimeClusterStatus>,
    now: Timestamp,
) -> RealtimeClusterStatus {
    let parts = [
        backplane_condition(observed, now),
        ingress_condition(&observed.ingress),
        sidecars_condition(observed),
    ];
    let ready = match parts.iter().find(|c| c.status != "True") {
        None => draft(
            READY,
            true,
            "Ready",
            "backplane, route and sidecars are ready".into(),
        ),
        Some(failing) => draft(
            READY,
            false,
            &format!("{}NotReady", failing.type_.trim_end_matches("Ready")),
            failing.message.clone(),
        ),
    };
    let conditions = std::iter::once(ready)
        .chain(parts)
        .map(|c| settle(c, generation, previous, now))
        .collect();
    RealtimeClusterStatus {
        observed_generation: generation,
        conditions,
        pods: observed.pods,
    }
}

/// The status for a spec that cannot be built: `Ready=False, reason InvalidSpec`; the other
/// conditions keep what they last said.
pub fn invalid(
    generation: Option<i64>,
    message: String,
    previous: Option<&RealtimeClusterStatus>,
    now: Timestamp,
) -> RealtimeClusterStatus {
    let ready = settle(
        draft(READY, false, "InvalidSpec", message),
        generation,
        previous,
        now,
    );
    let mut conditions = vec![ready];
    conditions.extend(
        previous
            .into_iter()
            .flat_map(|p| p.conditions.iter())
            .filter(|c| c.type_ != READY)
            .cloned(),
    );
    RealtimeClusterStatus {
        observed_generation: generation,
        conditions,
        pods: previous.map(|p| p.pods).unwrap_or_default(),
    }
}

/// Conditions whose status or reason differ between `before` and `after`: the transitions worth
/// an Event.
pub fn transitions<'a>(
    before: Option<&RealtimeClusterStatus>,
    after: &'a RealtimeClusterStatus,
) -> Vec<&'a Condition> {
    after
        .conditions
        .iter()
        .filter(|c| {
            let old = before.and_then(|b| b.conditions.iter().find(|o| o.type_ == c.type_));
            old.is_none_or(|o| o.status != c.status || o.reason != c.reason)
        })
        .collect()
}

fn backplane_condition(observed: &Observed, now: Timestamp) -> Condition {
    match &observed.backplane {
        Backplane::Managed(shards) => {
            let waiting: Vec<String> = shards
                .iter()
                .filter(|s| s.ready < s.desired)
                .map(|s| format!("{} {}/{}", s.name, s.ready, s.desired))
                .collect();
            if waiting.is_empty() {
                let servers: i32 = shards.iter().map(|s| s.desired).sum();
                draft(
                    BACKPLANE_READY,
                    true,
                    "Ready",
                    format!("{} shard(s), {servers} Redis server(s) ready", shards.len()),
                )
            } else {
                draft(
                    BACKPLANE_READY,
                    false,
                    "Provisioning",
                    format!(
                        "waiting for Redis servers to become ready: {} (kubectl get pods -l app.kubernetes.io/component=backplane)",
                        waiting.join(", ")
                    ),
                )
            }
        }
        Backplane::External { url } => match observed.no_sidecar_ready_since {
            Some(since) if now.duration_since(since).unsigned_abs() >= UNREACHABLE_AFTER => draft(
                BACKPLANE_READY,
                false,
                "Unreachable",
                format!(
                    "no sidecar has connected to the external Redis at {url} in {}s ({} running): check that the URL in the Secret spec.backplane.external.urlSecretRef names a Redis server the pods can reach (host name, port, NetworkPolicy), and its password; each sidecar's log and its /readyz on port 9091 name the error",
                    now.duration_since(since).as_secs(),
                    observed.pods.injected
                ),
            ),
            _ => draft(
                BACKPLANE_READY,
                true,
                "External",
                format!("sidecars relay to the external Redis at {url}"),
            ),
        },
        Backplane::SecretMissing { secret } => draft(
            BACKPLANE_READY,
            false,
            "SecretNotFound",
            format!(
                "Secret {secret} (spec.backplane.external.urlSecretRef.name) does not exist in this namespace; create it with the Redis URL"
            ),
        ),
        Backplane::SecretKeyMissing { secret, key } => draft(
            BACKPLANE_READY,
            false,
            "SecretKeyNotFound",
            format!(
                "Secret {secret} has no key {key:?} (spec.backplane.external.urlSecretRef.key); add the Redis URL under that key"
            ),
        ),
        Backplane::InvalidUrl(message) => {
            draft(BACKPLANE_READY, false, "InvalidUrl", message.clone())
        }
        Backplane::TlsSecret(SecretProblem::Missing { secret }) => draft(
            BACKPLANE_READY,
            false,
            "TLSSecretNotFound",
            format!(
                "Secret {secret} (spec.backplane.managed.tlsSecretRef.name) does not exist in this namespace; the Redis pods wait for it: create it with ca.crt, tls.crt and tls.key (a cert-manager Certificate with secretName: {secret} from a CA Issuer writes all three)"
            ),
        ),
        Backplane::TlsSecret(SecretProblem::KeyMissing { secret, key }) => draft(
            BACKPLANE_READY,
            false,
            "TLSSecretKeyNotFound",
            format!(
                "Secret {secret} (spec.backplane.managed.tlsSecretRef.name) has no {key}: Redis and the sidecars need ca.crt, tls.crt and tls.key (cert-manager writes ca.crt with a CA or selfSigned Issuer, not with ACME)"
            ),
        ),
        Backplane::TlsSecret(SecretProblem::Invalid(message)) => draft(
            BACKPLANE_READY,
            false,
            "TLSCertificateInvalid",
            message.clone(),
        ),
    }
}

fn ingress_condition(ingress: &Ingress) -> Condition {
    match ingress {
        Ingress::NotRequested => draft(
            INGRESS_READY,
            true,
            "NotRequested",
            "spec.ingress is not set; no route is managed".into(),
        ),
        Ingress::Applied {
            kind,
            name,
            address: Some(address),
            ..
        } => draft(
            INGRESS_READY,
            true,
            "Admitted",
            format!("{kind} {name} is served by {address}"),
        ),
        Ingress::Applied {
            kind,
            name,
            waiting,
            ..
        } => draft(
            INGRESS_READY,
            false,
            "AwaitingAddress",
            format!("{kind} {name} is not served yet: {waiting}"),
        ),
        Ingress::SessionPersistenceUnsupported { name } => draft(
            INGRESS_READY,
            false,
            "SessionPersistenceUnsupported",
            format!(
                "HTTPRoute {name} is not applied: the installed HTTPRoute CRD has no sessionPersistence (it is the Gateway API standard channel); install the experimental channel for cookie affinity, or set spec.ingress.affinity: none for WebSocket-only clients"
            ),
        ),
        Ingress::GatewayApiMissing => draft(
            INGRESS_READY,
            false,
            "GatewayAPINotInstalled",
            "spec.ingress.gateway needs the Gateway API CRDs (HTTPRoute, gateway.networking.k8s.io/v1); install them or use spec.ingress.className".into(),
        ),
    }
}

/// At most this many pod names in a message; the count says how many more.
const NAMES_SHOWN: usize = 5;

fn sidecars_condition(observed: &Observed) -> Condition {
    let (pods, selector) = (&observed.pods, &observed.selector);
    let (ok, reason, message) = if pods.matched == 0 {
        (
            false,
            "NoPods",
            format!("no pod in this namespace matches spec.selector ({selector})"),
        )
    } else if pods.injected < pods.matched {
        (
            false,
            "SidecarsMissing",
            format!(
                "{} of {} selected pods run without the switchboard sidecar ({}); they were created while the injector was unavailable or before this RealtimeCluster existed: restart them (kubectl rollout restart deployment/<name>) so it is injected",
                pods.matched - pods.injected,
                pods.matched,
                names(&observed.uninjected)
            ),
        )
    } else if !observed.sidecar_not_ready.is_empty()
        && observed
            .sidecar_not_ready
            .iter()
            .all(|pod| observed.outdated.contains(pod))
    {
        // A change of topology (replicas 1 -> 3 puts Sentinel in front of Redis) changes the
        // address in the sidecar's ConfigMap and removes the old Service: pods started before
        // it still dial the old address until they are recreated, so restarting is the fix.
        (
            false,
            "ConfigurationOutdated",
            format!(
                "{} of {} sidecars are not ready and run with an older sidecar configuration ({}), whose backplane address may be gone; restart them (kubectl rollout restart deployment/<name>) to apply the current one",
                observed.sidecar_not_ready.len(),
                pods.injected,
                names(&observed.sidecar_not_ready)
            ),
        )
    } else if pods.ready < pods.injected && !observed.sidecar_not_ready.is_empty() {
        // The sidecar's readiness probe is the only signal the API carries from inside the pod;
        // which of its two causes it is, the pod's own /readyz says.
        (
            false,
            "SidecarsNotReady",
            format!(
                "{} of {} sidecars are ready; the sidecar in {} answers /readyz with 503: either its backplane link is down, or the app in the pod stopped listening (its Redis adapter holds none of the subscriptions spec.app.listening expects, so the pod no longer hears broadcasts); kubectl port-forward pod/<name> 9091 and curl localhost:9091/readyz says which; for a dead listener, restart the pod (kubectl delete pod <name>)",
                pods.ready,
                pods.injected,
                names(&observed.sidecar_not_ready)
            ),
        )
    } else if pods.ready < pods.injected {
        (
            false,
            "SidecarsNotReady",
            format!(
                "{} of {} sidecars are ready (a sidecar is ready once its backplane link is up)",
                pods.ready, pods.injected
            ),
        )
    } else if !observed.outdated.is_empty() {
        // The sidecar reads its configuration at start: a changed ConfigMap reaches a pod only
        // when the pod is recreated. The operator does not restart workloads it does not own.
        (
            false,
            "ConfigurationOutdated",
            format!(
                "{} of {} pods run with an older sidecar configuration ({}); restart them (kubectl rollout restart deployment/<name>) to apply the current one",
                observed.outdated.len(),
                pods.matched,
                names(&observed.outdated)
            ),
        )
    } else {
        (
            true,
            "AllReady",
            format!("{} pod(s), each with a ready sidecar", pods.matched),
        )
    };
    draft(SIDECARS_READY, ok, reason, message)
}

fn names(names: &[String]) -> String {
    let mut shown = names
        .iter()
        .take(NAMES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_SHOWN {
        shown.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    shown
}

fn draft(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Stamps the generation, and the transition time: the previous one while the status holds.
fn settle(
    mut condition: Condition,
    generation: Option<i64>,
    previous: Option<&RealtimeClusterStatus>,
    now: Timestamp,
) -> Condition {
    condition.observed_generation = generation;
    let before = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == condition.type_));
    condition.last_transition_time = match before {
        Some(b) if b.status == condition.status => b.last_transition_time.clone(),
        _ => Time(now),
    };
    condition
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed() -> Observed {
        Observed {
            backplane: Backplane::Managed(vec![ShardReadiness {
                name: "chat-redis-0".into(),
                ready: 1,
                desired: 1,
            }]),
            ingress: Ingress::NotRequested,
            pods: PodCounts {
                matched: 3,
                injected: 3,
                ready: 3,
            },
            selector: "app=chat".into(),
            uninjected: Vec::new(),
            outdated: Vec::new(),
            sidecar_not_ready: Vec::new(),
            no_sidecar_ready_since: None,
        }
    }

    fn condition<'a>(status: &'a RealtimeClusterStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn all_parts_ready_makes_ready() {
        let s = status(Some(2), &observed(), None, Timestamp::now());
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(s.conditions.len(), 4);
        assert!(s.conditions.iter().all(|c| c.status == "True"), "{s:?}");
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
    }

    #[test]
    fn ready_names_the_first_failing_part() {
        let mut o = observed();
        o.backplane = Backplane::SecretMissing {
            secret: "redis-url".into(),
        };
        let s = status(Some(1), &o, None, Timestamp::now());
        let ready = condition(&s, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "BackplaneNotReady")
        );
        assert!(ready.message.contains("Secret redis-url"), "{ready:?}");
        assert_eq!(condition(&s, BACKPLANE_READY).reason, "SecretNotFound");
    }

    #[test]
    fn pods_without_sidecars_are_counted_and_explained() {
        let mut o = observed();
        o.pods = PodCounts {
            matched: 8,
            injected: 1,
            ready: 1,
        };
        o.uninjected = (1..=7).map(|i| format!("chat-{i}")).collect();
        let s = status(Some(1), &o, None, Timestamp::now());
        let c = condition(&s, SIDECARS_READY);
        assert_eq!(c.reason, "SidecarsMissing");
        assert!(
            c.message
                .starts_with("7 of 8 selected pods run without the switchboard sidecar (chat-1, chat-2, chat-3, chat-4, chat-5 and 2 more)"),
            "{c:?}"
        );
        assert!(c.message.contains("kubectl rollout restart"));
        o.pods = PodCounts::default();
        let s = status(Some(1), &o, None, Timestamp::now());
        assert!(condition(&s, SIDECARS_READY).message.contains("app=chat"));
    }

    #[test]
    fn pods_on_an_older_configuration_are_named() {
        let mut o = observed();
        o.outdated = vec!["chat-1".into(), "chat-2".into()];
        let s = status(Some(2), &o, None, Timestamp::now());
        let c = condition(&s, SIDECARS_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ConfigurationOutdated")
        );
        assert!(
            c.message.starts_with(
                "2 of 3 pods run with an older sidecar configuration (chat-1, chat-2)"
            ),
            "{c:?}"
        );
    }

    #[test]
    fn an_external_backplane_no_sidecar_reaches_is_unreachable_after_the_grace() {
        let mut o = observed();
        o.backplane = Backplane::External {
            url: "redis://nowhere:6379".into(),
        };
        o.pods.ready = 0;
        o.sidecar_not_ready = vec!["chat-1".into(), "chat-2".into(), "chat-3".into()];
        let started = Timestamp::from_second(1_000).unwrap();
        o.no_sidecar_ready_since = Some(started);
        // Just started: the sidecars may still be connecting.
        let s = status(Some(1), &o, None, Timestamp::from_second(1_010).unwrap());
        assert_eq!(condition(&s, BACKPLANE_READY).reason, "External");
        let s = status(Some(1), &o, None, Timestamp::from_second(1_045).unwrap());
        let c = condition(&s, BACKPLANE_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Unreachable")
        );
        assert!(
            c.message.starts_with(
                "no sidecar has connected to the external Redis at redis://nowhere:6379 in 45s (3 running)"
            ),
            "{c:?}"
        );
        assert!(c.message.contains("urlSecretRef"), "{c:?}");
        assert_eq!(condition(&s, READY).reason, "BackplaneNotReady");
    }

    #[test]
    fn outdated_pods_that_lost_the_backplane_are_told_to_restart() {
        let mut o = observed();
        o.pods.ready = 1;
        o.outdated = vec!["chat-1".into(), "chat-2".into()];
        o.sidecar_not_ready = vec!["chat-1".into(), "chat-2".into()];
        let s = status(Some(2), &o, None, Timestamp::now());
        let c = condition(&s, SIDECARS_READY);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ConfigurationOutdated")
        );
        assert!(
            c.message.starts_with("2 of 3 sidecars are not ready and run with an older sidecar configuration (chat-1, chat-2)"),
            "{c:?}"
        );
        assert!(c.message.contains("kubectl rollout restart"), "{c:?}");
        // A pod on the current configuration that is not ready is a different story.
        o.sidecar_not_ready.push("chat-3".into());
        let s = status(Some(2), &o, None, Timestamp::now());
        assert_eq!(condition(&s, SIDECARS_READY).reason, "SidecarsNotReady");
    }

    #[test]
    fn transition_time_holds_while_status_holds() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = status(Some(1), &observed(), None, t0);
        let mut o = observed();
        o.pods.ready = 3;
        let same = status(Some(2), &o, Some(&first), t1);
        assert_eq!(condition(&same, READY).last_transition_time, Time(t0));
        assert!(transitions(Some(&first), &same).is_empty());

        o.pods.ready = 2;
        let changed = status(Some(2), &o, Some(&same), t1);
        assert_eq!(condition(&changed, READY).last_transition_time, Time(t1));
        let moved: Vec<&str> = transitions(Some(&same), &changed)
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(moved, [READY, SIDECARS_READY]);
    }

    #[test]
    fn invalid_spec_keeps_the_other_conditions() {
        let before = status(Some(1), &observed(), None, Timestamp::now());
        let s = invalid(
            Some(2),
            "spec.x is wrong".into(),
            Some(&before),
            Timestamp::now(),
        );
        let ready = condition(&s, READY);
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", "InvalidSpec", "spec.x is wrong")
        );
        assert_eq!(s.conditions.len(), 4);
        assert_eq!(s.pods, before.pods);
    }
}
