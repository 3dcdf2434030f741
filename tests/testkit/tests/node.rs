//! The real node (node mode), end to end on this machine: the node goes Ready; a pod with a native
//! sidecar runs; pod → ClusterIP Service works; cluster names resolve and outside names do not;
//! a pod's packet to an outside address fails with "Network is unreachable"; and after teardown,
//! orderly or after SIGKILL, the machine is as it was (no bridge, no KUBE-* chains, no guard rule,
//! sysctls back, no kubepods cgroups, no mounts).
//!
//! Root only; skipped loudly elsewhere (failed under `CI=true`). The two tests share the machine-wide
//! node lock, so they run one after the other whatever the test harness does.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;
use switchboard_testkit::node::{self, IMAGE_PROBE};

const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_real_node_runs_pods_with_services_dns_and_no_way_out() {
    let before = machine_paths();
    let Some(control_plane) = switchboard_testkit::start_node_or_skip().await else {
        return;
    };
    let node = control_plane.node().expect("node mode").clone();
    let run_dir = control_plane.dir().to_owned();
    let client = control_plane.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let services: Api<Service> = Api::namespaced(client.clone(), "default");

    // The kubelet's changes to kernel settings were put back once it was up.
    for (key, value) in node.saved_sysctls() {
        assert_eq!(
            node::read_sysctl(key).as_deref(),
            Some(value.as_str()),
            "{key} while running"
        );
    }

    // A native sidecar: an init container with restartPolicy Always and a startup probe. The main
    // container only starts once the sidecar's probe passed.
    pods.create(&PostParams::default(), &pod(json!({
        "metadata": { "name": "with-sidecar" },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "initContainers": [{
                "name": "sidecar", "image": IMAGE_PROBE, "imagePullPolicy": "Never",
                "args": ["serve", ":9000"], "restartPolicy": "Always",
                "startupProbe": { "httpGet": { "path": "/", "port": 9000 }, "periodSeconds": 1 },
            }],
            "containers": [{
                "name": "app", "image": IMAGE_PROBE, "imagePullPolicy": "Never", "args": ["sleep"],
            }],
        },
    })))
    .await
    .unwrap();
    // Two backends behind a ClusterIP Service.
    for i in 0..2 {
        pods.create(&PostParams::default(), &pod(json!({
            "metadata": { "name": format!("backend-{i}"), "labels": { "app": "backend" } },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "serve", "image": IMAGE_PROBE, "imagePullPolicy": "Never",
                    "args": ["serve", ":8080"],
                    "readinessProbe": { "httpGet": { "path": "/", "port": 8080 }, "periodSeconds": 1 },
                }],
            },
        })))
        .await
        .unwrap();
    }
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "backend" },
        "spec": { "selector": { "app": "backend" }, "ports": [{ "port": 80, "targetPort": 8080 }] },
    }))
    .unwrap();
    let service = services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();

    for name in ["with-sidecar", "backend-0", "backend-1"] {
        wait_ready(&pods, name).await;
    }
    let with_sidecar = pods.get("with-sidecar").await.unwrap().status.unwrap();
    let sidecar = &with_sidecar.init_container_statuses.unwrap()[0];
    let app = &with_sidecar.container_statuses.unwrap()[0];
    assert!(
        sidecar.started == Some(true) && sidecar.ready,
        "{sidecar:?}"
    );
    let started = |s: &k8s_openapi::api::core::v1::ContainerStatus| {
        s.state
            .as_ref()
            .and_then(|st| st.running.as_ref())
            .and_then(|r| r.started_at.clone())
            .unwrap()
            .0
    };
    assert!(
        started(sidecar) <= started(app),
        "the sidecar started first: {sidecar:?} {app:?}"
    );

    // pod → ClusterIP → a backend pod, through kube-proxy's rules; by IP and by name.
    let (ok, log) = run_probe(
        &pods,
        "get-by-ip",
        &["get", &format!("http://{cluster_ip}/")],
    )
    .await;
    assert!(ok && log.contains("pod=backend-"), "{log}");
    let (ok, log) = run_probe(
        &pods,
        "get-by-name",
        &["get", "http://backend.default.svc.cluster.local/x"],
    )
    .await;
    assert!(
        ok && log.contains("pod=backend-") && log.contains("path=/x"),
        "{log}"
    );
    // pod → the API server through the `kubernetes` Service.
    let (ok, log) = run_probe(&pods, "dial-apiserver", &["dial", "10.96.0.1:443"]).await;
    assert!(ok, "{log}");

    // Cluster DNS answers for the cluster and nothing else.
    let (ok, log) = run_probe(
        &pods,
        "lookup-cluster",
        &["lookup", "kubernetes.default.svc.cluster.local"],
    )
    .await;
    assert!(ok && log.contains("10.96.0.1"), "{log}");
    let (ok, log) = run_probe(&pods, "lookup-outside", &["lookup", "example.com"]).await;
    assert!(
        !ok && log.contains("lookup failed"),
        "an outside name resolved: {log}"
    );

    // No route out: the packet is refused inside the pod before it is sent.
    let (ok, log) = run_probe(&pods, "dial-outside", &["dial", "203.0.113.1:80"]).await;
    assert!(
        !ok && log.to_lowercase().contains("network is unreachable"),
        "{log}"
    );

    let saved = node.saved_sysctls().to_vec();
    drop(control_plane);
    let _machine = MachineLock::take();
    assert_machine_restored(
        &run_dir,
        &saved,
        &node.binaries().path("containerd-shim-runc-v2"),
    );
    let after = machine_paths();
    let appeared: Vec<_> = after.difference(&before).collect();
    assert!(
        appeared.is_empty(),
        "the node left files behind: {appeared:?}"
    );
}

/// The guardian path: the `up --node` process is SIGKILLed with pods running; its guardian deletes
/// them and puts the machine back.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_run_still_leaves_the_machine_as_it_was() {
    if let Some(why) = node::unsupported() {
        eprintln!("\n#### SKIPPING: {why}\n");
        return;
    }
    let dir = std::env::temp_dir().join(format!("switchboard-node-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let env_file = dir.join("node.env");
    let mut up = Command::new(env!("CARGO_BIN_EXE_switchboard-testkit"))
        .args(["controlplane", "up", "--node", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--env-file")
        .arg(&env_file)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("up.log")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !kubeconfig.exists() {
        if let Some(status) = up.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
            if log.contains("node binaries missing")
                || log.contains("control-plane binaries missing")
            {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true and {log}"
                );
                eprintln!("\n#### SKIPPING: {log}\n");
                return;
            }
            panic!("up --node exited ({status}):\n{log}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30 * 60),
            "the node did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let env = std::fs::read_to_string(&env_file).unwrap();
    let var = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {key}='")))
            .map(|v| v.trim_end_matches('\'').to_owned())
            .unwrap_or_else(|| panic!("{key} missing from {env}"))
    };
    let run_dir = std::path::PathBuf::from(var("SWITCHBOARD_NODE_RUN_DIR"));
    assert!(Path::new(&var("SWITCHBOARD_CONTAINERD_ADDRESS")).exists());
    let saved: Vec<(String, String)> = std::fs::read_to_string(run_dir.join("node.env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("SYSCTLS='"))
        .unwrap()
        .trim_end_matches('\'')
        .split_whitespace()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();

    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    pods.create(&PostParams::default(), &pod(json!({
        "metadata": { "name": "left-running" },
        "spec": { "terminationGracePeriodSeconds": 1, "containers": [{
            "name": "serve", "image": IMAGE_PROBE, "imagePullPolicy": "Never", "args": ["serve", ":8080"],
        }] },
    })))
    .await
    .unwrap();
    wait_ready(&pods, "left-running").await;

    up.kill().unwrap(); // SIGKILL: no Drop, no signal handler
    up.wait().unwrap();
    // The guardian holds the node lock until its cleanup is over.
    let _machine = MachineLock::take();
    let shim = Path::new(&var("SWITCHBOARD_NODE_BIN")).join("containerd-shim-runc-v2");
    assert_machine_restored(&run_dir, &saved, &shim);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The machine-wide node lock, held while a test checks the machine, so that the other test's node
/// (waiting for the lock) does not start in the middle of the check.
struct MachineLock(std::fs::File);

impl MachineLock {
    fn take() -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node::LOCK_PATH)
            .unwrap();
        file.lock().unwrap();
        Self(file)
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn pod(value: serde_json::Value) -> Pod {
    let mut value = value;
    value["apiVersion"] = json!("v1");
    value["kind"] = json!("Pod");
    serde_json::from_value(value).unwrap()
}

async fn wait_ready(pods: &Api<Pod>, name: &str) {
    let start = Instant::now();
    loop {
        let pod = pods.get(name).await.unwrap();
        let conditions = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "pod {name} not Ready within {DEADLINE:?}: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `probe ARGS` in a one-shot pod; returns whether it succeeded, and its log.
async fn run_probe(pods: &Api<Pod>, name: &str, args: &[&str]) -> (bool, String) {
    pods.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": { "name": name },
            "spec": { "restartPolicy": "Never", "containers": [{
                "name": "probe", "image": IMAGE_PROBE, "imagePullPolicy": "Never", "args": args,
            }] },
        })),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let phase = loop {
        let pod = pods.get(name).await.unwrap();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            break phase;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "pod {name} did not finish: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Through the API server to the kubelet (its InternalIP and client certificate).
    let log = pods.logs(name, &LogParams::default()).await.unwrap();
    (phase == "Succeeded", log)
}

/// What the node could create outside its run directory: the entries of the usual places.
fn machine_paths() -> std::collections::BTreeSet<String> {
    let dirs = [
        "/run",
        "/var/run",
        "/var/lib",
        "/var/log",
        "/opt",
        "/etc",
        "/run/containerd",
        "/var/lib/cni",
    ];
    dirs.iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
        })
        // The lock file stays (empty), by design; other engineers' processes come and go in /run
        // too, so only names that look like a node's are compared.
        .filter(|p| p != node::LOCK_PATH)
        .filter(|p| {
            [
                "containerd",
                "cni",
                "kube",
                "nri",
                "netns",
                "runc",
                "pods",
                "containers",
                "switchboard",
            ]
            .iter()
            .any(|w| p.contains(w))
        })
        .collect()
}

fn assert_machine_restored(run_dir: &Path, saved: &[(String, String)], shim: &Path) {
    assert!(
        !Path::new("/sys/class/net").join(node::BRIDGE).exists(),
        "bridge {} left",
        node::BRIDGE
    );
    for save in ["iptables-save", "ip6tables-save"] {
        let out = Command::new(save).output().unwrap();
        let rules = String::from_utf8_lossy(&out.stdout);
        let left: Vec<&str> = rules
            .lines()
            .filter(|l| {
                l.contains("KUBE-") || l.contains("CNI-") || l.contains("switchboard-testkit")
            })
            .collect();
        assert!(left.is_empty(), "{save} still has:\n{}", left.join("\n"));
    }
    for (key, value) in saved {
        assert_eq!(
            node::read_sysctl(key).as_deref(),
            Some(value.as_str()),
            "{key} after teardown"
        );
    }
    let cgroups: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("kubepods"))
        .filter(|p| p.exists())
        .collect();
    assert!(cgroups.is_empty(), "kubepods cgroups left: {cgroups:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let run = run_dir.display().to_string();
    assert!(!mounts.contains(&run), "mounts under {run} left");
    assert!(!run_dir.exists(), "{run} left");
    assert!(
        !Path::new("/run/containerd/s").exists(),
        "/run/containerd/s left"
    );
    let shims: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|exe| exe == shim))
        .map(|e| e.path())
        .collect();
    assert!(shims.is_empty(), "shims left: {shims:?}");
}
