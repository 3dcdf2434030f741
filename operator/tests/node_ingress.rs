//! Traefik v3, really running on the test node (tests/node/traefik.yaml), routes what the operator
//! writes for `className: traefik` — the app Service with sticky-cookie annotations and the plain
//! Ingress, built by `controller::ingress` exactly as the reconciler builds them — and honours the
//! cookie, with the attributes a cross-site client needs (`SameSite=None; Secure`, a path): real
//! HTTP requests through Traefik, across three backend pods, stay on the pod the cookie names,
//! while cookie-less requests spread over the pods.
//!
//! Root only (node mode); skipped loudly elsewhere, failed under `CI=true`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use switchboard_operator::api::RealtimeCluster;
use switchboard_operator::controller::ingress;
use switchboard_testkit::node::IMAGE_PROBE;

const DEADLINE: Duration = Duration::from_secs(120);
const HOST: &str = "chat.switchboard.test";
const COOKIE: &str = "chat-route";

#[tokio::test(flavor = "multi_thread")]
async fn traefik_pins_clients_with_the_cookie_the_operator_asks_for() {
    let Some(control_plane) = switchboard_testkit::start_node_or_skip().await else {
        return;
    };
    if !control_plane.node().expect("node mode").has_traefik() {
        let why = "Traefik was not built (bash tests/node/build.sh)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and {why}"
        );
        eprintln!("\n#### SKIPPING: {why}\n");
        return;
    }
    let client = control_plane.client().await.unwrap();
    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(control_plane.kubeconfig())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node/traefik.yaml");
    kubectl(&["apply", "-f", manifest.to_str().unwrap()]);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "apps" } })).unwrap(),
        )
        .await
        .unwrap();
    let rtc: RealtimeCluster = serde_yaml::from_str(&format!(
        "apiVersion: switchboard.dev/v1alpha1
kind: RealtimeCluster
metadata: {{ name: chat, namespace: apps, uid: 6f1d2c3b-0000-4000-8000-0000000000aa }}
spec:
  selector: {{ matchLabels: {{ app: chat }} }}
  framework: python-socketio
  app: {{ port: 8080 }}
  ingress:
    className: traefik
    host: {HOST}
    cookie: {{ name: {COOKIE}, maxAgeSeconds: 7200, sameSite: None, path: /chat }}
"
    ))
    .unwrap();
    let mut service = ingress::app_service(&rtc).expect("an app Service for spec.ingress");
    let mut route = ingress::ingress(&rtc).expect("an Ingress for className traefik");
    // No RealtimeCluster object exists here, so the garbage collector would delete children that
    // name it as their owner.
    service.metadata.owner_references = None;
    route.metadata.owner_references = None;
    let annotations = service.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("traefik.ingress.kubernetes.io/service.sticky.cookie.name")
            .map(String::as_str),
        Some(COOKIE)
    );
    Api::namespaced(client.clone(), "apps")
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "apps");
    ingresses
        .create(&PostParams::default(), &route)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let backends = ["chat-0", "chat-1", "chat-2"];
    for name in backends {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "labels": { "app": "chat" } },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "app", "image": IMAGE_PROBE, "imagePullPolicy": "Never",
                    "args": ["serve", ":8080"],
                    "readinessProbe": { "httpGet": { "path": "/", "port": 8080 }, "periodSeconds": 1 },
                }],
            },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    for name in backends {
        wait_ready(&pods, name).await;
    }
    let traefik: Api<Pod> = Api::namespaced(client.clone(), "traefik");
    let traefik_ip = {
        let start = Instant::now();
        loop {
            let list = traefik
                .list(&ListParams::default().labels("app=traefik"))
                .await
                .unwrap();
            let ready = list.items.iter().find(|p| is_ready(p));
            if let Some(ip) = ready.and_then(|p| p.status.as_ref()?.pod_ip.clone()) {
                break ip;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "Traefik not Ready: {:?}",
                list.items.iter().map(|p| &p.status).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let entry = format!("{traefik_ip}:8000");

    // Traefik picks the Ingress up asynchronously: wait for the first routed answer.
    let start = Instant::now();
    let first = loop {
        let response = get(&entry, None);
        if response.as_ref().is_ok_and(|r| r.status == 200) {
            break response.unwrap();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "Traefik never routed {HOST}: {response:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let set_cookie = first
        .set_cookie
        .clone()
        .unwrap_or_else(|| panic!("no affinity cookie on the first answer: {first:?}"));
    assert!(
        set_cookie.starts_with(&format!("{COOKIE}=")),
        "{set_cookie}"
    );
    let lower = set_cookie.to_lowercase();
    assert!(lower.contains("httponly"), "{set_cookie}");
    // A cross-site cookie: SameSite=None, and Secure implied (browsers drop it otherwise).
    assert!(lower.contains("samesite=none"), "{set_cookie}");
    assert!(lower.contains("; secure"), "{set_cookie}");
    assert!(lower.contains("path=/chat"), "{set_cookie}");
    assert!(lower.contains("max-age=7200"), "{set_cookie}");

    // Without a cookie, each new client is balanced over the pods (Traefik learns the endpoints a
    // moment after they are Ready, so poll until every backend has answered) and gets the cookie
    // naming its pod.
    let mut cookies_by_pod = std::collections::BTreeMap::new();
    let start = Instant::now();
    while cookies_by_pod.len() < backends.len() {
        let response = get(&entry, None).unwrap();
        let cookie = response
            .set_cookie
            .clone()
            .unwrap_or_else(|| panic!("no cookie for a new client: {response:?}"));
        cookies_by_pod
            .entry(response.pod())
            .or_insert_with(|| cookie.split(';').next().unwrap().to_owned());
        assert!(
            start.elapsed() < DEADLINE,
            "cookie-less requests reached only {:?}",
            cookies_by_pod.keys().collect::<Vec<_>>()
        );
    }
    let seen: BTreeSet<_> = cookies_by_pod.keys().cloned().collect();
    assert_eq!(seen, backends.iter().map(|b| b.to_string()).collect());
    // With a cookie: always the pod it names, though the balancer would rotate otherwise.
    for (pod, cookie) in &cookies_by_pod {
        for _ in 0..10 {
            let response = get(&entry, Some(cookie)).unwrap();
            assert_eq!(&response.pod(), pod, "cookie {cookie} moved: {response:?}");
        }
    }
    eprintln!(
        "Traefik: {} pods seen without a cookie; each of {} cookies stayed on its pod",
        seen.len(),
        cookies_by_pod.len()
    );
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_ready(pods: &Api<Pod>, name: &str) {
    let start = Instant::now();
    loop {
        let pod = pods.get(name).await.unwrap();
        if is_ready(&pod) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "pod {name} not Ready: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    set_cookie: Option<String>,
    body: String,
}

impl Response {
    /// The backend pod that answered (`probe serve` writes `pod=<hostname> path=<path>`).
    fn pod(&self) -> String {
        self.body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pod="))
            .unwrap_or_default()
            .to_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (as a new client would), `Connection: close`.
fn get(addr: &str, cookie: Option<&str>) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {HOST}\r\n{cookie}Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let set_cookie = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().to_owned());
    Ok(Response {
        status,
        set_cookie,
        body: body.to_owned(),
    })
}
