//! One test's world in a few lines: the shared control plane, its own namespace, an operator
//! confined to it, and the RealtimeClusters and pods it creates. What the controller tests used to
//! spell out in every test (start, namespace, `Api`s, `create(&PostParams::default(), …)`).

use std::fmt::Debug;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use switchboard_operator::api::RealtimeCluster;
use switchboard_testkit::ControlPlane;

use super::{Operator, get, until};

/// The container name the injector uses; test pods that "already have the sidecar" carry it.
pub const SIDECAR: &str = "switchboard-sidecar";

pub struct Scenario {
    pub cp: &'static ControlPlane,
    pub client: Client,
    pub ns: String,
    pub clusters: Api<RealtimeCluster>,
    pub pods: Api<Pod>,
}

impl Scenario {
    /// The control plane and a fresh namespace `ns` (and its operator's); `None` when the control
    /// plane is skipped outside CI.
    pub async fn new(ns: &str) -> Option<Self> {
        let cp = super::control_plane().await?;
        let client = cp.client().await.unwrap();
        super::namespace(&client, ns).await;
        Some(Scenario {
            cp,
            clusters: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            client,
            ns: ns.to_owned(),
        })
    }

    /// An operator confined to this namespace, on the Lease `switchboard-operator`.
    pub fn operator(&self, identity: &str) -> Operator {
        Operator::start(self.cp, &self.ns, "switchboard-operator", identity)
    }

    /// Creates the RealtimeCluster `name` with `spec`.
    pub async fn create_cluster(&self, name: &str, spec: Value) -> RealtimeCluster {
        self.clusters
            .create(&PostParams::default(), &cluster(name, spec))
            .await
            .unwrap()
    }

    /// Creates a pod kwok will run; `with_sidecar` adds a container named like the injected one.
    pub async fn create_pod(&self, name: &str, labels: Value, with_sidecar: bool) -> Pod {
        self.pods
            .create(&PostParams::default(), &pod(name, labels, with_sidecar))
            .await
            .unwrap()
    }

    /// The RealtimeCluster `name` as it is now.
    pub async fn cluster(&self, name: &str) -> RealtimeCluster {
        self.clusters.get(name).await.unwrap()
    }

    /// Polls the RealtimeCluster `name` until `ok` holds (or panics after `seconds`, showing it).
    pub async fn until_cluster(
        &self,
        name: &str,
        what: &str,
        seconds: u64,
        ok: impl FnMut(&RealtimeCluster) -> bool,
    ) -> RealtimeCluster {
        until(what, seconds, async || self.cluster(name).await, ok).await
    }

    /// The object `name` of kind `K` in this namespace, if it exists.
    pub async fn get<K>(&self, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + Debug,
    {
        get(&self.client, &self.ns, name).await
    }
}

/// A RealtimeCluster named `name` with `spec`.
pub fn cluster(name: &str, spec: Value) -> RealtimeCluster {
    serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

/// A pod that kwok will run; `with_sidecar` adds a container named like the injected one.
pub fn pod(name: &str, labels: Value, with_sidecar: bool) -> Pod {
    let mut containers = vec![json!({ "name": "app", "image": "chat:never-pulled" })];
    if with_sidecar {
        containers.push(json!({ "name": SIDECAR, "image": "sidecar:never-pulled" }));
    }
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": { "containers": containers },
    }))
    .unwrap()
}
