//! The kube-runtime Controller for RealtimeClusters: what triggers a reconcile, and how it stops.
//!
//! Triggers: the RealtimeCluster itself; every child it owns (watched by the
//! `app.kubernetes.io/managed-by` label, so the operator does not cache the cluster's other
//! StatefulSets and Services); the external backplane's Secret; and the pods a selector matches
//! (their readiness feeds `status.pods`).
//!
//! The same watches fill the caches ([`Stores`]) the reconciles read instead of listing: owned
//! children by metadata only (for pruning), pods in full (for the status), Secrets by metadata
//! only (a Secret's data is read from the API when an external backplane names it).

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, PartialObjectMeta};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::apply::{RoutesSeen, Stores};
use super::context::{Context, Shared};
use super::reconcile::{error_policy, reconcile};
use crate::api::RealtimeCluster;
use crate::names::{MANAGED_BY, MANAGED_BY_LABEL};

/// How long a trigger waits for the next one of the same RealtimeCluster before it reconciles.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
/// `namespace` limits it to one namespace; `None` watches all.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let scope = Scope {
        client: ctx.client.clone(),
        namespace: namespace.map(str::to_owned),
    };
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let controller = Controller::new(
        scope.api::<RealtimeCluster>(),
        watcher::Config::default().any_semantic(),
    )
    // A new cluster's children report in bursts (each Service, the StatefulSet's status as its
    // pods come up); a short debounce folds a burst into one reconcile.
    .with_config(ControllerConfig::default().debounce(DEBOUNCE));
    let clusters = controller.store();

    let (services, services_changed) = scope.owned::<Service>(&owned);
    let (stateful_sets, sets_changed) = scope.owned::<StatefulSet>(&owned);
    let (disruption_budgets, budgets_changed) = scope.owned::<PodDisruptionBudget>(&owned);
    let (config_maps, config_maps_changed) = scope.owned::<ConfigMap>(&owned);
    let (ingresses, ingresses_changed) = scope.owned::<Ingress>(&owned);
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
            pods: pods_reader,
        },
        routes: RoutesSeen::default(),
    });
    let secrets_clusters = clusters.clone();
    controller
        .owns_stream(services_changed)
        .owns_stream(sets_changed)
        .owns_stream(budgets_changed)
        .owns_stream(config_maps_changed)
        .owns_stream(ingresses_changed)
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
        let (reader, writer) = reflector::store();
        // An `Api` of `PartialObjectMeta` lists and watches metadata only.
        let stream = watcher(
            self.api::<PartialObjectMeta<K>>(),
            config.clone().any_semantic(),
        )
        .default_backoff()
        .modify(|meta| meta.managed_fields_mut().clear())
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
/// names it as the external backplane's URL.
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
                .is_some_and(|e| e.url_secret_ref.name == name);
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
