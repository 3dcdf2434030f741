//! The shared Redis every sidecar relays pub/sub to: managed by the operator, or an external one.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Exactly one of `managed` or `external`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)")
    .message("spec.backplane must set exactly one of managed or external"))]
pub struct Backplane {
    /// A Redis the operator runs next to the app (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedBackplane>,

    /// A Redis you run; its URL is read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBackplane>,

    /// Prepended to every channel on the backplane, so clusters sharing one Redis do not hear each
    /// other. Applications never see it. No glob characters: the sidecar prefixes patterns with it.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(r"!['*', '?', '[', ']', '\\'].exists(c, self.contains(c))")
        .message(r"spec.backplane.channelPrefix must not contain the glob characters * ? [ ] \ (patterns are prefixed with it)"))]
    pub channel_prefix: String,
}

impl Default for Backplane {
    fn default() -> Self {
        Self {
            managed: Some(ManagedBackplane::default()),
            external: None,
            channel_prefix: String::new(),
        }
    }
}

/// A Redis the operator deploys and owns.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tlsSecretRef) || self.tls")
    .field_path(".tlsSecretRef")
    .message("spec.backplane.managed.tlsSecretRef needs tls: true (it is the certificate Redis serves TLS with)"))]
pub struct ManagedBackplane {
    /// Redis servers per shard. 1: no failover. 3 or more: one primary and replicas, each pod
    /// with a Sentinel; Sentinel needs a majority to fail over, so 2 is refused.
    #[serde(default = "one")]
    #[schemars(range(max = 9))]
    #[x_kube(validation = Rule::new("self == 1 || self >= 3")
        .message("spec.backplane.managed.replicas must be 1 (no failover) or at least 3 (Sentinel needs a quorum)"))]
    pub replicas: i32,

    /// Independent Redis primaries; channels are spread over them by hash.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 32))]
    pub shards: i32,

    /// Redis image; 7.4 or newer (Open WebUI uses HEXPIRE).
    #[serde(default = "default_redis_image")]
    #[schemars(length(min = 1))]
    pub image: String,

    /// Resources of each Redis container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Pub/sub needs no storage; enable it only when the app keeps state in Redis too.
    #[serde(default)]
    pub persistence: Persistence,

    /// Serve Redis, its replication and the Sentinels over TLS only, with a certificate the
    /// operator issues (Secret `<name>-redis-tls`); the sidecars verify it. Turn off only for an
    /// image built without TLS.
    #[serde(default = "yes")]
    pub tls: bool,

    /// Serve TLS with this Secret's certificate instead of one the operator issues: a
    /// `kubernetes.io/tls` Secret with `ca.crt`, `tls.crt` and `tls.key`, such as the
    /// `secretName` of a cert-manager Certificate from a CA Issuer. It must cover the names the
    /// sidecars dial (`<name>-redis-<shard>.<namespace>.svc`, and with Sentinel
    /// `<name>-redis-<shard>-sentinel.<namespace>.svc` and
    /// `*.<name>-redis-<shard>-headless.<namespace>.svc`); the status names any it misses. When
    /// the certificate is renewed, the Redis pods are rolled one at a time to serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_ref: Option<SecretName>,
}

impl Default for ManagedBackplane {
    fn default() -> Self {
        Self {
            replicas: 1,
            shards: 1,
            image: default_redis_image(),
            resources: None,
            persistence: Persistence::default(),
            tls: true,
            tls_secret_ref: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Storage for a managed Redis (append-only file on a PersistentVolumeClaim).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.enabled || !has(self.storageClassName)")
    .field_path(".storageClassName")
    .message("spec.backplane.managed.persistence.storageClassName needs persistence.enabled: true"))]
pub struct Persistence {
    #[serde(default)]
    pub enabled: bool,

    /// Size of each Redis server's volume.
    #[serde(default = "default_volume_size")]
    pub size: Quantity,

    /// Storage class of the volumes. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for Persistence {
    fn default() -> Self {
        Self {
            enabled: false,
            size: default_volume_size(),
            storage_class_name: None,
        }
    }
}

/// A Redis run outside the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalBackplane {
    /// The Secret key holding the URL, password included: `redis://[user:password@]host:port[/db]`
    /// or `redis+sentinel://[user:password@]host:26379[,host:26379...]/<master>[/db]`, or
    /// `redis+cluster://[user:password@]host:port[,host:port...]` for a Redis Cluster (its seed
    /// nodes; one shard per primary, found by the sidecar), or their TLS forms `rediss://`,
    /// `rediss+sentinel://` (TLS to the Sentinels too) and `rediss+cluster://`; several shards as
    /// URLs separated by spaces (not with a cluster URL). The URL reaches the sidecar straight
    /// from this Secret; only its password-free form is copied elsewhere.
    pub url_secret_ref: SecretKeyRef,

    /// How the sidecar checks (and authenticates to) a `rediss://` backplane. Without it the
    /// sidecar trusts the system roots of its image, which is what public cloud endpoints need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackplaneTls>,
}

/// TLS to an external backplane. The Secrets are mounted read-only into the sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.insecureSkipVerify && has(self.caSecretRef))")
    .message("spec.backplane.external.tls: insecureSkipVerify turns certificate checks off, so caSecretRef would be ignored; set only one of them"))]
pub struct BackplaneTls {
    /// A Secret key holding the PEM CA bundle that signed the servers' certificates (a private
    /// CA), trusted in addition to the system roots. The key defaults to `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,

    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) the sidecar presents to servers that
    /// require client certificates (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<SecretName>,

    /// The name every server's certificate is checked against (and sent as SNI) instead of the
    /// host dialed: for servers reached by IP (a primary found through Sentinel) that share a
    /// certificate issued for one name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,

    /// Accept any server certificate: the traffic is encrypted but the server is not
    /// authenticated. For tests only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// A key of a Secret holding a CA bundle.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret in the RealtimeCluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretName {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret in the RealtimeCluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_url_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn one() -> i32 {
    1
}

fn default_redis_image() -> String {
    "redis:7.4".into()
}

fn default_volume_size() -> Quantity {
    Quantity("1Gi".into())
}

fn default_url_key() -> String {
    "url".into()
}

fn default_ca_key() -> String {
    "ca.crt".into()
}
