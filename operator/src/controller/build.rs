//! The `build` stage: every child one RealtimeCluster should have, as one value.
//!
//! Pure: the RealtimeCluster plus what `observe` resolved (the backplane's upstream URL, when
//! there is a usable one) and a freshly generated password (used only if the password Secret
//! does not exist yet; the applier never rewrites it). The per-kind builders are in
//! [`backplane`](super::backplane), [`sidecar_config`](super::sidecar_config) and
//! [`ingress`](super::ingress); this module only gathers them, so the applier can apply the whole
//! set and prune, per kind, whatever the set does not name.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::DynamicObject;

use super::{backplane, backplane_tls, ingress, peers, sidecar_config};
use crate::api::RealtimeCluster;
use crate::names::TLS_FINGERPRINT_ANNOTATION;

/// The desired children of one RealtimeCluster. For each kind, whatever the RealtimeCluster owns
/// and this set does not name is deleted by the applier, except where a field says otherwise.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Created when absent, never updated: the managed Redis' password and its TLS material.
    pub secrets: Vec<Secret>,
    /// Per shard a headless and a client Service, then the app's Service (with `spec.ingress`).
    pub services: Vec<Service>,
    /// One per managed shard, in shard order.
    pub stateful_sets: Vec<StatefulSet>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    /// The sidecar's ConfigMap; `None` while the backplane has no usable URL (an external Secret
    /// missing or wrong), and then the existing one is left as it is: pods started meanwhile keep
    /// the last good configuration instead of none.
    pub sidecar_config: Option<ConfigMap>,
    pub ingresses: Vec<Ingress>,
    /// Gateway API HTTPRoutes (dynamic: k8s-openapi has no Gateway API types).
    pub http_routes: Vec<DynamicObject>,
    /// The guard of the sidecars' peer port (session routing).
    pub network_policies: Vec<NetworkPolicy>,
}

/// What the reconcile has for the managed backplane's TLS.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsInputs<'a> {
    /// The certificates to create the issued TLS Secret with if it does not exist yet (`None`
    /// when it exists, or when the user brings the Secret).
    pub issue: Option<&'a backplane_tls::Material>,
    /// The fingerprint of a brought Secret that [`backplane_tls::check`] accepted.
    pub fingerprint: Option<&'a str>,
}

/// Everything `rtc` should own. `upstream` is the backplane's URL without a password (managed:
/// [`backplane::upstream_url`]; external: what `observe` resolved from the Secret, or `None`);
/// `password` and `front_secret` are what to create the password Secret and the front's Secret
/// with if they do not exist yet.
pub fn build(
    rtc: &RealtimeCluster,
    upstream: Option<&str>,
    password: &str,
    front_secret: &str,
    tls: TlsInputs<'_>,
) -> Desired {
    let mut desired = Desired::default();
    if rtc.spec.backplane.external.is_none() && rtc.spec.backplane.managed.is_some() {
        desired
            .secrets
            .push(backplane::password_secret(rtc, password));
    }
    if rtc.spec.session_routing() {
        desired
            .secrets
            .push(sidecar_config::front_secret(rtc, front_secret));
    }
    if backplane_tls::issued(rtc) {
        desired.secrets.push(backplane_tls::secret(rtc, tls.issue));
    }
    for shard in backplane::shards(rtc) {
        desired
            .services
            .extend([shard.headless_service, shard.service]);
        let mut stateful_set = shard.stateful_set;
        if let Some(fingerprint) = tls.fingerprint {
            annotate_pods(&mut stateful_set, TLS_FINGERPRINT_ANNOTATION, fingerprint);
        }
        desired.stateful_sets.push(stateful_set);
        desired.disruption_budgets.push(shard.disruption_budget);
    }
    desired.sidecar_config = upstream.map(|url| sidecar_config::config_map(rtc, url));
    desired.services.extend(ingress::app_service(rtc));
    desired.ingresses.extend(ingress::ingress(rtc));
    desired.http_routes.extend(ingress::http_route(rtc));
    desired.network_policies.extend(peers::network_policy(rtc));
    desired
}

/// Sets an annotation on the pods `set` creates (a change rolls them).
fn annotate_pods(set: &mut StatefulSet, key: &str, value: &str) {
    if let Some(spec) = set.spec.as_mut() {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;

    use super::*;

    fn fixture(yaml: &str) -> RealtimeCluster {
        let mut rtc: RealtimeCluster = serde_yaml::from_str(yaml).unwrap();
        rtc.metadata.uid = Some("uid-1".into());
        rtc
    }

    /// `build` with the generated secrets and TLS inputs tests do not look at.
    fn built(rtc: &RealtimeCluster, upstream: Option<&str>) -> Desired {
        build(
            rtc,
            upstream,
            "pw",
            "front-secret-for-tests",
            TlsInputs::default(),
        )
    }

    fn names<K: kube::Resource>(objects: &[K]) -> Vec<String> {
        objects.iter().map(|o| o.name_any()).collect()
    }

    #[test]
    fn a_full_managed_cluster_is_one_set() {
        let rtc = fixture(include_str!("../../tests/fixtures/full.yaml"));
        let upstream = backplane::upstream_url(&rtc).unwrap();
        let desired = built(&rtc, Some(&upstream));
        let shards = rtc.spec.backplane.managed.as_ref().unwrap().shards as usize;
        assert_eq!(desired.stateful_sets.len(), shards);
        assert_eq!(desired.disruption_budgets.len(), shards);
        // Two Services per shard, plus the app's.
        assert_eq!(desired.services.len(), 2 * shards + 1);
        assert_eq!(
            names(&desired.secrets),
            [
                format!("{}-redis-auth", rtc.name_any()),
                format!("{}-redis-tls", rtc.name_any())
            ]
        );
        assert_eq!(
            desired.sidecar_config.as_ref().map(|c| c.name_any()),
            Some(format!("{}-sidecar", rtc.name_any()))
        );
        // Everything is owned by the RealtimeCluster: pruning and garbage collection rely on it.
        let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            meta.owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == "uid-1" && o.controller == Some(true))
        };
        assert!(desired.services.iter().all(|s| owned(&s.metadata)));
        assert!(desired.stateful_sets.iter().all(|s| owned(&s.metadata)));
        assert!(desired.secrets.iter().all(|s| owned(&s.metadata)));
    }

    #[test]
    fn an_external_backplane_has_no_redis_and_keeps_the_config_map_without_a_url() {
        let rtc = fixture(include_str!("../../tests/fixtures/external.yaml"));
        let desired = built(&rtc, None);
        assert!(desired.secrets.is_empty());
        assert!(desired.stateful_sets.is_empty());
        assert!(desired.disruption_budgets.is_empty());
        assert_eq!(desired.sidecar_config, None);
        let with_url = built(&rtc, Some("redis://redis.example:6379"));
        let data = with_url.sidecar_config.unwrap().data.unwrap();
        assert_eq!(
            data["SWITCHBOARD_UPSTREAM_URL"],
            "redis://redis.example:6379"
        );
    }

    #[test]
    fn a_gateway_route_replaces_the_ingress() {
        let rtc = fixture(include_str!("../../tests/fixtures/gateway.yaml"));
        let desired = built(&rtc, Some("redis://x:6379"));
        assert!(desired.ingresses.is_empty());
        assert_eq!(
            names(&desired.http_routes),
            [format!("{}-app", rtc.name_any())]
        );
        let rtc = fixture(include_str!("../../tests/fixtures/traefik.yaml"));
        let desired = built(&rtc, Some("redis://x:6379"));
        assert!(desired.http_routes.is_empty());
        assert_eq!(
            names(&desired.ingresses),
            [format!("{}-app", rtc.name_any())]
        );
    }
}
