//! The names the controller and the injector share: the sidecar container, labels, annotations,
//! the field manager, and the `SWITCHBOARD_*` variables the injected sidecar reads.
//!
//! A leaf: it imports nothing from this crate, so every layer can use it without depending on
//! another (the webhook no longer reaches into the controller's stages for a name). The variable
//! names are the sidecar's contract (`sidecar/src/config.rs`); a test feeds what the operator
//! renders through the sidecar's own parser.

/// The server-side apply field manager every write uses; also the Events' reporting controller.
pub const FIELD_MANAGER: &str = "switchboard-operator";
/// `app.kubernetes.io/managed-by` on everything the operator creates.
pub const MANAGED_BY: &str = "switchboard-operator";
/// `app.kubernetes.io/part-of` on everything the operator creates.
pub const PART_OF: &str = "switchboard";

/// The name of the container the injector adds; a pod with it (as a container or a native
/// sidecar init container) counts as injected.
pub const SIDECAR_CONTAINER: &str = "switchboard-sidecar";

pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// The RealtimeCluster a child belongs to; with [`MANAGED_BY_LABEL`] it selects a cluster's children.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Pod label naming the RealtimeCluster to join, for pods its selector does not match (or
/// matches along with another cluster's).
pub const CLUSTER_LABEL: &str = "switchboard.dev/cluster";
/// Pod annotation; `"false"` keeps a selected pod without the sidecar.
pub const INJECT_ANNOTATION: &str = "switchboard.dev/inject";
/// Pod annotation the injector writes: the RealtimeCluster whose sidecar the pod got.
pub const INJECTED_BY_ANNOTATION: &str = "switchboard.dev/injected-by";
/// Pod annotation the injector writes: the content hash of the sidecar ConfigMap it started with.
pub const CONFIG_HASH_ANNOTATION: &str = "switchboard.dev/sidecar-config-hash";
/// Redis pod template annotation: the fingerprint of a brought TLS Secret, so renewing the
/// certificate rolls the pods that serve it.
pub const TLS_FINGERPRINT_ANNOTATION: &str = "switchboard.dev/tls-fingerprint";

// The sidecar's variables (flags of `sidecar/src/config.rs`).
pub const ENV_UPSTREAM_URL: &str = "SWITCHBOARD_UPSTREAM_URL";
/// The backplane password; replaces any password in the URLs. Never in the ConfigMap.
pub const ENV_UPSTREAM_PASSWORD: &str = "SWITCHBOARD_UPSTREAM_PASSWORD";
pub const ENV_CHANNEL_PREFIX: &str = "SWITCHBOARD_CHANNEL_PREFIX";
pub const ENV_PUBLISH_BUFFER_BYTES: &str = "SWITCHBOARD_PUBLISH_BUFFER_BYTES";
pub const ENV_PUBLISH_BUFFER_MESSAGES: &str = "SWITCHBOARD_PUBLISH_BUFFER_MESSAGES";
pub const ENV_CLIENT_BUFFER_BYTES: &str = "SWITCHBOARD_CLIENT_BUFFER_BYTES";
/// The subscriptions the app's adapter holds while it listens (space-separated name prefixes).
pub const ENV_EXPECT_SUBSCRIPTION: &str = "SWITCHBOARD_EXPECT_SUBSCRIPTION";
/// How long the app may hold none of them before the sidecar reports it not listening.
pub const ENV_LISTENING_GRACE_SECONDS: &str = "SWITCHBOARD_LISTENING_GRACE_SECONDS";
pub const ENV_LISTEN: &str = "SWITCHBOARD_LISTEN";
pub const ENV_HTTP_LISTEN: &str = "SWITCHBOARD_HTTP_LISTEN";
pub const ENV_SIDECAR_ID: &str = "SWITCHBOARD_SIDECAR_ID";
pub const ENV_LOG_FORMAT: &str = "SWITCHBOARD_LOG_FORMAT";
// TLS to an external backplane (`spec.backplane.external.tls`).
pub const ENV_UPSTREAM_TLS_CA_FILE: &str = "SWITCHBOARD_UPSTREAM_TLS_CA_FILE";
pub const ENV_UPSTREAM_TLS_CERT_FILE: &str = "SWITCHBOARD_UPSTREAM_TLS_CERT_FILE";
pub const ENV_UPSTREAM_TLS_KEY_FILE: &str = "SWITCHBOARD_UPSTREAM_TLS_KEY_FILE";
pub const ENV_UPSTREAM_TLS_SERVER_NAME: &str = "SWITCHBOARD_UPSTREAM_TLS_SERVER_NAME";
pub const ENV_UPSTREAM_TLS_INSECURE_SKIP_VERIFY: &str =
    "SWITCHBOARD_UPSTREAM_TLS_INSECURE_SKIP_VERIFY";

/// Where the injector mounts `spec.backplane.external.tls`'s Secrets in the sidecar (read-only),
/// and the volumes that carry them.
pub const BACKPLANE_CA_DIR: &str = "/etc/switchboard/backplane-tls/ca";
pub const BACKPLANE_CA_FILE: &str = "/etc/switchboard/backplane-tls/ca/ca.crt";
pub const BACKPLANE_CLIENT_DIR: &str = "/etc/switchboard/backplane-tls/client";
pub const BACKPLANE_CLIENT_CERT_FILE: &str = "/etc/switchboard/backplane-tls/client/tls.crt";
pub const BACKPLANE_CLIENT_KEY_FILE: &str = "/etc/switchboard/backplane-tls/client/tls.key";
pub const BACKPLANE_CA_VOLUME: &str = "switchboard-backplane-ca";
pub const BACKPLANE_CLIENT_VOLUME: &str = "switchboard-backplane-client-cert";

/// The sidecar's `/healthz`, `/readyz` and `/metrics`, on every interface: the kubelet probes
/// the pod IP and Prometheus scrapes it.
pub const HTTP_PORT: i32 = 9091;

// The sidecar's HTTP front (`spec.ingress.affinity: session-routing`).
pub const ENV_FRONT_LISTEN: &str = "SWITCHBOARD_FRONT_LISTEN";
pub const ENV_FRONT_PEER_LISTEN: &str = "SWITCHBOARD_FRONT_PEER_LISTEN";
pub const ENV_FRONT_APP: &str = "SWITCHBOARD_FRONT_APP";
pub const ENV_FRONT_ADVERTISE: &str = "SWITCHBOARD_FRONT_ADVERTISE";
pub const ENV_FRONT_PATH: &str = "SWITCHBOARD_FRONT_PATH";
pub const ENV_FRONT_SECRET_FILE: &str = "SWITCHBOARD_FRONT_SECRET_FILE";
/// The front's port on the pod: the app Service targets it.
pub const FRONT_PORT: i32 = 9092;
pub const FRONT_PORT_NAME: &str = "sb-front";
/// The front's peer port: other pods' fronts forward sessions to it, and the NetworkPolicy
/// `<rtc>-front-peers` admits only the fleet's pods to it.
pub const FRONT_PEER_PORT: i32 = 9093;
pub const FRONT_PEER_PORT_NAME: &str = "sb-peer";
/// Where the injector mounts the fleet's front secret (`<rtc>-front`) in the sidecar.
pub const FRONT_SECRET_DIR: &str = "/etc/switchboard/front";
pub const FRONT_SECRET_FILE: &str = "/etc/switchboard/front/secret";
pub const FRONT_SECRET_VOLUME: &str = "switchboard-front-secret";
/// The key of the secret in `<rtc>-front`.
pub const FRONT_SECRET_KEY: &str = "secret";
