//! Labels and ownership shared by every object the controller builds (the names themselves are
//! in [`crate::names`]).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Capabilities, Secret, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::RealtimeCluster;
use crate::names::{
    COMPONENT_LABEL, INSTANCE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL, PART_OF,
    PART_OF_LABEL,
};

/// The recommended labels (`app.kubernetes.io/*`) for a child of `rtc`.
pub(crate) fn labels(
    rtc: &RealtimeCluster,
    name: &str,
    component: &str,
) -> BTreeMap<String, String> {
    [
        (NAME_LABEL, name.to_owned()),
        (INSTANCE_LABEL, rtc.name_any()),
        (COMPONENT_LABEL, component.to_owned()),
        (PART_OF_LABEL, PART_OF.to_owned()),
        (MANAGED_BY_LABEL, MANAGED_BY.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Metadata of a child object: same namespace, the given labels, and a controller ownerReference
/// (`controller: true`, `blockOwnerDeletion: true`). `validate` has checked that `rtc` has a name,
/// a namespace and a uid, without which there is no ownerReference.
pub(crate) fn child_meta(
    rtc: &RealtimeCluster,
    name: String,
    labels: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: rtc.namespace(),
        labels: Some(labels),
        owner_references: rtc.controller_owner_ref(&()).map(|owner| {
            // kube sets `controller` only; without `blockOwnerDeletion` a foreground deletion of the
            // RealtimeCluster could finish before its children are gone.
            vec![OwnerReference {
                block_owner_deletion: Some(true),
                ..owner
            }]
        }),
        ..ObjectMeta::default()
    }
}

/// An `Opaque` Secret of `rtc` named `name`, holding `value` under `key`: the generated
/// credentials (created once by the applier, never rotated by a reconcile).
pub(crate) fn generated_secret(
    rtc: &RealtimeCluster,
    name: String,
    labels: BTreeMap<String, String>,
    key: &str,
    value: &str,
) -> Secret {
    Secret {
        metadata: child_meta(rtc, name, labels),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// The restricted Pod Security Standard's container settings, shared by every container the
/// operator builds (Redis, Sentinel, the injected sidecar).
pub(crate) fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}
