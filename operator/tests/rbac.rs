//! The Helm chart's RBAC, checked against a real API server in RBAC mode: the chart is rendered by
//! the real `helm template` and applied, and the operator binary runs with the chart's flags under
//! a token of the chart's ServiceAccount through every path that needs a permission — a managed
//! RealtimeCluster with an nginx Ingress (and a Gateway API route when the CRDs are at hand), the
//! webhook issuing its certificate, filling the chart's MutatingWebhookConfiguration and injecting
//! pods, Events, the leader Lease, then a switch to an external backplane whose Secret is missing
//! (pruning every managed child). Nothing may be forbidden; and a few things the operator must
//! never be able to do are checked to be refused.

mod support;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::runtime::wait::{await_condition, conditions};
use serde::Deserialize;
use serde_json::{Value, json};
use support::{Operator, create_namespace, eventually, has, until};
use switchboard_operator::api::RealtimeCluster;
use switchboard_testkit::ControlPlane;

/// The namespace `manifests/install.yaml` uses; the chart is rendered for it.
const RELEASE_NAMESPACE: &str = "switchboard-system";
const APPS: &str = "apps";
/// `switchboard.fullname-operator` for release `switchboard`: the ServiceAccount, and the Lease.
const OPERATOR: &str = "switchboard-operator";
const WEBHOOK_CONFIGURATION: &str = "switchboard-sidecar-injector";
const WEBHOOK_SECRET: &str = "switchboard-webhook-tls";
const FIELD_MANAGER: &str = "rbac-test";
/// As the downward API would name a replica of the chart's Deployment.
const IDENTITY: &str = "switchboard-operator-5d8f7c9b6-x7k2p";

/// `helm template switchboard charts/switchboard --namespace switchboard-system`, one object per
/// YAML document.
fn render_chart(helm: &Path, scratch: &Path) -> Vec<Value> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/switchboard");
    let home = scratch.join("helm");
    let output = Command::new(helm)
        .args(["template", "switchboard"])
        .arg(&chart)
        .args(["--namespace", RELEASE_NAMESPACE])
        // Keep helm away from the developer's repositories and plugins.
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|object| !object.is_null())
        .collect()
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], wanted: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == wanted)
        .unwrap_or_else(|| panic!("the chart renders no {wanted}"))
}

/// Server-side applies `object` as the admin, whatever its kind.
async fn apply(client: &Client, object: &Value) {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", object["apiVersion"].as_str().unwrap()),
    };
    let gvk = GroupVersionKind::gvk(group, version, kind(object));
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            object["metadata"]["namespace"]
                .as_str()
                .expect("the chart sets the namespace of namespaced objects"),
            &resource,
        ),
    };
    let name = object["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying the chart's {} {name}: {e}", kind(object)));
}

/// A kubeconfig like the admin's, authenticating with `token` instead.
fn kubeconfig_with_token(control_plane: &ControlPlane, token: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(control_plane.kubeconfig()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    config["users"][0]["user"] = serde_yaml::to_value(json!({ "token": token })).unwrap();
    let path = control_plane
        .dir()
        .join("operator-serviceaccount.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// The operator's container in the chart's Deployment: its flags, and its environment with the
/// downward-API values a pod in the release namespace would get.
fn operator_command(deployment: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let name = e["name"].as_str().unwrap().to_owned();
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => RELEASE_NAMESPACE.to_owned(),
                Some("metadata.name") => IDENTITY.to_owned(),
                Some(other) => panic!("unexpected downward API field {other}"),
                // More detail for a failing run than the chart's default.
                None if name == "RUST_LOG" => "info,switchboard_operator=debug".to_owned(),
                None => e["value"].as_str().unwrap().to_owned(),
            };
            (name, value)
        })
        .collect();
    (args, env)
}

/// Fails at once, naming the refused requests, when the operator's log shows one: a missing
/// permission then reads as what it is rather than as a timeout further on.
fn assert_nothing_forbidden(operator: &Operator) {
    let log = operator.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|line| {
            let line = line.to_lowercase();
            ["forbidden", "code: 403", " 403 "]
                .iter()
                .any(|needle| line.contains(needle))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the chart's RBAC refused the operator:\n{}",
        refused.join("\n")
    );
}

/// [`eventually`], checking the operator's log for refusals on every poll.
async fn allowed_eventually<T>(
    operator: &Operator,
    what: &str,
    seconds: u64,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    eventually(what, seconds, async || {
        assert_nothing_forbidden(operator);
        probe().await
    })
    .await
}

/// Waits until every `(type, status, reason)` holds on RealtimeCluster `chat`.
async fn conditions_hold(
    operator: &Operator,
    clusters: &Api<RealtimeCluster>,
    what: &str,
    wanted: &[(&str, &str, &str)],
) {
    until(
        what,
        120,
        async || {
            assert_nothing_forbidden(operator);
            clusters.get("chat").await.unwrap()
        },
        |rtc| wanted.iter().all(|(t, s, r)| has(rtc, t, s, r)),
    )
    .await;
}

/// The Gateway API's experimental HTTPRoute CRD (`SWITCHBOARD_GATEWAY_API_CRDS`, which
/// `tests/run.sh` sets); without it the HTTPRoute writes are not exercised (the list the
/// controller prunes with still is: RBAC answers before the API server looks the kind up).
fn http_route_crd() -> Option<CustomResourceDefinition> {
    let Some(dir) = std::env::var_os("SWITCHBOARD_GATEWAY_API_CRDS") else {
        eprintln!(
            "\n#### SKIPPING the HTTPRoute part: SWITCHBOARD_GATEWAY_API_CRDS is unset (tests/run.sh sets it)\n"
        );
        return None;
    };
    let path = Path::new(&dir).join("experimental/gateway.networking.k8s.io_httproutes.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    Some(serde_yaml::from_str(&yaml).unwrap())
}

/// What the API server would answer the ServiceAccount (`kubectl auth can-i --as=…`).
async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR}"
            )),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{RELEASE_NAMESPACE}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: namespace.map(Into::into),
                name: name.map(Into::into),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}

async fn sidecar_injected_events(client: &Client) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), APPS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SidecarInjected"))
        .collect()
}

#[tokio::test]
async fn the_charts_rbac_is_enough_for_every_path_and_no_wider() {
    let Some(cp) = support::control_plane().await else {
        return;
    };
    let Some(helm) = support::helm() else {
        return;
    };
    let admin = cp.client().await.unwrap();
    let rendered = render_chart(&helm, cp.dir());
    create_namespace(
        &admin,
        RELEASE_NAMESPACE,
        json!({ "pod-security.kubernetes.io/enforce": "restricted" }),
    )
    .await;
    create_namespace(&admin, APPS, json!({})).await;

    // Everything the chart renders, as `helm install` would create it, except that the API server
    // reaches this test's operator by URL on loopback rather than through the Service.
    let (http_port, webhook_port) = (support::unused_port(), support::unused_port());
    for object in &rendered {
        let mut object = object.clone();
        if kind(&object) == "MutatingWebhookConfiguration" {
            assert_eq!(object["metadata"]["name"], WEBHOOK_CONFIGURATION);
            object["webhooks"][0]["clientConfig"] =
                json!({ "url": format!("https://localhost:{webhook_port}/mutate") });
        }
        apply(&admin, &object).await;
    }
    // The chart's operator pods pass the restricted Pod Security Standard (kwok "runs" them).
    let operator_pods: Api<Pod> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    until(
        "the chart's two operator pods admitted under Pod Security restricted",
        60,
        async || {
            operator_pods
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .len()
        },
        |n| *n == 2,
    )
    .await;

    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    let token = accounts
        .create_token_request(
            OPERATOR,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            },
        )
        .await
        .expect("a token for the chart's ServiceAccount")
        .status
        .and_then(|s| s.token)
        .expect("the TokenRequest's status carries the token");
    let kubeconfig = kubeconfig_with_token(cp, &token);
    let (args, env) = operator_command(find(&rendered, "Deployment"));
    let operator = Operator::start_with(
        cp,
        &kubeconfig,
        IDENTITY,
        &args,
        &env,
        (http_port, webhook_port),
    );

    // Leader election in the release namespace; the webhook's certificate issued into its Secret
    // and its CA put into the chart's MutatingWebhookConfiguration.
    allowed_eventually(
        &operator,
        "the operator ready (webhook serving)",
        90,
        async || operator.is_ready().await.then_some(()),
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(admin.clone(), RELEASE_NAMESPACE);
    allowed_eventually(
        &operator,
        "the Lease held by this replica",
        30,
        async || {
            let lease = leases.get_opt(OPERATOR).await.unwrap()?;
            (lease.spec?.holder_identity.as_deref() == Some(IDENTITY)).then_some(())
        },
    )
    .await;
    let secret: Secret = Api::namespaced(admin.clone(), RELEASE_NAMESPACE)
        .get(WEBHOOK_SECRET)
        .await
        .unwrap();
    let ca = secret.data.unwrap()["ca.crt"].clone();
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    allowed_eventually(
        &operator,
        "the caBundle filled in by the operator",
        60,
        async || {
            let configuration = configurations.get(WEBHOOK_CONFIGURATION).await.unwrap();
            (configuration.webhooks?[0].client_config.ca_bundle.as_ref() == Some(&ca)).then_some(())
        },
    )
    .await;

    // A managed backplane behind an nginx Ingress, and an app whose pods the webhook injects.
    let clusters: Api<RealtimeCluster> = Api::namespaced(admin.clone(), APPS);
    let rtc: RealtimeCluster = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": { "name": "chat" },
        "spec": {
            "selector": { "matchLabels": { "app": "chat" } },
            "framework": "python-socketio",
            "ingress": { "className": "nginx", "host": "chat.example.com" },
        },
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &rtc).await.unwrap();
    allowed_eventually(&operator, "the sidecar ConfigMap", 60, async || {
        Api::<ConfigMap>::namespaced(admin.clone(), APPS)
            .get_opt("chat-sidecar")
            .await
            .unwrap()
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), APPS);
    let app: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "chat" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "chat" } },
            "template": {
                "metadata": { "labels": { "app": "chat" } },
                "spec": { "containers": [{ "name": "app", "image": "chat:never-pulled" }] },
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &app)
        .await
        .unwrap();
    allowed_eventually(&operator, "a SidecarInjected Event", 60, async || {
        (!sidecar_injected_events(&admin).await.is_empty()).then_some(())
    })
    .await;
    // A second pod of the same ReplicaSet repeats that Event: the recorder patches its series.
    deployments
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
        )
        .await
        .unwrap();
    allowed_eventually(
        &operator,
        "the SidecarInjected Event's series patched",
        60,
        async || {
            sidecar_injected_events(&admin)
                .await
                .iter()
                .any(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
                .then_some(())
        },
    )
    .await;
    conditions_hold(
        &operator,
        &clusters,
        "managed backplane and sidecars ready, the Ingress awaiting its address",
        &[
            ("BackplaneReady", "True", "Ready"),
            ("SidecarsReady", "True", "AllReady"),
            ("IngressReady", "False", "AwaitingAddress"),
        ],
    )
    .await;
    // An ingress controller publishes an address; the watched Ingress brings the cluster Ready.
    Api::<Ingress>::namespaced(admin.clone(), APPS)
        .patch_status(
            "chat-app",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "203.0.113.7" }] } } }),
            ),
        )
        .await
        .unwrap();
    conditions_hold(
        &operator,
        &clusters,
        "Ready",
        &[
            ("IngressReady", "True", "Admitted"),
            ("Ready", "True", "Ready"),
        ],
    )
    .await;

    // Session routing: the front's Secret, and the NetworkPolicy guarding the peer port.
    clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "ingress": { "affinity": "session-routing" } } })),
        )
        .await
        .unwrap();
    allowed_eventually(
        &operator,
        "the NetworkPolicy chat-front-peers and the Secret chat-front",
        30,
        async || {
            let policy = Api::<NetworkPolicy>::namespaced(admin.clone(), APPS)
                .get_opt("chat-front-peers")
                .await
                .unwrap();
            let secret = Api::<Secret>::namespaced(admin.clone(), APPS)
                .get_opt("chat-front")
                .await
                .unwrap();
            (policy.is_some() && secret.is_some()).then_some(())
        },
    )
    .await;

    // A Gateway API route instead of the Ingress: the HTTPRoute applied, the Ingress pruned.
    if let Some(crd) = http_route_crd() {
        let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
        crds.create(&PostParams::default(), &crd).await.unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            await_condition(
                crds,
                "httproutes.gateway.networking.k8s.io",
                conditions::is_crd_established(),
            ),
        )
        .await
        .expect("HTTPRoute CRD Established within 30s")
        .unwrap();
        clusters
            .patch(
                "chat",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "ingress": {
                    "className": null, "gateway": { "name": "public" },
                } } })),
            )
            .await
            .unwrap();
        conditions_hold(
            &operator,
            &clusters,
            "IngressReady=False AwaitingAddress for the HTTPRoute (no Gateway controller here)",
            &[("IngressReady", "False", "AwaitingAddress")],
        )
        .await;
        let routes: Api<DynamicObject> = Api::namespaced_with(
            admin.clone(),
            APPS,
            &switchboard_operator::controller::ingress::http_route_resource(),
        );
        assert!(routes.get_opt("chat-app").await.unwrap().is_some());
        allowed_eventually(&operator, "the Ingress pruned", 30, async || {
            Api::<Ingress>::namespaced(admin.clone(), APPS)
                .get_opt("chat-app")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }

    // An external backplane whose Secret is missing, and no ingress: every managed child pruned.
    clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": {
                "ingress": null,
                "backplane": { "managed": null, "external": { "urlSecretRef": { "name": "chat-redis-url" } } },
            } })),
        )
        .await
        .unwrap();
    conditions_hold(
        &operator,
        &clusters,
        "BackplaneReady=False SecretNotFound",
        &[
            ("BackplaneReady", "False", "SecretNotFound"),
            ("IngressReady", "True", "NotRequested"),
        ],
    )
    .await;
    allowed_eventually(&operator, "the managed children pruned", 60, async || {
        let set = Api::<StatefulSet>::namespaced(admin.clone(), APPS)
            .get_opt("chat-redis-0")
            .await
            .unwrap();
        let password = Api::<Secret>::namespaced(admin.clone(), APPS)
            .get_opt("chat-redis-auth")
            .await
            .unwrap();
        let ingress = Api::<Ingress>::namespaced(admin.clone(), APPS)
            .get_opt("chat-app")
            .await
            .unwrap();
        let policy = Api::<NetworkPolicy>::namespaced(admin.clone(), APPS)
            .get_opt("chat-front-peers")
            .await
            .unwrap();
        (set.is_none() && password.is_none() && ingress.is_none() && policy.is_none()).then_some(())
    })
    .await;
    // The Secret appears: the operator, watching Secrets, picks it up.
    let url: Secret = serde_json::from_value(json!({
        "metadata": { "name": "chat-redis-url" },
        "stringData": { "url": "redis://redis.example:6379" },
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), APPS)
        .create(&PostParams::default(), &url)
        .await
        .unwrap();
    // The sidecar ConfigMap changed (another upstream): the running pods are named as outdated
    // until they are recreated, which goes through the webhook again with the new configuration.
    conditions_hold(
        &operator,
        &clusters,
        "the app's pods reported on the old configuration",
        &[
            ("BackplaneReady", "True", "External"),
            ("SidecarsReady", "False", "ConfigurationOutdated"),
        ],
    )
    .await;
    Api::<Pod>::namespaced(admin.clone(), APPS)
        .delete_collection(
            &kube::api::DeleteParams::default(),
            &ListParams::default().labels("app=chat"),
        )
        .await
        .unwrap();
    conditions_hold(
        &operator,
        &clusters,
        "Ready with the external backplane",
        &[
            ("BackplaneReady", "True", "External"),
            ("Ready", "True", "Ready"),
        ],
    )
    .await;
    let reasons: Vec<String> = Api::<Event>::namespaced(admin.clone(), APPS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("switchboard-operator"))
        .filter_map(|e| e.reason)
        .collect();
    for reason in ["SidecarInjected", "SecretNotFound", "External"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "no {reason} Event in {reasons:?}"
        );
    }

    // Nothing was forbidden along the way.
    let reconciles = operator
        .metric("switchboard_operator_reconciles_total")
        .await
        .expect("the operator's metrics");
    assert!(reconciles > 0.0);
    assert_eq!(
        operator
            .metric("switchboard_operator_reconcile_errors_total{reason=\"forbidden\"}")
            .await,
        None,
        "a reconcile was forbidden"
    );
    assert_nothing_forbidden(&operator);

    // And the grant is no wider than that: what a compromised operator must not be able to do.
    for (verb, group, resource, namespace, name) in [
        ("delete", "", "nodes", None, None),
        ("create", "", "pods", Some(APPS), None),
        ("create", "", "pods/exec", Some(APPS), None),
        ("patch", "apps", "deployments", Some(APPS), None),
        ("update", "", "secrets", Some(APPS), Some("chat-redis-url")),
        (
            "update",
            "",
            "secrets",
            Some(RELEASE_NAMESPACE),
            Some("another-secret"),
        ),
        (
            "create",
            "",
            "serviceaccounts/token",
            Some(RELEASE_NAMESPACE),
            Some(OPERATOR),
        ),
        (
            "update",
            "switchboard.dev",
            "realtimeclusters",
            Some(APPS),
            None,
        ),
        (
            "delete",
            "switchboard.dev",
            "realtimeclusters",
            Some(APPS),
            None,
        ),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
            None,
        ),
        (
            "escalate",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            None,
        ),
        (
            "update",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            Some("someone-elses"),
        ),
        (
            "create",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            None,
            None,
        ),
        (
            "update",
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            None,
            None,
        ),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            Some(RELEASE_NAMESPACE),
            Some("another-lease"),
        ),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            Some("kube-system"),
            Some(OPERATOR),
        ),
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            None,
        ),
    ] {
        assert!(
            !can(&admin, verb, group, resource, namespace, name).await,
            "the chart lets the operator {verb} {resource} ({group}) in {namespace:?} named {name:?}"
        );
    }
    // The review itself works: the same question for something granted is answered yes.
    assert!(can(&admin, "patch", "apps", "statefulsets", Some(APPS), None).await);
    assert!(
        can(
            &admin,
            "update",
            "coordination.k8s.io",
            "leases",
            Some(RELEASE_NAMESPACE),
            Some(OPERATOR)
        )
        .await
    );
}
