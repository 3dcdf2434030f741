//! The kube-runtime Controller for RealtimeClusters: what triggers a reconcile, and how it stops.
//!
//! Triggers: the RealtimeCluster itself; every child it owns (watched by the
//! `app.kubernetes.io/managed-by` label, so the operator does not cache the cluster's other
//! StatefulSets and Services); the external backplane's Secret; and the pods a selector matches
//! (their readiness feeds `status.pods`).

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::meta::MANAGED_BY;
use super::reconcile::{error_policy, reconcile};
use crate::api::RealtimeCluster;

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
/// `namespace` limits it to one namespace; `None` watches all.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let scope = Scope {
        client: client.clone(),
        namespace: namespace.map(str::to_owned),
    };
    let clusters: Api<RealtimeCluster> = scope.api();
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let controller = Controller::new(clusters, watcher::Config::default().any_semantic());
    let store = controller.store();
    let secrets_store = store.clone();
    controller
        .owns(scope.api::<StatefulSet>(), owned.clone())
        .owns(scope.api::<Service>(), owned.clone())
        .owns(scope.api::<PodDisruptionBudget>(), owned.clone())
        .owns(scope.api::<ConfigMap>(), owned.clone())
        .owns(scope.api::<Ingress>(), owned)
        .watches(
            scope.api::<Secret>(),
            watcher::Config::default(),
            move |secret| referencing_secret(&secrets_store, &secret),
        )
        .watches(scope.api::<Pod>(), watcher::Config::default(), move |pod| {
            selecting_pod(&store, &pod)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
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
    secret: &Secret,
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
