//! The pure stages from YAML fixtures (`operator/tests/fixtures/`): the important fields of what
//! each builder produces, not snapshots of everything.

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::validate::{MAX_MANAGED_NAME_LEN, ValidateError, external_url, validate};
use super::{backplane, ingress, sidecar_config};
use crate::api::{Framework, Ingress as IngressSpec, RealtimeCluster};

const MINIMAL: &str = include_str!("../../tests/fixtures/minimal.yaml");
const FULL: &str = include_str!("../../tests/fixtures/full.yaml");
const SHARDED: &str = include_str!("../../tests/fixtures/sharded.yaml");
const EXTERNAL: &str = include_str!("../../tests/fixtures/external.yaml");
const SENTINEL: &str = include_str!("../../tests/fixtures/sentinel.yaml");
const TRAEFIK: &str = include_str!("../../tests/fixtures/traefik.yaml");
const GATEWAY: &str = include_str!("../../tests/fixtures/gateway.yaml");
const FIXTURES: [&str; 7] = [MINIMAL, FULL, SHARDED, EXTERNAL, SENTINEL, TRAEFIK, GATEWAY];

fn rtc(yaml: &str) -> RealtimeCluster {
    serde_yaml::from_str(yaml).expect("fixture parses as a RealtimeCluster")
}

fn pod_spec(shard: &backplane::Shard) -> &PodSpec {
    shard
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn redis_container(shard: &backplane::Shard) -> &Container {
    &pod_spec(shard).containers[0]
}

fn container<'a>(shard: &'a backplane::Shard, name: &str) -> &'a Container {
    pod_spec(shard)
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} container"))
}

fn env<'a>(container: &'a Container, name: &str) -> &'a EnvVar {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no {name} in {}", container.name))
}

fn env_value<'a>(container: &'a Container, name: &str) -> &'a str {
    env(container, name).value.as_deref().unwrap()
}

/// (Secret name, key) an env var is read from.
fn secret_ref(env: &EnvVar) -> (&str, &str) {
    let r = env
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{} is not from a Secret", env.name));
    assert_eq!(r.optional, Some(false), "{}", env.name);
    (r.name.as_str(), r.key.as_str())
}

/// True when `needle` appears in `args` as consecutive elements.
fn has_args(args: &[String], needle: &[&str]) -> bool {
    args.windows(needle.len()).any(|w| w == needle)
}

fn err(rtc: &RealtimeCluster) -> String {
    validate(rtc).unwrap_err().to_string()
}

// ---- validate ----

#[test]
fn every_fixture_validates() {
    for yaml in FIXTURES {
        let rtc = rtc(yaml);
        validate(&rtc).unwrap_or_else(|e| panic!("{}: {e}", rtc.name_any()));
    }
}

#[test]
fn the_longest_name_fits_every_derived_name() {
    // The schema's largest backplane: 32 shards of 9 servers.
    let mut rtc = rtc(SENTINEL);
    rtc.metadata.name = Some(format!("c{}", "h".repeat(MAX_MANAGED_NAME_LEN - 1)));
    let managed = rtc.spec.backplane.managed.as_mut().unwrap();
    (managed.shards, managed.replicas) = (32, 9);
    validate(&rtc).unwrap();
    let shards = backplane::shards(&rtc);
    assert_eq!(shards.len(), 32);
    for shard in &shards {
        let set = shard.stateful_set.name_any();
        for name in [
            set.clone(),
            shard.headless_service.name_any(),
            shard.service.name_any(),
            shard.disruption_budget.name_any(),
            // The last pod, and the controller-revision-hash label value on every pod.
            format!("{set}-8"),
            format!("{set}-0123456789"),
        ] {
            assert!(name.len() <= 63, "{name} has {} characters", name.len());
        }
    }
    // Should the schema ever allow far more shards, the derived names are still checked.
    rtc.spec.backplane.managed.as_mut().unwrap().shards = 1_000_000;
    assert!(matches!(
        validate(&rtc),
        Err(ValidateError::DerivedNameTooLong { len: 64, .. })
    ));
    assert!(err(&rtc).starts_with("metadata.name"));
}

#[test]
fn an_ingress_needs_a_resolved_app_port() {
    let mut generic = rtc(FULL);
    generic.spec.framework = Framework::Generic;
    generic.spec.app.port = None;
    assert!(err(&generic).contains("spec.app.port is required"));
    // Without an ingress nothing routes to the port, so the preset-less framework is fine.
    generic.spec.ingress = None;
    validate(&generic).unwrap();
}

#[test]
fn names_that_cannot_prefix_services_are_refused() {
    for name in ["chat.v2", "2chat", &"c".repeat(41)] {
        let mut bad = rtc(MINIMAL);
        bad.metadata.name = Some(name.to_owned());
        assert!(err(&bad).starts_with("metadata.name"), "{name}");
    }
    // An external backplane creates no Redis Services, so the name is free.
    let mut external = rtc(EXTERNAL);
    external.metadata.name = Some("webui.v2".into());
    validate(&external).unwrap();

    let mut no_uid = rtc(MINIMAL);
    no_uid.metadata.uid = None;
    assert_eq!(
        validate(&no_uid),
        Err(ValidateError::MissingMetadata("uid"))
    );
}

#[test]
fn cookie_affinity_is_refused_where_it_would_silently_not_pin() {
    let mut other = rtc(FULL);
    other.spec.ingress.as_mut().unwrap().class_name = Some("haproxy".into());
    let e = err(&other);
    assert!(e.starts_with("spec.ingress.affinity: cookie"), "{e}");
    for supported in ["nginx", "traefik", "spec.ingress.gateway", "\"haproxy\""] {
        assert!(e.contains(supported), "{e}");
    }
    other.spec.ingress.as_mut().unwrap().cookie = None;
    other.spec.ingress.as_mut().unwrap().affinity = crate::api::Affinity::None;
    validate(&other).unwrap();
    // The cluster's default class is unknown here, so it cannot be trusted to pin either.
    let mut default_class = rtc(FULL);
    default_class.spec.ingress.as_mut().unwrap().class_name = None;
    assert!(err(&default_class).contains("unset className"));

    let mut expressions = rtc(FULL);
    expressions.spec.selector =
        serde_yaml::from_str("matchExpressions: [{ key: app, operator: In, values: [chat] }]")
            .unwrap();
    assert_eq!(
        validate(&expressions),
        Err(ValidateError::SelectorNotServiceable)
    );
}

#[test]
fn external_urls_lose_their_password_and_bad_schemes_name_the_secret() {
    let external = rtc(EXTERNAL);
    assert_eq!(
        external_url(&external, "redis://:s3cret@redis.shared:6380/2").unwrap(),
        "redis://redis.shared:6380/2"
    );
    assert_eq!(
        external_url(&external, "redis://app:s3cret@redis.shared:6379").unwrap(),
        "redis://app@redis.shared:6379"
    );
    assert_eq!(
        external_url(&external, " redis://redis.shared:6379\n").unwrap(),
        "redis://redis.shared:6379"
    );
    for url in [
        "http://r",
        "redis://:s3cret@",
        "redis://:s3cret@a:6379,b:6379",
        "redis+sentinel://:s3cret@s:26379",
        "redis+sentinel://:s3cret@s:26379/",
        "redis+sentinel://:s3cret@s:26379,/m",
        "rediss+sentinel://:s3cret@s:26379",
        "redis+cluster://:s3cret@a:6379,b:6379/1",
        "redis+cluster://:s3cret@a:6379 redis://b:6379",
        "redis://a:6379 http://:s3cret@b:6379",
        " \n",
    ] {
        let e = external_url(&external, url).unwrap_err().to_string();
        assert!(e.contains("Secret shared-redis (key url"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
    // TLS URLs keep their scheme; their password goes like any other.
    assert_eq!(
        external_url(&external, "rediss://app:s3cret@r.cache.amazonaws.com:6379").unwrap(),
        "rediss://app@r.cache.amazonaws.com:6379"
    );
    assert_eq!(
        external_url(&external, "rediss+sentinel://:s3cret@s:26379,t:26379/m").unwrap(),
        "rediss+sentinel://s:26379,t:26379/m"
    );
    // A Redis Cluster by its seeds (ElastiCache's configuration endpoint is one of them).
    assert_eq!(
        external_url(
            &external,
            "rediss+cluster://app:s3cret@clustercfg.chat.cache.amazonaws.com:6379,n2:6379/"
        )
        .unwrap(),
        "rediss+cluster://app@clustercfg.chat.cache.amazonaws.com:6379,n2:6379/"
    );
    let scheme = external_url(&external, "memcached://r")
        .unwrap_err()
        .to_string();
    assert!(scheme.contains("rediss:// (TLS)"), "{scheme}");
    // spec.backplane.external.tls with no TLS URL is a mistake, said before any pod starts.
    let mut with_tls = external.clone();
    with_tls.spec.backplane.external.as_mut().unwrap().tls = Some(Default::default());
    let plain = external_url(&with_tls, "redis://:s3cret@r:6379")
        .unwrap_err()
        .to_string();
    assert!(
        plain.contains("spec.backplane.external.tls is set"),
        "{plain}"
    );
    assert!(!plain.contains("s3cret"), "{plain}");
    assert!(external_url(&with_tls, "rediss://:s3cret@r:6379").is_ok());
    let second = external_url(&external, "redis://a:6379 http://b")
        .unwrap_err()
        .to_string();
    assert!(second.contains("(shard 1, URL 2 of 2)"), "{second}");
}

#[test]
fn external_sentinel_and_sharded_urls_lose_their_password() {
    let external = rtc(EXTERNAL);
    assert_eq!(
        external_url(
            &external,
            "redis+sentinel://:s3cret@s1:26379,s2:26379/mymaster/2"
        )
        .unwrap(),
        "redis+sentinel://s1:26379,s2:26379/mymaster/2"
    );
    assert_eq!(
        external_url(&external, "redis+sentinel://app:s3cret@sentinel:26379/m").unwrap(),
        "redis+sentinel://app@sentinel:26379/m"
    );
    // One URL per shard, any whitespace between them, a single space out.
    assert_eq!(
        external_url(
            &external,
            "redis://:s3cret@a:6379\n  redis+sentinel://:s3cret@s:26379/b\n"
        )
        .unwrap(),
        "redis://a:6379 redis+sentinel://s:26379/b"
    );
}

// ---- backplane ----

#[test]
fn minimal_managed_backplane_is_one_pubsub_redis() {
    let rtc = rtc(MINIMAL);
    let shards = backplane::shards(&rtc);
    assert_eq!(shards.len(), 1);
    let shard = &shards[0];
    let sts = &shard.stateful_set;
    assert_eq!(sts.metadata.name.as_deref(), Some("chat-redis-0"));
    assert_eq!(sts.metadata.namespace.as_deref(), Some("apps"));
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.service_name.as_deref(), Some("chat-redis-0-headless"));
    assert_eq!(spec.volume_claim_templates, None);

    let redis = redis_container(shard);
    assert_eq!(redis.image.as_deref(), Some("redis:7.4"));
    let args = redis.args.as_ref().unwrap();
    assert!(
        has_args(args, &["--save", "", "--appendonly", "no"]),
        "{args:?}"
    );
    assert!(has_args(args, &["--maxclients", "20000"]));
    assert!(has_args(args, &["--timeout", "300"]));
    assert!(has_args(
        args,
        &[
            "--client-output-buffer-limit",
            "pubsub",
            "256mb",
            "64mb",
            "60"
        ]
    ));
    assert!(has_args(args, &["--requirepass", "$(REDIS_PASSWORD)"]));
    let env = &redis.env.as_ref().unwrap()[0];
    assert_eq!(env.name, "REDIS_PASSWORD");
    assert_eq!(env.value, None);
    let secret_ref = env
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (secret_ref.name.as_str(), secret_ref.key.as_str()),
        ("chat-redis-auth", "password")
    );

    for probe in [&redis.readiness_probe, &redis.liveness_probe] {
        let probe = probe.as_ref().unwrap();
        assert!(probe.exec.is_none() && probe.http_get.is_none());
        assert_eq!(
            probe.tcp_socket.as_ref().unwrap().port,
            IntOrString::String("redis".into())
        );
    }
    assert_eq!(redis.resources, None);
}

#[test]
fn redis_runs_under_the_restricted_pod_security_standard() {
    let shards = backplane::shards(&rtc(MINIMAL));
    let pod = pod_spec(&shards[0]);
    let pod_sc = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(pod_sc.run_as_user, Some(999));
    assert_eq!(
        pod_sc.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    let sc = redis_container(&shards[0])
        .security_context
        .as_ref()
        .unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    // A read-only root needs a writable /data.
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert!(volume.empty_dir.is_some());
    let mount = &redis_container(&shards[0]).volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str()),
        ("data", "/data")
    );
}

#[test]
fn every_backplane_object_is_labelled_and_owned() {
    let rtc = rtc(MINIMAL);
    let shard = &backplane::shards(&rtc)[0];
    let metas = [
        &shard.stateful_set.metadata,
        &shard.headless_service.metadata,
        &shard.service.metadata,
        &shard.disruption_budget.metadata,
        &backplane::password_secret(&rtc, "pw").metadata,
    ];
    for meta in metas {
        let labels = meta.labels.as_ref().unwrap();
        for (k, v) in [
            ("app.kubernetes.io/name", "redis"),
            ("app.kubernetes.io/instance", "chat"),
            ("app.kubernetes.io/component", "backplane"),
            ("app.kubernetes.io/part-of", "switchboard"),
            ("app.kubernetes.io/managed-by", "switchboard-operator"),
        ] {
            assert_eq!(
                labels.get(k).map(String::as_str),
                Some(v),
                "{k} on {meta:?}"
            );
        }
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "RealtimeCluster");
        assert_eq!(owner.api_version, "switchboard.dev/v1alpha1");
        assert_eq!(owner.name, "chat");
        assert_eq!(owner.uid, "6f1d2c3b-0000-4000-8000-000000000001");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
    }
}

#[test]
fn services_and_budget_select_their_shard() {
    let rtc = rtc(MINIMAL);
    let shard = &backplane::shards(&rtc)[0];
    let pod_labels = shard
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    let sts_selector = shard
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .as_ref()
        .unwrap();
    assert!(
        sts_selector
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v))
    );

    let headless = shard.headless_service.spec.as_ref().unwrap();
    assert_eq!(
        shard.headless_service.metadata.name.as_deref(),
        Some("chat-redis-0-headless")
    );
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.selector.as_ref(), Some(sts_selector));
    let client = shard.service.spec.as_ref().unwrap();
    assert_eq!(shard.service.metadata.name.as_deref(), Some("chat-redis-0"));
    assert_eq!(client.cluster_ip, None);
    assert_eq!(client.selector.as_ref(), Some(sts_selector));
    assert_eq!(client.ports.as_ref().unwrap()[0].port, 6379);

    let pdb = shard.disruption_budget.spec.as_ref().unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(pdb.min_available, None);
    assert_eq!(
        pdb.selector.as_ref().unwrap().match_labels.as_ref(),
        Some(sts_selector)
    );
}

#[test]
fn full_spec_carries_image_resources_and_persistence() {
    let shards = backplane::shards(&rtc(FULL));
    let redis = redis_container(&shards[0]);
    assert_eq!(redis.image.as_deref(), Some("redis:7.4.2"));
    let resources = redis.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1Gi");
    let args = redis.args.as_ref().unwrap();
    assert!(has_args(args, &["--appendonly", "yes"]));
    assert!(!args.iter().any(|a| a == "--save"));

    let spec = shards[0].stateful_set.spec.as_ref().unwrap();
    let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    let claim = claim.spec.as_ref().unwrap();
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
        "5Gi"
    );
    // With its data on the claim, the pod's only volume is the TLS Secret.
    let volumes = pod_spec(&shards[0]).volumes.as_ref().unwrap();
    let secrets: Vec<_> = volumes
        .iter()
        .map(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()))
        .collect();
    assert_eq!(secrets, [Some("chat-redis-tls")]);
}

#[test]
fn each_shard_gets_its_own_objects() {
    let rtc = rtc(SHARDED);
    let shards = backplane::shards(&rtc);
    assert_eq!(shards.len(), 2);
    let names: Vec<_> = shards
        .iter()
        .map(|s| s.stateful_set.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["chat-redis-0", "chat-redis-1"]);
    let selector = |s: &backplane::Shard| s.service.spec.clone().unwrap().selector.unwrap();
    assert_ne!(selector(&shards[0]), selector(&shards[1]));
    assert_eq!(selector(&shards[1])["switchboard.dev/shard"], "1");
    assert_eq!(
        backplane::shard_url(&rtc, 1),
        "rediss://chat-redis-1.apps.svc:6379"
    );
}

#[test]
fn external_backplane_builds_no_redis() {
    assert!(backplane::shards(&rtc(EXTERNAL)).is_empty());
}

#[test]
fn the_password_lives_in_the_secret_only() {
    for yaml in [MINIMAL, SENTINEL] {
        let rtc = rtc(yaml);
        let secret = backplane::password_secret(&rtc, "s3cret-pw");
        assert_eq!(secret.metadata.name.as_deref(), Some("chat-redis-auth"));
        assert_eq!(secret.data.as_ref().unwrap()["password"].0, b"s3cret-pw");
        let shards = backplane::shards(&rtc);
        let everything_else = serde_json::to_string(&(
            shards
                .iter()
                .map(|s| (&s.stateful_set, &s.service, &s.headless_service))
                .collect::<Vec<_>>(),
            sidecar_config::config_map(&rtc, &backplane::upstream_url(&rtc).unwrap()),
            sidecar_config::upstream_secret_env(&rtc),
        ))
        .unwrap();
        assert!(!everything_else.contains("s3cret-pw"));
    }
}

// ---- sidecar configuration ----

#[test]
fn sidecar_config_map_holds_the_sidecar_variables() {
    let rtc = rtc(MINIMAL);
    let cm = sidecar_config::config_map(&rtc, &backplane::shard_url(&rtc, 0));
    assert_eq!(cm.metadata.name.as_deref(), Some("chat-sidecar"));
    assert_eq!(
        cm.metadata.owner_references.as_ref().unwrap()[0].controller,
        Some(true)
    );
    let data = cm.data.as_ref().unwrap();
    assert_eq!(
        data["SWITCHBOARD_UPSTREAM_URL"],
        "rediss://chat-redis-0.apps.svc:6379"
    );
    assert_eq!(data["SWITCHBOARD_CHANNEL_PREFIX"], "");
    // The sidecar's own defaults (sidecar/src/config.rs).
    assert_eq!(
        data["SWITCHBOARD_PUBLISH_BUFFER_BYTES"],
        (8 << 20).to_string()
    );
    assert_eq!(data["SWITCHBOARD_PUBLISH_BUFFER_MESSAGES"], "10000");
    assert_eq!(
        data["SWITCHBOARD_CLIENT_BUFFER_BYTES"],
        (32 << 20).to_string()
    );
    assert!(data.keys().all(|k| k.starts_with("SWITCHBOARD_")));

    let full = self::rtc(FULL);
    let data = sidecar_config::config_map(&full, "redis://x:6379")
        .data
        .unwrap();
    assert_eq!(data["SWITCHBOARD_CHANNEL_PREFIX"], "tenant-a:");
    assert_eq!(data["SWITCHBOARD_PUBLISH_BUFFER_BYTES"], "1048576");
    assert_eq!(data["SWITCHBOARD_PUBLISH_BUFFER_MESSAGES"], "500");
    assert_eq!(data["SWITCHBOARD_CLIENT_BUFFER_BYTES"], "4194304");
}

#[test]
fn external_sidecar_config_has_the_url_without_password() {
    let rtc = rtc(EXTERNAL);
    let url = external_url(&rtc, "redis://:s3cret@redis.shared:6379").unwrap();
    let cm = sidecar_config::config_map(&rtc, &url);
    let data = cm.data.as_ref().unwrap();
    assert_eq!(
        data["SWITCHBOARD_UPSTREAM_URL"],
        "redis://redis.shared:6379"
    );
    assert_eq!(data["SWITCHBOARD_CHANNEL_PREFIX"], "webui:");
}

#[test]
fn config_hash_is_stable_and_follows_the_content() {
    let rtc = rtc(MINIMAL);
    let url = backplane::shard_url(&rtc, 0);
    let hash = sidecar_config::config_hash(&sidecar_config::config_map(&rtc, &url));
    assert_eq!(hash.len(), 40);
    assert!(
        hash.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(
        hash,
        sidecar_config::config_hash(&sidecar_config::config_map(&rtc, &url))
    );

    let mut changed = rtc.clone();
    changed.spec.backplane.channel_prefix = "x:".into();
    assert_ne!(
        hash,
        sidecar_config::config_hash(&sidecar_config::config_map(&changed, &url))
    );
    // Metadata is not content: relabelling does not roll the pods.
    let mut cm = sidecar_config::config_map(&rtc, &url);
    cm.metadata.labels = None;
    assert_eq!(hash, sidecar_config::config_hash(&cm));
}

// ---- ingress ----

#[test]
fn no_ingress_asked_for_builds_none() {
    let rtc = rtc(MINIMAL);
    assert_eq!(ingress::ingress(&rtc), None);
    assert_eq!(ingress::app_service(&rtc), None);
}

#[test]
fn nginx_ingress_pins_clients_and_keeps_websockets_open() {
    let rtc = rtc(FULL);
    let ing = ingress::ingress(&rtc).unwrap();
    let a = ing.metadata.annotations.as_ref().unwrap();
    let get = |k: &str| a[&format!("nginx.ingress.kubernetes.io/{k}")].as_str();
    assert_eq!(get("affinity"), "cookie");
    assert_eq!(get("affinity-mode"), "persistent");
    assert_eq!(get("session-cookie-name"), "chat-route");
    assert_eq!(get("session-cookie-max-age"), "3600");
    assert_eq!(get("session-cookie-path"), "/realtime");
    assert_eq!(get("session-cookie-samesite"), "Lax");
    assert_eq!(get("proxy-read-timeout"), "7200");
    assert_eq!(get("proxy-send-timeout"), "7200");

    let spec = ing.spec.as_ref().unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let tls = &spec.tls.as_ref().unwrap()[0];
    assert_eq!(tls.secret_name.as_deref(), Some("chat-tls"));
    let rule = &spec.rules.as_ref().unwrap()[0];
    assert_eq!(rule.host.as_deref(), Some("chat.example.com"));
    let path = &rule.http.as_ref().unwrap().paths[0];
    assert_eq!(
        (path.path.as_deref(), path.path_type.as_str()),
        (Some("/realtime"), "Prefix")
    );
    let backend = path.backend.service.as_ref().unwrap();
    assert_eq!(backend.name, "chat-app");
    assert_eq!(backend.port.as_ref().unwrap().number, Some(3001));
    assert_eq!(
        ing.metadata.owner_references.as_ref().unwrap()[0].controller,
        Some(true)
    );

    let svc = ingress::app_service(&rtc).unwrap();
    assert_eq!(svc.metadata.name.as_deref(), Some("chat-app"));
    let svc = svc.spec.unwrap();
    assert_eq!(svc.selector.unwrap()["tier"], "web");
    assert_eq!(svc.ports.unwrap()[0].port, 3001);
}

#[test]
fn session_routing_admits_only_the_fleet_to_the_peer_port() {
    let rtc = rtc(include_str!("../../tests/fixtures/session-routing.yaml"));
    let policy = super::peers::network_policy(&rtc).expect("a NetworkPolicy with session routing");
    assert_eq!(policy.name_any(), "chat-front-peers");
    assert_eq!(
        policy.metadata.owner_references.as_ref().unwrap()[0].controller,
        Some(true)
    );
    let spec = policy.spec.unwrap();
    let selected = spec.pod_selector.unwrap().match_labels.unwrap();
    assert_eq!(selected, [("app".to_owned(), "chat".to_owned())].into());
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    let rules = spec.ingress.unwrap();
    let ports = |i: usize| -> Vec<i32> {
        rules[i]
            .ports
            .iter()
            .flatten()
            .map(|p| match p.port {
                Some(IntOrString::Int(n)) => n,
                ref other => panic!("a port by number, not {other:?}"),
            })
            .collect()
    };
    // From anywhere: Open WebUI's port, the front, the sidecar's probes and metrics.
    assert_eq!(rules[0].from, None);
    assert_eq!(ports(0), [8080, crate::names::FRONT_PORT, 9091]);
    assert!(!ports(0).contains(&crate::names::FRONT_PEER_PORT));
    // The peer port: the app's pods, and pods that join by label.
    assert_eq!(ports(1), [crate::names::FRONT_PEER_PORT]);
    let peers: Vec<_> = rules[1]
        .from
        .iter()
        .flatten()
        .map(|peer| {
            assert_eq!(
                peer.namespace_selector, None,
                "the cluster's own namespace only"
            );
            peer.pod_selector.clone().unwrap().match_labels.unwrap()
        })
        .collect();
    assert_eq!(
        peers,
        [
            [("app".to_owned(), "chat".to_owned())].into(),
            [(crate::names::CLUSTER_LABEL.to_owned(), "chat".to_owned())].into(),
        ]
    );

    // An app of several workers: each worker's port is admitted like the app's, once.
    let mut workers = rtc.clone();
    workers.spec.app.worker_ports = Some(vec![8080, 8081]);
    let policy = super::peers::network_policy(&workers).unwrap();
    let public: Vec<_> = policy.spec.unwrap().ingress.unwrap()[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.port.clone())
        .collect();
    assert_eq!(
        public,
        [8080, 8081, crate::names::FRONT_PORT, 9091].map(|n| Some(IntOrString::Int(n)))
    );

    let mut opted_out = rtc.clone();
    opted_out.spec.ingress.as_mut().unwrap().network_policy = Some(false);
    assert_eq!(super::peers::network_policy(&opted_out), None);
    // Cookie affinity has no peer port to guard.
    assert_eq!(super::peers::network_policy(&self::rtc(FULL)), None);
}

#[test]
fn session_routing_points_the_service_at_the_front_and_configures_it() {
    let rtc = rtc(include_str!("../../tests/fixtures/session-routing.yaml"));
    assert!(rtc.spec.session_routing());
    let svc = ingress::app_service(&rtc).unwrap().spec.unwrap();
    let port = &svc.ports.unwrap()[0];
    assert_eq!(port.port, 8080, "clients still reach the app's port");
    assert_eq!(
        port.target_port,
        Some(IntOrString::Int(crate::names::FRONT_PORT)),
        "the front answers first"
    );
    let route = ingress::http_route(&rtc).unwrap();
    let text = serde_json::to_string(&route.data).unwrap();
    assert!(
        !text.contains("sessionPersistence"),
        "no cookie with session routing: {text}"
    );

    let data = sidecar_config::config_map(&rtc, "redis://r:6379")
        .data
        .unwrap();
    assert_eq!(data["SWITCHBOARD_FRONT_LISTEN"], "0.0.0.0:9092");
    assert_eq!(data["SWITCHBOARD_FRONT_PEER_LISTEN"], "0.0.0.0:9093");
    assert_eq!(data["SWITCHBOARD_FRONT_APP"], "127.0.0.1:8080");
    let mut workers = rtc.clone();
    workers.spec.app.worker_ports = Some(vec![8080, 8081]);
    assert_eq!(
        sidecar_config::config_map(&workers, "redis://r:6379")
            .data
            .unwrap()["SWITCHBOARD_FRONT_APP"],
        "127.0.0.1:8080,127.0.0.1:8081",
        "every worker, in order"
    );
    assert_eq!(
        data["SWITCHBOARD_FRONT_PATH"], "/ws/socket.io/",
        "Open WebUI's path"
    );
    assert_eq!(
        data["SWITCHBOARD_FRONT_SECRET_FILE"],
        crate::names::FRONT_SECRET_FILE
    );

    let desired = super::build::build(
        &rtc,
        Some("redis://r:6379"),
        "pw",
        "the-fleet-secret-0123",
        Default::default(),
    );
    let secret = desired
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("chat-front"))
        .expect("the front's Secret is built");
    assert_eq!(
        secret.data.as_ref().unwrap()[crate::names::FRONT_SECRET_KEY].0,
        b"the-fleet-secret-0123"
    );
    assert_eq!(
        secret.metadata.owner_references.as_ref().unwrap()[0].controller,
        Some(true)
    );

    // Cookie affinity (the default) keeps the app's port and no front.
    let cookie = self::rtc(FULL);
    let svc = ingress::app_service(&cookie).unwrap().spec.unwrap();
    assert_eq!(
        svc.ports.unwrap()[0].target_port,
        Some(IntOrString::Int(3001))
    );
    let data = sidecar_config::config_map(&cookie, "redis://r:6379")
        .data
        .unwrap();
    assert!(!data.keys().any(|k| k.starts_with("SWITCHBOARD_FRONT_")));
    let desired = super::build::build(
        &cookie,
        Some("redis://r:6379"),
        "pw",
        "x",
        Default::default(),
    );
    assert!(
        !desired
            .secrets
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("chat-front"))
    );
}

#[test]
fn cookie_defaults_apply_and_no_affinity_keeps_only_timeouts() {
    let mut rtc = rtc(FULL);
    rtc.spec.ingress.as_mut().unwrap().cookie = None;
    let a = ingress::ingress(&rtc)
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    assert_eq!(
        a["nginx.ingress.kubernetes.io/session-cookie-name"],
        "sb-route"
    );
    assert_eq!(
        a["nginx.ingress.kubernetes.io/session-cookie-max-age"],
        "172800"
    );

    let external = self::rtc(EXTERNAL);
    let a = ingress::ingress(&external)
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    assert!(
        !a.keys()
            .any(|k| k.contains("affinity") || k.contains("session-cookie"))
    );
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
}

#[test]
fn every_preset_routes_to_its_port() {
    let ingress: IngressSpec =
        serde_yaml::from_str("{ className: nginx, host: chat.example.com }").unwrap();
    for (framework, port) in [
        (Framework::PythonSocketio, 5000),
        (Framework::FlaskSocketio, 5000),
        (Framework::SocketioNode, 3000),
        (Framework::OpenWebui, 8080),
        (Framework::Dify, 5001),
        (Framework::Generic, 9000),
    ] {
        let mut rtc = rtc(MINIMAL);
        rtc.spec.framework = framework;
        rtc.spec.ingress = Some(ingress.clone());
        if framework == Framework::Generic {
            rtc.spec.app.port = Some(port);
        }
        validate(&rtc).unwrap();
        let ing = ingress::ingress(&rtc).unwrap();
        let backend = ing.spec.unwrap().rules.unwrap()[0]
            .http
            .clone()
            .unwrap()
            .paths[0]
            .backend
            .service
            .clone()
            .unwrap();
        assert_eq!(backend.port.unwrap().number, Some(port), "{framework:?}");
        let svc = ingress::app_service(&rtc).unwrap().spec.unwrap();
        assert_eq!(
            svc.ports.unwrap()[0].target_port,
            Some(IntOrString::Int(port))
        );
        // The backplane and sidecar configuration do not depend on the framework.
        assert_eq!(backplane::shards(&rtc).len(), 1);
    }
}

// ---- backplane with Sentinel ----

#[test]
fn three_replicas_run_redis_and_sentinel_in_every_pod() {
    let rtc = rtc(SENTINEL);
    let shards = backplane::shards(&rtc);
    assert_eq!(shards.len(), 1);
    let shard = &shards[0];
    let spec = shard.stateful_set.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("chat-redis-0-headless"));
    // Immutable: the same in both shapes, so 1 <-> 3 replicas is an in-place update.
    assert_eq!(spec.pod_management_policy, None);
    let names: Vec<_> = pod_spec(shard).containers.iter().map(|c| &c.name).collect();
    assert_eq!(names, ["redis", "sentinel"]);

    let redis = container(shard, "redis");
    let command = redis.command.as_ref().unwrap();
    assert_eq!(command[..2], ["sh", "-c"]);
    assert_eq!(command[2], backplane::redis_start_script());
    assert_eq!(command[3], "redis-server");
    let args = redis.args.as_ref().unwrap();
    assert!(has_args(args, &["--requirepass", "$(REDIS_PASSWORD)"]));
    assert!(has_args(args, &["--masterauth", "$(REDIS_PASSWORD)"]));
    assert!(has_args(args, &["--replica-announce-ip", "$(SELF)"]));
    assert!(has_args(args, &["--save", "", "--appendonly", "no"]));
    assert_eq!(
        redis.resources.as_ref().unwrap().requests.as_ref().unwrap()["memory"].0,
        "128Mi"
    );

    let sentinel = container(shard, "sentinel");
    assert_eq!(sentinel.image.as_deref(), Some("redis:7.4"));
    assert_eq!(
        sentinel.command.as_ref().unwrap()[2],
        backplane::sentinel_start_script()
    );
    assert_eq!(sentinel.ports.as_ref().unwrap()[0].container_port, 26379);
    assert_eq!(sentinel.resources, None);
    for c in [redis, sentinel] {
        assert_eq!(
            secret_ref(env(c, "REDIS_PASSWORD")),
            ("chat-redis-auth", "password")
        );
        let pod_name = env(c, "POD_NAME").value_from.as_ref().unwrap();
        assert_eq!(
            pod_name.field_ref.as_ref().unwrap().field_path,
            "metadata.name"
        );
        // POD_NAME must come first for the kubelet to expand it in SELF.
        let order: Vec<_> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert!(
            order.iter().position(|n| *n == "POD_NAME") < order.iter().position(|n| *n == "SELF")
        );
        assert_eq!(
            env_value(c, "SELF"),
            "$(POD_NAME).chat-redis-0-headless.apps.svc"
        );
        assert_eq!(env_value(c, "MASTER_NAME"), "chat-redis-0");
        assert_eq!(
            env_value(c, "FIRST_PRIMARY"),
            "chat-redis-0-0.chat-redis-0-headless.apps.svc"
        );
        assert_eq!(
            env_value(c, "PEERS"),
            "chat-redis-0-0.chat-redis-0-headless.apps.svc \
             chat-redis-0-1.chat-redis-0-headless.apps.svc \
             chat-redis-0-2.chat-redis-0-headless.apps.svc"
        );
        for probe in [&c.readiness_probe, &c.liveness_probe] {
            let port = &probe.as_ref().unwrap().tcp_socket.as_ref().unwrap().port;
            assert_eq!(port, &IntOrString::String(c.name.clone()));
        }
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
    }
    assert_eq!(env_value(sentinel, "QUORUM"), "2");
    assert_eq!(env_value(sentinel, "DOWN_AFTER_MS"), "5000");
    assert_eq!(env_value(sentinel, "FAILOVER_TIMEOUT_MS"), "60000");
    assert_eq!(env_value(sentinel, "SENTINEL_DIR"), "/sentinel");
    let mount = &sentinel.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str()),
        ("sentinel", "/sentinel")
    );
    let volume = pod_spec(shard)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "sentinel")
        .unwrap();
    assert_eq!(
        volume.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    let anti = pod_spec(shard)
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
}

#[test]
fn sentinel_shards_expose_sentinels_and_keep_a_quorum() {
    let rtc = rtc(SENTINEL);
    let shard = &backplane::shards(&rtc)[0];
    let ports = |svc: &k8s_openapi::api::core::v1::Service| -> Vec<(String, i32)> {
        svc.spec
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap(), p.port))
            .collect()
    };
    // The client Service is the Sentinels': one balancing over primary and replicas would send
    // writes to read-only replicas.
    assert_eq!(shard.service.name_any(), "chat-redis-0-sentinel");
    assert_eq!(ports(&shard.service), [("sentinel".to_owned(), 26379)]);
    assert_eq!(shard.service.spec.as_ref().unwrap().cluster_ip, None);
    assert_eq!(
        ports(&shard.headless_service),
        [("redis".to_owned(), 6379), ("sentinel".to_owned(), 26379)]
    );
    let headless = shard.headless_service.spec.as_ref().unwrap();
    assert_eq!(headless.publish_not_ready_addresses, Some(true));

    let pdb = shard.disruption_budget.spec.as_ref().unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(2)));
    assert_eq!(pdb.max_unavailable, None);
    let mut five = rtc.clone();
    five.spec.backplane.managed.as_mut().unwrap().replicas = 5;
    let five = &backplane::shards(&five)[0];
    assert_eq!(
        five.disruption_budget.spec.as_ref().unwrap().min_available,
        Some(IntOrString::Int(3))
    );
    assert_eq!(env_value(container(five, "sentinel"), "QUORUM"), "3");

    assert_eq!(
        backplane::shard_url(&rtc, 0),
        "rediss+sentinel://chat-redis-0-sentinel.apps.svc:26379/chat-redis-0"
    );
}

#[test]
fn one_replica_keeps_the_plain_shape() {
    let rtc = rtc(MINIMAL);
    let shard = &backplane::shards(&rtc)[0];
    assert_eq!(pod_spec(shard).containers.len(), 1);
    assert_eq!(pod_spec(shard).affinity, None);
    let redis = redis_container(shard);
    assert_eq!(
        redis.command.as_deref(),
        Some(&["redis-server".to_owned()][..])
    );
    assert_eq!(redis.env.as_ref().unwrap().len(), 1);
    let args = redis.args.as_ref().unwrap();
    assert!(
        !args
            .iter()
            .any(|a| a == "--masterauth" || a == "--replicaof")
    );
    assert_eq!(shard.service.name_any(), "chat-redis-0");
    assert_eq!(
        shard
            .headless_service
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn start_scripts_survive_kubelet_expansion() {
    // The kubelet rewrites `$$` to `$` and `$(VAR)` for every defined VAR in command and args.
    let rtc = rtc(SENTINEL);
    let shard = &backplane::shards(&rtc)[0];
    for c in &pod_spec(shard).containers {
        let script = &c.command.as_ref().unwrap()[2];
        assert!(!script.contains("$$"), "{}", c.name);
        for e in c.env.iter().flatten() {
            assert!(!script.contains(&format!("$({})", e.name)), "{}", e.name);
        }
    }
    // Every upper-case variable a script reads is in its own container's env (a missing one is
    // `parameter not set` under `set -u`: a crash loop only a real pod shows).
    for c in &pod_spec(shard).containers {
        let script = &c.command.as_ref().unwrap()[2];
        let defined: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
        let mut rest = script.as_str();
        while let Some(at) = rest.find('$') {
            rest = &rest[at + 1..];
            let name: String = rest
                .trim_start_matches('{')
                .chars()
                .take_while(|ch| ch.is_ascii_uppercase() || *ch == '_')
                .collect();
            if name.len() > 1 && name != "REDISCLI_AUTH" {
                assert!(
                    defined.contains(&name.as_str()),
                    "{} reads ${name}, not in its env",
                    c.name
                );
            }
        }
    }
    let sentinel = backplane::sentinel_start_script();
    let resolve = sentinel.find("sentinel resolve-hostnames yes").unwrap();
    assert!(resolve < sentinel.find("sentinel monitor").unwrap());
}

/// Runs a start script with `sh`, with fake `redis-cli` / `redis-server` / `redis-sentinel`
/// in front of the real PATH: the fake Sentinel at `answering` reports `primary`, the one at
/// `erring` answers an error, every other peer is unreachable.
#[cfg(unix)]
fn run_script(
    script: &str,
    self_host: &str,
    answering: Option<(&str, &str)>,
    erring: &str,
    dir: &std::path::Path,
) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fakes = [
        (
            "redis-cli",
            r#"#!/bin/sh
host=""
while [ $# -gt 0 ]; do case "$1" in -h) host="$2"; shift 2;; *) shift;; esac; done
if [ "$REDISCLI_AUTH" != "pw" ]; then echo "NOAUTH Authentication required."; exit 0; fi
if [ "$host" = "$ANSWERING" ]; then
  # Answers queued in $SENTINEL_DIR/answers (one per line) come first: a failover under way.
  if [ -s "$SENTINEL_DIR/answers" ]; then
    KNOWN_PRIMARY=$(head -n 1 "$SENTINEL_DIR/answers")
    tail -n +2 "$SENTINEL_DIR/answers" > "$SENTINEL_DIR/answers.rest"
    mv "$SENTINEL_DIR/answers.rest" "$SENTINEL_DIR/answers"
  fi
  printf '%s\n6379\n' "$KNOWN_PRIMARY"
  exit 0
fi
if [ "$host" = "$ERRING" ]; then echo "ERR No such master with that name"; exit 0; fi
exit 1
"#,
        ),
        ("redis-server", "#!/bin/sh\necho \"redis-server $*\"\n"),
        ("redis-sentinel", "#!/bin/sh\ncat \"$1\"\n"),
        ("getent", "#!/bin/sh\nexit 0\n"),
    ];
    for (name, body) in fakes {
        let path = bin.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let host = |i: i32| format!("chat-redis-0-{i}.chat-redis-0-headless.apps.svc");
    let output = std::process::Command::new("sh")
        .args(["-c", script, "redis-server", "--port", "6379"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("REDIS_PASSWORD", "pw")
        .env("SELF", self_host)
        .env("MASTER_NAME", "chat-redis-0")
        .env("PEERS", format!("{} {} {}", host(0), host(1), host(2)))
        .env("FIRST_PRIMARY", host(0))
        .env("QUORUM", "2")
        .env("DOWN_AFTER_MS", "5000")
        .env("FAILOVER_TIMEOUT_MS", "60000")
        .env("RESTARTED_PRIMARY_WAIT_SECONDS", "2")
        .env("SENTINEL_DIR", dir)
        .env("REDIS_CLI_TLS", "")
        .env("SENTINEL_LISTEN", "port 26379")
        .env("ANSWERING", answering.map_or("", |a| a.0))
        .env("KNOWN_PRIMARY", answering.map_or("", |a| a.1))
        .env("ERRING", erring)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[cfg(unix)]
#[test]
fn redis_starts_as_primary_only_when_no_sentinel_names_another() {
    let dir = std::env::temp_dir().join(format!("sb-redis-start-{}", std::process::id()));
    let script = backplane::redis_start_script();
    let host = |i: i32| format!("chat-redis-0-{i}.chat-redis-0-headless.apps.svc");
    // First start of a shard: nobody knows a primary; ordinal 0 takes it.
    let out = run_script(&script, &host(0), None, "", &dir);
    assert_eq!(out.trim(), "redis-server --port 6379");
    let out = run_script(&script, &host(1), None, &host(0), &dir);
    assert_eq!(
        out.trim(),
        format!("redis-server --port 6379 --replicaof {} 6379", host(0))
    );
    // After a failover to ordinal 2, a restarted ordinal 0 comes back as its replica; an error
    // reply from another Sentinel is not taken for a host.
    let out = run_script(
        &script,
        &host(0),
        Some((&host(2), &host(2))),
        &host(1),
        &dir,
    );
    assert_eq!(
        out.trim(),
        format!("redis-server --port 6379 --replicaof {} 6379", host(2))
    );
    // A restarted primary the Sentinels still name waits for their failover, then replicates
    // from the one they promoted...
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("answers"), format!("{0}\n{0}\n", host(2))).unwrap();
    let out = run_script(&script, &host(2), Some((&host(1), &host(0))), "", &dir);
    assert_eq!(
        out.trim(),
        format!("redis-server --port 6379 --replicaof {} 6379", host(0))
    );
    // ... and takes the role back only when no replica was promoted in time.
    let out = run_script(&script, &host(2), Some((&host(1), &host(2))), "", &dir);
    assert_eq!(out.trim(), "redis-server --port 6379");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(unix)]
#[test]
fn sentinel_writes_its_config_once() {
    let dir = std::env::temp_dir().join(format!("sb-sentinel-start-{}", std::process::id()));
    let script = backplane::sentinel_start_script();
    let host = |i: i32| format!("chat-redis-0-{i}.chat-redis-0-headless.apps.svc");
    let conf = run_script(&script, &host(1), Some((&host(0), &host(2))), "", &dir);
    let lines: Vec<&str> = conf.lines().collect();
    for expected in [
        "port 26379".to_owned(),
        "requirepass pw".to_owned(),
        "sentinel resolve-hostnames yes".to_owned(),
        "sentinel announce-hostnames yes".to_owned(),
        format!("sentinel announce-ip {}", host(1)),
        format!("sentinel monitor chat-redis-0 {} 6379 2", host(2)),
        "sentinel auth-pass chat-redis-0 pw".to_owned(),
        "sentinel down-after-milliseconds chat-redis-0 5000".to_owned(),
        "sentinel failover-timeout chat-redis-0 60000".to_owned(),
    ] {
        assert!(lines.contains(&expected.as_str()), "{expected:?} in {conf}");
    }
    // A restarted container keeps what Sentinel rewrote (the current primary and epoch).
    std::fs::write(dir.join("sentinel.conf"), "port 26379\n# rewritten\n").unwrap();
    let kept = run_script(&script, &host(1), None, "", &dir);
    assert_eq!(kept, "port 26379\n# rewritten\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- sidecar configuration per backplane shape ----

#[test]
fn upstream_urls_list_every_shard_in_order() {
    assert_eq!(
        backplane::upstream_url(&rtc(MINIMAL)).unwrap(),
        "rediss://chat-redis-0.apps.svc:6379"
    );
    assert_eq!(
        backplane::upstream_url(&rtc(SHARDED)).unwrap(),
        "rediss://chat-redis-0.apps.svc:6379 rediss://chat-redis-1.apps.svc:6379"
    );
    let mut sharded_sentinel = rtc(SENTINEL);
    sharded_sentinel
        .spec
        .backplane
        .managed
        .as_mut()
        .unwrap()
        .shards = 2;
    validate(&sharded_sentinel).unwrap();
    assert_eq!(
        backplane::upstream_url(&sharded_sentinel).unwrap(),
        "rediss+sentinel://chat-redis-0-sentinel.apps.svc:26379/chat-redis-0 \
         rediss+sentinel://chat-redis-1-sentinel.apps.svc:26379/chat-redis-1"
    );
    let shards = backplane::shards(&sharded_sentinel);
    assert_eq!(
        env_value(container(&shards[1], "sentinel"), "MASTER_NAME"),
        "chat-redis-1"
    );
    assert_eq!(backplane::upstream_url(&rtc(EXTERNAL)), None);
}

#[test]
fn the_credential_reaches_the_sidecar_from_a_secret() {
    let managed = sidecar_config::upstream_secret_env(&rtc(SENTINEL)).unwrap();
    assert_eq!(managed.name, "SWITCHBOARD_UPSTREAM_PASSWORD");
    assert_eq!(managed.value, None);
    assert_eq!(secret_ref(&managed), ("chat-redis-auth", "password"));

    // External: the whole URL, password included, straight from the user's Secret.
    let external = sidecar_config::upstream_secret_env(&rtc(EXTERNAL)).unwrap();
    assert_eq!(external.name, "SWITCHBOARD_UPSTREAM_URL");
    assert_eq!(secret_ref(&external), ("shared-redis", "url"));
}

#[test]
fn a_cross_site_cookie_is_secure_with_its_own_path() {
    let mut rtc = rtc(FULL);
    let ingress_spec = rtc.spec.ingress.as_mut().unwrap();
    let cookie = ingress_spec.cookie.as_mut().unwrap();
    cookie.same_site = Some(crate::api::SameSite::None);
    cookie.path = Some("/".into());
    let ing = ingress::ingress(&rtc).unwrap();
    let a = ing.metadata.annotations.unwrap();
    let get = |k: &str| {
        a.get(&format!("nginx.ingress.kubernetes.io/{k}"))
            .map(String::as_str)
    };
    assert_eq!(get("session-cookie-samesite"), Some("None"));
    // Secure is implied: browsers drop a SameSite=None cookie without it.
    assert_eq!(get("session-cookie-secure"), Some("true"));
    assert_eq!(get("session-cookie-path"), Some("/"));

    // The default cookie is Lax and not Secure (it also works over plain HTTP).
    let mut plain = rtc.clone();
    plain.spec.ingress.as_mut().unwrap().cookie = None;
    let a = ingress::ingress(&plain)
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    assert_eq!(
        a["nginx.ingress.kubernetes.io/session-cookie-samesite"],
        "Lax"
    );
    assert!(!a.contains_key("nginx.ingress.kubernetes.io/session-cookie-secure"));
}

// ---- ingress: traefik ----

#[test]
fn traefik_pins_clients_through_the_service() {
    let rtc = rtc(TRAEFIK);
    let ing = ingress::ingress(&rtc).unwrap();
    assert_eq!(ing.metadata.annotations, None);
    let spec = ing.spec.as_ref().unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("traefik"));
    assert_eq!(
        spec.tls.as_ref().unwrap()[0].secret_name.as_deref(),
        Some("chat-tls")
    );
    let svc = ingress::app_service(&rtc).unwrap();
    let a = svc.metadata.annotations.as_ref().unwrap();
    let get = |k: &str| a[&format!("traefik.ingress.kubernetes.io/service.sticky.{k}")].as_str();
    assert_eq!(get("cookie"), "true");
    assert_eq!(get("cookie.name"), "chat-route");
    assert_eq!(get("cookie.samesite"), "lax");
    assert_eq!(get("cookie.httponly"), "true");
    assert_eq!(get("cookie.maxage"), "7200");
    // Neither asked for: Traefik's defaults (not Secure, path `/`).
    assert!(!a.contains_key("traefik.ingress.kubernetes.io/service.sticky.cookie.secure"));
    assert!(!a.contains_key("traefik.ingress.kubernetes.io/service.sticky.cookie.path"));
    assert!(!a.keys().any(|k| k.starts_with("nginx.")));

    let mut cross_site = rtc.clone();
    let cookie = cross_site
        .spec
        .ingress
        .as_mut()
        .unwrap()
        .cookie
        .as_mut()
        .unwrap();
    (cookie.same_site, cookie.secure, cookie.path) = (
        Some(crate::api::SameSite::Strict),
        Some(true),
        Some("/chat".into()),
    );
    let a = ingress::app_service(&cross_site)
        .unwrap()
        .metadata
        .annotations
        .unwrap();
    let get = |k: &str| a[&format!("traefik.ingress.kubernetes.io/service.sticky.{k}")].as_str();
    assert_eq!(
        (
            get("cookie.samesite"),
            get("cookie.secure"),
            get("cookie.path")
        ),
        ("strict", "true", "/chat")
    );
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 5000);

    let mut unpinned = rtc.clone();
    let spec = unpinned.spec.ingress.as_mut().unwrap();
    (spec.affinity, spec.cookie) = (crate::api::Affinity::None, None);
    validate(&unpinned).unwrap();
    assert_eq!(
        ingress::app_service(&unpinned)
            .unwrap()
            .metadata
            .annotations,
        None
    );
}

// ---- ingress: Gateway API ----

#[test]
fn a_gateway_gets_an_http_route_with_session_persistence() {
    let rtc = rtc(GATEWAY);
    assert_eq!(ingress::ingress(&rtc), None);
    let route = ingress::http_route(&rtc).unwrap();
    let types = route.types.as_ref().unwrap();
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        ("gateway.networking.k8s.io/v1", "HTTPRoute")
    );
    assert_eq!(ingress::http_route_resource().plural, "httproutes");
    assert_eq!(route.metadata.name.as_deref(), Some("webui-app"));
    assert_eq!(route.metadata.namespace.as_deref(), Some("apps"));
    let owner = &route.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.name.as_str(), owner.controller),
        ("webui", Some(true))
    );
    assert_eq!(
        route.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "switchboard-operator"
    );

    let spec = &route.data["spec"];
    assert_eq!(
        spec["parentRefs"],
        serde_json::json!([{
            "group": "gateway.networking.k8s.io", "kind": "Gateway",
            "name": "public", "namespace": "infra", "sectionName": "https"
        }])
    );
    assert_eq!(spec["hostnames"], serde_json::json!(["webui.example.com"]));
    let rule = &spec["rules"][0];
    assert_eq!(
        rule["matches"],
        serde_json::json!([{ "path": { "type": "PathPrefix", "value": "/ws" } }])
    );
    assert_eq!(rule["backendRefs"][0]["name"], "webui-app");
    assert_eq!(rule["backendRefs"][0]["port"], 8080);
    assert_eq!(rule["timeouts"], serde_json::json!({ "request": "0s" }));
    assert_eq!(
        rule["sessionPersistence"],
        serde_json::json!({ "type": "Cookie", "sessionName": "webui-route", "absoluteTimeout": "1h30m" })
    );
    // The route's Service is the same, without Traefik annotations.
    let svc = ingress::app_service(&rtc).unwrap();
    assert_eq!(svc.metadata.annotations, None);
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 8080);

    let mut minimal = rtc.clone();
    let spec = minimal.spec.ingress.as_mut().unwrap();
    spec.gateway.as_mut().unwrap().namespace = None;
    spec.gateway.as_mut().unwrap().section_name = None;
    spec.cookie = None;
    let route = ingress::http_route(&minimal).unwrap();
    assert_eq!(
        route.data["spec"]["parentRefs"][0],
        serde_json::json!({ "group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public" })
    );
    assert_eq!(
        route.data["spec"]["rules"][0]["sessionPersistence"]["absoluteTimeout"],
        "48h"
    );
    minimal.spec.ingress.as_mut().unwrap().affinity = crate::api::Affinity::None;
    let route = ingress::http_route(&minimal).unwrap();
    assert!(
        route.data["spec"]["rules"][0]
            .get("sessionPersistence")
            .is_none()
    );

    assert_eq!(ingress::http_route(&self::rtc(FULL)), None);
}

#[test]
fn gateway_durations_fit_the_gateway_api_format() {
    for (seconds, expected) in [
        (0, "0s"),
        (59, "59s"),
        (3600, "1h"),
        (3661, "1h1m1s"),
        (172_800, "48h"),
        (i64::from(i32::MAX), "99999h"),
    ] {
        assert_eq!(ingress::gateway_duration(seconds), expected);
    }
}

// ---- every framework, backplane and route together ----

/// The backplane shapes, as (label, backplane YAML, the external Secret's value if external).
const BACKPLANES: [(&str, &str, Option<&str>); 6] = [
    ("managed, 1 replica", "managed: {}", None),
    ("managed, 3 replicas", "managed: { replicas: 3 }", None),
    ("managed, 2 shards", "managed: { shards: 2 }", None),
    (
        "managed, 2 shards of 3",
        "managed: { shards: 2, replicas: 3 }",
        None,
    ),
    (
        "external redis://",
        "external: { urlSecretRef: { name: redis } }",
        Some("redis://:s3cret@redis.shared:6379/1"),
    ),
    (
        "external redis+sentinel://",
        "external: { urlSecretRef: { name: redis, key: sentinel } }",
        Some("redis+sentinel://:s3cret@s1:26379,s2:26379/mymaster redis://:s3cret@r2:6379\n"),
    ),
];

const ROUTES: [&str; 5] = [
    "",
    "ingress: { className: nginx, host: chat.example.com }",
    "ingress: { className: traefik, host: chat.example.com }",
    "ingress: { gateway: { name: public }, host: chat.example.com }",
    "ingress: { className: haproxy, host: chat.example.com, affinity: none }",
];

const FRAMEWORKS: [&str; 6] = [
    "python-socketio",
    "flask-socketio",
    "socketio-node",
    "open-webui",
    "dify",
    "generic",
];

fn combined(framework: &str, backplane: &str, route: &str) -> RealtimeCluster {
    let app = if framework == "generic" {
        "app: { port: 9000 }"
    } else {
        "app: {}"
    };
    rtc(&format!(
        "apiVersion: switchboard.dev/v1alpha1
kind: RealtimeCluster
metadata: {{ name: chat, namespace: apps, uid: 6f1d2c3b-0000-4000-8000-0000000000ff }}
spec:
  selector: {{ matchLabels: {{ app: chat }} }}
  framework: {framework}
  {app}
  backplane:
    {backplane}
  {route}
"
    ))
}

/// What the injected sidecar would see: the ConfigMap's variables, then the Secret-sourced one
/// over them (a container's `env` wins over `envFrom`).
fn sidecar_env(
    rtc: &RealtimeCluster,
    external_secret: Option<&str>,
) -> std::collections::BTreeMap<String, String> {
    let upstream = match external_secret {
        Some(value) => external_url(rtc, value).unwrap(),
        None => backplane::upstream_url(rtc).unwrap(),
    };
    let mut env = sidecar_config::config_map(rtc, &upstream).data.unwrap();
    let secret = sidecar_config::upstream_secret_env(rtc).unwrap();
    env.insert(
        secret.name,
        external_secret.unwrap_or("generated-pw").to_owned(),
    );
    env
}

/// Parses `env` with the sidecar's own flag parser, as if it were the container's environment.
fn parse_as_sidecar(
    env: &std::collections::BTreeMap<String, String>,
) -> switchboard_sidecar::config::Config {
    use clap::CommandFactory;
    use switchboard_sidecar::config::Config;

    let command = Config::command();
    let mut args = vec!["switchboard-sidecar".to_owned()];
    for (key, value) in env {
        let flag = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|env| env == key.as_str()))
            .unwrap_or_else(|| panic!("{key} is not a variable the sidecar reads"));
        args.push(format!("--{}={value}", flag.get_long().unwrap()));
    }
    Config::parse_from_env_and_args(args).unwrap_or_else(|e| panic!("{e}\n{env:?}"))
}

#[test]
fn every_framework_backplane_and_route_builds() {
    for framework in FRAMEWORKS {
        for (label, backplane_yaml, external_secret) in BACKPLANES {
            for route in ROUTES {
                let rtc = combined(framework, backplane_yaml, route);
                let case = format!("{framework} / {label} / {route:?}");
                validate(&rtc).unwrap_or_else(|e| panic!("{case}: {e}"));

                let shards = backplane::shards(&rtc);
                match &rtc.spec.backplane.managed {
                    Some(m) => {
                        assert_eq!(shards.len() as i32, m.shards, "{case}");
                        for shard in &shards {
                            let containers = pod_spec(shard).containers.len();
                            assert_eq!(containers, if m.replicas >= 3 { 2 } else { 1 }, "{case}");
                        }
                    }
                    None => assert!(shards.is_empty(), "{case}"),
                }

                let env = sidecar_env(&rtc, external_secret);
                let config = parse_as_sidecar(&env);
                let urls = env["SWITCHBOARD_UPSTREAM_URL"].split_whitespace().count();
                assert_eq!(config.upstreams.len(), urls, "{case}");
                match external_secret {
                    None => assert_eq!(
                        config
                            .upstream_password
                            .as_ref()
                            .map(|p| p.expose().to_owned()),
                        Some("generated-pw".to_owned()),
                        "{case}"
                    ),
                    Some(_) => {
                        assert_eq!(config.upstream_password, None, "{case}");
                        let cm_url = sidecar_config::config_map(
                            &rtc,
                            &external_url(&rtc, external_secret.unwrap()).unwrap(),
                        );
                        assert!(
                            !serde_json::to_string(&cm_url).unwrap().contains("s3cret"),
                            "{case}"
                        );
                    }
                }

                let (ing, route_obj, svc) = (
                    ingress::ingress(&rtc),
                    ingress::http_route(&rtc),
                    ingress::app_service(&rtc),
                );
                let expected_port = rtc.spec.app_port().unwrap();
                match rtc.spec.ingress.as_ref() {
                    None => assert!(ing.is_none() && route_obj.is_none() && svc.is_none()),
                    Some(i) if i.gateway.is_some() => {
                        assert!(ing.is_none(), "{case}");
                        let route_obj = route_obj.unwrap();
                        assert_eq!(
                            route_obj.data["spec"]["rules"][0]["backendRefs"][0]["port"],
                            expected_port,
                            "{case}"
                        );
                    }
                    Some(_) => {
                        assert!(route_obj.is_none(), "{case}");
                        let backend = ing.unwrap().spec.unwrap().rules.unwrap()[0]
                            .http
                            .clone()
                            .unwrap()
                            .paths[0]
                            .backend
                            .service
                            .clone()
                            .unwrap();
                        assert_eq!(backend.port.unwrap().number, Some(expected_port), "{case}");
                    }
                }
                if let Some(svc) = svc {
                    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, expected_port);
                }
            }
        }
    }
}

#[test]
fn the_sidecar_parses_its_config_map() {
    for yaml in [MINIMAL, FULL, SHARDED, SENTINEL] {
        let rtc = rtc(yaml);
        let env = sidecar_env(&rtc, None);
        let config = parse_as_sidecar(&env);
        assert_eq!(config.channel_prefix, rtc.spec.backplane.channel_prefix);
        assert_eq!(
            config.upstreams.join(" "),
            backplane::upstream_url(&rtc).unwrap()
        );
        assert_eq!(
            config.client_buffer_bytes as i64,
            rtc.spec.sidecar.client_buffer_bytes
        );
        assert_eq!(
            config.publish_buffer_messages as i64,
            rtc.spec.sidecar.publish_buffer_messages
        );
    }
}

// ---- the listening check's settings ----

#[test]
fn each_preset_tells_the_sidecar_what_its_adapter_subscribes_to() {
    for (framework, expected) in [
        (Framework::PythonSocketio, Some("socketio")),
        (Framework::FlaskSocketio, Some("flask-socketio")),
        (Framework::SocketioNode, Some("socket.io")),
        (Framework::OpenWebui, Some("socketio")),
        (Framework::Dify, Some("socketio")),
        (Framework::Generic, None),
    ] {
        let mut rtc = rtc(MINIMAL);
        rtc.spec.framework = framework;
        rtc.spec.app.port = Some(9000);
        let data = sidecar_config::config_map(&rtc, "redis://x:6379")
            .data
            .unwrap();
        assert_eq!(
            data.get("SWITCHBOARD_EXPECT_SUBSCRIPTION")
                .map(String::as_str),
            expected,
            "{framework:?}"
        );
        assert_eq!(
            data.get("SWITCHBOARD_LISTENING_GRACE_SECONDS")
                .map(String::as_str),
            expected.map(|_| "30"),
            "{framework:?}"
        );
    }
}

#[test]
fn the_spec_overrides_the_expected_subscriptions_or_turns_the_check_off() {
    let mut rtc = rtc(MINIMAL);
    rtc.spec.app.listening = Some(
        serde_yaml::from_str("{ subscriptions: [tenant-a:socketio, extra], graceSeconds: 5 }")
            .unwrap(),
    );
    let data = sidecar_config::config_map(&rtc, "redis://x:6379")
        .data
        .unwrap();
    assert_eq!(
        data["SWITCHBOARD_EXPECT_SUBSCRIPTION"],
        "tenant-a:socketio extra"
    );
    assert_eq!(data["SWITCHBOARD_LISTENING_GRACE_SECONDS"], "5");
    rtc.spec.app.listening = Some(serde_yaml::from_str("{ subscriptions: [] }").unwrap());
    let data = sidecar_config::config_map(&rtc, "redis://x:6379")
        .data
        .unwrap();
    assert!(
        !data.contains_key("SWITCHBOARD_EXPECT_SUBSCRIPTION"),
        "{data:?}"
    );
}

#[test]
fn dify_points_only_its_pubsub_url_at_the_sidecar() {
    let mut rtc = rtc(MINIMAL);
    rtc.spec.framework = Framework::Dify;
    let env: Vec<(String, String)> = crate::webhook::sidecar::app_env(&rtc)
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    let local = "redis://127.0.0.1:6379".to_owned();
    assert_eq!(
        env,
        [
            ("PUBSUB_REDIS_URL".to_owned(), local.clone()),
            ("EVENT_BUS_REDIS_URL".to_owned(), local),
            ("PUBSUB_REDIS_USE_CLUSTERS".to_owned(), "false".to_owned()),
        ]
    );
    assert_eq!(rtc.spec.app_port(), Some(5001));
}

#[test]
fn a_managed_backplane_speaks_tls_only_unless_turned_off() {
    let rtc = rtc(SENTINEL);
    let shard = &backplane::shards(&rtc)[0];
    let args = container(shard, "redis").args.clone().unwrap().join(" ");
    for wanted in [
        "--port 0",
        "--tls-port 6379",
        "--tls-cert-file /tls/tls.crt",
        "--tls-key-file /tls/tls.key",
        "--tls-ca-cert-file /tls/ca.crt",
        "--tls-replication yes",
        "--tls-auth-clients no",
    ] {
        assert!(args.contains(wanted), "{wanted} not in {args}");
    }
    let sentinel = container(shard, "sentinel");
    let listen = env_value(sentinel, "SENTINEL_LISTEN");
    assert!(listen.starts_with("port 0\ntls-port 26379\n"), "{listen}");
    assert!(listen.contains("tls-replication yes"), "{listen}");
    assert_eq!(
        env_value(sentinel, "REDIS_CLI_TLS"),
        "--tls --cacert /tls/ca.crt"
    );
    for c in ["redis", "sentinel"] {
        let mounts = container(shard, c).volume_mounts.clone().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/tls" && m.read_only == Some(true)),
            "{c}: {mounts:?}"
        );
    }
    assert!(backplane::shard_url(&rtc, 0).starts_with("rediss+sentinel://"));

    let mut plain = rtc.clone();
    plain.spec.backplane.managed.as_mut().unwrap().tls = false;
    let shard = &backplane::shards(&plain)[0];
    let args = container(shard, "redis").args.clone().unwrap().join(" ");
    assert!(
        args.starts_with("--port 6379 ") && !args.contains("tls"),
        "{args}"
    );
    assert_eq!(
        env_value(container(shard, "sentinel"), "SENTINEL_LISTEN"),
        "port 26379"
    );
    assert_eq!(env_value(container(shard, "sentinel"), "REDIS_CLI_TLS"), "");
    assert!(backplane::shard_url(&plain, 0).starts_with("redis+sentinel://"));
    assert!(
        pod_spec(shard)
            .volumes
            .iter()
            .flatten()
            .all(|v| v.secret.is_none())
    );
    let desired = super::build::build(
        &plain,
        None,
        "pw",
        "front-secret-for-tests",
        Default::default(),
    );
    assert_eq!(desired.secrets.len(), 1, "no TLS Secret");
}
