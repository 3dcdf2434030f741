//! The RealtimeCluster controller's stages: `validate -> build -> apply -> observe -> update_status`.
//!
//! `validate` ([`validate`]), `build` ([`build`], gathering [`backplane`], [`sidecar_config`] and
//! [`ingress`]) and `observe` ([`observe`], [`status`]) are pure: they take a
//! [`RealtimeCluster`](crate::api::RealtimeCluster) plus plain inputs (a generated password, the
//! external backplane's Secret as the API returned it, the applied objects, the pods) and return
//! Kubernetes objects or the status, so they are unit-tested from YAML fixtures with no cluster.
//! [`apply`] (the whole desired set under one field manager, and pruning every owned kind from the
//! Controller's caches) and [`reconcile`] (the reads and the status write) hold the client; [`run`]
//! wires them into a kube-runtime `Controller`.
//!
//! Every object built here carries the recommended `app.kubernetes.io/*` labels and a controller
//! ownerReference to its RealtimeCluster, so deleting the RealtimeCluster garbage-collects it.

pub mod apply;
pub mod backplane;
pub mod backplane_tls;
pub mod build;
mod context;
pub mod ingress;
mod meta;
pub mod observe;
pub mod peers;
pub mod reconcile;
pub mod run;
pub mod sidecar_config;
pub mod status;
pub mod validate;

pub use context::{Context, Shared};

pub use crate::names::{FIELD_MANAGER, MANAGED_BY, PART_OF};
pub(crate) use meta::restricted_container;

#[cfg(test)]
mod tests;
