//! The RealtimeCluster controller's stages: `validate -> build -> apply -> update_status`.
//!
//! `validate` ([`validate`]) and `build` ([`backplane`], [`sidecar_config`], [`ingress`]) are pure:
//! they take a [`RealtimeCluster`](crate::api::RealtimeCluster) plus plain inputs (a generated
//! password, an upstream URL already read from a Secret) and return Kubernetes objects, so they are
//! unit-tested from YAML fixtures with no cluster. [`apply`] (server-side apply under one field
//! manager, and pruning) and `update_status` ([`status`] decides, [`reconcile`] writes) hold the
//! client; [`run`] wires them into a kube-runtime `Controller`.
//!
//! Every object built here carries the recommended `app.kubernetes.io/*` labels and a controller
//! ownerReference to its RealtimeCluster, so deleting the RealtimeCluster garbage-collects it.

pub mod apply;
pub mod backplane;
mod context;
pub mod ingress;
mod meta;
pub mod observe;
pub mod reconcile;
pub mod run;
pub mod sidecar_config;
pub mod status;
pub mod validate;

pub use context::Context;

pub(crate) use meta::restricted_container;
pub use meta::{FIELD_MANAGER, MANAGED_BY, PART_OF};

#[cfg(test)]
mod tests;
