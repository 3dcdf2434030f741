//! The managed backplane: per shard a Redis StatefulSet, a headless Service (stable pod DNS), a
//! client Service and a PodDisruptionBudget; plus the Secret holding the Redis password.
//!
//! Redis here is a pub/sub broker first: no persistence unless asked for, many clients (one or more
//! per pod and per pass-through connection), and output buffers sized for a sidecar that carries a
//! whole pod's traffic on one subscription. This module builds objects only; it never generates
//! the password (the caller does, once, and keeps it in the Secret) and never talks to a cluster.
//!
//! Two shapes per shard, chosen by `spec.backplane.managed.replicas`:
//! - **1**: one `redis` container; the client Service `<rtc>-redis-<shard>` (6379) is the URL.
//! - **3 or more** (Sentinel): every pod runs `redis` and `sentinel` (same image). Sentinel on each
//!   Redis pod, rather than a separate Sentinel Deployment, keeps one StatefulSet per shard (its
//!   selector, service name and volume claims are immutable, so a shard can go from 1 to 3
//!   replicas and back by changing the template and replica count only), and each Sentinel gets
//!   a stable DNS name to announce. Ordinal 0 starts as primary unless the Sentinels already know
//!   one (see [`redis_start_script`]); the client Service is then `<rtc>-redis-<shard>-sentinel`
//!   (26379), because a Service balancing over primary and replicas would send writes to
//!   read-only replicas. The sidecar finds the primary with
//!   `redis+sentinel://<rtc>-redis-<shard>-sentinel.<ns>.svc:26379/<rtc>-redis-<shard>`.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, Service, ServicePort, ServiceSpec, TCPSocketAction,
    Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::backplane_tls;
use super::meta::{child_meta, labels, restricted_container};
use crate::api::{ManagedBackplane, RealtimeCluster};

pub const REDIS_PORT: i32 = 6379;
pub const SENTINEL_PORT: i32 = 26379;
/// The key of the password in the Secret [`password_secret_name`] names.
pub const PASSWORD_KEY: &str = "password";
/// The Redis container reads its password from this variable (filled from the Secret).
const PASSWORD_ENV: &str = "REDIS_PASSWORD";
/// The non-root user of the official `redis` image.
const REDIS_UID: i64 = 999;
const SHARD_LABEL: &str = "switchboard.dev/shard";
const DATA_VOLUME: &str = "data";
/// Sentinel rewrites its own config file (known replicas, peers, the current primary and epoch),
/// so it lives on a writable volume while the root filesystem stays read-only. Memory-backed:
/// the file holds the password, which should not land on the node's disk.
const SENTINEL_VOLUME: &str = "sentinel";
const SENTINEL_DIR: &str = "/sentinel";

/// `sentinel down-after-milliseconds`: how long the primary must be unreachable before a
/// Sentinel calls it down. Redis' default is 30 s, during which every pod's publishes are only
/// buffered; 5 s bounds that outage while staying well above a network blip or a slow fork.
const DOWN_AFTER_MS: &str = "5000";
/// `sentinel failover-timeout`: a failover that has not finished in 60 s is retried (by another
/// Sentinel), and replicas are repointed at the new primary within that time. Redis' default,
/// 3 minutes, would leave a shard without a primary that long if the elected Sentinel dies mid-way.
const FAILOVER_TIMEOUT_MS: &str = "60000";
/// How long a restarted primary waits for the Sentinels to fail over before it takes the role
/// back itself (`REDIS_START`): twice `DOWN_AFTER_MS` plus the election, well inside the
/// liveness probe's first 45 s.
const RESTARTED_PRIMARY_WAIT_SECONDS: &str = "20";

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

/// Name of the Service in front of shard `shard`'s Sentinels (replicas >= 3 only).
pub fn sentinel_service_name(rtc: &RealtimeCluster, shard: i32) -> String {
    format!("{}-sentinel", shard_name(rtc, shard))
}

/// The name Sentinel monitors shard `shard`'s primary under: the StatefulSet's name, unique per
/// shard, so one Sentinel set could never confuse two shards.
pub fn master_name(rtc: &RealtimeCluster, shard: i32) -> String {
    shard_name(rtc, shard)
}

/// True when each shard runs replicas and Sentinels rather than one Redis.
pub fn uses_sentinel(managed: &ManagedBackplane) -> bool {
    managed.replicas >= 3
}

/// The stable DNS name of pod `ordinal` of shard `shard` (through the headless Service). The
/// `.svc` suffix resolves through the pod's DNS search path, so no cluster domain is assumed.
pub fn pod_host(rtc: &RealtimeCluster, shard: i32, ordinal: i32) -> String {
    format!(
        "{}-{ordinal}.{}.{}.svc",
        shard_name(rtc, shard),
        headless_name(rtc, shard),
        rtc.namespace().unwrap_or_default()
    )
}

/// The in-cluster URL of shard `shard`, without credentials: `redis://<svc>.<ns>.svc:6379` for a
/// single server, `redis+sentinel://<sentinel-svc>.<ns>.svc:26379/<master>` with Sentinel; with
/// TLS (the default) `rediss://` and `rediss+sentinel://`.
pub fn shard_url(rtc: &RealtimeCluster, shard: i32) -> String {
    let namespace = rtc.namespace().unwrap_or_default();
    let s = if backplane_tls::enabled(rtc) { "s" } else { "" };
    match &rtc.spec.backplane.managed {
        Some(managed) if uses_sentinel(managed) => format!(
            "redis{s}+sentinel://{}.{namespace}.svc:{SENTINEL_PORT}/{}",
            sentinel_service_name(rtc, shard),
            master_name(rtc, shard)
        ),
        _ => format!(
            "redis{s}://{}.{namespace}.svc:{REDIS_PORT}",
            shard_name(rtc, shard)
        ),
    }
}

/// The sidecar's `SWITCHBOARD_UPSTREAM_URL` for a managed backplane: every shard's
/// [`shard_url`], in shard order, separated by single spaces (the sidecar hashes channels over
/// them in this order, so it must never change for a given shard count). `None` for an external
/// backplane, whose URL comes from its Secret.
pub fn upstream_url(rtc: &RealtimeCluster) -> Option<String> {
    let managed = rtc.spec.backplane.managed.as_ref()?;
    Some(
        (0..managed.shards)
            .map(|shard| shard_url(rtc, shard))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Everything one shard needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    pub stateful_set: StatefulSet,
    /// Governs the StatefulSet: stable per-pod DNS names, published before readiness.
    pub headless_service: Service,
    /// What the sidecar connects to: the Redis Service `<rtc>-redis-<shard>` (6379) with one
    /// replica, the Sentinel Service `<rtc>-redis-<shard>-sentinel` (26379) with more.
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
            headless_service: service(rtc, managed, shard, ServiceRole::Headless),
            service: service(
                rtc,
                managed,
                shard,
                if uses_sentinel(managed) {
                    ServiceRole::Sentinel
                } else {
                    ServiceRole::Redis
                },
            ),
            disruption_budget: disruption_budget(rtc, managed, shard),
        })
        .collect()
}

/// The Secret holding the managed Redis' password. The caller generates `password` once and
/// reads it back from the existing Secret afterwards, so reconciling never rotates it. Generate it
/// alphanumeric: it ends up in a `redis://` URL and in a `$(VAR)`-expanded argument.
pub fn password_secret(rtc: &RealtimeCluster, password: &str) -> Secret {
    super::meta::generated_secret(
        rtc,
        password_secret_name(rtc),
        labels(rtc, "redis", "backplane"),
        PASSWORD_KEY,
        password,
    )
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

/// A file of the TLS Secret as mounted in the Redis and Sentinel containers.
fn tls_file(key: &str) -> String {
    format!("{}/{key}", backplane_tls::MOUNT_DIR)
}

/// The settings that make a server (or a Sentinel) listen on `port` with TLS only, present the
/// operator's certificate, and use TLS for replication and for the links Sentinels open.
/// Clients authenticate with the password, not with certificates.
fn tls_settings(port: i32) -> Vec<(&'static str, String)> {
    vec![
        ("port", "0".into()),
        ("tls-port", port.to_string()),
        ("tls-cert-file", tls_file(backplane_tls::CERT_KEY)),
        ("tls-key-file", tls_file(backplane_tls::KEY_KEY)),
        ("tls-ca-cert-file", tls_file(backplane_tls::CA_KEY)),
        ("tls-auth-clients", "no".into()),
        ("tls-replication", "yes".into()),
    ]
}

fn redis_args(managed: &ManagedBackplane) -> Vec<String> {
    let mut args: Vec<String> = if managed.tls {
        tls_settings(REDIS_PORT)
            .into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect()
    } else {
        vec!["--port".into(), REDIS_PORT.to_string()]
    };
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

/// Shell (POSIX `sh`, as in both the Debian and Alpine `redis` images) that sets `primary` to the
/// host the Sentinels report for `$MASTER_NAME`, asking each pod's Sentinel in turn (`$PEERS`),
/// else `$FIRST_PRIMARY` (ordinal 0) when no Sentinel answers: the first start of a shard, or
/// every Sentinel restarting at once. Asking first is what stops a restarted former primary from
/// coming back as a second primary after a failover. A reply counts only if it is exactly
/// `<host> 6379`, so an error text is never taken for a host.
///
/// Kubernetes expands `$(NAME)` in `command`/`args` for defined variables and turns `$$` into `$`,
/// so these scripts use `$NAME` / `${NAME}` and never `$$` (a test checks both).
const FIND_PRIMARY: &str = r#"export REDISCLI_AUTH="$REDIS_PASSWORD"
addr() { if [ "$#" -eq 2 ] && [ "$2" = "6379" ]; then echo "$1"; fi; }
ask_sentinels() {
  named=""
  for peer in $PEERS; do
    named=$(addr $(timeout 3 redis-cli $REDIS_CLI_TLS -h "$peer" -p 26379 --raw SENTINEL GET-MASTER-ADDR-BY-NAME "$MASTER_NAME" 2>/dev/null || true))
    if [ -n "$named" ]; then break; fi
  done
}
ask_sentinels
primary="${named:-$FIRST_PRIMARY}"
"#;

/// The rest of the `redis` container's entrypoint, run as `sh -c <script> redis-server <args>`:
/// primary when the Sentinels (or the fallback) name this pod, else a replica of the one they
/// name. The Sentinels repoint it on every later failover.
///
/// Running Sentinels that name this very pod mean the primary restarted (a pod deleted, a
/// crash) before they failed over. Starting at once would make it a second, empty primary for
/// as long as the failover takes (the sidecars that reached it then missed what was published
/// on the new one; seen on the real node) or, when it is back before they notice, keep an
/// empty primary that its replicas resync to. So it waits, not listening, up to
/// `$RESTARTED_PRIMARY_WAIT_SECONDS` for them to promote a replica, and only then, if none
/// could take over, starts as the primary.
const REDIS_START: &str = r#"if [ "$primary" = "$SELF" ] && [ -n "$named" ]; then
  echo "the Sentinels still name this restarted pod the primary; waiting up to ${RESTARTED_PRIMARY_WAIT_SECONDS}s for them to promote a replica" >&2
  i=0
  while [ "$i" -lt "$RESTARTED_PRIMARY_WAIT_SECONDS" ] && [ "$primary" = "$SELF" ]; do
    sleep 1
    i=$((i + 1))
    ask_sentinels
    primary="${named:-$SELF}"
  done
fi
if [ "$primary" = "$SELF" ]; then
  exec redis-server "$@"
fi
exec redis-server "$@" --replicaof "$primary" 6379
"#;

/// The rest of the `sentinel` container's entrypoint. `sentinel.conf` is written on the pod's
/// first start only: after a container restart, the file Sentinel rewrote (current primary,
/// epoch, known replicas and peers) is kept. `resolve-hostnames` must precede `monitor`, which
/// names a host, and Sentinel exits when that name does not resolve, so the script first waits
/// (up to 30 s) for a just-created pod's DNS record.
const SENTINEL_START: &str = r#"  i=0
  while [ "$i" -lt 30 ] && command -v getent >/dev/null && ! getent hosts "$primary" >/dev/null; do
    i=$((i + 1))
    sleep 1
  done
  cat > "$conf.new" <<EOF
$SENTINEL_LISTEN
dir $SENTINEL_DIR
requirepass $REDIS_PASSWORD
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF
sentinel monitor $MASTER_NAME $primary 6379 $QUORUM
sentinel auth-pass $MASTER_NAME $REDIS_PASSWORD
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $MASTER_NAME 1
EOF
  mv "$conf.new" "$conf"
fi
exec redis-sentinel "$conf"
"#;

/// The `redis` container's script with Sentinel.
pub fn redis_start_script() -> String {
    format!("set -eu\n{FIND_PRIMARY}{REDIS_START}")
}

/// The `sentinel` container's script.
pub fn sentinel_start_script() -> String {
    format!(
        "set -eu\nconf=\"$SENTINEL_DIR/sentinel.conf\"\nif [ ! -s \"$conf\" ]; then\n{FIND_PRIMARY}{SENTINEL_START}"
    )
}

/// Sentinels needed to agree the primary is down: a majority of the shard's pods, so a minority
/// cut off with a healthy primary can never start a failover (electing the Sentinel that runs
/// a failover needs a majority of all Sentinels too, which Sentinel enforces on its own).
pub fn quorum(managed: &ManagedBackplane) -> i32 {
    managed.replicas / 2 + 1
}

fn password_env(rtc: &RealtimeCluster) -> EnvVar {
    EnvVar {
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
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// What both containers of a Sentinel pod need to find the primary. `SELF` is this pod's
/// [`pod_host`], composed by the kubelet from `POD_NAME` (defined before it, as it must be).
fn sentinel_pod_env(rtc: &RealtimeCluster, managed: &ManagedBackplane, shard: i32) -> Vec<EnvVar> {
    let peers: Vec<String> = (0..managed.replicas)
        .map(|ordinal| pod_host(rtc, shard, ordinal))
        .collect();
    vec![
        password_env(rtc),
        EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        value_env(
            "SELF",
            format!(
                "$(POD_NAME).{}.{}.svc",
                headless_name(rtc, shard),
                rtc.namespace().unwrap_or_default()
            ),
        ),
        value_env("MASTER_NAME", master_name(rtc, shard)),
        value_env("PEERS", peers.join(" ")),
        value_env("FIRST_PRIMARY", pod_host(rtc, shard, 0)),
        // How the scripts' redis-cli reaches the Sentinels (split into words on purpose).
        value_env(
            "REDIS_CLI_TLS",
            if managed.tls {
                format!("--tls --cacert {}", tls_file(backplane_tls::CA_KEY))
            } else {
                String::new()
            },
        ),
    ]
}

fn tcp_probe(port: &str, initial_delay: i32, period: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..TCPSocketAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

fn container_port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn redis_container(rtc: &RealtimeCluster, managed: &ManagedBackplane, shard: i32) -> Container {
    let mut args = redis_args(managed);
    let (command, env) = if uses_sentinel(managed) {
        // Any server may be a replica after a failover, so all of them carry the primary's
        // password; and each announces its stable name, not its pod IP (which changes on
        // restart), so the Sentinels' list of replicas survives restarts.
        args.extend([
            "--masterauth".to_owned(),
            format!("$({PASSWORD_ENV})"),
            "--replica-announce-ip".to_owned(),
            "$(SELF)".to_owned(),
        ]);
        // `redis-server` is the script's `$0`, so `"$@"` is exactly `args`.
        let command = ["sh", "-c", &redis_start_script(), "redis-server"].map(String::from);
        let mut env = sentinel_pod_env(rtc, managed, shard);
        env.push(value_env(
            "RESTARTED_PRIMARY_WAIT_SECONDS",
            RESTARTED_PRIMARY_WAIT_SECONDS,
        ));
        (command.to_vec(), env)
    } else {
        // Bypass the image's entrypoint: it chowns and drops privileges, which needs root.
        (vec!["redis-server".into()], vec![password_env(rtc)])
    };
    Container {
        name: "redis".into(),
        image: Some(managed.image.clone()),
        command: Some(command),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![container_port("redis", REDIS_PORT)]),
        readiness_probe: Some(tcp_probe("redis", 2, 5)),
        liveness_probe: Some(tcp_probe("redis", 15, 10)),
        resources: managed.resources.clone(),
        security_context: Some(restricted_container()),
        volume_mounts: Some(with_tls_mount(
            managed,
            VolumeMount {
                name: DATA_VOLUME.into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
        )),
        working_dir: Some("/data".into()),
        ..Container::default()
    }
}

fn sentinel_container(rtc: &RealtimeCluster, managed: &ManagedBackplane, shard: i32) -> Container {
    let mut env = sentinel_pod_env(rtc, managed, shard);
    env.extend([
        value_env("QUORUM", quorum(managed).to_string()),
        value_env("DOWN_AFTER_MS", DOWN_AFTER_MS),
        value_env("FAILOVER_TIMEOUT_MS", FAILOVER_TIMEOUT_MS),
        value_env("SENTINEL_DIR", SENTINEL_DIR),
        // The first lines of sentinel.conf: where it listens (TLS only, by default).
        value_env(
            "SENTINEL_LISTEN",
            if managed.tls {
                tls_settings(SENTINEL_PORT)
                    .into_iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                format!("port {SENTINEL_PORT}")
            },
        ),
    ]);
    Container {
        name: "sentinel".into(),
        image: Some(managed.image.clone()),
        command: Some(
            ["sh", "-c", &sentinel_start_script()]
                .map(String::from)
                .to_vec(),
        ),
        env: Some(env),
        ports: Some(vec![container_port("sentinel", SENTINEL_PORT)]),
        readiness_probe: Some(tcp_probe("sentinel", 2, 5)),
        liveness_probe: Some(tcp_probe("sentinel", 15, 10)),
        // No resources: `managed.resources` sizes Redis; a Sentinel needs a few MB and little
        // CPU, and a namespace's LimitRange still applies its defaults.
        security_context: Some(restricted_container()),
        volume_mounts: Some(with_tls_mount(
            managed,
            VolumeMount {
                name: SENTINEL_VOLUME.into(),
                mount_path: SENTINEL_DIR.into(),
                ..VolumeMount::default()
            },
        )),
        working_dir: Some(SENTINEL_DIR.into()),
        ..Container::default()
    }
}

/// `mount`, and the TLS Secret read-only when the backplane uses TLS.
fn with_tls_mount(managed: &ManagedBackplane, mount: VolumeMount) -> Vec<VolumeMount> {
    let mut mounts = vec![mount];
    if managed.tls {
        mounts.push(VolumeMount {
            name: backplane_tls::VOLUME.into(),
            mount_path: backplane_tls::MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    mounts
}

/// Prefer spreading a shard's servers over nodes: all on one node, losing the node loses the
/// shard, Sentinel or not. Preferred, not required, so a one-node cluster (kind, a laptop) still
/// schedules them.
fn spread_over_nodes(rtc: &RealtimeCluster, shard: i32) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(shard_selector(rtc, shard)),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn stateful_set(rtc: &RealtimeCluster, managed: &ManagedBackplane, shard: i32) -> StatefulSet {
    let name = shard_name(rtc, shard);
    let sentinel = uses_sentinel(managed);
    let mut containers = vec![redis_container(rtc, managed, shard)];
    if sentinel {
        containers.push(sentinel_container(rtc, managed, shard));
    }
    let persistence = &managed.persistence;
    let (mut volumes, claims) = if persistence.enabled {
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
        (Vec::new(), Some(vec![claim]))
    } else {
        // The root filesystem is read-only; Redis' working directory is a scratch volume.
        let scratch = Volume {
            name: DATA_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        };
        (vec![scratch], None)
    };
    if managed.tls {
        volumes.push(Volume {
            name: backplane_tls::VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(backplane_tls::secret_name(rtc)),
                optional: Some(false),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    if sentinel {
        volumes.push(Volume {
            name: SENTINEL_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Volume::default()
        });
    }
    StatefulSet {
        metadata: child_meta(rtc, name, shard_labels(rtc, shard)),
        spec: Some(StatefulSetSpec {
            replicas: Some(managed.replicas),
            // `podManagementPolicy` stays the default, OrderedReady, in both shapes: it is
            // immutable, and keeping it lets a shard go from 1 to 3+ replicas (and back) in
            // place. Ordered creation also has ordinal 0 up before the others look for a primary;
            // it never holds back running pods, so it does not slow a failover.
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
                    containers,
                    affinity: sentinel.then(|| spread_over_nodes(rtc, shard)),
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
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: claims,
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ServiceRole {
    /// Governs the StatefulSet: every port, addresses published before readiness.
    Headless,
    /// Redis on 6379 (one replica).
    Redis,
    /// The Sentinels on 26379 (three or more replicas).
    Sentinel,
}

fn service_port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

fn service(
    rtc: &RealtimeCluster,
    managed: &ManagedBackplane,
    shard: i32,
    role: ServiceRole,
) -> Service {
    let (name, ports) = match role {
        ServiceRole::Headless => {
            let mut ports = vec![service_port("redis", REDIS_PORT)];
            if uses_sentinel(managed) {
                ports.push(service_port("sentinel", SENTINEL_PORT));
            }
            (headless_name(rtc, shard), ports)
        }
        ServiceRole::Redis => (
            shard_name(rtc, shard),
            vec![service_port("redis", REDIS_PORT)],
        ),
        ServiceRole::Sentinel => (
            sentinel_service_name(rtc, shard),
            vec![service_port("sentinel", SENTINEL_PORT)],
        ),
    };
    let headless = role == ServiceRole::Headless;
    Service {
        metadata: child_meta(rtc, name, shard_labels(rtc, shard)),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_owned()),
            // Stable per-pod DNS before readiness: a starting Redis or Sentinel resolves its
            // peers and the primary before any of them is ready.
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(shard_selector(rtc, shard)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn disruption_budget(
    rtc: &RealtimeCluster,
    managed: &ManagedBackplane,
    shard: i32,
) -> PodDisruptionBudget {
    let (min_available, max_unavailable) = if uses_sentinel(managed) {
        // Keep a majority of the pods (and so of the Sentinels) through drains: with fewer,
        // the Sentinels left could not elect a leader, and losing the primary then would leave
        // the shard without one until pods came back. 3 pods: one may go at a time; 5: two.
        (Some(IntOrString::Int(quorum(managed))), None)
    } else {
        // One voluntary disruption at a time. `minAvailable: 1` on a single replica would
        // block every node drain forever; this lets drains proceed.
        (None, Some(IntOrString::Int(1)))
    };
    PodDisruptionBudget {
        metadata: child_meta(rtc, shard_name(rtc, shard), shard_labels(rtc, shard)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available,
            max_unavailable,
            selector: Some(LabelSelector {
                match_labels: Some(shard_selector(rtc, shard)),
                ..LabelSelector::default()
            }),
            // A crash-looping Redis must not hold a drain hostage.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        ..PodDisruptionBudget::default()
    }
}
