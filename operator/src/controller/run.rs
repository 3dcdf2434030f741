//! The kube-runtime Controller for RealtimeClusters: what triggers a reconcile, and how it stops.
//!
//! Triggers: the RealtimeCluster's spec (a change of its `generation`: the status this operator
//! writes, and metadata nobody reads, trigger nothing); every child it owns (watched by the
//! `app.kubernetes.io/managed-by` label, so the operator does not cache the cluster's other
//! StatefulSets and Services); the external backplane's Secret; and the pods a selector matches
//! (their readiness feeds `status.pods`).
//!
//! The same watches fill the caches ([`Stores`]) the reconciles read instead of listing: owned
//! children by metadata only (for pruning and for skipping patches that cannot change anything),
//! StatefulSets (without their pod template) and Ingresses in full (the status of a child whose
//! patch was skipped), pods in full (for the status), Secrets by metadata only (a Secret's data
//! is read from the API when an external backplane names it).

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PartialObjectMeta};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::apply::{RoutesSeen, SentChildren, Stores};
use super::context::{Context, Shared};
use super::reconcile::{error_policy, reconcile};
use crate::api::RealtimeCluster;
use crate::names::{MANAGED_BY, MANAGED_BY_LABEL};

/// How long a trigger waits for the next one of the same RealtimeCluster before it reconciles.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
/// `namespace` limits it to one namespace; `None` watches all. At most `concurrency`
/// RealtimeClusters are reconciled at once (0: no bound).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let scope = Scope {
        client: ctx.client.clone(),
        namespace: namespace.map(str::to_owned),
    };
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let (clusters, clusters_writer) = reflector::store();
    // Only spec changes: each status write of a reconcile would otherwise trigger the next one.
    let spec_changed = watcher(
        scope.api::<RealtimeCluster>(),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(clusters_writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let controller = Controller::for_stream(spec_changed, clusters.clone())
        // A new cluster's children report in bursts (each Service, the StatefulSet's status as its
        // pods come up); a short debounce folds a burst into one reconcile.
        .with_config(
            ControllerConfig::default()
                .debounce(DEBOUNCE)
                .concurrency(concurrency),
        );

    let (services, services_changed) = scope.owned::<Service>(&owned);
    let (stateful_sets, sets_changed) = scope.full::<StatefulSet>(&owned, |set| {
        // Only replicas and status are read; the pod template is most of a StatefulSet.
        if let Some(spec) = set.spec.as_mut() {
            spec.template = Default::default();
            spec.volume_claim_templates = None;
        }
    });
    let (disruption_budgets, budgets_changed) = scope.owned::<PodDisruptionBudget>(&owned);
    let (config_maps, config_maps_changed) = scope.owned::<ConfigMap>(&owned);
    let (ingresses, ingresses_changed) = scope.full::<Ingress>(&owned, |_| {});
    let (network_policies, network_policies_changed) = scope.owned::<NetworkPolicy>(&owned);
    // Every Secret's metadata: the managed password Secret is owned, an external backplane's is
    // the user's (labelled or not), and both must trigger a reconcile.
    let (secrets, secrets_changed) = scope.owned::<Secret>(&watcher::Config::default());
    let (pods_reader, pods_writer) = reflector::store();
    let pods_changed = watcher(
        scope.api::<Pod>(),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    // Who wrote which field is never read; at thousands of pods it is most of the memory.
    .modify(|pod| pod.managed_fields_mut().clear())
    .reflect(pods_writer)
    .touched_objects();

    let shared = Arc::new(Shared {
        context: ctx,
        stores: Stores {
            secrets,
            services,
            stateful_sets,
            disruption_budgets,
            config_maps,
            ingresses,
            network_policies,
            pods: pods_reader,
        },
        routes: RoutesSeen::default(),
        sent: SentChildren::default(),
    });
    let secrets_clusters = clusters.clone();
    controller
        .owns_stream(services_changed)
        .owns_stream(sets_changed)
        .owns_stream(budgets_changed)
        .owns_stream(config_maps_changed)
        .owns_stream(ingresses_changed)
        .owns_stream(network_policies_changed)
        .watches_stream(secrets_changed, move |secret| {
            referencing_secret(&secrets_clusters, &secret)
        })
        .watches_stream(pods_changed, move |pod| selecting_pod(&clusters, &pod))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, shared)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                // Reconcile errors are logged by the error policy; these are the controller's own
                // (a watch failing, an object queued twice) and are retried by kube-runtime.
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

/// Where the controller looks: one namespace or all.
struct Scope {
    client: kube::Client,
    namespace: Option<String>,
}

impl Scope {
    /// A metadata-only cache of kind `K` (what `config` selects) and the stream that keeps it
    /// and triggers reconciles.
    fn owned<K>(
        &self,
        config: &watcher::Config,
    ) -> (
        Store<PartialObjectMeta<K>>,
        impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static,
    )
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        // An `Api` of `PartialObjectMeta` lists and watches metadata only.
        self.full::<PartialObjectMeta<K>>(config, |_| {})
    }

    /// A cache of kind `K` in full (less what `strip` removes, and the managed fields) and the
    /// stream that keeps it and triggers reconciles.
    fn full<K>(
        &self,
        config: &watcher::Config,
        mut strip: impl FnMut(&mut K) + Send + 'static,
    ) -> (
        Store<K>,
        impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    )
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (reader, writer) = reflector::store();
        let stream = watcher(self.api::<K>(), config.clone().any_semantic())
            .default_backoff()
            .modify(move |object| {
                object.managed_fields_mut().clear();
                strip(object);
            })
            .reflect(writer)
            .touched_objects();
        (reader, stream)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }
}

/// The RealtimeClusters a Secret matters to: its owner (the managed password), and any that
/// names it as the external backplane's URL or as the managed backplane's TLS certificate.
fn referencing_secret(
    store: &Store<RealtimeCluster>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<RealtimeCluster>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter(|rtc| rtc.namespace() == namespace)
        .filter(|rtc| {
            let owner = secret
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == rtc.meta().uid.as_ref());
            let referenced = rtc
                .spec
                .backplane
                .external
                .as_ref()
                .is_some_and(|e| e.url_secret_ref.name == name)
                || super::backplane_tls::referenced(rtc) == Some(name.as_str());
            owner || referenced
        })
        .map(|rtc| ObjectRef::from_obj(&**rtc))
        .collect()
}

/// The RealtimeClusters whose selector matches a pod.
fn selecting_pod(store: &Store<RealtimeCluster>, pod: &Pod) -> Vec<ObjectRef<RealtimeCluster>> {
    let namespace = pod.namespace();
    let labels = pod.labels();
    store
        .state()
        .iter()
        .filter(|rtc| rtc.namespace() == namespace)
        .filter(|rtc| {
            Selector::try_from(rtc.spec.selector.clone()).is_ok_and(|s| s.matches(labels))
        })
        .map(|rtc| ObjectRef::from_obj(&**rtc))
        .collect()
}
