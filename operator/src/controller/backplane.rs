//! The managed backplane: per shard a Redis StatefulSet, a headless Service (stable pod DNS), a
//! client Service and a PodDisruptionBudget; plus the Secret holding the Redis password.
//!
//! Redis here is a pub/sub broker first: no persistence unless asked for, many clients (one or more
//! per pod and per pass-through connection), and output buffers sized for a sidecar that carries a
//! whole pod's traffic on one subscription. This module builds objects only; it never generates
//! the password (the caller does, once, and keeps it in the Secret) and never talks to a cluster.
//!
//! TODO(issue 4): `replicas >= 3` (Redis replicas and a Sentinel quorum, sidecar told to discover
//! the primary through Sentinel) is not built; `validate` refuses it until it is.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Service, ServicePort,
    ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{child_meta, labels};
use crate::api::{ManagedBackplane, RealtimeCluster};

pub const REDIS_PORT: i32 = 6379;
/// The key of the password in the Secret [`password_secret_name`] names.
pub const PASSWORD_KEY: &str = "password";
/// The Redis container reads its password from this variable (filled from the Secret).
const PASSWORD_ENV: &str = "REDIS_PASSWORD";
/// The non-root user of the official `redis` image.
const REDIS_UID: i64 = 999;
const SHARD_LABEL: &str = "switchboard.dev/shard";
const DATA_VOLUME: &str = "data";

/// `--maxclients`: Redis' default is 10000. Each pod's sidecar holds two links (subscriber and
/// control) plus one per pass-through application connection, so a few hundred pods with
/// connection pools reach the default; 20000 keeps headroom while staying under the 1M file
/// descriptors containerd grants by default.
const MAX_CLIENTS: &str = "20000";
/// `--timeout`: close a normal client idle for 5 minutes, so connections leaked by crashed pods do
/// not accumulate towards maxclients. Redis never applies it to pub/sub subscribers, and the
/// sidecar's control link pings every heartbeat, so the backplane links are never closed by it.
const IDLE_TIMEOUT_SECONDS: &str = "300";
/// `--client-output-buffer-limit pubsub <hard> <soft> <soft-seconds>`. Redis' default (32mb 8mb 60)
/// is sized for one application subscriber; here one sidecar subscription carries every message
/// for a whole pod, and payloads run to tens of MB (the sidecar accepts bulk strings up to 64 MiB).
/// Hard 256 MB holds four of the largest messages in flight, so one big burst does not cut a pod
/// off; soft 64 MB for 60 s disconnects only a subscriber that stays that far behind for a minute,
/// i.e. a stuck one. A disconnect is never silent: the sidecar sees its link drop, logs and counts
/// the reconnect, and resubscribes. The cost is memory: budget `pods x 256 MB` worst case per shard
/// when sizing `resources`.
const PUBSUB_BUFFER_LIMIT: [&str; 4] = ["pubsub", "256mb", "64mb", "60"];

/// Name of the StatefulSet and client Service of shard `shard`.
pub fn shard_name(rtc: &RealtimeCluster, shard: i32) -> String {
    format!("{}-redis-{shard}", rtc.name_any())
}

/// Name of the headless Service governing shard `shard`'s StatefulSet.
pub fn headless_name(rtc: &RealtimeCluster, shard: i32) -> String {
    format!("{}-headless", shard_name(rtc, shard))
}

/// Name of the Secret holding the Redis password (key [`PASSWORD_KEY`]).
pub fn password_secret_name(rtc: &RealtimeCluster) -> String {
    format!("{}-redis-auth", rtc.name_any())
}

/// The in-cluster URL of shard `shard`, without credentials.
pub fn shard_url(rtc: &RealtimeCluster, shard: i32) -> String {
    format!(
        "redis://{}.{}.svc:{REDIS_PORT}",
        shard_name(rtc, shard),
        rtc.namespace().unwrap_or_default()
    )
}

/// Everything one shard needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub stateful_set: StatefulSet,
    pub headless_service: Service,
    pub service: Service,
    pub disruption_budget: PodDisruptionBudget,
}

/// The objects of every shard of a managed backplane; empty for an external one.
pub fn shards(rtc: &RealtimeCluster) -> Vec<Shard> {
    let Some(managed) = &rtc.spec.backplane.managed else {
        return Vec::new();
    };
    (0..managed.shards)
        .map(|shard| Shard {
            stateful_set: stateful_set(rtc, managed, shard),
            headless_service: service(rtc, shard, true),
            service: service(rtc, shard, false),
            disruption_budget: disruption_budget(rtc, shard),
        })
        .collect()
}

/// The Secret holding the managed Redis' password. The caller generates `password` once and
/// reads it back from the existing Secret afterwards, so reconciling never rotates it. Generate it
/// alphanumeric: it ends up in a `redis://` URL and in a `$(VAR)`-expanded argument.
pub fn password_secret(rtc: &RealtimeCluster, password: &str) -> Secret {
    Secret {
        metadata: child_meta(
            rtc,
            password_secret_name(rtc),
            labels(rtc, "redis", "backplane"),
        ),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

fn shard_labels(rtc: &RealtimeCluster, shard: i32) -> BTreeMap<String, String> {
    let mut labels = labels(rtc, "redis", "backplane");
    labels.insert(SHARD_LABEL.to_owned(), shard.to_string());
    labels
}

/// The labels that pick shard `shard`'s pods: stable across operator versions, since a
/// StatefulSet's selector is immutable.
fn shard_selector(rtc: &RealtimeCluster, shard: i32) -> BTreeMap<String, String> {
    shard_labels(rtc, shard)
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "app.kubernetes.io/name" | "app.kubernetes.io/instance" | SHARD_LABEL
            )
        })
        .collect()
}

fn redis_args(managed: &ManagedBackplane) -> Vec<String> {
    let mut args: Vec<String> = vec!["--port".into(), REDIS_PORT.to_string()];
    if managed.persistence.enabled {
        args.extend(["--appendonly", "yes", "--dir", "/data"].map(String::from));
    } else {
        // Pub/sub keeps nothing worth saving; snapshots would only cost fork() latency.
        args.extend(["--save", "", "--appendonly", "no"].map(String::from));
    }
    args.extend(
        [
            "--maxclients",
            MAX_CLIENTS,
            "--timeout",
            IDLE_TIMEOUT_SECONDS,
        ]
        .map(String::from),
    );
    args.push("--client-output-buffer-limit".into());
    args.extend(PUBSUB_BUFFER_LIMIT.map(String::from));
    // The kubelet expands $(REDIS_PASSWORD) from the container's env, so the value lives only in
    // the Secret, never in the pod spec; Redis then overwrites its argv with its process title.
    args.extend(["--requirepass".to_owned(), format!("$({PASSWORD_ENV})")]);
    args
}

fn stateful_set(rtc: &RealtimeCluster, managed: &ManagedBackplane, shard: i32) -> StatefulSet {
    let name = shard_name(rtc, shard);
    let probe = |initial_delay, period| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("redis".into()),
            ..TCPSocketAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let container = Container {
        name: "redis".into(),
        image: Some(managed.image.clone()),
        // Bypass the image's entrypoint: it chowns and drops privileges, which needs root.
        command: Some(vec!["redis-server".into()]),
        args: Some(redis_args(managed)),
        env: Some(vec![EnvVar {
            name: PASSWORD_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: password_secret_name(rtc),
                    key: PASSWORD_KEY.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe(2, 5)),
        liveness_probe: Some(probe(15, 10)),
        resources: managed.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]),
        working_dir: Some("/data".into()),
        ..Container::default()
    };
    let persistence = &managed.persistence;
    let (volumes, claims) = if persistence.enabled {
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(DATA_VOLUME.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: persistence.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        persistence.size.clone(),
                    )])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        };
        (None, Some(vec![claim]))
    } else {
        // The root filesystem is read-only; Redis' working directory is a scratch volume.
        let scratch = Volume {
            name: DATA_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        };
        (Some(vec![scratch]), None)
    };
    StatefulSet {
        metadata: child_meta(rtc, name.clone(), shard_labels(rtc, shard)),
        spec: Some(StatefulSetSpec {
            // `validate` refuses replicas > 1 until Sentinel is built (see the module doc).
            replicas: Some(1),
            service_name: Some(headless_name(rtc, shard)),
            selector: LabelSelector {
                match_labels: Some(shard_selector(rtc, shard)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(shard_labels(rtc, shard)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(REDIS_UID),
                        run_as_group: Some(REDIS_UID),
                        fs_group: Some(REDIS_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    volumes,
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn service(rtc: &RealtimeCluster, shard: i32, headless: bool) -> Service {
    let name = if headless {
        headless_name(rtc, shard)
    } else {
        shard_name(rtc, shard)
    };
    Service {
        metadata: child_meta(rtc, name, shard_labels(rtc, shard)),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_owned()),
            // Stable per-pod DNS before readiness, which Sentinel's peers will need.
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(shard_selector(rtc, shard)),
            ports: Some(vec![ServicePort {
                name: Some("redis".into()),
                port: REDIS_PORT,
                target_port: Some(IntOrString::String("redis".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn disruption_budget(rtc: &RealtimeCluster, shard: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(rtc, shard_name(rtc, shard), shard_labels(rtc, shard)),
        spec: Some(PodDisruptionBudgetSpec {
            // One voluntary disruption at a time. `minAvailable: 1` on a single replica would
            // block every node drain forever; this lets drains proceed while still serialising
            // evictions once a shard has several servers.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(shard_selector(rtc, shard)),
                ..LabelSelector::default()
            }),
            // A crash-looping Redis must not hold a drain hostage.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
