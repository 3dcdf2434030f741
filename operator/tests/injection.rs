//! Sidecar injection through the real admission chain: the test registers a
//! MutatingWebhookConfiguration whose URL is the operator's webhook on loopback, the operator
//! issues the certificate and fills in the caBundle, and kube-controller-manager creates a
//! Deployment's pods through the API server, which calls the webhook.

mod support;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Operator, eventually, until};
use switchboard_operator::api::RealtimeCluster;

const SIDECAR: &str = "switchboard-sidecar";

fn webhook_configuration(namespace: &str, url: &str) -> MutatingWebhookConfiguration {
    serde_json::from_value(json!({
        "metadata": { "name": format!("switchboard-sidecar-injector-{namespace}") },
        "webhooks": [{
            "name": "inject.switchboard.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "IfNeeded",
            "clientConfig": { "url": url },
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"],
            }],
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } },
        }],
    }))
    .unwrap()
}

fn sidecar(pod: &Pod) -> Option<&Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == SIDECAR)
}

fn env<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn bare_pod(name: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels, "annotations": annotations },
        "spec": { "containers": [{ "name": "app", "image": "chat:never-pulled" }] },
    }))
    .unwrap()
}

#[tokio::test]
async fn selected_pods_get_a_native_sidecar_and_the_rest_is_reported() {
    let Some(cp) = support::control_plane().await else {
        return;
    };
    let client = cp.client().await.unwrap();
    let ns = "inject";
    support::namespace(&client, ns).await;
    let operator = Operator::start(cp, ns, "switchboard-operator", "op-inject");
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configurations
        .create(
            &PostParams::default(),
            &webhook_configuration(ns, &operator.webhook_url),
        )
        .await
        .unwrap();
    // The operator issues its certificate, puts its CA into the configuration, and serves.
    eventually("the caBundle filled in by the operator", 60, async || {
        let configuration = configurations
            .get(&format!("switchboard-sidecar-injector-{ns}"))
            .await
            .unwrap();
        configuration.webhooks?[0].client_config.ca_bundle.clone()
    })
    .await;
    eventually("the webhook serving", 60, async || {
        operator.is_ready().await.then_some(())
    })
    .await;

    let clusters: Api<RealtimeCluster> = Api::namespaced(client.clone(), ns);
    let rtc: RealtimeCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": { "name": "chat" },
        "spec": { "selector": { "matchLabels": { "app": "chat" } }, "framework": "open-webui" },
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &rtc).await.unwrap();
    eventually("the sidecar ConfigMap", 30, async || {
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
            .get_opt("chat-sidecar")
            .await
            .unwrap()
    })
    .await;

    // A Deployment's pods, created by kube-controller-manager, arrive injected; a value the user
    // set is kept.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "chat" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "chat" } },
            "template": {
                "metadata": { "labels": { "app": "chat" } },
                "spec": { "containers": [{
                    "name": "app", "image": "open-webui:never-pulled",
                    "env": [{ "name": "REDIS_URL", "value": "redis://my-own-redis:6379" }],
                }] },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let injected = until(
        "two pods of the Deployment",
        60,
        async || {
            pods.list(&ListParams::default().labels("app=chat"))
                .await
                .unwrap()
                .items
        },
        |pods| pods.len() == 2,
    )
    .await;
    for pod in &injected {
        let sidecar = sidecar(pod).unwrap_or_else(|| panic!("no native sidecar in {pod:#?}"));
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(sidecar.image.as_deref(), Some("switchboard-sidecar:test"));
        let app = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(env(app, "REDIS_URL"), Some("redis://my-own-redis:6379"));
        assert_eq!(
            env(app, "WEBSOCKET_REDIS_URL"),
            Some("redis://127.0.0.1:6379")
        );
        assert_eq!(env(app, "WEBSOCKET_MANAGER"), Some("redis"));
        assert_eq!(
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("switchboard.dev/injected-by"))
                .map(String::as_str),
            Some("chat")
        );
    }

    // A new sidecar configuration reaches pods only when they are recreated: the status names
    // the pods still running the old one.
    let mut names: Vec<String> = injected
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "backplane": { "channelPrefix": "v2:" } } })),
        )
        .await
        .unwrap();
    until(
        "SidecarsReady=False ConfigurationOutdated naming both pods",
        60,
        async || clusters.get("chat").await.unwrap(),
        |rtc| {
            rtc.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "SidecarsReady"
                        && c.reason == "ConfigurationOutdated"
                        && c.message.contains(&format!("({}, {})", names[0], names[1]))
                })
            })
        },
    )
    .await;

    // Not selected: untouched. Opted out: untouched, with an Event saying so.
    pods.create(
        &PostParams::default(),
        &bare_pod("other", json!({ "app": "other" }), json!({})),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &bare_pod(
            "chat-opted-out",
            json!({ "app": "chat" }),
            json!({ "switchboard.dev/inject": "false" }),
        ),
    )
    .await
    .unwrap();
    for name in ["other", "chat-opted-out"] {
        let pod = pods.get(name).await.unwrap();
        assert!(sidecar(&pod).is_none(), "{name} was injected");
        assert_eq!(pod.spec.unwrap().containers.len(), 1, "{name}");
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let skipped = eventually("a SidecarSkipped Event", 30, async || {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SidecarSkipped"))
    })
    .await;
    assert_eq!(
        skipped.regarding.and_then(|r| r.name).as_deref(),
        Some("chat-opted-out")
    );
    assert!(
        skipped
            .note
            .unwrap_or_default()
            .contains("switchboard.dev/inject")
    );
    eventually(
        "a SidecarInjected Event on the ReplicaSet",
        30,
        async || {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("SidecarInjected")
                        && e.regarding.as_ref().and_then(|r| r.kind.as_deref())
                            == Some("ReplicaSet")
                })
        },
    )
    .await;

    // The webhook goes away (failurePolicy: Ignore): a pod created meanwhile starts without the
    // sidecar, and the status names it.
    drop(operator);
    pods.create(
        &PostParams::default(),
        &bare_pod("chat-late", json!({ "app": "chat" }), json!({})),
    )
    .await
    .unwrap();
    assert!(sidecar(&pods.get("chat-late").await.unwrap()).is_none());
    let _operator = Operator::start(cp, ns, "switchboard-operator", "op-inject-2");
    let rtc = until(
        "SidecarsMissing naming chat-late",
        90,
        async || clusters.get("chat").await.unwrap(),
        |rtc| {
            rtc.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "SidecarsReady"
                        && c.reason == "SidecarsMissing"
                        && c.message.contains("chat-late")
                })
            })
        },
    )
    .await;
    let status = rtc.status.unwrap();
    assert_eq!(
        (status.pods.matched, status.pods.injected),
        (4, 2),
        "two injected replicas, the opted-out pod and the late one: {status:?}"
    );
}

/// An operator serving injection for `ns`, its webhook registered and trusted.
async fn injecting_operator(
    cp: &'static switchboard_testkit::ControlPlane,
    client: &kube::Client,
    ns: &str,
    identity: &str,
) -> Operator {
    let operator = Operator::start(cp, ns, "switchboard-operator", identity);
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configurations
        .create(
            &PostParams::default(),
            &webhook_configuration(ns, &operator.webhook_url),
        )
        .await
        .unwrap();
    eventually("the caBundle filled in by the operator", 60, async || {
        let configuration = configurations
            .get(&format!("switchboard-sidecar-injector-{ns}"))
            .await
            .unwrap();
        configuration.webhooks?[0].client_config.ca_bundle.clone()
    })
    .await;
    eventually("the webhook serving", 60, async || {
        operator.is_ready().await.then_some(())
    })
    .await;
    operator
}

#[tokio::test]
async fn dify_pods_get_only_their_pubsub_url_pointed_at_the_sidecar() {
    let Some(cp) = support::control_plane().await else {
        return;
    };
    let client = cp.client().await.unwrap();
    let ns = "inject-dify";
    support::namespace(&client, ns).await;
    let _operator = injecting_operator(cp, &client, ns, "op-dify").await;
    let clusters: Api<RealtimeCluster> = Api::namespaced(client.clone(), ns);
    let rtc: RealtimeCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": { "name": "dify" },
        "spec": {
            "selector": { "matchLabels": { "app.kubernetes.io/instance": "dify", "component": "api-websocket" } },
            "framework": "dify",
        },
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &rtc).await.unwrap();
    let config = eventually("the sidecar ConfigMap", 60, async || {
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
            .get_opt("dify-sidecar")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        config.data.unwrap()["SWITCHBOARD_EXPECT_SUBSCRIPTION"],
        "socketio"
    );

    // A websocket pod as Dify's chart makes it: its cache and Celery broker on Dify's Redis.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "dify-api-websocket-0",
            "labels": { "app.kubernetes.io/instance": "dify", "component": "api-websocket" },
        },
        "spec": { "containers": [{
            "name": "api-websocket", "image": "langgenius/dify-api:never-pulled",
            "env": [
                { "name": "REDIS_HOST", "value": "dify-redis-master" },
                { "name": "CELERY_BROKER_URL", "value": "redis://:pw@dify-redis-master:6379/1" },
            ],
        }] },
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert!(
        sidecar(&created).is_some(),
        "no native sidecar in {created:#?}"
    );
    let app = &created.spec.as_ref().unwrap().containers[0];
    assert_eq!(env(app, "PUBSUB_REDIS_URL"), Some("redis://127.0.0.1:6379"));
    assert_eq!(
        env(app, "EVENT_BUS_REDIS_URL"),
        Some("redis://127.0.0.1:6379")
    );
    assert_eq!(env(app, "PUBSUB_REDIS_USE_CLUSTERS"), Some("false"));
    assert_eq!(env(app, "REDIS_HOST"), Some("dify-redis-master"));
    assert_eq!(
        env(app, "CELERY_BROKER_URL"),
        Some("redis://:pw@dify-redis-master:6379/1")
    );
    assert_eq!(env(app, "REDIS_URL"), None, "Dify reads no REDIS_URL");
}

/// `ingress.affinity: session-routing` through the real admission chain: the injected sidecar
/// declares the front's port, learns the pod's IP for `--front-advertise` and mounts the
/// fleet's secret, which the operator created.
#[tokio::test]
async fn session_routing_pods_get_the_front_port_their_ip_and_the_secret() {
    let Some(cp) = support::control_plane().await else {
        return;
    };
    let client = cp.client().await.unwrap();
    let ns = "inject-routing";
    support::namespace(&client, ns).await;
    let _operator = injecting_operator(cp, &client, ns, "op-routing").await;
    let clusters: Api<RealtimeCluster> = Api::namespaced(client.clone(), ns);
    let rtc: RealtimeCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": { "name": "webui" },
        "spec": {
            "selector": { "matchLabels": { "app": "webui" } },
            "framework": "open-webui",
            "ingress": { "className": "traefik", "host": "webui.example.com", "affinity": "session-routing" },
        },
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &rtc).await.unwrap();
    let config = eventually("the sidecar ConfigMap", 60, async || {
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
            .get_opt("webui-sidecar")
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        config.data.unwrap()["SWITCHBOARD_FRONT_PATH"],
        "/ws/socket.io/"
    );
    eventually("the front's Secret", 60, async || {
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
            .get_opt("webui-front")
            .await
            .unwrap()
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created = pods
        .create(
            &PostParams::default(),
            &bare_pod("webui-0", json!({ "app": "webui" }), json!({})),
        )
        .await
        .unwrap();
    let sidecar = sidecar(&created).unwrap_or_else(|| panic!("no sidecar in {created:#?}"));
    // The front (the Service's target) and its peer port (other pods forward there).
    let port = |name: &str| {
        sidecar
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no port {name} on {sidecar:#?}"))
            .container_port
    };
    assert_eq!((port("sb-front"), port("sb-peer")), (9092, 9093));
    assert_eq!(
        env(sidecar, "SWITCHBOARD_FRONT_ADVERTISE"),
        Some("$(POD_IP):9093")
    );
    let pod_ip = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_IP")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(pod_ip, Some("status.podIP"));
    let mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/etc/switchboard/front")
        .unwrap_or_else(|| panic!("the secret is not mounted: {sidecar:#?}"));
    let volume = created
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("webui-front")
    );
}
