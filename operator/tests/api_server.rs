//! The RealtimeCluster CRD against a real kube-apiserver: installed and Established, printed by
//! kubectl, invalid specs refused with a message naming the field, valid ones stored with defaults.
//!
//! One control plane is shared by the tests in this file (a `static`, cleaned up by the testkit's
//! guardian when the test binary exits).

mod support;

use std::process::Command;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};
use switchboard_operator::api::*;
use switchboard_testkit::ControlPlane;

const NAMESPACE: &str = "default";
const CRD_NAME: &str = "realtimeclusters.switchboard.dev";

/// The shared control plane with the committed CRD installed; `None` when skipped.
async fn control_plane() -> Option<&'static ControlPlane> {
    support::control_plane().await
}

fn untyped(client: Client) -> Api<DynamicObject> {
    Api::namespaced_with(
        client,
        NAMESPACE,
        &ApiResource::erase::<RealtimeCluster>(&()),
    )
}

async fn create(
    api: &Api<DynamicObject>,
    name: &str,
    spec: Value,
) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await
}

fn kubectl(control_plane: &ControlPlane, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(control_plane.kubeconfig())
        .args(args)
        .output()
        .expect("kubectl on PATH");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn crd_is_established_with_its_names() {
    let Some(control_plane) = control_plane().await else {
        return;
    };
    let crds: Api<CustomResourceDefinition> = Api::all(control_plane.client().await.unwrap());
    let crd = crds.get(CRD_NAME).await.unwrap();
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    for wanted in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == wanted && c.status == "True"),
            "{wanted} is not True: {conditions:?}"
        );
    }
    // The server adds defaults around it (conversion, listKind) but keeps the schema as sent.
    assert!(
        crd.spec.versions == RealtimeCluster::crd().spec.versions,
        "the server changed the schema we sent"
    );
}

#[tokio::test]
async fn kubectl_prints_the_columns_from_status() {
    let Some(control_plane) = control_plane().await else {
        return;
    };
    let client = control_plane.client().await.unwrap();
    create(
        &untyped(client.clone()),
        "printed",
        json!({
            "selector": { "matchLabels": { "app": "printed" } },
            "framework": "socketio-node",
            // Worker ports are accepted with session routing (refused without: see below).
            "app": { "workerPorts": [3000, 3001] },
            "ingress": { "className": "traefik", "host": "printed.example.com",
                         "affinity": "session-routing" },
        }),
    )
    .await
    .unwrap();
    // What the controller will write, through the status subresource.
    let typed: Api<RealtimeCluster> = Api::namespaced(client, NAMESPACE);
    let status = json!({ "status": {
        "observedGeneration": 1,
        "conditions": [
            { "type": "Ready", "status": "True", "reason": "AllReady", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z" },
            { "type": "BackplaneReady", "status": "True", "reason": "ManagedRedisReady", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z" },
        ],
        "pods": { "matched": 3, "injected": 3, "ready": 2 },
    }});
    typed
        .patch_status("printed", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();

    let table = kubectl(control_plane, &["get", "rtc", "printed"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "PODS", "BACKPLANE", "ROUTING", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        [
            "printed",
            "True",
            "2",
            "ManagedRedisReady",
            "session-routing"
        ],
        "{table}"
    );

    let wide = kubectl(
        control_plane,
        &[
            "get",
            "realtimeclusters.switchboard.dev",
            "printed",
            "-o",
            "wide",
        ],
    );
    assert!(
        wide.lines().next().unwrap().contains("FRAMEWORK") && wide.contains("socketio-node"),
        "{wide}"
    );
}

/// (name, spec, the field the error must name, what it must say about it)
fn invalid_specs() -> Vec<(&'static str, Value, &'static str, &'static str)> {
    let selector = json!({ "matchLabels": { "app": "chat" } });
    let with = |extra: Value| {
        let mut spec = json!({ "selector": selector, "framework": "python-socketio" });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    let ingress = |extra: Value| {
        let mut ingress = json!({ "host": "chat.example.com" });
        ingress
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        with(json!({ "ingress": ingress }))
    };
    vec![
        (
            "no-selector",
            json!({ "framework": "generic", "app": { "port": 80 } }),
            "spec.selector",
            "Required value",
        ),
        (
            "empty-selector",
            with(json!({ "selector": {} })),
            "spec.selector",
            "must select at least one label",
        ),
        (
            "unknown-framework",
            with(json!({ "framework": "django" })),
            "spec.framework",
            "Unsupported value: \"django\"",
        ),
        (
            "both-backplanes",
            with(
                json!({ "backplane": { "managed": {}, "external": { "urlSecretRef": { "name": "redis" } } } }),
            ),
            "spec.backplane",
            "exactly one of managed or external",
        ),
        (
            "no-backplane",
            with(json!({ "backplane": { "channelPrefix": "chat" } })),
            "spec.backplane",
            "exactly one of managed or external",
        ),
        (
            "zero-shards",
            with(json!({ "backplane": { "managed": { "shards": 0 } } })),
            "spec.backplane.managed.shards",
            "greater than or equal to 1",
        ),
        (
            "two-replicas",
            with(json!({ "backplane": { "managed": { "replicas": 2 } } })),
            "spec.backplane.managed.replicas",
            "Sentinel needs a quorum",
        ),
        (
            "glob-prefix",
            with(json!({ "backplane": { "managed": {}, "channelPrefix": "chat*" } })),
            "spec.backplane.channelPrefix",
            "must not contain the glob characters",
        ),
        (
            "secret-without-name",
            with(json!({ "backplane": { "external": { "urlSecretRef": { "key": "url" } } } })),
            "spec.backplane.external.urlSecretRef.name",
            "Required value",
        ),
        (
            "tls-insecure-with-a-ca",
            with(json!({ "backplane": { "external": {
                "urlSecretRef": { "name": "redis" },
                "tls": { "insecureSkipVerify": true, "caSecretRef": { "name": "redis-ca" } }
            } } })),
            "spec.backplane.external.tls",
            "caSecretRef would be ignored",
        ),
        (
            "brought-certificate-without-tls",
            with(json!({ "backplane": { "managed": {
                "tls": false, "tlsSecretRef": { "name": "redis-cert" }
            } } })),
            "spec.backplane.managed.tlsSecretRef",
            "needs tls: true",
        ),
        (
            "storage-class-without-persistence",
            with(
                json!({ "backplane": { "managed": { "persistence": { "storageClassName": "fast" } } } }),
            ),
            "spec.backplane.managed.persistence.storageClassName",
            "needs persistence.enabled: true",
        ),
        (
            "generic-without-port",
            with(json!({ "framework": "generic" })),
            "spec.app.port",
            "required when spec.framework is generic",
        ),
        (
            "port-out-of-range",
            with(json!({ "app": { "port": 70000 } })),
            "spec.app.port",
            "less than or equal to 65535",
        ),
        (
            "bad-env-name",
            with(json!({ "app": { "redisUrlEnv": ["1REDIS"] } })),
            "spec.app.redisUrlEnv[0]",
            "should match",
        ),
        (
            "cookie-without-affinity",
            ingress(json!({ "affinity": "none", "cookie": { "name": "route" } })),
            "spec.ingress.cookie",
            "only allowed with spec.ingress.affinity: cookie",
        ),
        (
            "same-site-none-not-secure",
            ingress(
                json!({ "className": "nginx", "cookie": { "sameSite": "None", "secure": false } }),
            ),
            "spec.ingress.cookie.secure",
            "must be true with sameSite: None",
        ),
        (
            "unknown-same-site",
            ingress(json!({ "className": "nginx", "cookie": { "sameSite": "lax" } })),
            "spec.ingress.cookie.sameSite",
            "Unsupported value: \"lax\"",
        ),
        (
            "cookie-path-with-a-semicolon",
            ingress(
                json!({ "className": "nginx", "cookie": { "path": "/chat;Domain=evil.example" } }),
            ),
            "spec.ingress.cookie.path",
            "should match",
        ),
        (
            "cookie-attributes-on-a-gateway",
            ingress(json!({ "gateway": { "name": "public" }, "cookie": { "sameSite": "None" } })),
            "spec.ingress.cookie",
            "the Gateway API's sessionPersistence has no cookie attributes",
        ),
        (
            "worker-ports-without-session-routing",
            with(json!({
                "app": { "workerPorts": [5000, 5001] },
                "ingress": { "host": "chat.example.com", "className": "nginx" }
            })),
            "spec.app.workerPorts",
            "only allowed with spec.ingress.affinity: session-routing",
        ),
        (
            "a-worker-port-twice",
            with(json!({
                "app": { "workerPorts": [5000, 5001, 5000] },
                "ingress": { "host": "chat.example.com", "affinity": "session-routing" }
            })),
            "spec.app.workerPorts",
            "must not name a port twice",
        ),
        (
            "bad-host",
            ingress(json!({ "host": "Chat_Example" })),
            "spec.ingress.host",
            "must be a lowercase DNS name",
        ),
        (
            "relative-path",
            ingress(json!({ "path": "socket.io" })),
            "spec.ingress.path",
            "must start with /",
        ),
        (
            "zero-timeout",
            ingress(json!({ "timeoutSeconds": 0 })),
            "spec.ingress.timeoutSeconds",
            "greater than or equal to 1",
        ),
        (
            "tiny-client-buffer",
            with(json!({ "sidecar": { "clientBufferBytes": 10 } })),
            "spec.sidecar.clientBufferBytes",
            "greater than or equal to 1024",
        ),
    ]
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_field() {
    let Some(control_plane) = control_plane().await else {
        return;
    };
    let api = untyped(control_plane.client().await.unwrap());
    let mut failures = Vec::new();
    for (name, spec, field, says) in invalid_specs() {
        match create(&api, &format!("invalid-{name}"), spec).await {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(kube::Error::Api(status)) if status.code == 422 => {
                let message = &status.message;
                if !message.contains(&format!("{field}:")) || !message.contains(says) {
                    failures.push(format!(
                        "{name}: wanted `{field}:` and `{says}` in: {message}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: unexpected error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        invalid_specs().len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn minimal_spec_round_trips_with_defaults() {
    let Some(control_plane) = control_plane().await else {
        return;
    };
    let client = control_plane.client().await.unwrap();
    create(
        &untyped(client.clone()),
        "minimal",
        json!({
            "selector": { "matchLabels": { "app": "chat" } },
            "framework": "python-socketio",
        }),
    )
    .await
    .unwrap();
    let stored = Api::<RealtimeCluster>::namespaced(client, NAMESPACE)
        .get("minimal")
        .await
        .unwrap();
    let expected: RealtimeClusterSpec = serde_json::from_value(
        json!({ "selector": { "matchLabels": { "app": "chat" } }, "framework": "python-socketio" }),
    )
    .unwrap();
    assert_eq!(stored.spec, expected);
    // The defaults are the server's, not serde's: read the raw object too.
    let raw = untyped(control_plane.client().await.unwrap())
        .get("minimal")
        .await
        .unwrap();
    let spec = &raw.data["spec"];
    assert_eq!(spec["backplane"]["managed"]["replicas"], 1);
    assert_eq!(spec["backplane"]["managed"]["image"], "redis:7.4");
    assert_eq!(
        spec["backplane"]["managed"]["persistence"]["enabled"],
        false
    );
    assert_eq!(spec["sidecar"]["clientBufferBytes"], 32 << 20);
    assert_eq!(spec["app"], json!({}));
}

#[tokio::test]
async fn full_spec_round_trips_with_nested_defaults() {
    let Some(control_plane) = control_plane().await else {
        return;
    };
    let client = control_plane.client().await.unwrap();
    let sent = json!({
        "selector": { "matchLabels": { "app": "webui" } },
        "framework": "open-webui",
        "app": { "port": 8081, "redisUrlEnv": ["REDIS_URL"] },
        "backplane": { "external": { "urlSecretRef": { "name": "redis" } }, "channelPrefix": "webui:" },
        "ingress": { "className": "nginx", "host": "chat.example.com", "tls": { "secretName": "chat-tls" }, "cookie": {} },
        "sidecar": { "image": "switchboard-sidecar:dev", "publishBufferMessages": 500 },
    });
    create(&untyped(client.clone()), "full", sent)
        .await
        .unwrap();
    let stored = Api::<RealtimeCluster>::namespaced(client, NAMESPACE)
        .get("full")
        .await
        .unwrap();
    let raw = serde_json::to_value(&stored.spec).unwrap();
    assert_eq!(
        raw["backplane"],
        json!({ "external": { "urlSecretRef": { "name": "redis", "key": "url" } }, "channelPrefix": "webui:" })
    );
    assert_eq!(
        raw["ingress"],
        json!({
            "className": "nginx", "host": "chat.example.com", "path": "/", "tls": { "secretName": "chat-tls" },
            "affinity": "cookie", "cookie": { "name": "sb-route", "maxAgeSeconds": 172800 }, "timeoutSeconds": 3600,
        })
    );
    assert_eq!(stored.spec.sidecar.publish_buffer_messages, 500);
    assert_eq!(stored.spec.sidecar.publish_buffer_bytes, 8 << 20);
    assert_eq!(stored.spec.app_port(), Some(8081));
}
