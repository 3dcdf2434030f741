//! Shared by the API and controller tests (and the scale benchmark): one control plane with the CRD and a fake node, operator
//! processes that are killed when dropped, and polling with a deadline.

#![allow(dead_code)]

pub mod scenario;

use std::fmt::Debug;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use switchboard_operator::api::RealtimeCluster;
use switchboard_testkit::{ControlPlane, Options};
use tokio::sync::OnceCell;

static CONTROL_PLANE: OnceCell<Option<ControlPlane>> = OnceCell::const_new();

/// The shared control plane (controllers, scheduler, kwok node) with the CRD Established; `None`
/// when skipped outside CI.
pub async fn control_plane() -> Option<&'static ControlPlane> {
    CONTROL_PLANE
        .get_or_init(async || {
            let control_plane =
                switchboard_testkit::start_or_skip(Options { fake_node: true }).await?;
            // The committed file, as users install it (a unit test keeps it equal to the types).
            let crd: CustomResourceDefinition = serde_yaml::from_str(include_str!(
                "../../../crds/realtimeclusters.switchboard.dev.yaml"
            ))
            .unwrap();
            let crds: Api<CustomResourceDefinition> =
                Api::all(control_plane.client().await.unwrap());
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("the generated CRD is accepted");
            let established = await_condition(
                crds,
                "realtimeclusters.switchboard.dev",
                conditions::is_crd_established(),
            );
            tokio::time::timeout(Duration::from_secs(30), established)
                .await
                .expect("CRD Established within 30s")
                .unwrap();
            Some(control_plane)
        })
        .await
        .as_ref()
}

/// The namespace an operator started by [`Operator::start`] for `namespace` calls its own (its
/// Lease and webhook certificate live there, and it never injects there).
pub fn operator_namespace(namespace: &str) -> String {
    format!("{namespace}-operator")
}

/// Creates `name` (and its operator's namespace) and waits for their default ServiceAccounts.
pub async fn namespace(client: &Client, name: &str) {
    for name in [name.to_owned(), operator_namespace(name)] {
        create_namespace(client, &name, serde_json::json!({})).await;
    }
}

/// Creates the namespace `name` with `labels` and waits for its default ServiceAccount (pods are
/// refused until kube-controller-manager has made it).
pub async fn create_namespace(client: &Client, name: &str, labels: serde_json::Value) {
    let ns: Namespace = serde_json::from_value(
        serde_json::json!({ "metadata": { "name": name, "labels": labels } }),
    )
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    eventually(&format!("ServiceAccount {name}/default"), 60, async || {
        accounts.get_opt("default").await.unwrap()
    })
    .await;
}

/// Polls `probe` every 200 ms until it returns `Some`, or panics after `seconds` naming `what`.
pub async fn eventually<T>(
    what: &str,
    seconds: u64,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {seconds}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Like [`eventually`], for a condition that must hold; on timeout shows the last value seen.
pub async fn until<T: Debug>(
    what: &str,
    seconds: u64,
    mut read: impl AsyncFnMut() -> T,
    mut ok: impl FnMut(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let value = read().await;
        if ok(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {seconds}s waiting for {what}; last seen: {value:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The condition `type_` of `rtc`'s status, if reported.
pub fn condition(rtc: &RealtimeCluster, type_: &str) -> Option<Condition> {
    rtc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Whether `rtc` reports the condition `type_` with this status and reason.
pub fn has(rtc: &RealtimeCluster, type_: &str, status: &str, reason: &str) -> bool {
    condition(rtc, type_).is_some_and(|c| c.status == status && c.reason == reason)
}

/// The namespaced object `name` of kind `K`, if it exists.
pub async fn get<K>(client: &Client, namespace: &str, name: &str) -> Option<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()
}

/// A running `switchboard-operator` process; killed (SIGKILL) when dropped.
pub struct Operator {
    child: Child,
    pub identity: String,
    pub metrics_url: String,
    pub readyz_url: String,
    /// Where the API server reaches this operator's injection webhook.
    pub webhook_url: String,
    log: PathBuf,
}

impl Operator {
    /// Starts the operator against `control_plane`, confined to `namespace`, electing on the Lease
    /// `lease` in [`operator_namespace`] with short timings (4 s lease, 3 s renew deadline, 1 s
    /// retry). Each namespace has its own MutatingWebhookConfiguration name, so parallel tests
    /// do not call each other's webhooks.
    pub fn start(
        control_plane: &ControlPlane,
        namespace: &str,
        lease: &str,
        identity: &str,
    ) -> Self {
        let args: Vec<String> = [
            "--watch-namespace",
            namespace,
            "--lease-namespace",
            &operator_namespace(namespace),
            "--lease-name",
            lease,
            "--identity",
            identity,
            "--webhook-configuration",
            &format!("switchboard-sidecar-injector-{namespace}"),
            "--sidecar-image",
            "switchboard-sidecar:test",
            "--lease-duration-seconds",
            "4",
            "--renew-deadline-seconds",
            "3",
            "--retry-period-seconds",
            "1",
        ]
        .map(String::from)
        .to_vec();
        let env = [("RUST_LOG", "info,switchboard_operator=debug")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        Self::start_with(
            control_plane,
            control_plane.kubeconfig(),
            identity,
            &args,
            &env,
            (unused_port(), unused_port()),
        )
    }

    /// Starts the operator with exactly `args` (plus loopback listen addresses on `http_port` and
    /// `webhook_port`, and `localhost` in the webhook certificate) and `env`, against the
    /// cluster `kubeconfig` names: for running it as the Helm chart configures it, under the
    /// chart's ServiceAccount.
    pub fn start_with(
        control_plane: &ControlPlane,
        kubeconfig: &std::path::Path,
        identity: &str,
        args: &[String],
        env: &[(String, String)],
        (http_port, webhook_port): (u16, u16),
    ) -> Self {
        let log = control_plane.dir().join(format!("operator-{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard-operator"))
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
            .args(["--webhook-host", "localhost"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the operator binary starts");
        Self {
            child,
            identity: identity.into(),
            metrics_url: format!("http://127.0.0.1:{http_port}/metrics"),
            readyz_url: format!("http://127.0.0.1:{http_port}/readyz"),
            webhook_url: format!("https://localhost:{webhook_port}/mutate"),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and waits for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "operator did not exit within 30s of SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A metric's value (the first sample whose name and labels start with `series`), once the
    /// HTTP server answers.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let body = http_get(&self.metrics_url).await?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The whole `/metrics` text, once the HTTP server answers.
    pub async fn metrics_text(&self) -> Option<String> {
        http_get(&self.metrics_url).await
    }

    /// True once `/readyz` answers `ready` (API reachable, webhook serving).
    pub async fn is_ready(&self) -> bool {
        http_get(&self.readyz_url)
            .await
            .is_some_and(|body| body.starts_with("ready"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // A failing test shows what the operator was doing.
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- operator {} log (last 60 lines) ----", self.identity);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `helm` binary `tests/controlplane/build.sh` builds next to the control plane; `None`
/// (skip, loudly) when it is missing outside CI.
pub fn helm() -> Option<PathBuf> {
    let found = switchboard_testkit::Binaries::locate()
        .map(|binaries| binaries.path("helm"))
        .ok()
        .filter(|helm| helm.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and helm is missing from the control-plane binaries (tests/controlplane/build.sh builds it)"
        );
        eprintln!("\n#### SKIPPING: helm is missing from the control-plane binaries\n");
    }
    found
}

/// A loopback port nothing listens on right now (for a process the test starts); see
/// [`switchboard_testkit::free_port`] for why the OS's port 0 is not good enough.
pub fn unused_port() -> u16 {
    switchboard_testkit::free_port().expect("a free loopback port")
}

/// A plain HTTP/1.0 GET on loopback: the body; `None` while nothing listens.
async fn http_get(url: &str) -> Option<String> {
    http_response(url).await.map(|(_, body)| body)
}

/// A plain HTTP/1.0 GET on loopback: `(status, body)`; `None` while nothing listens.
pub async fn http_response(url: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}
