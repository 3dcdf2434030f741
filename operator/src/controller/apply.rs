//! The `apply` stage: the whole [`Desired`] set of one RealtimeCluster, applied and pruned here
//! and nowhere else.
//!
//! Apply is server-side apply under one field manager: it sends the whole desired object, the
//! API server compares it with what this field manager last applied and writes nothing when they
//! are equal, so an unchanged Ingress is never rewritten (each rewrite makes ingress-nginx reload
//! and drop WebSockets).
//!
//! A patch that cannot change anything is not sent at all: even a no-op server-side apply costs
//! the API server a decode, a managedFields comparison and a round trip, and at hundreds of
//! clusters those no-op patches were most of the operator's requests. The rule
//! ([`can_skip`], pure) is: a child's patch is skipped only when
//!
//! - this process applied it before ([`Sent`]) with the same hash of the desired object as sent
//!   (SHA-1 of its JSON; k8s-openapi serializes maps sorted, so the bytes are stable),
//! - the Controller's cache holds it with the uid and the *version* that apply returned: its
//!   `generation` for the kinds whose generation follows the spec (StatefulSet,
//!   PodDisruptionBudget, Ingress: their status moves all the time and must not force a patch),
//!   else its `resourceVersion` (Service, ConfigMap: any write by anyone since ours),
//! - the cached child still carries every label and annotation we set, and is not being deleted,
//! - and our last apply of it is younger than [`REAPPLY_AFTER`].
//!
//! So a child someone edits by hand (its spec, or our labels and annotations) is taken back on the
//! reconcile its watch event triggers; an edit the comparison cannot see (another metadata field
//! of a StatefulSet, budget or Ingress, e.g. its ownerReference removed) is taken back within
//! [`REAPPLY_AFTER`] (the ready resync requeues every cluster at that pace); a deleted child is missing from the cache and re-created; and a fresh process
//! (a restart, a new leader) has no [`Sent`] and applies everything once. What `observe` needs of
//! a skipped child comes from the cache: StatefulSets and Ingresses are cached in full (their
//! status), the other kinds by metadata.
//!
//! Prune reads the same caches ([`Stores`], kept by the watches that trigger reconciles) instead
//! of listing each kind on every reconcile: a child the RealtimeCluster owns (controller
//! ownerReference with its uid) that the set does not name is deleted. A cache may lag: a child
//! deleted a moment ago may still be listed (its delete answers 404, which is fine), and one
//! created a moment ago may be missing (it is in the set, so it is kept anyway). Adding an owned
//! kind is a field in [`Desired`], a store in [`Stores`] (and its watch in `run`), and one
//! `prune` line in [`Applier::apply`].
//!
//! The Gateway API is optional in a cluster and not watched (its CRDs may arrive after the
//! operator started, and watching it would need a permission the chart does not grant), so
//! HTTPRoutes are always applied, and pruned by listing, but only when the wanted set of routes
//! changed since this process last confirmed it ([`RoutesSeen`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams,
};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha1::{Digest, Sha1};

use super::build::Desired;
use super::{ingress, sidecar_config};
use crate::api::RealtimeCluster;
use crate::error::{Error, Result};
use crate::names::{FIELD_MANAGER, INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL};

/// The Controller's caches of what the operator owns: metadata only where prune and the skip
/// rule need no more (names, ownerReferences, versions, labels; metadata keeps the operator's
/// memory flat at thousands of clusters); StatefulSets (without their pod template) and Ingresses
/// in full, for the status of a child whose patch was skipped; and the full pods, which `observe`
/// reads.
#[derive(Clone)]
pub struct Stores {
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub services: Store<PartialObjectMeta<Service>>,
    /// `spec.template` and `spec.volumeClaimTemplates` emptied: `observe` reads replicas and status.
    pub stateful_sets: Store<StatefulSet>,
    pub disruption_budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub ingresses: Store<Ingress>,
    pub network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
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
            self.network_policies.wait_until_ready(),
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

/// A child applied longer ago than this is applied again even when nothing seems to have changed:
/// the bound on how long an edit [`can_skip`] cannot see survives.
pub const REAPPLY_AFTER: Duration = Duration::from_secs(300);

/// What this process last applied of one child, and what the API server answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    /// [`desired_hash`] of the object sent.
    pub hash: String,
    pub uid: String,
    /// [`version`] of the object the API server returned.
    pub version: String,
    pub at: Instant,
}

type ChildKey = (String, String, String);

/// The [`Sent`] record of every child this process applied in the last [`REAPPLY_AFTER`], by
/// kind, namespace and name.
///
/// An older record never allows a skip, so it is dropped: the map holds only what was applied
/// recently (every live child is re-applied at least that often), and the children of deleted
/// RealtimeClusters, which no reconcile visits again, leave nothing behind.
#[derive(Default)]
pub struct SentChildren(Mutex<SentMap>);

#[derive(Default)]
pub struct SentMap {
    records: HashMap<ChildKey, Sent>,
    /// The size at which the next sweep of old records runs (twice the size after the last one).
    sweep_at: usize,
}

impl SentChildren {
    fn get(&self, key: &ChildKey) -> Option<Sent> {
        self.0
            .lock()
            .expect("sent lock poisoned")
            .records
            .get(key)
            .cloned()
    }

    fn record(&self, key: ChildKey, sent: Sent) {
        let mut map = self.0.lock().expect("sent lock poisoned");
        if map.records.len() >= map.sweep_at {
            let now = sent.at;
            map.records
                .retain(|_, s| now.saturating_duration_since(s.at) < REAPPLY_AFTER);
            map.sweep_at = (map.records.len() * 2).max(1024);
        }
        map.records.insert(key, sent);
    }

    fn forget(&self, key: &ChildKey) {
        self.0
            .lock()
            .expect("sent lock poisoned")
            .records
            .remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().expect("sent lock poisoned").records.len()
    }
}

/// A stable hash of `object` as it is sent: SHA-1 of its JSON. Pure.
pub fn desired_hash<K: Serialize>(object: &K) -> String {
    let json = serde_json::to_vec(object).expect("a Kubernetes object serializes");
    Sha1::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What of a child's metadata says "someone wrote it": its `generation` for the kinds whose
/// generation counts spec changes and whose status moves on its own, else its `resourceVersion`.
/// Pure.
pub fn version(kind: &str, meta: &ObjectMeta) -> String {
    match kind {
        "StatefulSet" | "PodDisruptionBudget" | "Ingress" => {
            format!("generation {}", meta.generation.unwrap_or_default())
        }
        _ => format!(
            "resourceVersion {}",
            meta.resource_version.as_deref().unwrap_or_default()
        ),
    }
}

/// Whether the patch of a child of `kind` can be skipped (the rule in the module doc): `desired`
/// is its metadata as built, `hash` its [`desired_hash`], `cached` its metadata in the
/// Controller's cache, `sent` what this process last applied of it. Pure.
pub fn can_skip(
    kind: &str,
    desired: &ObjectMeta,
    hash: &str,
    cached: Option<&ObjectMeta>,
    sent: Option<&Sent>,
    now: Instant,
) -> bool {
    let (Some(cached), Some(sent)) = (cached, sent) else {
        return false;
    };
    let carries = |ours: &Option<BTreeMap<String, String>>,
                   theirs: &Option<BTreeMap<String, String>>| {
        ours.iter()
            .flatten()
            .all(|(k, v)| theirs.as_ref().and_then(|t| t.get(k)) == Some(v))
    };
    sent.hash == hash
        && cached.deletion_timestamp.is_none()
        && cached.uid.as_deref() == Some(sent.uid.as_str())
        && version(kind, cached) == sent.version
        && carries(&desired.labels, &cached.labels)
        && carries(&desired.annotations, &cached.annotations)
        && now.saturating_duration_since(sent.at) < REAPPLY_AFTER
}

/// A child after [`Applier::ensure`]: what the API server returned, or the cached copy when the
/// patch was skipped.
enum Ensured<K, C> {
    Applied(K),
    Unchanged(Arc<C>),
}

/// Applies one RealtimeCluster's [`Desired`] set.
pub struct Applier<'a> {
    pub client: &'a Client,
    pub stores: &'a Stores,
    pub routes: &'a RoutesSeen,
    pub sent: &'a SentChildren,
    pub rtc: &'a RealtimeCluster,
}

impl Applier<'_> {
    /// Applies every child of `desired`, then deletes every owned child it does not name.
    pub async fn apply(&self, desired: &Desired) -> Result<Applied> {
        for secret in &desired.secrets {
            self.create_once(secret).await?;
        }
        for service in &desired.services {
            self.ensure(&self.stores.services, service).await?;
        }
        // Budgets before the StatefulSets: a Redis pod is never up without its budget.
        for budget in &desired.disruption_budgets {
            self.ensure(&self.stores.disruption_budgets, budget).await?;
        }
        let mut applied = Applied::default();
        for set in &desired.stateful_sets {
            applied.stateful_sets.push(
                match self.ensure(&self.stores.stateful_sets, set).await? {
                    Ensured::Applied(set) => set,
                    Ensured::Unchanged(cached) => (*cached).clone(),
                },
            );
        }
        if let Some(config_map) = &desired.sidecar_config {
            self.ensure(&self.stores.config_maps, config_map).await?;
            applied.config_hash = Some(sidecar_config::config_hash(config_map));
        }
        for built in &desired.ingresses {
            applied.ingress = Some(match self.ensure(&self.stores.ingresses, built).await? {
                Ensured::Applied(ingress) => ingress,
                Ensured::Unchanged(cached) => (*cached).clone(),
            });
        }
        applied.route = self.apply_routes(&desired.http_routes).await?;
        for policy in &desired.network_policies {
            self.ensure(&self.stores.network_policies, policy).await?;
        }

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
        self.prune(&self.stores.network_policies, &desired.network_policies)
            .await?;
        Ok(applied)
    }

    /// Applies `object` unless [`can_skip`] says the patch cannot change anything; `store` is
    /// the Controller's cache of its kind.
    async fn ensure<K, C>(&self, store: &Store<C>, object: &K) -> Result<Ensured<K, C>>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
        C: Resource<DynamicType = ()> + Clone + 'static,
    {
        let kind = K::kind(&()).into_owned();
        let (name, namespace) = (object.name_any(), object.namespace().unwrap_or_default());
        let hash = desired_hash(object);
        let key = (kind, namespace, name);
        let cached = store.get(&ObjectRef::new(&key.2).within(&key.1));
        let sent = self.sent.get(&key);
        if let Some(cached) = cached
            && can_skip(
                &key.0,
                object.meta(),
                &hash,
                Some(cached.meta()),
                sent.as_ref(),
                Instant::now(),
            )
        {
            return Ok(Ensured::Unchanged(cached));
        }
        let applied = apply(self.client, object).await?;
        let sent = Sent {
            hash,
            uid: applied.uid().unwrap_or_default(),
            version: version(&key.0, applied.meta()),
            at: Instant::now(),
        };
        self.sent.record(key, sent);
        Ok(Ensured::Applied(applied))
    }

    /// Creates `secret` unless it exists: the password and the TLS certificate are generated
    /// once and never rewritten, so a reconcile never rotates them under running Redis servers
    /// and sidecars.
    async fn create_once(&self, secret: &Secret) -> Result<()> {
        let name = secret.name_any();
        let namespace = secret.namespace().unwrap_or_default();
        let cached = self
            .stores
            .secrets
            .get(&ObjectRef::new(&name).within(&namespace));
        if cached.is_some() {
            return Ok(());
        }
        // Built without data because the cache had it, and gone since: never create it empty
        // (it is never rewritten); the deletion's watch event brings a reconcile that issues it.
        if secret.data.is_none() && secret.string_data.is_none() {
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        match api.create(&PostParams::default(), secret).await {
            Ok(_) => {
                tracing::info!(secret = %name, "generated the backplane's credentials");
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
        let namespace = self.rtc.namespace().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let kind = K::kind(&()).into_owned();
        for name in stale {
            delete(&api, &kind, &name).await?;
            self.sent.forget(&(kind.clone(), namespace.clone(), name));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(yaml: &str) -> ObjectMeta {
        serde_yaml::from_str(yaml).unwrap()
    }

    const DESIRED: &str = "{ name: chat-redis-0, labels: { app.kubernetes.io/instance: chat }, annotations: { a: '1' } }";
    const CACHED: &str = "{ name: chat-redis-0, uid: u1, resourceVersion: '7', generation: 2, labels: { app.kubernetes.io/instance: chat, extra: x }, annotations: { a: '1', b: '2' } }";

    fn sent(kind: &str, at: Instant) -> Sent {
        Sent {
            hash: "h".into(),
            uid: "u1".into(),
            version: version(kind, &meta(CACHED)),
            at,
        }
    }

    #[test]
    fn an_unchanged_child_applied_by_this_process_is_skipped() {
        let now = Instant::now();
        for kind in ["StatefulSet", "Service"] {
            let cached = meta(CACHED);
            assert!(can_skip(
                kind,
                &meta(DESIRED),
                "h",
                Some(&cached),
                Some(&sent(kind, now)),
                now
            ));
        }
    }

    #[test]
    fn anything_that_may_differ_applies() {
        let now = Instant::now();
        let desired = meta(DESIRED);
        let cached = meta(CACHED);
        let skip = |kind: &str, hash: &str, cached: Option<&ObjectMeta>, sent: Option<&Sent>| {
            can_skip(kind, &desired, hash, cached, sent, now)
        };
        let kind = "StatefulSet";
        let ours = sent(kind, now);
        // Never applied by this process (a restart, a new leader), or not in the cache.
        assert!(!skip(kind, "h", Some(&cached), None));
        assert!(!skip(kind, "h", None, Some(&ours)));
        // The desired object changed.
        assert!(!skip(kind, "other", Some(&cached), Some(&ours)));
        // Someone changed the spec (generation), or recreated it (uid).
        let edited = ObjectMeta {
            generation: Some(3),
            ..cached.clone()
        };
        assert!(!skip(kind, "h", Some(&edited), Some(&ours)));
        let recreated = ObjectMeta {
            uid: Some("u2".into()),
            ..cached.clone()
        };
        assert!(!skip(kind, "h", Some(&recreated), Some(&ours)));
        // Being deleted.
        let deleting = meta(&CACHED.replace(
            "uid: u1",
            "uid: u1, deletionTimestamp: '2026-01-01T00:00:00Z'",
        ));
        assert!(!skip(kind, "h", Some(&deleting), Some(&ours)));
        // A label or annotation of ours removed or changed.
        let unlabelled = meta(&CACHED.replace("app.kubernetes.io/instance: chat, ", ""));
        assert!(!skip(kind, "h", Some(&unlabelled), Some(&ours)));
        let annotated = meta(&CACHED.replace("a: '1'", "a: '9'"));
        assert!(!skip(kind, "h", Some(&annotated), Some(&ours)));
        // Applied too long ago: re-applied whatever the cache says.
        let later = now + REAPPLY_AFTER;
        assert!(!can_skip(
            kind,
            &desired,
            "h",
            Some(&cached),
            Some(&ours),
            later
        ));
    }

    #[test]
    fn status_moves_only_the_versions_of_kinds_without_a_generation_rule() {
        let now = Instant::now();
        let desired = meta(DESIRED);
        // The StatefulSet controller wrote its status: a new resourceVersion, the same generation.
        let status_written = meta(&CACHED.replace("resourceVersion: '7'", "resourceVersion: '8'"));
        for (kind, skipped) in [
            ("StatefulSet", true),
            ("PodDisruptionBudget", true),
            ("Ingress", true),
            // A write to a Service or ConfigMap is someone's edit.
            ("Service", false),
            ("ConfigMap", false),
        ] {
            assert_eq!(
                can_skip(
                    kind,
                    &desired,
                    "h",
                    Some(&status_written),
                    Some(&sent(kind, now)),
                    now
                ),
                skipped,
                "{kind}"
            );
        }
    }

    #[test]
    fn the_hash_follows_the_object_and_nothing_else() {
        let a: ConfigMap = serde_yaml::from_str(
            "metadata: { name: c, labels: { x: '1', y: '2' } }\ndata: { k: v, l: w }",
        )
        .unwrap();
        // Same content written in another order: same bytes (maps serialize sorted).
        let b: ConfigMap = serde_yaml::from_str(
            "data: { l: w, k: v }\nmetadata: { labels: { y: '2', x: '1' }, name: c }",
        )
        .unwrap();
        assert_eq!(desired_hash(&a), desired_hash(&b));
        let mut c = a.clone();
        c.data.as_mut().unwrap().insert("k".into(), "v2".into());
        assert_ne!(desired_hash(&a), desired_hash(&c));
    }

    #[test]
    fn records_too_old_to_allow_a_skip_are_swept_so_deleted_clusters_leave_nothing() {
        let sent_children = SentChildren::default();
        let start = Instant::now();
        let key = |i: usize| ("ConfigMap".to_owned(), "ns".to_owned(), format!("gone-{i}"));
        // Children of clusters deleted since: applied once, never again.
        for i in 0..2000 {
            sent_children.record(key(i), sent("ConfigMap", start));
        }
        assert_eq!(sent_children.len(), 2000, "young records are all kept");
        // Later, the live clusters' children are applied again.
        let later = start + REAPPLY_AFTER + Duration::from_secs(1);
        for i in 0..1100 {
            let live = ("ConfigMap".to_owned(), "ns".to_owned(), format!("live-{i}"));
            sent_children.record(live, sent("ConfigMap", later));
        }
        assert!(
            sent_children.get(&key(0)).is_none(),
            "an expired record was swept"
        );
        assert!(
            sent_children.len() <= 1100,
            "only the live records remain: {}",
            sent_children.len()
        );
        assert!(
            sent_children
                .get(&("ConfigMap".into(), "ns".into(), "live-0".into()))
                .is_some()
        );
    }
}
