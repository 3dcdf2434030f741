//! The injector's decision, from YAML pods and RealtimeClusters: every injection is checked by
//! applying its patch to the pod as JSON, as the API server would, and reading the result back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde_json::{Value, json};

use super::mutate::{
    CLUSTER_LABEL, Decision, INJECT_ANNOTATION, INJECTED_BY_ANNOTATION, InjectSettings, SkipReason,
    mutate,
};
use super::sidecar;
use crate::api::RealtimeCluster;
use crate::controller::sidecar_config::{self, CONFIG_HASH_ANNOTATION};
use crate::controller::{backplane, validate};

const MINIMAL: &str = include_str!("../../tests/fixtures/minimal.yaml");
const FULL: &str = include_str!("../../tests/fixtures/full.yaml");
const EXTERNAL: &str = include_str!("../../tests/fixtures/external.yaml");
const SHARDED: &str = include_str!("../../tests/fixtures/sharded.yaml");
const SENTINEL: &str = include_str!("../../tests/fixtures/sentinel.yaml");
const SESSION_ROUTING: &str = include_str!("../../tests/fixtures/session-routing.yaml");

const NS: &str = "apps";
const HASH: &str = "0123456789abcdef0123456789abcdef01234567";
const DEFAULT_IMAGE: &str = "ghcr.io/switchboard-dev/sidecar:test";
const LOCAL: &str = "redis://127.0.0.1:6379";

/// A pod with nothing optional: no annotations, no init containers, no env.
const BARE_POD: &str = "
metadata: { name: chat-1, namespace: apps, labels: { app: chat } }
spec:
  containers:
    - { name: app, image: chat:1 }
";

/// A pod with everything the patch must add into rather than create: annotations, init
/// containers, env on one container but not the other.
const RICH_POD: &str = "
metadata:
  generateName: chat-
  namespace: apps
  labels: { app: chat }
  annotations: { team: realtime }
spec:
  initContainers:
    - { name: migrate, image: chat:1, command: [migrate] }
  containers:
    - name: app
      image: chat:1
      env: [ { name: LOG_LEVEL, value: debug } ]
    - { name: worker, image: chat:1 }
";

fn rtc(yaml: &str) -> RealtimeCluster {
    serde_yaml::from_str(yaml).expect("fixture parses as a RealtimeCluster")
}

/// A RealtimeCluster in `apps` selecting `app: <selects>`, with extra spec lines.
fn cluster(name: &str, selects: &str, framework: &str, extra: &str) -> RealtimeCluster {
    rtc(&format!(
        "apiVersion: switchboard.dev/v1alpha1
kind: RealtimeCluster
metadata: {{ name: {name}, namespace: apps }}
spec:
  selector: {{ matchLabels: {{ app: {selects} }} }}
  framework: {framework}
{extra}"
    ))
}

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).expect("test pod parses")
}

fn settings(native_sidecars: bool) -> InjectSettings {
    InjectSettings {
        sidecar_image: DEFAULT_IMAGE.into(),
        native_sidecars,
        operator_namespace: "switchboard-system".into(),
    }
}

/// Runs `mutate`, expects an injection by `cluster`, applies the patch to the pod's JSON and
/// returns the resulting pod.
fn inject(
    pod: &Pod,
    clusters: &[RealtimeCluster],
    settings: &InjectSettings,
    hash: Option<&str>,
    cluster: &str,
) -> Pod {
    let decision = mutate(pod, NS, clusters, settings, hash);
    let Decision::Inject {
        cluster: chosen,
        patch,
    } = decision
    else {
        panic!("expected an injection, got {decision:?}");
    };
    assert_eq!(chosen, cluster);
    // Additions only: nothing the pod already has is removed or rewritten.
    let ops = serde_json::to_value(&patch).unwrap();
    for op in ops.as_array().unwrap() {
        assert_eq!(op["op"], "add", "{op}");
    }
    let mut doc = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut doc, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{ops:#}"));
    serde_json::from_value(doc).expect("the patched pod is still a Pod")
}

fn skip(pod: &Pod, clusters: &[RealtimeCluster], settings: &InjectSettings) -> Decision {
    let decision = mutate(pod, NS, clusters, settings, Some(HASH));
    assert!(
        matches!(decision, Decision::Skip { .. }),
        "expected a skip, got {decision:?}"
    );
    decision
}

fn literal_env(pairs: &[(&str, &str)]) -> Vec<EnvVar> {
    pairs
        .iter()
        .map(|(name, value)| EnvVar {
            name: (*name).into(),
            value: Some((*value).into()),
            ..EnvVar::default()
        })
        .collect()
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn app_env(pod: &Pod, name: &str) -> Vec<(String, Option<String>)> {
    container(pod, name)
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
    expected
        .iter()
        .map(|(n, v)| ((*n).to_owned(), Some((*v).to_owned())))
        .collect()
}

/// The volumes injection adds for the backplane's TLS (the managed backplane's CA by default).
fn tls_volumes(rtc: &RealtimeCluster) -> Vec<k8s_openapi::api::core::v1::Volume> {
    sidecar::tls_volumes(rtc)
        .into_iter()
        .map(|(v, _)| v)
        .collect()
}

fn sidecar_of(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == "switchboard-sidecar")
        .expect("a sidecar was injected")
}

fn env_var<'a>(container: &'a Container, name: &str) -> &'a EnvVar {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{} has no {name}", container.name))
}

fn secret_ref(var: &EnvVar) -> (String, String) {
    let selector = var
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{} is not from a Secret", var.name));
    (selector.name.clone(), selector.key.clone())
}

// ---- the injected pod, whole ----

#[test]
fn a_bare_pod_gets_the_sidecar_container_the_url_and_annotations() {
    let rtc = rtc(MINIMAL);
    let settings = settings(false);
    let original = pod(BARE_POD);
    let patched = inject(
        &original,
        std::slice::from_ref(&rtc),
        &settings,
        Some(HASH),
        "chat",
    );

    let mut expected = original.clone();
    let spec = expected.spec.as_mut().unwrap();
    spec.containers[0].env = Some(literal_env(&[("REDIS_URL", LOCAL)]));
    spec.containers.push(sidecar::container(&rtc, &settings));
    spec.volumes = Some(tls_volumes(&rtc));
    expected.metadata.annotations = Some(BTreeMap::from([
        (INJECTED_BY_ANNOTATION.to_owned(), "chat".to_owned()),
        (CONFIG_HASH_ANNOTATION.to_owned(), HASH.to_owned()),
    ]));
    assert_eq!(patched, expected);
    assert_eq!(patched.spec.as_ref().unwrap().init_containers, None);
}

#[test]
fn a_native_sidecar_is_the_first_init_container() {
    let rtc = rtc(MINIMAL);
    let settings = settings(true);
    let original = pod(RICH_POD);
    let patched = inject(
        &original,
        std::slice::from_ref(&rtc),
        &settings,
        Some(HASH),
        "chat",
    );

    let mut expected = original.clone();
    let spec = expected.spec.as_mut().unwrap();
    spec.containers[0]
        .env
        .as_mut()
        .unwrap()
        .extend(literal_env(&[("REDIS_URL", LOCAL)]));
    spec.containers[1].env = Some(literal_env(&[("REDIS_URL", LOCAL)]));
    spec.init_containers
        .as_mut()
        .unwrap()
        .insert(0, sidecar::container(&rtc, &settings));
    spec.volumes = Some(tls_volumes(&rtc));
    let annotations = expected.metadata.annotations.as_mut().unwrap();
    annotations.insert(INJECTED_BY_ANNOTATION.into(), "chat".into());
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), HASH.into());
    assert_eq!(patched, expected);

    let spec = patched.spec.as_ref().unwrap();
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["switchboard-sidecar", "migrate"]);
    assert_eq!(
        spec.init_containers.as_ref().unwrap()[0]
            .restart_policy
            .as_deref(),
        Some("Always")
    );
    assert!(
        spec.containers
            .iter()
            .all(|c| c.name != "switchboard-sidecar")
    );
    assert_eq!(annotations_of(&patched)["team"], "realtime");
}

#[test]
fn a_native_sidecar_creates_init_containers_when_there_are_none() {
    let patched = inject(
        &pod(BARE_POD),
        &[rtc(MINIMAL)],
        &settings(true),
        Some(HASH),
        "chat",
    );
    let spec = patched.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].name, "switchboard-sidecar");
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app"]);
}

#[test]
fn a_regular_sidecar_is_appended_after_the_app_containers() {
    let patched = inject(
        &pod(RICH_POD),
        &[rtc(MINIMAL)],
        &settings(false),
        None,
        "chat",
    );
    let spec = patched.spec.as_ref().unwrap();
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "worker", "switchboard-sidecar"]);
    assert_eq!(spec.containers[2].restart_policy, None);
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["migrate"]);
    // Init containers are not app containers: no variables for them.
    assert_eq!(spec.init_containers.as_ref().unwrap()[0].env, None);
}

fn annotations_of(pod: &Pod) -> &BTreeMap<String, String> {
    pod.metadata.annotations.as_ref().unwrap()
}

#[test]
fn without_a_config_hash_only_the_cluster_is_annotated() {
    for yaml in [BARE_POD, RICH_POD] {
        let patched = inject(&pod(yaml), &[rtc(MINIMAL)], &settings(false), None, "chat");
        let annotations = annotations_of(&patched);
        assert_eq!(annotations[INJECTED_BY_ANNOTATION], "chat");
        assert!(!annotations.contains_key(CONFIG_HASH_ANNOTATION));
    }
}

#[test]
fn annotation_keys_are_escaped_in_the_patch() {
    let Decision::Inject { patch, .. } = mutate(
        &pod(RICH_POD),
        NS,
        &[rtc(MINIMAL)],
        &settings(false),
        Some(HASH),
    ) else {
        panic!("expected an injection");
    };
    let paths: Vec<String> = serde_json::to_value(&patch)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(paths.contains(&"/metadata/annotations/switchboard.dev~1injected-by".to_owned()));
    assert!(
        paths.contains(&"/metadata/annotations/switchboard.dev~1sidecar-config-hash".to_owned())
    );
}

// ---- the sidecar container ----

#[test]
fn the_sidecar_container_is_configured_probed_and_restricted() {
    let rtc = rtc(MINIMAL);
    let patched = inject(&pod(BARE_POD), &[rtc], &settings(true), Some(HASH), "chat");
    let sidecar = serde_json::to_value(sidecar_of(&patched)).unwrap();
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": { "path": path, "port": "sb-metrics", "scheme": "HTTP" },
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
        })
    };
    assert_eq!(
        sidecar,
        json!({
            "name": "switchboard-sidecar",
            "image": DEFAULT_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "restartPolicy": "Always",
            "envFrom": [ { "configMapRef": { "name": "chat-sidecar", "optional": false } } ],
            "env": [
                { "name": "SWITCHBOARD_LISTEN", "value": "127.0.0.1:6379" },
                { "name": "SWITCHBOARD_HTTP_LISTEN", "value": "0.0.0.0:9091" },
                { "name": "SWITCHBOARD_SIDECAR_ID",
                  "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "SWITCHBOARD_LOG_FORMAT", "value": "json" },
                { "name": "SWITCHBOARD_UPSTREAM_PASSWORD",
                  "valueFrom": { "secretKeyRef":
                      { "name": "chat-redis-auth", "key": "password", "optional": false } } },
            ],
            "ports": [ { "name": "sb-metrics", "containerPort": 9091, "protocol": "TCP" } ],
            "readinessProbe": probe("/readyz", 5, 2),
            "startupProbe": probe("/healthz", 1, 60),
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "capabilities": { "drop": ["ALL"] },
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
            // The managed backplane's CA (TLS is on by default).
            "volumeMounts": [ { "name": "switchboard-backplane-ca",
                "mountPath": "/etc/switchboard/backplane-tls/ca", "readOnly": true } ],
        })
    );
}

#[test]
fn the_spec_picks_the_sidecar_image_and_resources() {
    let full = rtc(FULL);
    let pod = pod("
metadata: { name: chat-1, namespace: apps, labels: { app: chat, tier: web } }
spec: { containers: [ { name: app, image: chat:1 } ] }
");
    let patched = inject(
        &pod,
        std::slice::from_ref(&full),
        &settings(false),
        None,
        "chat",
    );
    let sidecar = sidecar_of(&patched);
    assert_eq!(
        sidecar.image.as_deref(),
        Some("ghcr.io/switchboard-dev/sidecar:0.1.0")
    );
    assert_eq!(sidecar.resources, full.spec.sidecar.resources);

    let patched = inject(
        &self::pod(BARE_POD),
        &[rtc(MINIMAL)],
        &settings(false),
        None,
        "chat",
    );
    let sidecar = sidecar_of(&patched);
    assert_eq!(sidecar.image.as_deref(), Some(DEFAULT_IMAGE));
    assert_eq!(sidecar.resources, None);
}

#[test]
fn a_managed_backplane_gives_the_sidecar_its_password_from_the_secret() {
    let patched = inject(
        &pod(BARE_POD),
        &[rtc(SENTINEL)],
        &settings(false),
        None,
        "chat",
    );
    let sidecar = sidecar_of(&patched);
    let var = env_var(sidecar, "SWITCHBOARD_UPSTREAM_PASSWORD");
    assert_eq!(var.value, None);
    assert_eq!(
        secret_ref(var),
        ("chat-redis-auth".to_owned(), "password".to_owned())
    );
    assert!(
        sidecar
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "SWITCHBOARD_UPSTREAM_URL")
    );
}

#[test]
fn an_external_backplane_gives_the_sidecar_its_url_from_the_secret() {
    let webui = rtc(EXTERNAL);
    let pod = pod("
metadata: { name: webui-0, namespace: apps, labels: { app: open-webui } }
spec: { containers: [ { name: open-webui, image: open-webui:main } ] }
");
    let patched = inject(&pod, &[webui], &settings(true), Some(HASH), "webui");
    let sidecar = sidecar_of(&patched);
    let var = env_var(sidecar, "SWITCHBOARD_UPSTREAM_URL");
    assert_eq!(var.value, None);
    assert_eq!(
        secret_ref(var),
        ("shared-redis".to_owned(), "url".to_owned())
    );
    // In `env`, so it wins over the ConfigMap's password-free copy loaded by `envFrom`.
    let from = sidecar.env_from.as_ref().unwrap();
    assert_eq!(
        from[0].config_map_ref.as_ref().unwrap().name,
        "webui-sidecar"
    );
    assert!(
        sidecar
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "SWITCHBOARD_UPSTREAM_PASSWORD")
    );
}

// ---- application variables per framework ----

#[test]
fn python_socketio_flask_and_node_get_redis_url() {
    for framework in ["python-socketio", "flask-socketio", "socketio-node"] {
        let chat = cluster("chat", "chat", framework, "");
        let patched = inject(&pod(BARE_POD), &[chat], &settings(false), None, "chat");
        assert_eq!(
            app_env(&patched, "app"),
            pairs(&[("REDIS_URL", LOCAL)]),
            "{framework}"
        );
    }
}

#[test]
fn open_webui_gets_both_urls_and_its_websocket_settings() {
    let webui = cluster("webui", "chat", "open-webui", "");
    let patched = inject(&pod(RICH_POD), &[webui], &settings(true), None, "webui");
    let webui_env = [
        ("REDIS_URL", LOCAL),
        ("WEBSOCKET_REDIS_URL", LOCAL),
        ("ENABLE_WEBSOCKET_SUPPORT", "true"),
        ("WEBSOCKET_MANAGER", "redis"),
    ];
    assert_eq!(app_env(&patched, "worker"), pairs(&webui_env));
    let mut with_own = vec![("LOG_LEVEL", "debug")];
    with_own.extend(webui_env);
    assert_eq!(app_env(&patched, "app"), pairs(&with_own));
}

#[test]
fn generic_uses_the_custom_redis_url_variables() {
    let chat = cluster(
        "chat",
        "chat",
        "generic",
        "  app: { port: 9000, redisUrlEnv: [BROKER_URL, CELERY_RESULT_BACKEND] }\n",
    );
    let patched = inject(&pod(BARE_POD), &[chat], &settings(false), None, "chat");
    assert_eq!(
        app_env(&patched, "app"),
        pairs(&[("BROKER_URL", LOCAL), ("CELERY_RESULT_BACKEND", LOCAL)])
    );
}

#[test]
fn a_custom_redis_url_env_replaces_the_preset_names() {
    // full.yaml: socketio-node with redisUrlEnv [BROKER_URL]: no REDIS_URL.
    let pod = pod("
metadata: { name: chat-1, namespace: apps, labels: { app: chat, tier: web } }
spec: { containers: [ { name: app, image: chat:1 } ] }
");
    let patched = inject(&pod, &[rtc(FULL)], &settings(false), None, "chat");
    assert_eq!(app_env(&patched, "app"), pairs(&[("BROKER_URL", LOCAL)]));
}

#[test]
fn variables_the_container_sets_itself_are_kept() {
    let webui = cluster("webui", "chat", "open-webui", "");
    let pod = pod("
metadata: { name: chat-1, namespace: apps, labels: { app: chat } }
spec:
  containers:
    - name: app
      image: open-webui:main
      env:
        - { name: REDIS_URL, value: 'redis://my-own-redis:6379/2' }
        - name: WEBSOCKET_MANAGER
          valueFrom: { configMapKeyRef: { name: webui-settings, key: manager } }
");
    let patched = inject(&pod, &[webui], &settings(false), None, "webui");
    let app = container(&patched, "app");
    let names: Vec<&str> = app.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "REDIS_URL",
            "WEBSOCKET_MANAGER",
            "WEBSOCKET_REDIS_URL",
            "ENABLE_WEBSOCKET_SUPPORT"
        ]
    );
    assert_eq!(
        env_var(app, "REDIS_URL").value.as_deref(),
        Some("redis://my-own-redis:6379/2")
    );
    let manager = env_var(app, "WEBSOCKET_MANAGER");
    assert_eq!(manager.value, None);
    assert!(
        manager
            .value_from
            .as_ref()
            .unwrap()
            .config_map_key_ref
            .is_some()
    );
    assert_eq!(
        env_var(app, "WEBSOCKET_REDIS_URL").value.as_deref(),
        Some(LOCAL)
    );
}

#[test]
fn a_container_that_sets_everything_is_left_alone() {
    let pod = pod("
metadata: { name: chat-1, namespace: apps, labels: { app: chat } }
spec:
  containers:
    - name: app
      image: chat:1
      env: [ { name: REDIS_URL, value: 'redis://elsewhere:6379' } ]
");
    let patched = inject(&pod, &[rtc(MINIMAL)], &settings(false), None, "chat");
    assert_eq!(
        app_env(&patched, "app"),
        pairs(&[("REDIS_URL", "redis://elsewhere:6379")])
    );
}

// ---- which cluster ----

#[test]
fn pods_that_no_cluster_selects_are_not_selected() {
    let clusters = [rtc(MINIMAL), cluster("feed", "feed", "socketio-node", "")];
    let cases = [
        (
            "other labels",
            "metadata: { name: p, labels: { app: web } }\nspec: { containers: [ { name: a } ] }",
        ),
        (
            "no labels",
            "metadata: { name: p }\nspec: { containers: [ { name: a } ] }",
        ),
        (
            "no metadata at all",
            "spec: { containers: [ { name: a } ] }",
        ),
        ("no spec", "metadata: { name: p, labels: { app: chat } }"),
    ];
    for (case, yaml) in cases {
        let decision = mutate(&pod(yaml), NS, &clusters, &settings(false), Some(HASH));
        assert_eq!(decision, Decision::NotSelected, "{case}");
    }
    // The right labels, in a namespace without clusters.
    let decision = mutate(
        &pod(BARE_POD),
        "elsewhere",
        &clusters,
        &settings(false),
        None,
    );
    assert_eq!(decision, Decision::NotSelected);
    assert_eq!(
        mutate(
            &pod(BARE_POD),
            NS,
            &[] as &[RealtimeCluster],
            &settings(false),
            None
        ),
        Decision::NotSelected
    );
}

#[test]
fn a_cluster_being_deleted_or_with_an_empty_selector_selects_nothing() {
    let mut deleting = rtc(MINIMAL);
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
    );
    let mut empty = rtc(MINIMAL);
    empty.spec.selector = Default::default();
    for clusters in [[deleting], [empty]] {
        assert_eq!(
            mutate(&pod(BARE_POD), NS, &clusters, &settings(false), None),
            Decision::NotSelected
        );
    }
}

#[test]
fn match_expressions_select_too() {
    let chat = rtc("
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeCluster
metadata: { name: chat, namespace: apps }
spec:
  selector:
    matchExpressions: [ { key: app, operator: In, values: [chat, chat-canary] } ]
  framework: python-socketio
");
    inject(
        &pod(BARE_POD),
        std::slice::from_ref(&chat),
        &settings(false),
        None,
        "chat",
    );
    let other =
        pod("metadata: { name: p, labels: { app: feed } }\nspec: { containers: [ { name: a } ] }");
    assert_eq!(
        mutate(&other, NS, &[chat], &settings(false), None),
        Decision::NotSelected
    );
}

#[test]
fn two_selecting_clusters_are_ambiguous_without_the_label() {
    let clusters = [
        cluster("zeta", "chat", "socketio-node", ""),
        rtc(MINIMAL),
        cluster("alpha", "chat", "python-socketio", ""),
        // Another namespace's same-named cluster does not count.
        rtc(&MINIMAL.replace("namespace: apps", "namespace: other")),
    ];
    let decision = skip(&pod(BARE_POD), &clusters, &settings(false));
    assert_eq!(
        decision,
        Decision::Skip {
            cluster: None,
            reason: SkipReason::AmbiguousClusters(vec![
                "alpha".into(),
                "chat".into(),
                "zeta".into()
            ]),
        }
    );
}

#[test]
fn the_cluster_label_wins_over_selectors() {
    let clusters = [
        rtc(MINIMAL),
        cluster("alpha", "chat", "open-webui", ""),
        cluster("feed", "feed", "socketio-node", ""),
    ];
    // Ambiguous by selector; the label picks one.
    let labelled = pod(&BARE_POD.replace(
        "labels: { app: chat }",
        &format!("labels: {{ app: chat, {CLUSTER_LABEL}: alpha }}"),
    ));
    let patched = inject(&labelled, &clusters, &settings(false), None, "alpha");
    assert_eq!(annotations_of(&patched)[INJECTED_BY_ANNOTATION], "alpha");
    assert_eq!(
        env_var(container(&patched, "app"), "WEBSOCKET_MANAGER")
            .value
            .as_deref(),
        Some("redis")
    );

    // A cluster whose selector does not match the pod at all.
    let joined = pod(&BARE_POD.replace(
        "labels: { app: chat }",
        &format!("labels: {{ app: other, {CLUSTER_LABEL}: feed }}"),
    ));
    inject(&joined, &clusters, &settings(false), None, "feed");
}

#[test]
fn a_label_naming_no_cluster_is_reported() {
    let unknown = pod(&BARE_POD.replace(
        "labels: { app: chat }",
        &format!("labels: {{ app: chat, {CLUSTER_LABEL}: nope }}"),
    ));
    assert_eq!(
        skip(&unknown, &[rtc(MINIMAL)], &settings(false)),
        Decision::Skip {
            cluster: None,
            reason: SkipReason::UnknownCluster("nope".into()),
        }
    );
    // A cluster of that name in another namespace is not this pod's.
    let elsewhere = rtc(&MINIMAL.replace("namespace: apps", "namespace: other"));
    let named_chat = pod(&BARE_POD.replace(
        "labels: { app: chat }",
        &format!("labels: {{ app: web, {CLUSTER_LABEL}: chat }}"),
    ));
    assert_eq!(
        skip(&named_chat, &[elsewhere], &settings(false)),
        Decision::Skip {
            cluster: None,
            reason: SkipReason::UnknownCluster("chat".into()),
        }
    );
}

// ---- skip reasons ----

fn skipped_for(pod: &Pod, namespace: &str, reason: SkipReason) {
    let decision = mutate(
        pod,
        namespace,
        &[
            rtc(MINIMAL),
            rtc(&MINIMAL.replace("namespace: apps", "namespace: switchboard-system")),
        ],
        &settings(true),
        Some(HASH),
    );
    assert_eq!(
        decision,
        Decision::Skip {
            cluster: Some("chat".into()),
            reason
        }
    );
}

#[test]
fn an_opted_out_pod_is_skipped() {
    for value in ["false", "False"] {
        let pod = pod(&BARE_POD.replace(
            "labels: { app: chat }",
            &format!("labels: {{ app: chat }}, annotations: {{ {INJECT_ANNOTATION}: '{value}' }}"),
        ));
        skipped_for(&pod, NS, SkipReason::OptedOut);
    }
    // Any other value is not an opt-out.
    let pod = pod(&BARE_POD.replace(
        "labels: { app: chat }",
        &format!("labels: {{ app: chat }}, annotations: {{ {INJECT_ANNOTATION}: 'true' }}"),
    ));
    inject(&pod, &[rtc(MINIMAL)], &settings(false), None, "chat");
}

#[test]
fn an_already_injected_pod_is_skipped() {
    let as_container = pod("
metadata: { name: p, labels: { app: chat } }
spec:
  containers: [ { name: app }, { name: switchboard-sidecar, image: old } ]
");
    let as_init = pod("
metadata: { name: p, labels: { app: chat } }
spec:
  initContainers: [ { name: switchboard-sidecar, image: old, restartPolicy: Always } ]
  containers: [ { name: app } ]
");
    for pod in [as_container, as_init] {
        skipped_for(&pod, NS, SkipReason::AlreadyInjected);
    }
}

#[test]
fn a_host_network_pod_is_skipped() {
    let pod = pod("
metadata: { name: p, labels: { app: chat } }
spec: { hostNetwork: true, containers: [ { name: app } ] }
");
    skipped_for(&pod, NS, SkipReason::HostNetwork);
}

#[test]
fn the_operator_namespace_is_never_injected() {
    skipped_for(
        &pod(BARE_POD),
        "switchboard-system",
        SkipReason::OperatorNamespace,
    );
}

#[test]
fn every_skip_reason_has_an_event_reason_and_a_message() {
    let reasons = [
        SkipReason::OptedOut,
        SkipReason::AlreadyInjected,
        SkipReason::HostNetwork,
        SkipReason::OperatorNamespace,
        SkipReason::AmbiguousClusters(vec!["a".into(), "b".into()]),
        SkipReason::UnknownCluster("nope".into()),
    ];
    let mut event_reasons: Vec<&str> = reasons.iter().map(SkipReason::reason).collect();
    for reason in &event_reasons {
        assert!(
            reason.chars().all(|c| c.is_ascii_alphanumeric()),
            "{reason}"
        );
        assert!(
            reason.starts_with(|c: char| c.is_ascii_uppercase()),
            "{reason}"
        );
    }
    event_reasons.sort();
    event_reasons.dedup();
    assert_eq!(event_reasons.len(), reasons.len());
    assert!(reasons[4].to_string().contains("a, b"));
    assert!(reasons[4].to_string().contains(CLUSTER_LABEL));
    assert!(reasons[5].to_string().contains("nope"));
}

// ---- the contract with the sidecar's parser ----

/// Parses `env` with the sidecar's own flag parser, as if it were the container's environment.
fn parse_as_sidecar(env: &BTreeMap<String, String>) -> switchboard_sidecar::config::Config {
    use clap::CommandFactory;
    use switchboard_sidecar::config::Config;

    let command = Config::command();
    let mut args = vec!["switchboard-sidecar".to_owned()];
    for (key, value) in env {
        if key == "POD_IP" {
            continue; // only for the kubelet's `$(POD_IP)` expansion in SWITCHBOARD_FRONT_ADVERTISE
        }
        let flag = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|env| env == key.as_str()))
            .unwrap_or_else(|| panic!("{key} is not a variable the sidecar reads"));
        args.push(format!("--{}={value}", flag.get_long().unwrap()));
    }
    Config::parse_from_env_and_args(args).unwrap_or_else(|e| panic!("{e}\n{env:?}"))
}

/// What the injected container's process would see: the ConfigMap (`envFrom`), then the
/// container's `env` over it, with values the kubelet would resolve (`valueFrom`) filled in.
fn rendered_env(
    rtc: &RealtimeCluster,
    sidecar: &Container,
    secret_value: &str,
) -> BTreeMap<String, String> {
    let upstream = match &rtc.spec.backplane.external {
        Some(_) => validate::external_url(rtc, secret_value).unwrap(),
        None => backplane::upstream_url(rtc).unwrap(),
    };
    let config_map = sidecar_config::config_map(rtc, &upstream);
    // The container loads exactly this ConfigMap.
    let from = sidecar.env_from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(
        Some(from[0].config_map_ref.as_ref().unwrap().name.as_str()),
        config_map.metadata.name.as_deref()
    );
    let mut env = config_map.data.unwrap();
    for var in sidecar.env.iter().flatten() {
        let field = |path: &str| {
            var.value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .is_some_and(|f| f.field_path == path)
        };
        let value = match (&var.value, &var.value_from) {
            // The kubelet expands `$(VAR)` from the variables defined before it.
            (Some(value), _) => env
                .iter()
                .fold(value.clone(), |v, (k, x)| v.replace(&format!("$({k})"), x)),
            (None, Some(from)) if from.secret_key_ref.is_some() => secret_value.to_owned(),
            (None, Some(_)) if field("metadata.name") => "chat-7d9f8-x2x4q".to_owned(),
            (None, Some(_)) if field("status.podIP") => "10.244.0.7".to_owned(),
            _ => panic!(
                "{} has neither a value nor a source the test knows",
                var.name
            ),
        };
        env.insert(var.name.clone(), value);
    }
    env
}

fn addrs(list: &[std::net::SocketAddr]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

#[test]
fn the_front_is_given_every_worker_port_in_order() {
    let mut rtc = rtc(SESSION_ROUTING);
    rtc.spec.app.worker_ports = Some(vec![8081, 8080, 8090]);
    let sidecar = sidecar::container(&rtc, &settings(true));
    let config = parse_as_sidecar(&rendered_env(&rtc, &sidecar, "generated-pw"));
    assert_eq!(
        addrs(&config.front_app),
        ["127.0.0.1:8081", "127.0.0.1:8080", "127.0.0.1:8090"]
    );
}

#[test]
fn the_sidecar_parses_what_injection_renders() {
    let cases = [
        (MINIMAL, "generated-pw"),
        (FULL, "generated-pw"),
        (SHARDED, "generated-pw"),
        (SENTINEL, "generated-pw"),
        (EXTERNAL, "redis://:s3cret@redis.shared:6379"),
        (SESSION_ROUTING, "generated-pw"),
    ];
    for (yaml, secret_value) in cases {
        let rtc = rtc(yaml);
        for native in [false, true] {
            let sidecar = sidecar::container(&rtc, &settings(native));
            let env = rendered_env(&rtc, &sidecar, secret_value);
            let config = parse_as_sidecar(&env);
            let case = format!("{} native={native}", rtc.metadata.name.as_deref().unwrap());
            assert_eq!(config.listen.to_string(), "127.0.0.1:6379", "{case}");
            assert_eq!(config.http_listen.to_string(), "0.0.0.0:9091", "{case}");
            assert_eq!(config.log_format, "json", "{case}");
            assert_eq!(
                config.sidecar_id.as_deref(),
                Some("chat-7d9f8-x2x4q"),
                "{case}"
            );
            assert_eq!(
                config.channel_prefix, rtc.spec.backplane.channel_prefix,
                "{case}"
            );
            assert_eq!(
                config.client_buffer_bytes as i64, rtc.spec.sidecar.client_buffer_bytes,
                "{case}"
            );
            if rtc.spec.backplane.external.is_some() {
                // The Secret's URL, password included, over the ConfigMap's copy without it.
                assert_eq!(config.upstreams, [secret_value], "{case}");
                assert_eq!(config.upstream_password, None, "{case}");
            } else {
                assert_eq!(
                    config.upstreams.join(" "),
                    backplane::upstream_url(&rtc).unwrap(),
                    "{case}"
                );
                assert_eq!(
                    config.upstream_password.as_ref().map(|p| p.expose()),
                    Some(secret_value),
                    "{case}"
                );
            }
            // The declared port (probes, scraping) is the one the sidecar serves on.
            let port = &sidecar.ports.as_ref().unwrap()[0];
            assert_eq!(i32::from(config.http_listen.port()), port.container_port);
            // Session routing: the front on its declared port, in front of the app, reachable
            // by the other pods at this pod's IP, with the mounted secret.
            if rtc.spec.session_routing() {
                let front = &sidecar.ports.as_ref().unwrap()[1];
                assert_eq!(front.name.as_deref(), Some(crate::names::FRONT_PORT_NAME));
                let listen = config.front_listen.expect("the front listens");
                assert_eq!(i32::from(listen.port()), front.container_port, "{case}");
                // Other pods forward to the peer port, declared too, at this pod's IP.
                let peer_port = &sidecar.ports.as_ref().unwrap()[2];
                assert_eq!(
                    peer_port.name.as_deref(),
                    Some(crate::names::FRONT_PEER_PORT_NAME)
                );
                let peer = config.front_peer_listen.expect("the front has a peer port");
                assert_eq!(i32::from(peer.port()), peer_port.container_port, "{case}");
                assert_eq!(
                    config.front_advertise.map(|a| a.to_string()).as_deref(),
                    Some("10.244.0.7:9093"),
                    "{case}"
                );
                assert_eq!(addrs(&config.front_app), ["127.0.0.1:8080"], "{case}");
                assert_eq!(config.front_path, "/ws/socket.io/", "{case}");
                let mounts = sidecar.volume_mounts.as_ref().unwrap();
                let dir = std::path::Path::new(crate::names::FRONT_SECRET_FILE)
                    .parent()
                    .unwrap();
                assert!(
                    mounts
                        .iter()
                        .any(|m| std::path::Path::new(&m.mount_path) == dir),
                    "{case}: the secret is mounted where the sidecar reads it: {mounts:?}"
                );
                assert_eq!(
                    config.front_secret_file.as_deref(),
                    Some(std::path::Path::new(crate::names::FRONT_SECRET_FILE))
                );
            } else {
                assert_eq!(config.front_listen, None, "{case}");
                assert_eq!(sidecar.ports.as_ref().unwrap().len(), 1, "{case}");
            }
            // The URL the apps are given reaches the sidecar's listener.
            assert_eq!(format!("redis://{}", config.listen), LOCAL);
        }
    }
}

#[test]
fn the_patch_applies_to_the_pod_as_sent_and_keeps_fields_this_build_does_not_know() {
    // What the API server sends may carry fields newer than k8s-openapi's Pod; the patch must
    // leave them on their own element.
    let sent = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "generateName": "chat-", "namespace": "apps", "labels": { "app": "chat" } },
        "spec": {
            "initContainers": [ { "name": "migrate", "image": "chat:1", "futureField": 1 } ],
            "containers": [ { "name": "app", "image": "chat:1", "futureField": 2 } ],
            "futurePodField": true,
        },
    });
    let pod: Pod = serde_json::from_value(sent.clone()).unwrap();
    let Decision::Inject { patch, .. } =
        mutate(&pod, NS, &[rtc(MINIMAL)], &settings(true), Some(HASH))
    else {
        panic!("expected an injection");
    };
    let mut doc = sent;
    json_patch::patch(&mut doc, &patch).unwrap();
    let spec = &doc["spec"];
    assert_eq!(spec["futurePodField"], Value::Bool(true));
    assert_eq!(spec["initContainers"][0]["name"], "switchboard-sidecar");
    assert_eq!(spec["initContainers"][0].get("futureField"), None);
    assert_eq!(spec["initContainers"][1]["name"], "migrate");
    assert_eq!(spec["initContainers"][1]["futureField"], 1);
    assert_eq!(spec["containers"][0]["futureField"], 2);
    assert_eq!(
        spec["containers"][0]["env"],
        json!([ { "name": "REDIS_URL", "value": LOCAL } ])
    );
    assert_eq!(
        doc["metadata"]["annotations"],
        json!({ INJECTED_BY_ANNOTATION: "chat", CONFIG_HASH_ANNOTATION: HASH })
    );
}

/// A secret volume: its name, its Secret, and its `(key, path)` items.
type SecretVolume = (String, Option<String>, Vec<(String, String)>);

#[test]
fn an_external_tls_backplane_mounts_its_secrets_and_names_the_files() {
    let tls = cluster(
        "cloud",
        "chat",
        "python-socketio",
        "  backplane:
    external:
      urlSecretRef: { name: elasticache }
      tls:
        caSecretRef: { name: private-ca }
        clientCertificateSecretRef: { name: sidecar-client }
        serverName: redis.internal.example",
    );
    for base in [BARE_POD, RICH_POD] {
        let injected = inject(
            &pod(base),
            std::slice::from_ref(&tls),
            &settings(true),
            Some(HASH),
            "cloud",
        );
        let spec = injected.spec.as_ref().unwrap();
        let volumes: Vec<SecretVolume> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let s = v.secret.as_ref()?;
                let items = s.items.iter().flatten();
                Some((
                    v.name.clone(),
                    s.secret_name.clone(),
                    items.map(|i| (i.key.clone(), i.path.clone())).collect(),
                ))
            })
            .collect();
        let expect = |name: &str, secret: &str, items: &[(&str, &str)]| {
            (
                name.to_owned(),
                Some(secret.to_owned()),
                items
                    .iter()
                    .map(|(k, p)| ((*k).to_owned(), (*p).to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        assert!(
            volumes.contains(&expect(
                "switchboard-backplane-ca",
                "private-ca",
                &[("ca.crt", "ca.crt")]
            )),
            "{volumes:?}"
        );
        assert!(
            volumes.contains(&expect(
                "switchboard-backplane-client-cert",
                "sidecar-client",
                &[("tls.crt", "tls.crt"), ("tls.key", "tls.key")]
            )),
            "{volumes:?}"
        );
        let mounts: Vec<(String, String, Option<bool>)> = sidecar_of(&injected)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone(), m.read_only))
            .collect();
        assert_eq!(
            mounts,
            vec![
                (
                    "switchboard-backplane-ca".to_owned(),
                    "/etc/switchboard/backplane-tls/ca".to_owned(),
                    Some(true)
                ),
                (
                    "switchboard-backplane-client-cert".to_owned(),
                    "/etc/switchboard/backplane-tls/client".to_owned(),
                    Some(true)
                ),
            ]
        );
    }
    // The ConfigMap points the sidecar at the mounted files, so adding TLS rolls the pods.
    let config = sidecar_config::config_map(&tls, "rediss://redis.internal.example:6379");
    let data = config.data.unwrap();
    for (key, value) in [
        (
            "SWITCHBOARD_UPSTREAM_TLS_CA_FILE",
            "/etc/switchboard/backplane-tls/ca/ca.crt",
        ),
        (
            "SWITCHBOARD_UPSTREAM_TLS_CERT_FILE",
            "/etc/switchboard/backplane-tls/client/tls.crt",
        ),
        (
            "SWITCHBOARD_UPSTREAM_TLS_KEY_FILE",
            "/etc/switchboard/backplane-tls/client/tls.key",
        ),
        (
            "SWITCHBOARD_UPSTREAM_TLS_SERVER_NAME",
            "redis.internal.example",
        ),
    ] {
        assert_eq!(data.get(key).map(String::as_str), Some(value), "{key}");
    }
    assert!(!data.contains_key("SWITCHBOARD_UPSTREAM_TLS_INSECURE_SKIP_VERIFY"));
    // Without TLS nothing is mounted.
    let external = cluster(
        "webui",
        "chat",
        "python-socketio",
        "  backplane:\n    external: { urlSecretRef: { name: shared-redis } }",
    );
    let plain = inject(
        &pod(BARE_POD),
        &[external],
        &settings(true),
        Some(HASH),
        "webui",
    );
    assert!(sidecar_of(&plain).volume_mounts.is_none());
    assert!(plain.spec.unwrap().volumes.is_none());
}
