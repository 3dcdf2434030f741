//! The `apply` stage: the whole [`Desired`] set of one RealtimeCluster, applied and pruned here
//! and nowhere else.
//!
//! Apply is server-side apply under one field manager: it sends the whole desired object each
//! time, the API server compares it with what this field manager last applied and writes nothing
//! when they are equal, so an unchanged Ingress is never rewritten (each rewrite makes
//! ingress-nginx reload and drop WebSockets) and a reconcile that finds everything in place costs
//! no writes.
//!
//! Prune reads the Controller's caches ([`Stores`], kept by the same watches that trigger
//! reconciles) instead of listing each kind on every reconcile: a child the RealtimeCluster owns
//! (controller ownerReference with its uid) that the set does not name is deleted. A cache may
//! lag: a child deleted a moment ago may still be listed (its delete answers 404, which is
//! fine), and one created a moment ago may be missing (it is in the set, so it is kept anyway).
//! Adding an owned kind is a field in [`Desired`], a store in [`Stores`] (and its watch in
//! `run`), and one `prune` line in [`Applier::apply`].
//!
//! The Gateway API is optional in a cluster and not watched (its CRDs may arrive after the
//! operator started, and watching it would need a permission the chart does not grant), so
//! HTTPRoutes are pruned by listing, but only when the wanted set of routes changed since this
//! process last confirmed it ([`RoutesSeen`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams,
};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::Desired;
use super::{ingress, sidecar_config};
use crate::api::RealtimeCluster;
use crate::error::{Error, Result};
use crate::names::{FIELD_MANAGER, INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL};

/// The Controller's caches of what the operator owns (metadata only: prune needs names and
/// ownerReferences, and metadata keeps the operator's memory flat at thousands of clusters),
/// plus the full pods, which `observe` reads.
#[derive(Clone)]
pub struct Stores {
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub stateful_sets: Store<PartialObjectMeta<StatefulSet>>,
    pub disruption_budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub ingresses: Store<PartialObjectMeta<Ingress>>,
    pub pods: Store<Pod>,
}

impl Stores {
    /// Waits until every cache holds its first full list, so the first reconciles do not prune
    /// from, or count pods in, an empty cache.
    pub async fn ready(&self) {
        let _ = futures::join!(
            self.secrets.wait_until_ready(),
            self.services.wait_until_ready(),
            self.stateful_sets.wait_until_ready(),
            self.disruption_budgets.wait_until_ready(),
            self.config_maps.wait_until_ready(),
            self.ingresses.wait_until_ready(),
            self.pods.wait_until_ready(),
        );
    }
}

/// What the API server returned for the applied set: what `observe` turns into status.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// The StatefulSets with their status, in shard order.
    pub stateful_sets: Vec<StatefulSet>,
    /// [`sidecar_config::config_hash`] of the ConfigMap written, when one was.
    pub config_hash: Option<String>,
    pub ingress: Option<Ingress>,
    pub route: Route,
}

/// How applying the HTTPRoute went.
#[derive(Clone, Debug, Default)]
pub enum Route {
    #[default]
    NotRequested,
    Applied(Box<DynamicObject>),
    /// The cluster has no Gateway API CRDs.
    GatewayApiMissing,
    /// The installed HTTPRoute CRD has no `sessionPersistence` (standard channel); not applied.
    SessionPersistenceUnsupported {
        name: String,
    },
}

/// The HTTPRoute names this process last confirmed each RealtimeCluster (by uid) owns: a route
/// set that did not change since needs no listing to prune.
#[derive(Default)]
pub struct RoutesSeen(Mutex<HashMap<String, Vec<String>>>);

impl RoutesSeen {
    fn unchanged(&self, uid: &str, wanted: &[String]) -> bool {
        let seen = self.0.lock().expect("routes lock poisoned");
        seen.get(uid).is_some_and(|names| names == wanted)
    }

    fn confirm(&self, uid: &str, wanted: Vec<String>) {
        let mut seen = self.0.lock().expect("routes lock poisoned");
        seen.insert(uid.to_owned(), wanted);
    }

    /// Forgets a RealtimeCluster that is gone.
    pub fn forget(&self, uid: &str) {
        self.0.lock().expect("routes lock poisoned").remove(uid);
    }
}

/// Applies one RealtimeCluster's [`Desired`] set.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub stores: &'a Stores,
    pub routes: &'a RoutesSeen,
    pub rtc: &'a RealtimeCluster,
}

impl Applier<'_> {
    /// Applies every child of `desired`, then deletes every owned child it does not name.
    pub async fn apply(&self, desired: &Desired) -> Result<Applied> {
        for secret in &desired.secrets {
            self.create_once(secret).await?;
        }
        for service in &desired.services {
            apply(self.client, service).await?;
        }
        // Budgets before the StatefulSets: a Redis pod is never up without its budget.
        for budget in &desired.disruption_budgets {
            apply(self.client, budget).await?;
        }
        let mut applied = Applied::default();
        for set in &desired.stateful_sets {
            applied.stateful_sets.push(apply(self.client, set).await?);
        }
        if let Some(config_map) = &desired.sidecar_config {
            apply(self.client, config_map).await?;
            applied.config_hash = Some(sidecar_config::config_hash(config_map));
        }
        for built in &desired.ingresses {
            applied.ingress = Some(apply(self.client, built).await?);
        }
        applied.route = self.apply_routes(&desired.http_routes).await?;

        // Prune, one line per owned kind.
        self.prune(&self.stores.secrets, &desired.secrets).await?;
        self.prune(&self.stores.services, &desired.services).await?;
        self.prune(&self.stores.stateful_sets, &desired.stateful_sets)
            .await?;
        self.prune(&self.stores.disruption_budgets, &desired.disruption_budgets)
            .await?;
        if let Some(config_map) = &desired.sidecar_config {
            self.prune(&self.stores.config_maps, std::slice::from_ref(config_map))
                .await?;
        }
        self.prune(&self.stores.ingresses, &desired.ingresses)
            .await?;
        self.prune_routes(&desired.http_routes).await?;
        Ok(applied)
    }

    /// Creates `secret` unless it exists: the password is generated once and never rewritten,
    /// so a reconcile never rotates it under running Redis servers and sidecars.
    async fn create_once(&self, secret: &Secret) -> Result<()> {
        let name = secret.name_any();
        let namespace = secret.namespace().unwrap_or_default();
        let cached = self
            .stores
            .secrets
            .find(|s| s.name_any() == name && s.namespace().as_deref() == Some(&namespace));
        if cached.is_some() {
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), secret).await {
            Ok(_) => {
                tracing::info!(secret = %name, "generated the Redis password");
                Ok(())
            }
            // The cache lags, or another writer (a previous leader) created it meanwhile.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(Error::Kube {
                action: format!("creating Secret {name}"),
                source: e,
            }),
        }
    }

    /// Deletes the children of kind `K` in `store` that the RealtimeCluster owns but `keep` does
    /// not name (a shard removed, the ingress dropped from the spec). Only objects with its
    /// controller ownerReference are touched, never something a user labelled alike.
    async fn prune<K, C>(&self, store: &Store<C>, keep: &[K]) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + DeserializeOwned
            + Clone
            + Debug,
        C: Resource<DynamicType = ()> + Clone + 'static,
    {
        let keep: Vec<String> = keep.iter().map(ResourceExt::name_any).collect();
        let stale = stale(store.state().iter().map(|o| &**o), self.rtc, &keep);
        if stale.is_empty() {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(
            self.client.clone(),
            &self.rtc.namespace().unwrap_or_default(),
        );
        for name in stale {
            delete(&api, &K::kind(&()), &name).await?;
        }
        Ok(())
    }

    /// Applies `routes` (at most one: `<rtc>-app`). The Gateway API is optional in a cluster:
    /// when its CRDs are absent the API server answers 404, which becomes a condition telling the
    /// user to install them.
    async fn apply_routes(&self, routes: &[DynamicObject]) -> Result<Route> {
        let Some(route) = routes.first() else {
            return Ok(Route::NotRequested);
        };
        let name = route.name_any();
        match self
            .routes_api()
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(route),
            )
            .await
        {
            Ok(applied) => Ok(Route::Applied(Box::new(applied))),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Route::GatewayApiMissing),
            // Server-side apply refuses fields the CRD's schema lacks (instead of pruning them as
            // a create would): the standard-channel CRDs have no sessionPersistence. A route
            // without it would not pin clients, so none is applied.
            Err(kube::Error::Api(s))
                if s.message.contains("sessionPersistence")
                    && s.message.contains("not declared in schema") =>
            {
                Ok(Route::SessionPersistenceUnsupported { name })
            }
            Err(e) => Err(Error::Kube {
                action: format!("applying HTTPRoute {name}"),
                source: e,
            }),
        }
    }

    /// Prunes HTTPRoutes by listing, when the wanted set changed since it was last confirmed.
    async fn prune_routes(&self, routes: &[DynamicObject]) -> Result<()> {
        let uid = self.rtc.uid().unwrap_or_default();
        let keep: Vec<String> = routes.iter().map(ResourceExt::name_any).collect();
        if self.routes.unchanged(&uid, &keep) {
            return Ok(());
        }
        let api = self.routes_api();
        let selector = format!(
            "{INSTANCE_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}",
            self.rtc.name_any()
        );
        let listed = match api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
        {
            Ok(listed) => listed.items,
            // No Gateway API CRDs: nothing to prune.
            Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
            Err(e) => {
                return Err(Error::Kube {
                    action: "listing HTTPRoutes to prune".into(),
                    source: e,
                });
            }
        };
        for name in stale(&listed, self.rtc, &keep) {
            delete(&api, "HTTPRoute", &name).await?;
        }
        self.routes.confirm(&uid, keep);
        Ok(())
    }

    fn routes_api(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.rtc.namespace().unwrap_or_default(),
            &ingress::http_route_resource(),
        )
    }
}

/// Names of the objects in `objects` that `rtc` controls (same namespace, its uid as the
/// controller ownerReference) and `keep` does not name, sorted. Pure.
pub fn stale<'a, C: Resource + 'a>(
    objects: impl IntoIterator<Item = &'a C>,
    rtc: &RealtimeCluster,
    keep: &[String],
) -> Vec<String> {
    let uid = rtc.uid().unwrap_or_default();
    let namespace = rtc.namespace();
    let mut names: Vec<String> = objects
        .into_iter()
        .filter(|o| o.meta().namespace == namespace)
        .filter(|o| {
            o.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.controller == Some(true) && r.uid == uid)
        })
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .filter(|name| !keep.contains(name))
        .collect();
    names.sort();
    names
}

async fn delete<K>(api: &Api<K>, kind: &str, name: &str) -> Result<()>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    tracing::info!(%kind, %name, "deleting a child the spec no longer asks for");
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        // Already gone: the cache had not caught up.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            action: format!("deleting {kind} {name}"),
            source: e,
        }),
    }
}

/// Applies `object` in its namespace and returns what the API server stored (with its status).
pub async fn apply<K>(client: &Client, object: &K) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
    // `force`: this operator owns these objects; a field someone changed by hand is taken back.
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(Error::kube(format!("applying {} {name}", K::kind(&()))))
}
