//! The RealtimeCluster controller's stages: `validate -> build -> apply -> update_status`.
//!
//! `validate` ([`validate`]) and `build` ([`backplane`], [`sidecar_config`], [`ingress`]) are pure:
//! they take a [`RealtimeCluster`](crate::api::RealtimeCluster) plus plain inputs (a generated
//! password, an upstream URL already read from a Secret) and return Kubernetes objects, so they are
//! unit-tested from YAML fixtures with no cluster. `apply` (server-side apply under one field
//! manager) and `update_status` hold the client and are not in this module yet.
//!
//! Every object built here carries the recommended `app.kubernetes.io/*` labels and a controller
//! ownerReference to its RealtimeCluster, so deleting the RealtimeCluster garbage-collects it.

pub mod backplane;
pub mod ingress;
mod meta;
pub mod sidecar_config;
pub mod validate;

pub use meta::{FIELD_MANAGER, MANAGED_BY, PART_OF};

#[cfg(test)]
mod tests;
