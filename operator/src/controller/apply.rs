//! The `apply` stage: server-side apply of every built child under one field manager, and the
//! removal of children the spec no longer asks for.
//!
//! Apply sends the whole desired object each time; the API server compares it with what this
//! field manager last applied and writes nothing when they are equal, so an unchanged Ingress is
//! never rewritten (each rewrite makes ingress-nginx reload and drop WebSockets) and a reconcile
//! that finds everything in place costs no writes.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::meta::{FIELD_MANAGER, MANAGED_BY};
use crate::api::RealtimeCluster;
use crate::error::{Error, Result};

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

/// Deletes the children of kind `K` that `rtc` owns but no longer wants (a shard removed, the
/// ingress dropped from the spec). Only objects with `rtc`'s controller ownerReference are
/// touched, never something a user labelled alike.
pub async fn prune<K>(client: &Client, rtc: &RealtimeCluster, keep: &[String]) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &rtc.namespace().unwrap_or_default());
    prune_in(&api, &K::kind(&()), rtc, keep).await
}

/// [`prune`] through a given `Api`, for kinds without static types (the Gateway API's HTTPRoute).
pub async fn prune_in<K>(
    api: &Api<K>,
    kind: &str,
    rtc: &RealtimeCluster,
    keep: &[String],
) -> Result<()>
where
    K: Resource + DeserializeOwned + Clone + Debug,
{
    let uid = rtc.uid().unwrap_or_default();
    let selector = format!(
        "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={MANAGED_BY}",
        rtc.name_any()
    );
    let listed = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!("listing {kind}s to prune")))?;
    for child in listed.items {
        let name = child.name_any();
        let owned = child
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == uid);
        if owned && !keep.contains(&name) {
            tracing::info!(%kind, %name, "deleting a child the spec no longer asks for");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    return Err(Error::Kube {
                        action: format!("deleting {kind} {name}"),
                        source: e,
                    });
                }
            }
        }
    }
    Ok(())
}
