//! The operator binary against a real control plane (kube-apiserver, kube-controller-manager with
//! its garbage collector, kube-scheduler, kwok's fake node): what a RealtimeCluster turns into,
//! how edits and deletion propagate, a missing Secret, two replicas electing one leader, and a
//! restart mid-way.
//!
//! Each test has its own namespace and its own operator(s), confined to it with
//! `--watch-namespace`, so the tests run in parallel without seeing each other.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::scenario::{Scenario, cluster, pod};
use support::{Operator, condition, eventually, get, has, until};

/// How many objects of kind `K` carry `instance`'s recommended label.
async fn count<K>(client: &Client, namespace: &str, instance: &str) -> usize
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let labels = ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}"));
    Api::<K>::namespaced(client.clone(), namespace)
        .list_metadata(&labels)
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test]
async fn a_cluster_is_built_updated_and_collected() {
    let Some(s) = Scenario::new("lifecycle").await else {
        return;
    };
    let (cp, client, ns) = (s.cp, s.client.clone(), s.ns.as_str());
    let _operator = Operator::start(cp, ns, "switchboard-operator", "op-life");
    let pods = &s.pods;
    for (name, injected) in [("chat-a", true), ("chat-b", false)] {
        pods.create(
            &PostParams::default(),
            &pod(name, json!({ "app": "chat" }), injected),
        )
        .await
        .unwrap();
    }
    let clusters = &s.clusters;
    clusters
        .create(
            &PostParams::default(),
            &cluster(
                "chat",
                json!({
                    "selector": { "matchLabels": { "app": "chat" } },
                    "framework": "python-socketio",
                    "ingress": { "className": "nginx", "host": "chat.example.com" },
                }),
            ),
        )
        .await
        .unwrap();

    // The children, each owned by the RealtimeCluster.
    let uid = clusters.get("chat").await.unwrap().uid().unwrap();
    let set: StatefulSet = eventually("StatefulSet chat-redis-0", 60, async || {
        get(&client, ns, "chat-redis-0").await
    })
    .await;
    assert_eq!(set.owner_references()[0].uid, uid);
    assert_eq!(set.owner_references()[0].controller, Some(true));
    let redis = &set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert!(
        redis
            .args
            .as_ref()
            .unwrap()
            .contains(&"--requirepass".to_string())
    );
    for service in ["chat-redis-0", "chat-redis-0-headless", "chat-app"] {
        let s: Service = eventually(&format!("Service {service}"), 30, async || {
            get(&client, ns, service).await
        })
        .await;
        assert_eq!(s.owner_references()[0].uid, uid, "{service}");
    }
    let secret: Secret = eventually("Secret chat-redis-auth", 30, async || {
        get(&client, ns, "chat-redis-auth").await
    })
    .await;
    let password = secret.data.as_ref().unwrap()["password"].clone();
    assert_eq!(password.0.len(), 32);
    assert!(
        get::<PodDisruptionBudget>(&client, ns, "chat-redis-0")
            .await
            .is_some()
    );
    let config: ConfigMap = eventually("ConfigMap chat-sidecar", 30, async || {
        get(&client, ns, "chat-sidecar").await
    })
    .await;
    let data = config.data.unwrap();
    assert_eq!(
        data["SWITCHBOARD_UPSTREAM_URL"],
        "rediss://chat-redis-0.lifecycle.svc:6379"
    );
    assert!(
        !data
            .values()
            .any(|v| v.contains(&String::from_utf8(password.0.clone()).unwrap())),
        "the password never lands in the ConfigMap"
    );
    let ingress: Ingress = eventually("Ingress chat-app", 30, async || {
        get(&client, ns, "chat-app").await
    })
    .await;
    let annotations = ingress.annotations();
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/affinity"],
        "cookie"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/affinity-mode"],
        "persistent"
    );

    // Honest status: kwok runs Redis, so the backplane gets ready; no ingress controller publishes
    // an address; one of the two pods has no sidecar.
    let rtc = until(
        "status of chat",
        90,
        async || clusters.get("chat").await.unwrap(),
        |rtc| {
            rtc.status.as_ref().and_then(|s| s.observed_generation) == Some(1)
                && has(rtc, "BackplaneReady", "True", "Ready")
                && rtc.status.as_ref().unwrap().pods.ready == 1
        },
    )
    .await;
    let status = rtc.status.as_ref().unwrap();
    assert_eq!(
        (status.pods.matched, status.pods.injected),
        (2, 1),
        "{status:?}"
    );
    assert!(has(&rtc, "IngressReady", "False", "AwaitingAddress"));
    let sidecars = condition(&rtc, "SidecarsReady").unwrap();
    assert_eq!(sidecars.reason, "SidecarsMissing");
    assert!(
        sidecars
            .message
            .starts_with("1 of 2 selected pods run without the switchboard sidecar (chat-b)"),
        "{}",
        sidecars.message
    );
    let ready = condition(&rtc, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "IngressNotReady")
    );
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    eventually("an Event about chat", 30, async || {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("chat")
                    && e.reason.as_deref() == Some("SidecarsMissing")
                    && e.type_.as_deref() == Some("Warning")
            })
    })
    .await;

    // Edit: new prefix and timeout reach the ConfigMap and the Ingress; observedGeneration follows.
    let merge = |spec: Value| Patch::Merge(json!({ "spec": spec }));
    clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &merge(json!({
                "backplane": { "channelPrefix": "t1:" },
                "ingress": { "timeoutSeconds": 120 },
            })),
        )
        .await
        .unwrap();
    until(
        "ConfigMap and Ingress updated",
        30,
        async || {
            let config: ConfigMap = get(&client, ns, "chat-sidecar").await.unwrap();
            let ingress: Ingress = get(&client, ns, "chat-app").await.unwrap();
            (
                config.data.unwrap()["SWITCHBOARD_CHANNEL_PREFIX"].clone(),
                ingress.annotations()["nginx.ingress.kubernetes.io/proxy-read-timeout"].clone(),
            )
        },
        |seen| seen == &("t1:".to_string(), "120".to_string()),
    )
    .await;
    until(
        "observedGeneration 2",
        30,
        async || clusters.get("chat").await.unwrap(),
        |rtc| rtc.status.as_ref().and_then(|s| s.observed_generation) == Some(2),
    )
    .await;

    // An edit that does not touch the Ingress leaves it unwritten (each write reloads nginx).
    let ingress_version = get::<Ingress>(&client, ns, "chat-app")
        .await
        .unwrap()
        .resource_version();
    clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &merge(json!({ "sidecar": { "clientBufferBytes": 65536 } })),
        )
        .await
        .unwrap();
    until(
        "observedGeneration 3",
        30,
        async || clusters.get("chat").await.unwrap(),
        |rtc| rtc.status.as_ref().and_then(|s| s.observed_generation) == Some(3),
    )
    .await;
    let config: ConfigMap = get(&client, ns, "chat-sidecar").await.unwrap();
    assert_eq!(
        config.data.unwrap()["SWITCHBOARD_CLIENT_BUFFER_BYTES"],
        "65536"
    );
    assert_eq!(
        get::<Ingress>(&client, ns, "chat-app")
            .await
            .unwrap()
            .resource_version(),
        ingress_version
    );
    // The password survived every reconcile.
    let secret: Secret = get(&client, ns, "chat-redis-auth").await.unwrap();
    assert_eq!(secret.data.unwrap()["password"], password);

    // Dropping the ingress removes the Ingress and the app Service.
    clusters
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([{ "op": "remove", "path": "/spec/ingress" }]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    eventually("Ingress and app Service pruned", 30, async || {
        let ingress = get::<Ingress>(&client, ns, "chat-app").await;
        let service = get::<Service>(&client, ns, "chat-app").await;
        (ingress.is_none() && service.is_none()).then_some(())
    })
    .await;
    let rtc = until(
        "IngressReady NotRequested",
        30,
        async || clusters.get("chat").await.unwrap(),
        |rtc| has(rtc, "IngressReady", "True", "NotRequested"),
    )
    .await;
    assert!(has(&rtc, "Ready", "False", "SidecarsNotReady"));

    // Deleting the RealtimeCluster: the garbage collector removes every child.
    clusters
        .delete("chat", &DeleteParams::default())
        .await
        .unwrap();
    eventually("children garbage-collected", 90, async || {
        let set = get::<StatefulSet>(&client, ns, "chat-redis-0").await;
        let service = get::<Service>(&client, ns, "chat-redis-0").await;
        let secret = get::<Secret>(&client, ns, "chat-redis-auth").await;
        let config = get::<ConfigMap>(&client, ns, "chat-sidecar").await;
        (set.is_none() && service.is_none() && secret.is_none() && config.is_none()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_missing_external_secret_is_reported_then_recovered() {
    let Some(s) = Scenario::new("external").await else {
        return;
    };
    let (cp, client, ns) = (s.cp, s.client.clone(), s.ns.as_str());
    let _operator = Operator::start(cp, ns, "switchboard-operator", "op-ext");
    let clusters = &s.clusters;
    clusters
        .create(
            &PostParams::default(),
            &cluster(
                "chat",
                json!({
                    "selector": { "matchLabels": { "app": "chat" } },
                    "framework": "socketio-node",
                    "backplane": { "external": { "urlSecretRef": { "name": "redis-url" } } },
                }),
            ),
        )
        .await
        .unwrap();
    let rtc = until(
        "BackplaneReady=False SecretNotFound",
        60,
        async || clusters.get("chat").await.unwrap(),
        |rtc| has(rtc, "BackplaneReady", "False", "SecretNotFound"),
    )
    .await;
    let message = condition(&rtc, "BackplaneReady").unwrap().message;
    assert!(message.contains("Secret redis-url"), "{message}");
    assert!(has(&rtc, "Ready", "False", "BackplaneNotReady"));
    assert!(
        get::<StatefulSet>(&client, ns, "chat-redis-0")
            .await
            .is_none(),
        "an external backplane deploys no Redis"
    );

    // A URL with the wrong scheme is named as such.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = |url: &str| -> Secret {
        serde_json::from_value(json!({
            "metadata": { "name": "redis-url" },
            "data": { "url": ByteString(url.as_bytes().to_vec()) },
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("http://redis.example:6379"))
        .await
        .unwrap();
    let rtc = until(
        "BackplaneReady=False InvalidUrl",
        30,
        async || clusters.get("chat").await.unwrap(),
        |rtc| has(rtc, "BackplaneReady", "False", "InvalidUrl"),
    )
    .await;
    let message = condition(&rtc, "BackplaneReady").unwrap().message;
    assert!(
        message.contains("redis-url") && message.contains("redis://"),
        "{message}"
    );

    // A good URL: ready, and the password stays out of the ConfigMap and the status.
    secrets
        .replace(
            "redis-url",
            &PostParams::default(),
            &secret("redis://:s3cret-pw@redis.example:6380"),
        )
        .await
        .unwrap();
    let rtc = until(
        "BackplaneReady=True External",
        30,
        async || clusters.get("chat").await.unwrap(),
        |rtc| has(rtc, "BackplaneReady", "True", "External"),
    )
    .await;
    let config: ConfigMap = eventually("ConfigMap chat-sidecar", 30, async || {
        get(&client, ns, "chat-sidecar").await
    })
    .await;
    let rendered = format!("{:?}{:?}", config.data, rtc.status);
    assert!(rendered.contains("redis.example:6380"), "{rendered}");
    assert!(!rendered.contains("s3cret-pw"), "{rendered}");
}

/// A `kubernetes.io/tls` Secret as cert-manager writes it, for `names`, from a fresh CA.
fn user_certificate(name: &str, names: &[String]) -> Secret {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "user-ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names.to_vec())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let bytes = |pem: String| ByteString(pem.into_bytes());
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_owned(), bytes(ca_cert.pem())),
            ("tls.crt".to_owned(), bytes(cert.pem())),
            ("tls.key".to_owned(), bytes(key.serialize_pem())),
        ])),
        ..Default::default()
    }
}

/// The Redis pods' annotation that rolls them when a brought certificate changes.
async fn tls_fingerprint(client: &Client, ns: &str) -> Option<String> {
    let set: StatefulSet = get(client, ns, "chat-redis-0").await?;
    set.spec?
        .template
        .metadata?
        .annotations?
        .get("switchboard.dev/tls-fingerprint")
        .cloned()
}

#[tokio::test]
async fn a_brought_tls_certificate_is_checked_served_and_rolled_on_renewal() {
    let Some(s) = Scenario::new("brought-tls").await else {
        return;
    };
    let (client, ns) = (s.client.clone(), s.ns.as_str());
    let _operator = s.operator("op-brought-tls");
    s.create_cluster(
        "chat",
        json!({
            "selector": { "matchLabels": { "app": "chat" } },
            "framework": "socketio-node",
            "backplane": { "managed": { "tlsSecretRef": { "name": "chat-redis-cert" } } },
        }),
    )
    .await;

    // The message of BackplaneReady once it is False for `reason`.
    let not_ready_because = async |reason: &str, seconds| {
        let rtc = s
            .until_cluster(
                "chat",
                &format!("BackplaneReady=False {reason}"),
                seconds,
                |rtc| has(rtc, "BackplaneReady", "False", reason),
            )
            .await;
        condition(&rtc, "BackplaneReady").unwrap().message
    };

    // Not there yet: named, and the Redis pods mount it (they wait for it); nothing is issued.
    let message = not_ready_because("TLSSecretNotFound", 60).await;
    assert!(message.contains("Secret chat-redis-cert"), "{message}");
    let set: StatefulSet = eventually("StatefulSet chat-redis-0", 30, async || {
        s.get("chat-redis-0").await
    })
    .await;
    let volumes = set.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    assert!(
        volumes.iter().any(|v| v
            .secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some("chat-redis-cert"))),
        "{volumes:?}"
    );
    assert!(s.get::<Secret>("chat-redis-tls").await.is_none());

    // A certificate for other names: the first name the sidecars dial is named, with the fix.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &user_certificate("chat-redis-cert", &["redis.example".into()]),
        )
        .await
        .unwrap();
    let message = not_ready_because("TLSCertificateInvalid", 30).await;
    let dialed = format!("chat-redis-0.{ns}.svc");
    assert!(
        message.contains(&format!("not valid for {dialed}")),
        "{message}"
    );

    // The right names: served (the fingerprint on the pod template), and the backplane ready.
    let good = user_certificate("chat-redis-cert", std::slice::from_ref(&dialed));
    secrets
        .replace("chat-redis-cert", &PostParams::default(), &good)
        .await
        .unwrap();
    s.until_cluster("chat", "BackplaneReady=True", 60, |rtc| {
        has(rtc, "BackplaneReady", "True", "Ready")
    })
    .await;
    let first = eventually("the TLS fingerprint on the Redis pods", 30, async || {
        tls_fingerprint(&client, ns).await
    })
    .await;

    // Renewed (as cert-manager does, in place): the pods are rolled to serve the new one.
    let renewed = user_certificate("chat-redis-cert", std::slice::from_ref(&dialed));
    secrets
        .replace("chat-redis-cert", &PostParams::default(), &renewed)
        .await
        .unwrap();
    let second = until(
        "a new TLS fingerprint after the renewal",
        30,
        async || tls_fingerprint(&client, ns).await,
        |f| f.as_ref().is_some_and(|f| *f != first),
    )
    .await;
    assert!(second.is_some());
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_waits_for_an_edit() {
    let Some(s) = Scenario::new("invalid").await else {
        return;
    };
    let (cp, client, ns) = (s.cp, s.client.clone(), s.ns.as_str());
    let operator = Operator::start(cp, ns, "switchboard-operator", "op-invalid");
    let clusters = &s.clusters;
    // Passes the CRD schema, but 41 characters cannot prefix the Redis Service names.
    let name = format!("chat-{}", "x".repeat(36));
    clusters
        .create(
            &PostParams::default(),
            &cluster(
                &name,
                json!({ "selector": { "matchLabels": { "app": "chat" } }, "framework": "python-socketio" }),
            ),
        )
        .await
        .unwrap();
    let rtc = until(
        "Ready=False InvalidSpec",
        60,
        async || clusters.get(&name).await.unwrap(),
        |rtc| has(rtc, "Ready", "False", "InvalidSpec"),
    )
    .await;
    let message = condition(&rtc, "Ready").unwrap().message;
    assert!(message.contains("metadata.name"), "{message}");
    let errors = until(
        "the invalid_spec error counted",
        30,
        async || {
            operator
                .metric("switchboard_operator_reconcile_errors_total{reason=\"invalid_spec\"}")
                .await
        },
        |v| v.is_some_and(|v| v >= 1.0),
    )
    .await;
    assert!(errors.unwrap() >= 1.0);
    assert!(
        get::<StatefulSet>(&client, ns, &format!("{name}-redis-0"))
            .await
            .is_none()
    );
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), &support::operator_namespace(ns))
        .get_opt("switchboard-operator")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_fail_over() {
    let Some(s) = Scenario::new("ha").await else {
        return;
    };
    let (cp, client, ns) = (s.cp, s.client.clone(), s.ns.as_str());
    let a = Operator::start(cp, ns, "switchboard-operator", "op-a");
    let b = Operator::start(cp, ns, "switchboard-operator", "op-b");
    let leader_id = eventually("a Lease holder", 30, async || holder(&client, ns).await).await;
    let (leader, standby) = if leader_id == "op-a" { (a, b) } else { (b, a) };
    until(
        "leader gauges",
        30,
        async || {
            (
                leader.metric("switchboard_operator_leader").await,
                standby.metric("switchboard_operator_leader").await,
            )
        },
        |v| *v == (Some(1.0), Some(0.0)),
    )
    .await;

    let clusters = &s.clusters;
    let spec =
        json!({ "selector": { "matchLabels": { "app": "chat" } }, "framework": "python-socketio" });
    clusters
        .create(&PostParams::default(), &cluster("one", spec.clone()))
        .await
        .unwrap();
    until(
        "RealtimeCluster one reconciled",
        60,
        async || clusters.get("one").await.unwrap(),
        |rtc| rtc.status.as_ref().and_then(|s| s.observed_generation) == Some(1),
    )
    .await;
    // Only the leader wrote: the standby never reconciled.
    assert!(
        leader
            .metric("switchboard_operator_reconciles_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert_eq!(
        standby
            .metric("switchboard_operator_reconciles_total")
            .await,
        Some(0.0),
        "standby log:\n{}",
        standby.log_text()
    );

    // The leader dies without handing the Lease back; the standby takes over once it expires.
    drop(leader);
    eventually("the standby to lead", 30, async || {
        (holder(&client, ns).await.as_deref() == Some(standby.identity.as_str())).then_some(())
    })
    .await;
    clusters
        .create(&PostParams::default(), &cluster("two", spec))
        .await
        .unwrap();
    until(
        "RealtimeCluster two reconciled by the new leader",
        60,
        async || clusters.get("two").await.unwrap(),
        |rtc| rtc.status.as_ref().and_then(|s| s.observed_generation) == Some(1),
    )
    .await;
    assert_eq!(
        standby.metric("switchboard_operator_leader").await,
        Some(1.0)
    );

    // SIGTERM: a clean exit that hands the Lease back.
    assert_eq!(standby.terminate(), Some(0));
    assert_eq!(holder(&client, ns).await, None);
}

#[tokio::test]
async fn a_restart_mid_way_converges_without_duplicates() {
    let Some(s) = Scenario::new("restart").await else {
        return;
    };
    let (cp, client, ns) = (s.cp, s.client.clone(), s.ns.as_str());
    let first = Operator::start(cp, ns, "switchboard-operator", "op-first");
    let clusters = &s.clusters;
    clusters
        .create(
            &PostParams::default(),
            &cluster(
                "chat",
                json!({
                    "selector": { "matchLabels": { "app": "chat" } },
                    "framework": "open-webui",
                    "ingress": { "className": "nginx", "host": "chat.example.com" },
                }),
            ),
        )
        .await
        .unwrap();
    // Killed as soon as it has written its first child.
    let secret: Secret = eventually("Secret chat-redis-auth", 60, async || {
        get(&client, ns, "chat-redis-auth").await
    })
    .await;
    let tls: Secret = eventually("Secret chat-redis-tls", 60, async || {
        get(&client, ns, "chat-redis-tls").await
    })
    .await;
    drop(first);
    let _second = Operator::start(cp, ns, "switchboard-operator", "op-second");
    until(
        "status after the restart",
        90,
        async || clusters.get("chat").await.unwrap(),
        |rtc| {
            has(rtc, "BackplaneReady", "True", "Ready")
                && rtc.status.as_ref().and_then(|s| s.observed_generation) == Some(1)
        },
    )
    .await;
    let counts: BTreeMap<&str, usize> = [
        (
            "StatefulSet",
            count::<StatefulSet>(&client, ns, "chat").await,
        ),
        ("Service", count::<Service>(&client, ns, "chat").await),
        ("Secret", count::<Secret>(&client, ns, "chat").await),
        ("ConfigMap", count::<ConfigMap>(&client, ns, "chat").await),
        ("Ingress", count::<Ingress>(&client, ns, "chat").await),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("ConfigMap", 1),
            ("Ingress", 1),
            // the password and the TLS certificate
            ("Secret", 2),
            // client, headless, app
            ("Service", 3),
            ("StatefulSet", 1),
        ])
    );
    let now: Secret = get(&client, ns, "chat-redis-auth").await.unwrap();
    assert_eq!(now.data, secret.data, "the password was not regenerated");
    let tls_now: Secret = get(&client, ns, "chat-redis-tls").await.unwrap();
    assert_eq!(tls_now.data, tls.data, "the certificate was not reissued");
}

/// Requests of `verb` the operator has sent so far.
async fn requests(operator: &Operator, verb: &str) -> f64 {
    operator
        .metric(&format!(
            "switchboard_operator_api_requests_total{{verb=\"{verb}\"}}"
        ))
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn an_unchanged_cluster_costs_no_patches_and_hand_edits_are_taken_back() {
    let Some(s) = Scenario::new("skip").await else {
        return;
    };
    let operator = s.operator("op-skip");
    s.create_pod("chat-a", json!({ "app": "chat" }), true).await;
    s.create_cluster(
        "chat",
        json!({
            "selector": { "matchLabels": { "app": "chat" } },
            "framework": "python-socketio",
        }),
    )
    .await;
    s.until_cluster("chat", "chat Ready", 90, |rtc| {
        has(rtc, "Ready", "True", "Ready")
    })
    .await;

    // A reconcile of a cluster where everything is in place (triggered by a label on its pod
    // that changes nothing the status reports) sends no patch: no child, no status.
    let patches = requests(&operator, "patch").await;
    // Reconciles finished (the duration histogram records one as it ends).
    let finished = async || {
        operator
            .metric("switchboard_operator_reconcile_duration_seconds_count")
            .await
            .unwrap()
    };
    let before = finished().await;
    s.pods
        .patch(
            "chat-a",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "touched": "1" } } })),
        )
        .await
        .unwrap();
    until("a reconcile after the label", 30, finished, |n| *n > before).await;
    assert_eq!(
        requests(&operator, "patch").await,
        patches,
        "a reconcile that changes nothing sends no patch"
    );

    // A hand edit of a child is taken back by the reconcile its watch event triggers: the
    // ConfigMap's data (resourceVersion moved), the StatefulSet's spec (generation moved).
    let (client, ns) = (&s.client, s.ns.as_str());
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            "chat-sidecar",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "SWITCHBOARD_CHANNEL_PREFIX": "hacked:" } })),
        )
        .await
        .unwrap();
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .patch(
            "chat-redis-0",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 2 } })),
        )
        .await
        .unwrap();
    until(
        "the hand edits taken back",
        30,
        async || {
            let config: ConfigMap = get(client, ns, "chat-sidecar").await.unwrap();
            let set: StatefulSet = get(client, ns, "chat-redis-0").await.unwrap();
            (
                config
                    .data
                    .unwrap_or_default()
                    .get("SWITCHBOARD_CHANNEL_PREFIX")
                    .cloned(),
                set.spec.and_then(|s| s.replicas),
            )
        },
        |(prefix, replicas)| prefix.as_deref() != Some("hacked:") && *replicas == Some(1),
    )
    .await;
}

/// The Gateway API CRDs fetched by `tests/controlplane/gateway-api.sh`; `None` (skip) when absent
/// outside CI.
fn gateway_api_crd(channel: &str) -> Option<CustomResourceDefinition> {
    let Some(dir) = std::env::var_os("SWITCHBOARD_GATEWAY_API_CRDS") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and SWITCHBOARD_GATEWAY_API_CRDS is unset (tests/run.sh sets it)"
        );
        eprintln!("\n#### SKIPPING the HTTPRoute part: SWITCHBOARD_GATEWAY_API_CRDS is unset\n");
        return None;
    };
    let path = std::path::Path::new(&dir)
        .join(channel)
        .join("gateway.networking.k8s.io_httproutes.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    Some(serde_yaml::from_str(&yaml).unwrap())
}

#[tokio::test]
async fn sentinel_shards_traefik_and_gateway_routes_apply() {
    let Some(s) = Scenario::new("shapes").await else {
        return;
    };
    let (cp, client, ns) = (s.cp, s.client.clone(), s.ns.as_str());
    let _operator = Operator::start(cp, ns, "switchboard-operator", "op-shapes");
    let clusters = &s.clusters;

    // Two shards of three Redis servers with Sentinel, behind Traefik.
    clusters
        .create(
            &PostParams::default(),
            &cluster(
                "ha",
                json!({
                    "selector": { "matchLabels": { "app": "ha" } },
                    "framework": "socketio-node",
                    "backplane": { "managed": { "replicas": 3, "shards": 2 } },
                    "ingress": { "className": "traefik", "host": "ha.example.com" },
                }),
            ),
        )
        .await
        .unwrap();
    for shard in 0..2 {
        let name = format!("ha-redis-{shard}");
        let set: StatefulSet = eventually(&format!("StatefulSet {name}"), 60, async || {
            get(&client, ns, &name).await
        })
        .await;
        let spec = set.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let containers: Vec<String> = spec
            .template
            .spec
            .unwrap()
            .containers
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(containers, ["redis", "sentinel"]);
        let sentinel: Service = eventually("the Sentinel Service", 30, async || {
            get(&client, ns, &format!("{name}-sentinel")).await
        })
        .await;
        assert_eq!(sentinel.spec.unwrap().ports.unwrap()[0].port, 26379);
        let budget: PodDisruptionBudget = get(&client, ns, &name).await.unwrap();
        assert_eq!(
            budget.spec.unwrap().min_available,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(2))
        );
    }
    let config: ConfigMap = eventually("ConfigMap ha-sidecar", 30, async || {
        get(&client, ns, "ha-sidecar").await
    })
    .await;
    assert_eq!(
        config.data.unwrap()["SWITCHBOARD_UPSTREAM_URL"],
        "rediss+sentinel://ha-redis-0-sentinel.shapes.svc:26379/ha-redis-0 \
         rediss+sentinel://ha-redis-1-sentinel.shapes.svc:26379/ha-redis-1"
    );
    let app: Service = eventually("Service ha-app", 30, async || {
        get(&client, ns, "ha-app").await
    })
    .await;
    assert_eq!(
        app.annotations()["traefik.ingress.kubernetes.io/service.sticky.cookie"],
        "true"
    );
    let ingress: Ingress = get(&client, ns, "ha-app").await.unwrap();
    assert!(
        !ingress
            .annotations()
            .keys()
            .any(|k| k.starts_with("nginx.ingress")),
        "{ingress:?}"
    );
    let rtc = until(
        "six Redis servers ready",
        120,
        async || clusters.get("ha").await.unwrap(),
        |rtc| has(rtc, "BackplaneReady", "True", "Ready"),
    )
    .await;
    let message = condition(&rtc, "BackplaneReady").unwrap().message;
    assert!(
        message.starts_with("2 shard(s), 6 Redis server(s)"),
        "{message}"
    );

    // Session routing: no cookie anywhere; the app Service targets the sidecar's front, whose
    // settings are in the ConfigMap, and the fleet's secret is generated once.
    clusters
        .create(
            &PostParams::default(),
            &cluster(
                "relay",
                json!({
                    "selector": { "matchLabels": { "app": "relay" } },
                    "framework": "python-socketio",
                    "ingress": { "className": "traefik", "host": "relay.example.com",
                                 "affinity": "session-routing" },
                }),
            ),
        )
        .await
        .unwrap();
    let app: Service = eventually("Service relay-app", 30, async || {
        get(&client, ns, "relay-app").await
    })
    .await;
    assert!(
        !app.annotations().keys().any(|k| k.contains("sticky")),
        "no cookie with session routing: {app:?}"
    );
    let port = &app.spec.unwrap().ports.unwrap()[0];
    assert_eq!(port.port, 5000, "clients keep the app's port");
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9092)),
        "the sidecar's front answers first"
    );
    let secret: Secret = eventually("Secret relay-front", 30, async || {
        get(&client, ns, "relay-front").await
    })
    .await;
    let value = secret.data.unwrap()["secret"].0.clone();
    assert!(
        value.len() >= 16 && value.iter().all(u8::is_ascii_alphanumeric),
        "{value:?}"
    );
    let config: ConfigMap = eventually("ConfigMap relay-sidecar", 30, async || {
        get(&client, ns, "relay-sidecar").await
    })
    .await;
    let data = config.data.unwrap();
    assert_eq!(data["SWITCHBOARD_FRONT_LISTEN"], "0.0.0.0:9092");
    assert_eq!(data["SWITCHBOARD_FRONT_PEER_LISTEN"], "0.0.0.0:9093");
    assert_eq!(data["SWITCHBOARD_FRONT_APP"], "127.0.0.1:5000");
    assert_eq!(data["SWITCHBOARD_FRONT_PATH"], "/socket.io/");
    // A reconcile never rotates it.
    clusters
        .patch(
            "relay",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { "test/nudge": "1" } } })),
        )
        .await
        .unwrap();
    until(
        "the nudged cluster reconciled",
        30,
        async || clusters.get("relay").await.unwrap(),
        |rtc| {
            rtc.status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .is_some()
        },
    )
    .await;
    let again: Secret = get(&client, ns, "relay-front").await.unwrap();
    assert_eq!(
        again.data.unwrap()["secret"].0,
        value,
        "the secret is not rotated"
    );
    // The peer port is guarded: the API server took the NetworkPolicy as built (its own
    // validation of ports and selectors), and a switch back to cookies prunes it.
    let policy: NetworkPolicy = eventually("NetworkPolicy relay-front-peers", 30, async || {
        get(&client, ns, "relay-front-peers").await
    })
    .await;
    let rules = policy.spec.unwrap().ingress.unwrap();
    let peer_rule = rules
        .iter()
        .find(|r| r.from.is_some())
        .expect("a rule with sources");
    assert_eq!(
        peer_rule.ports.as_ref().unwrap()[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9093))
    );
    assert_eq!(
        peer_rule.from.as_ref().unwrap()[0]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels,
        Some(BTreeMap::from([("app".to_owned(), "relay".to_owned())]))
    );
    clusters
        .patch(
            "relay",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "ingress": { "affinity": "cookie" } } })),
        )
        .await
        .unwrap();
    eventually("NetworkPolicy relay-front-peers pruned", 30, async || {
        get::<NetworkPolicy>(&client, ns, "relay-front-peers")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // A path the front could not route is refused by the API server, naming the field.
    let refused = clusters
        .create(
            &PostParams::default(),
            &cluster(
                "bad-path",
                json!({
                    "selector": { "matchLabels": { "app": "x" } },
                    "framework": "python-socketio",
                    "app": { "engineioPath": "socket.io" },
                }),
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("spec.app.engineioPath must start and end with /"),
        "{refused}"
    );

    // A Gateway API route: first without the CRDs, then with the standard channel (which drops
    // sessionPersistence), then with the experimental channel.
    clusters
        .create(
            &PostParams::default(),
            &cluster(
                "routed",
                json!({
                    "selector": { "matchLabels": { "app": "routed" } },
                    "framework": "python-socketio",
                    "ingress": { "host": "routed.example.com", "gateway": { "name": "public" } },
                }),
            ),
        )
        .await
        .unwrap();
    let (Some(standard), Some(experimental)) =
        (gateway_api_crd("standard"), gateway_api_crd("experimental"))
    else {
        return;
    };
    until(
        "IngressReady=False GatewayAPINotInstalled",
        60,
        async || clusters.get("routed").await.unwrap(),
        |rtc| has(rtc, "IngressReady", "False", "GatewayAPINotInstalled"),
    )
    .await;
    assert!(get::<Ingress>(&client, ns, "routed-app").await.is_none());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let install = async |crd: &CustomResourceDefinition| {
        crds.patch(
            "httproutes.gateway.networking.k8s.io",
            &PatchParams::apply("switchboard-tests").force(),
            &Patch::Apply(crd),
        )
        .await
        .unwrap();
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            "httproutes.gateway.networking.k8s.io",
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(std::time::Duration::from_secs(30), established)
            .await
            .unwrap()
            .unwrap();
    };
    // A reconcile is triggered by touching the RealtimeCluster, as any edit would; CRDs are not
    // watched.
    let nudge = async |n: u32| {
        clusters
            .patch(
                "routed",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "metadata": { "annotations": { "test/nudge": n.to_string() } } }),
                ),
            )
            .await
            .unwrap();
    };
    let mut n = 0;
    install(&standard).await;
    let rtc = until(
        "IngressReady=False SessionPersistenceUnsupported",
        60,
        async || {
            n += 1;
            nudge(n).await;
            clusters.get("routed").await.unwrap()
        },
        |rtc| {
            has(
                rtc,
                "IngressReady",
                "False",
                "SessionPersistenceUnsupported",
            )
        },
    )
    .await;
    let message = condition(&rtc, "IngressReady").unwrap().message;
    assert!(message.contains("experimental channel"), "{message}");

    install(&experimental).await;
    let routes: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &switchboard_operator::controller::ingress::http_route_resource(),
    );
    let route = until(
        "the HTTPRoute with sessionPersistence",
        60,
        async || {
            n += 1;
            nudge(n).await;
            routes.get_opt("routed-app").await.unwrap()
        },
        |route| {
            route.as_ref().is_some_and(|r| {
                r.data["spec"]["rules"][0]["sessionPersistence"]["sessionName"] == "sb-route"
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(route.data["spec"]["parentRefs"][0]["name"], "public");
    assert_eq!(route.data["spec"]["rules"][0]["timeouts"]["request"], "0s");
    let rtc = until(
        "IngressReady=False AwaitingAddress (no Gateway controller here)",
        60,
        async || clusters.get("routed").await.unwrap(),
        |rtc| has(rtc, "IngressReady", "False", "AwaitingAddress"),
    )
    .await;
    let message = condition(&rtc, "IngressReady").unwrap().message;
    assert!(message.contains("HTTPRoute routed-app"), "{message}");
}
