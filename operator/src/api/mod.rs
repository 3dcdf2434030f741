//! The `RealtimeCluster` API (`switchboard.dev/v1alpha1`, short name `rtc`).
//!
//! These types are the contract with users: the CRD in `crds/` is generated from them (`crdgen`), and the
//! API server enforces the schema, defaults and CEL rules declared here, so an invalid spec is rejected
//! at `kubectl apply` with a message naming the field instead of surfacing later in the status.
//! Everything here is pure data; nothing in this module talks to a cluster.

mod backplane;
mod framework;
mod ingress;
mod sidecar;
mod status;

pub use backplane::{
    Backplane, BackplaneTls, CaSecretRef, ExternalBackplane, ManagedBackplane, Persistence,
    SecretKeyRef, SecretName,
};
pub use framework::{App, Framework, Listening, Preset};
pub use ingress::{Affinity, Cookie, GatewayRef, Ingress, IngressTls, SameSite};
pub use sidecar::Sidecar;
pub use status::{PodCounts, RealtimeClusterStatus};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// What a user declares: which pods run a socket server, which framework it is, and how the pods share
/// a backplane. The smallest useful spec is a selector and a framework; everything else has a default.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "RealtimeCluster",
    namespaced,
    shortname = "rtc",
    category = "switchboard",
    doc = "Socket-server pods that share one pub/sub backplane through the Switchboard sidecar.",
    status = "RealtimeClusterStatus",
    // Raw JSON: the structured printcolumn(...) form repeats `type_ = ...`, which clippy flags as a
    // duplicated attribute.
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Pods", "type": "integer", "jsonPath": ".status.pods.ready", "description": "Selected pods whose sidecar is ready"}"#,
    printcolumn = r#"{"name": "Backplane", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"BackplaneReady\")].reason"}"#,
    printcolumn = r#"{"name": "Routing", "type": "string", "jsonPath": ".spec.ingress.affinity", "description": "How a session's requests reach its pod: cookie, session-routing or none"}"#,
    printcolumn = r#"{"name": "Framework", "type": "string", "jsonPath": ".spec.framework", "priority": 1}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.selector.matchLabels) && size(self.selector.matchLabels) > 0) || (has(self.selector.matchExpressions) && size(self.selector.matchExpressions) > 0)"
).field_path(".selector").message(
    "spec.selector must select at least one label: an empty selector would inject the sidecar into every pod of the namespace"
))]
#[x_kube(validation = kube::core::Rule::new("self.framework != 'generic' || has(self.app.port)")
    .field_path(".app.port")
    .message("spec.app.port is required when spec.framework is generic (there is no preset port)"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.app.workerPorts) || (has(self.ingress) && self.ingress.affinity == 'session-routing')")
    .field_path(".app.workerPorts")
    .message("spec.app.workerPorts is only allowed with spec.ingress.affinity: session-routing (the sidecars' front is what spreads sessions over the workers)"))]
pub struct RealtimeClusterSpec {
    /// The socket server's pods, in this namespace; the sidecar is injected into these.
    pub selector: LabelSelector,

    /// The socket server's framework; picks the preset port, Redis URL variables and the
    /// subscriptions the listening check expects.
    pub framework: Framework,

    /// How to reach the application; unset fields come from the framework's preset.
    #[serde(default)]
    pub app: App,

    /// The shared Redis every pod's sidecar relays to. Defaults to one managed Redis.
    #[serde(default)]
    pub backplane: Backplane,

    /// An Ingress with session affinity in front of the pods. Absent: the operator creates none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,

    /// The injected sidecar's image, resources and buffer limits.
    #[serde(default)]
    pub sidecar: Sidecar,
}

impl RealtimeClusterSpec {
    /// The port the application listens on: the spec's, else the framework preset's.
    pub fn app_port(&self) -> Option<i32> {
        self.app.port.or(self.framework.preset().port)
    }

    /// The ports the sidecar's front passes requests to, one per app worker:
    /// `spec.app.workerPorts`, else the app's port.
    pub fn app_ports(&self) -> Vec<i32> {
        match &self.app.worker_ports {
            Some(ports) => ports.clone(),
            None => self.app_port().into_iter().collect(),
        }
    }

    /// Whether the sidecars route sessions (`spec.ingress.affinity: session-routing`).
    pub fn session_routing(&self) -> bool {
        self.ingress
            .as_ref()
            .is_some_and(|i| i.affinity == Affinity::SessionRouting)
    }

    /// Whether the operator guards the fronts' peer port with a NetworkPolicy (session routing,
    /// unless `spec.ingress.networkPolicy: false`).
    pub fn peer_network_policy(&self) -> bool {
        self.session_routing()
            && self
                .ingress
                .as_ref()
                .is_some_and(|i| i.network_policy != Some(false))
    }

    /// The path the sidecars' front routes by session: the spec's, else the preset's.
    pub fn engineio_path(&self) -> String {
        self.app
            .engineio_path
            .clone()
            .unwrap_or_else(|| self.framework.preset().engineio_path.to_owned())
    }

    /// The environment variables the sidecar's loopback URL is written to: the spec's, else the preset's.
    pub fn redis_url_env(&self) -> Vec<String> {
        match &self.app.redis_url_env {
            Some(names) => names.clone(),
            None => self
                .framework
                .preset()
                .redis_url_env
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// The subscription name prefixes the sidecar expects the app to hold: the spec's, else the
    /// preset's; empty means no check.
    pub fn listening_subscriptions(&self) -> Vec<String> {
        match self
            .app
            .listening
            .as_ref()
            .and_then(|l| l.subscriptions.as_ref())
        {
            Some(names) => names.clone(),
            None => self
                .framework
                .preset()
                .listening
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    /// Seconds the app may hold none of [`Self::listening_subscriptions`] before it is reported.
    pub fn listening_grace_seconds(&self) -> i64 {
        self.app.listening.as_ref().map_or(30, |l| l.grace_seconds)
    }
}

#[cfg(test)]
mod tests;
