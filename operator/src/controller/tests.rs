//! The pure stages from YAML fixtures (`operator/tests/fixtures/`): the important fields of what
//! each builder produces, not snapshots of everything.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::validate::{ValidateError, external_url, validate};
use super::{backplane, ingress, sidecar_config};
use crate::api::{Framework, Ingress as IngressSpec, RealtimeCluster};

const MINIMAL: &str = include_str!("../../tests/fixtures/minimal.yaml");
const FULL: &str = include_str!("../../tests/fixtures/full.yaml");
const SHARDED: &str = include_str!("../../tests/fixtures/sharded.yaml");
const EXTERNAL: &str = include_str!("../../tests/fixtures/external.yaml");

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

/// True when `needle` appears in `args` as consecutive elements.
fn has_args(args: &[String], needle: &[&str]) -> bool {
    args.windows(needle.len()).any(|w| w == needle)
}

fn err(rtc: &RealtimeCluster) -> String {
    validate(rtc).unwrap_err().to_string()
}

// ---- validate ----

#[test]
fn fixtures_within_reach_validate() {
    for yaml in [MINIMAL, FULL, EXTERNAL] {
        validate(&rtc(yaml)).unwrap();
    }
}

#[test]
fn unsupported_backplane_shapes_name_their_field() {
    assert!(err(&rtc(SHARDED)).contains("spec.backplane.managed.shards: 2"));
    let mut sentinel = rtc(MINIMAL);
    sentinel.spec.backplane.managed.as_mut().unwrap().replicas = 3;
    assert_eq!(
        validate(&sentinel),
        Err(ValidateError::SentinelNotImplemented(3))
    );
    assert!(err(&sentinel).contains("spec.backplane.managed.replicas"));
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
    let mut traefik = rtc(FULL);
    traefik.spec.ingress.as_mut().unwrap().class_name = Some("traefik".into());
    assert!(err(&traefik).contains("spec.ingress.affinity"));
    traefik.spec.ingress.as_mut().unwrap().cookie = None;
    traefik.spec.ingress.as_mut().unwrap().affinity = crate::api::Affinity::None;
    validate(&traefik).unwrap();

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
    for url in ["rediss://:s3cret@r:6379", "http://r", "redis://:s3cret@"] {
        let e = external_url(&external, url).unwrap_err().to_string();
        assert!(e.contains("Secret shared-redis (key url"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }
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
    assert_eq!(pod_spec(&shards[0]).volumes, None);
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
        "redis://chat-redis-1.apps.svc:6379"
    );
}

#[test]
fn external_backplane_builds_no_redis() {
    assert!(backplane::shards(&rtc(EXTERNAL)).is_empty());
}

#[test]
fn the_password_lives_in_the_secret_only() {
    let rtc = rtc(MINIMAL);
    let secret = backplane::password_secret(&rtc, "s3cret-pw");
    assert_eq!(secret.metadata.name.as_deref(), Some("chat-redis-auth"));
    assert_eq!(secret.data.as_ref().unwrap()["password"].0, b"s3cret-pw");
    let everything_else = serde_json::to_string(&(
        &backplane::shards(&rtc)[0].stateful_set,
        sidecar_config::config_map(&rtc, &backplane::shard_url(&rtc, 0)),
    ))
    .unwrap();
    assert!(!everything_else.contains("s3cret-pw"));
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
        "redis://chat-redis-0.apps.svc:6379"
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

#[test]
fn the_sidecar_parses_its_config_map() {
    use clap::CommandFactory;
    use switchboard_sidecar::config::Config;

    let command = Config::command();
    for yaml in [MINIMAL, FULL] {
        let rtc = rtc(yaml);
        let cm = sidecar_config::config_map(&rtc, &backplane::shard_url(&rtc, 0));
        let mut args = vec!["switchboard-sidecar".to_owned()];
        for (key, value) in cm.data.as_ref().unwrap() {
            let flag = command
                .get_arguments()
                .find(|a| a.get_env().is_some_and(|env| env == key.as_str()))
                .unwrap_or_else(|| panic!("{key} is not a variable the sidecar reads"));
            args.push(format!("--{}={value}", flag.get_long().unwrap()));
        }
        let config = Config::parse_from_env_and_args(args).unwrap();
        assert_eq!(config.channel_prefix, rtc.spec.backplane.channel_prefix);
        assert_eq!(
            config.upstream_url.as_deref(),
            Some("redis://chat-redis-0.apps.svc:6379")
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
