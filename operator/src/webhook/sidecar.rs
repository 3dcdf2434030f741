//! What injection adds to a Pod: the `switchboard-sidecar` container, and the variables that point
//! each application container at it. Pure builders; [`mutate`](super::mutate) decides whether and
//! where they go.
//!
//! The sidecar's configuration has three sources, each for a reason:
//! - `envFrom` the cluster's ConfigMap (`<rtc>-sidecar`, built by
//!   [`sidecar_config`]): what the spec says, shared by every pod, hashed to roll pods on change.
//!   Not `optional`: until the controller has written it the pod waits in
//!   `CreateContainerConfigError`, rather than start a sidecar in embedded mode that would
//!   silently split the pods into separate brokers.
//! - `env` from a Secret ([`sidecar_config::upstream_secret_env`]): the credential, which never
//!   goes into the ConfigMap. In `env` because `env` wins over `envFrom` for the same name (an
//!   external backplane's `SWITCHBOARD_UPSTREAM_URL`).
//! - literal `env`: what only the pod shape decides (where to listen, the sidecar's id, log
//!   format).

use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Probe, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::settings::InjectSettings;
use crate::api::RealtimeCluster;
use crate::controller::{restricted_container, sidecar_config};
use crate::names::SIDECAR_CONTAINER;
pub use crate::names::{ENV_HTTP_LISTEN, ENV_LISTEN, ENV_LOG_FORMAT, ENV_SIDECAR_ID};

/// Where the sidecar listens for the application: loopback only, so only the pod's own containers
/// reach it (and so its `hostNetwork` is refused: loopback would be the node's).
pub const LISTEN: &str = "127.0.0.1:6379";
/// The URL every application container is given, in each of `spec.redis_url_env()`.
pub const LOCAL_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub use crate::names::HTTP_PORT;
/// The name of [`HTTP_PORT`] on the container, for probes and `PodMonitor`s.
pub const HTTP_PORT_NAME: &str = "sb-metrics";
/// The non-root user the sidecar runs as (distroless `nonroot`).
pub const RUN_AS_USER: i64 = 65532;

/// The sidecar container for a pod of `rtc`. With `settings.native_sidecars` it is meant to be
/// the first init container and carries `restartPolicy: Always`; otherwise it is a plain
/// container appended after the application's.
pub fn container(rtc: &RealtimeCluster, settings: &InjectSettings) -> Container {
    let spec = &rtc.spec.sidecar;
    let mut env = vec![
        literal(ENV_LISTEN, LISTEN),
        literal(ENV_HTTP_LISTEN, &format!("0.0.0.0:{HTTP_PORT}")),
        // The pod's name is unique among the cluster's live pods and readable in the registry;
        // it is resolved by the kubelet, so a `generateName` pod gets its final name.
        field_env(ENV_SIDECAR_ID, "metadata.name"),
        literal(ENV_LOG_FORMAT, "json"),
    ];
    env.extend(sidecar_config::upstream_secret_env(rtc));
    let mut ports = vec![ContainerPort {
        name: Some(HTTP_PORT_NAME.into()),
        container_port: HTTP_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }];
    if rtc.spec.session_routing() {
        use crate::names::{FRONT_PEER_PORT, FRONT_PEER_PORT_NAME, FRONT_PORT, FRONT_PORT_NAME};
        // Other pods' fronts forward this pod's sessions to its IP, on the peer port.
        env.push(field_env("POD_IP", "status.podIP"));
        env.push(literal(
            crate::names::ENV_FRONT_ADVERTISE,
            &format!("$(POD_IP):{FRONT_PEER_PORT}"),
        ));
        for (name, port) in [
            (FRONT_PORT_NAME, FRONT_PORT),
            (FRONT_PEER_PORT_NAME, FRONT_PEER_PORT),
        ] {
            ports.push(ContainerPort {
                name: Some(name.into()),
                container_port: port,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            });
        }
    }
    Container {
        name: SIDECAR_CONTAINER.to_owned(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| settings.sidecar_image.clone()),
        ),
        image_pull_policy: Some("IfNotPresent".into()),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: sidecar_config::config_map_name(rtc),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(env),
        ports: Some(ports),
        // Ready only while every shard of the backplane is connected: a pod whose sidecar
        // cannot relay would accept sockets whose messages never reach the other pods.
        readiness_probe: Some(http_probe("/readyz", 5, 2)),
        // Passes once the sidecar listens. For a native sidecar the kubelet starts the next
        // container only after it passes, so the app never dials a closed port at start. The
        // sidecar listens within a second; probing every second for a minute lets the app start
        // early without failing a sidecar on a CPU-throttled node.
        startup_probe: Some(http_probe("/healthz", 1, 60)),
        restart_policy: settings.native_sidecars.then(|| "Always".to_owned()),
        resources: spec.resources.clone(),
        security_context: Some(restricted()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: {
            let mounts: Vec<VolumeMount> = volumes(rtc).into_iter().map(|(_, m)| m).collect();
            (!mounts.is_empty()).then_some(mounts)
        },
        ..Container::default()
    }
}

/// Every volume the sidecar mounts, with its read-only mount: the backplane's TLS material
/// ([`tls_volumes`]) and, with session routing, the fleet's front secret.
pub fn volumes(rtc: &RealtimeCluster) -> Vec<(Volume, VolumeMount)> {
    let mut out = tls_volumes(rtc);
    if rtc.spec.session_routing() {
        use crate::names::{FRONT_SECRET_DIR, FRONT_SECRET_KEY, FRONT_SECRET_VOLUME};
        out.push(secret_volume(
            FRONT_SECRET_VOLUME,
            &sidecar_config::front_secret_name(rtc),
            &[(FRONT_SECRET_KEY, FRONT_SECRET_KEY)],
            FRONT_SECRET_DIR,
        ));
    }
    out
}

/// The volumes for `spec.backplane.external.tls`'s Secrets, each with its read-only mount in the
/// sidecar (at the paths the ConfigMap's `SWITCHBOARD_UPSTREAM_TLS_*` name). Not `optional`: a
/// missing Secret keeps the pod in `ContainerCreating` with an event naming it.
pub fn tls_volumes(rtc: &RealtimeCluster) -> Vec<(Volume, VolumeMount)> {
    use crate::names::{
        BACKPLANE_CA_DIR, BACKPLANE_CA_VOLUME, BACKPLANE_CLIENT_DIR, BACKPLANE_CLIENT_VOLUME,
    };
    // A managed backplane over TLS: only its CA, from the Secret the operator issued.
    if crate::controller::backplane_tls::enabled(rtc) {
        let secret = crate::controller::backplane_tls::secret_name(rtc);
        let key = crate::controller::backplane_tls::CA_KEY;
        return vec![secret_volume(
            BACKPLANE_CA_VOLUME,
            &secret,
            &[(key, "ca.crt")],
            BACKPLANE_CA_DIR,
        )];
    }
    let Some(tls) = rtc
        .spec
        .backplane
        .external
        .as_ref()
        .and_then(|e| e.tls.as_ref())
    else {
        return Vec::new();
    };
    let volume = secret_volume;
    let mut out = Vec::new();
    if let Some(ca) = &tls.ca_secret_ref {
        out.push(volume(
            BACKPLANE_CA_VOLUME,
            &ca.name,
            &[(&ca.key, "ca.crt")],
            BACKPLANE_CA_DIR,
        ));
    }
    if let Some(client) = &tls.client_certificate_secret_ref {
        out.push(volume(
            BACKPLANE_CLIENT_VOLUME,
            &client.name,
            &[("tls.crt", "tls.crt"), ("tls.key", "tls.key")],
            BACKPLANE_CLIENT_DIR,
        ));
    }
    out
}

/// A Secret volume of `items` (`(key, path)`) and its read-only mount at `dir`.
fn secret_volume(
    name: &str,
    secret: &str,
    items: &[(&str, &str)],
    dir: &str,
) -> (Volume, VolumeMount) {
    (
        Volume {
            name: name.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                items: Some(
                    items
                        .iter()
                        .map(|(key, path)| KeyToPath {
                            key: (*key).to_owned(),
                            path: (*path).to_owned(),
                            mode: None,
                        })
                        .collect(),
                ),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: name.to_owned(),
            mount_path: dir.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// The variables each application container should have: every name of
/// `spec.redis_url_env()` set to [`LOCAL_REDIS_URL`], then the framework preset's `required_env`.
/// A name appears once (a custom `redisUrlEnv` could repeat a preset name; the URL wins).
pub fn app_env(rtc: &RealtimeCluster) -> Vec<EnvVar> {
    let urls = rtc
        .spec
        .redis_url_env()
        .into_iter()
        .map(|name| (name, LOCAL_REDIS_URL.to_owned()));
    let required = rtc
        .spec
        .framework
        .preset()
        .required_env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()));
    let mut env: Vec<EnvVar> = Vec::new();
    for (name, value) in urls.chain(required) {
        if !env.iter().any(|e| e.name == name) {
            env.push(literal(&name, &value));
        }
    }
    env
}

/// The entries of `wanted` that `container` does not set itself in `env`: what the user wrote
/// wins. Only `env` can be inspected; a name the container gets from `envFrom` (a ConfigMap or
/// Secret the webhook does not read) is overridden by the injected `env` entry, so to keep such
/// a value, set it in `env`, or opt the pod out.
pub fn missing_env(container: &Container, wanted: &[EnvVar]) -> Vec<EnvVar> {
    let set = container.env.as_deref().unwrap_or_default();
    wanted
        .iter()
        .filter(|w| !set.iter().any(|e| e.name == w.name))
        .cloned()
        .collect()
}

/// A variable the kubelet fills from the pod (`fieldRef`).
fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn literal(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HTTP_PORT_NAME.into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

/// The restricted Pod Security Standard, on the container itself: the app's pod may be less
/// strict, and the sidecar should not inherit that.
fn restricted() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..restricted_container()
    }
}
