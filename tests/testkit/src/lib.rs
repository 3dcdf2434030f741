//! A real Kubernetes control plane for tests: etcd and kube-apiserver on free loopback ports, and
//! optionally kube-controller-manager, kube-scheduler and kwok with one fake node, so Deployments get
//! Running pods without a kubelet or a container engine. Or, with [`ControlPlane::start_node`], a
//! real node: containerd, kubelet, kube-proxy and CoreDNS on a bridge of its own (see [`node`]).
//!
//! The binaries come from `tests/controlplane/build.sh` (found through `SWITCHBOARD_CONTROLPLANE_BIN`
//! or the build cache). Everything lives in a temporary directory that is removed on `Drop`, and a
//! guardian process (see [`process`]) cleans up even when the test binary dies without dropping.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod node;
mod pki;
mod process;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node as NodeObject, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use node::{Node, NodeBinaries};
use pki::Pki;
use process::{Component, Guardian, Lock};

/// Directory holding the binaries; overrides the build cache.
pub const ENV_BIN: &str = "SWITCHBOARD_CONTROLPLANE_BIN";
/// Root of the build cache (default `$HOME/.cache/switchboard`), as in `build.sh`.
pub const ENV_CACHE: &str = "SWITCHBOARD_CACHE";
/// Set to `1` to keep the temporary directory (logs, etcd data) after the control plane stops.
pub const ENV_KEEP: &str = "SWITCHBOARD_KEEP_CONTROLPLANE";

/// The name of the fake node kwok runs when [`Options::fake_node`] is set.
pub const FAKE_NODE: &str = "kwok-node-0";

const READY_DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("generating test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error(
        "control-plane binaries missing from {dir} ({missing}). Build them with `bash tests/controlplane/build.sh` \
         (about 15 minutes the first time), or point {ENV_BIN} at a directory holding them"
    )]
    BinariesMissing { dir: String, missing: String },
    #[error("{component} exited ({status}); the end of its log:\n{log_tail}")]
    Exited {
        component: &'static str,
        status: String,
        log_tail: String,
    },
    #[error("{what} not within {waited:?}{context}")]
    Timeout {
        what: String,
        waited: Duration,
        context: String,
    },
    #[error("reading the generated kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("talking to the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Node(String),
}

impl Error {
    fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The Kubernetes version `build.sh` builds, read from the wrapper module it builds from.
pub fn kubernetes_version() -> &'static str {
    include_str!("../../controlplane/go.mod")
        .lines()
        .find_map(|line| line.trim().strip_prefix("k8s.io/kubernetes "))
        .map(str::trim)
        .expect("tests/controlplane/go.mod requires k8s.io/kubernetes")
}

/// Where the control-plane binaries are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    const ALL: [&'static str; 5] = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    ];

    /// `$SWITCHBOARD_CONTROLPLANE_BIN`, else `build.sh`'s cache for [`kubernetes_version`].
    pub fn locate() -> Result<Self, Error> {
        let dir = match std::env::var_os(ENV_BIN) {
            Some(dir) => PathBuf::from(dir),
            None => {
                let cache = std::env::var_os(ENV_CACHE)
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                            .join(".cache/switchboard")
                    });
                cache
                    .join("controlplane")
                    .join(kubernetes_version())
                    .join("bin")
            }
        };
        let missing: Vec<&str> = Self::ALL
            .into_iter()
            .filter(|b| !dir.join(b).is_file())
            .collect();
        if missing.is_empty() {
            Ok(Self { dir })
        } else {
            Err(Error::BinariesMissing {
                dir: dir.display().to_string(),
                missing: missing.join(", "),
            })
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What to start besides etcd and kube-apiserver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// kube-controller-manager, kube-scheduler and kwok with one fake node ([`FAKE_NODE`]), so
    /// workloads get scheduled and their pods reach Running.
    pub fake_node: bool,
}

/// A running control plane. Dropping it stops every process and removes its directory; in node
/// mode it first runs the teardown that puts the machine back as it was.
pub struct ControlPlane {
    root: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    components: Vec<Component>,
    guardian: Guardian,
    node: Option<Node>,
}

/// Outside CI a missing control plane skips the test, loudly; in CI (`CI=true`) it fails it.
pub async fn start_or_skip(options: Options) -> Option<ControlPlane> {
    let binaries = match Binaries::locate() {
        Ok(binaries) => binaries,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true and {e}"),
        Err(e) => {
            eprintln!("\n#### SKIPPING: {e}\n");
            return None;
        }
    };
    match ControlPlane::start(&binaries, options).await {
        Ok(control_plane) => Some(control_plane),
        Err(e) => panic!("starting the test control plane: {e}"),
    }
}

/// As [`start_or_skip`], for [`ControlPlane::start_node`]: skipped (loudly) when this machine
/// cannot run a node (not root, tools or binaries missing), failed instead under `CI=true`.
pub async fn start_node_or_skip() -> Option<ControlPlane> {
    let located = node::unsupported()
        .map_or(Ok(()), |why| Err(Error::Node(why)))
        .and_then(|()| Ok((Binaries::locate()?, NodeBinaries::locate()?)));
    let (binaries, node_binaries) = match located {
        Ok(found) => found,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => panic!("CI=true and {e}"),
        Err(e) => {
            eprintln!("\n#### SKIPPING: {e}\n");
            return None;
        }
    };
    match ControlPlane::start_node(&binaries, &node_binaries).await {
        Ok(control_plane) => Some(control_plane),
        Err(e) => panic!("starting the test node: {e}"),
    }
}

impl ControlPlane {
    pub async fn start(binaries: &Binaries, options: Options) -> Result<Self, Error> {
        Self::start_inner(binaries, options, None).await
    }

    /// The control plane (API server served on the node address too, Node and RBAC authorization,
    /// controllers, scheduler) and a real node: see [`node`]. Root only; waits for the machine-wide
    /// node lock ([`node::LOCK_PATH`]) if another run holds it.
    pub async fn start_node(binaries: &Binaries, node: &NodeBinaries) -> Result<Self, Error> {
        Self::start_inner(binaries, Options { fake_node: false }, Some(node)).await
    }

    async fn start_inner(
        binaries: &Binaries,
        options: Options,
        node_binaries: Option<&NodeBinaries>,
    ) -> Result<Self, Error> {
        let root = make_root()?;
        let lock = node_binaries.map(|_| Lock {
            path: Path::new(node::LOCK_PATH),
            wait: node::LOCK_WAIT,
        });
        // Waiting for the node lock can take minutes: off the async threads, so signals and
        // timeouts still get through.
        let guardian_root = root.clone();
        let guardian = tokio::task::spawn_blocking(move || Guardian::start(&guardian_root, lock))
            .await
            .map_err(|e| Error::io("starting the cleanup guardian", std::io::Error::other(e)))??;
        let kubeconfig = root.join("kubeconfig");
        let mut control_plane = Self {
            root: root.clone(),
            kubeconfig: kubeconfig.clone(),
            server: String::new(),
            components: Vec::new(),
            guardian,
            node: None,
        };
        // From here on a failure drops `control_plane`, and so runs the teardown.
        if let Some(node_binaries) = node_binaries {
            let node = node::prepare(&root, binaries, node_binaries, &kubeconfig)?;
            control_plane.node = Some(node.clone());
            node::create_network()?;
        }
        let host = match node_binaries {
            Some(_) => node::NODE_IP,
            None => Ipv4Addr::LOCALHOST,
        };
        let extra_ips: &[Ipv4Addr] = match node_binaries {
            Some(_) => &[node::NODE_IP, node::KUBERNETES_SERVICE_IP],
            None => &[],
        };
        let pki = Pki::generate(&root, extra_ips)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let port = free_port()?;
        let server = format!("https://{host}:{port}");
        write_file(&kubeconfig, &kubeconfig_yaml(&server, &pki.ca_cert, &token))?;
        // Admin through a static token: one line, no client certificate to sign.
        write_file(
            &root.join("tokens.csv"),
            &format!("{token},admin,admin,\"system:masters\"\n"),
        )?;
        control_plane.server = server;
        let etcd = control_plane.start_etcd(binaries).await?;
        control_plane
            .start_apiserver(binaries, &pki, &etcd, host, port)
            .await?;
        if options.fake_node || node_binaries.is_some() {
            control_plane
                .start_workload_components(binaries, &pki, options.fake_node)
                .await?;
        }
        if let Some(node) = control_plane.node.clone() {
            control_plane
                .start_node_components(binaries, &pki, &node)
                .await?;
        }
        Ok(control_plane)
    }

    /// The real node, when started with [`ControlPlane::start_node`].
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The admin kubeconfig (`kubectl --kubeconfig`); valid while this control plane runs.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`, or `https://<node IP>:<port>` in node mode.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Logs, etcd data and credentials.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// A fresh admin client. Each call builds a new one, so tests on different runtimes can share
    /// one control plane.
    pub async fn client(&self) -> Result<Client, Error> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// Returns etcd's client URL.
    async fn start_etcd(&mut self, binaries: &Binaries) -> Result<String, Error> {
        let client_url = format!("http://127.0.0.1:{}", free_port()?);
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let args = vec![
            "--name=testkit".into(),
            format!("--data-dir={}", self.root.join("etcd").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=testkit={peer_url}"),
            // Throwaway data: durability only costs time here.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        self.spawn(binaries, "etcd", args)?;
        let addr = client_url.trim_start_matches("http://").to_string();
        self.poll(
            &format!("etcd accepting connections on {addr}"),
            async || Ok(TcpStream::connect(&addr).is_ok()),
        )
        .await?;
        Ok(client_url)
    }

    async fn start_apiserver(
        &mut self,
        binaries: &Binaries,
        pki: &Pki,
        etcd: &str,
        host: Ipv4Addr,
        port: u16,
    ) -> Result<(), Error> {
        let path = |p: &Path| p.display().to_string();
        let mut args = vec![
            format!("--etcd-servers={etcd}"),
            // In node mode the bridge address, so pods reach it through the `kubernetes` Service.
            format!("--bind-address={host}"),
            format!("--advertise-address={host}"),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", path(&self.root.join("apiserver"))),
            format!("--tls-cert-file={}", path(&pki.serving_cert)),
            format!("--tls-private-key-file={}", path(&pki.serving_key)),
            format!("--client-ca-file={}", path(&pki.ca_cert)),
            format!("--token-auth-file={}", path(&self.root.join("tokens.csv"))),
            format!(
                "--authorization-mode={}",
                if self.node.is_some() {
                    "Node,RBAC"
                } else {
                    "RBAC"
                }
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!(
                "--service-account-key-file={}",
                path(&pki.service_account_public_key)
            ),
            format!(
                "--service-account-signing-key-file={}",
                path(&pki.service_account_key)
            ),
            // Only an allocation range for ClusterIPs; nothing is routed.
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        if self.node.is_some() {
            // `kubectl logs/exec` go to the kubelet by its InternalIP (the node name is in no DNS),
            // as a client the kubelet's webhook authorizer lets in.
            let (cert, key) = pki.client_cert(
                "apiserver-kubelet-client",
                "kube-apiserver-kubelet-client",
                &["system:masters"],
            )?;
            args.extend([
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--kubelet-client-certificate={}", path(&cert)),
                format!("--kubelet-client-key={}", path(&key)),
                "--enable-admission-plugins=NodeRestriction".into(),
            ]);
        }
        self.spawn(binaries, "kube-apiserver", args)?;
        let client = self.client().await?;
        self.poll("kube-apiserver /readyz", async || {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            Ok(client
                .request_text(request)
                .await
                .is_ok_and(|body| body.trim() == "ok"))
        })
        .await
    }

    async fn start_workload_components(
        &mut self,
        binaries: &Binaries,
        pki: &Pki,
        fake_node: bool,
    ) -> Result<(), Error> {
        let path = |p: &Path| p.display().to_string();
        let kubeconfig = path(&self.kubeconfig);
        let root = self.root.clone();
        let common = |cert_dir: &str| -> Result<Vec<String>, Error> {
            Ok(vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                // Their own HTTPS endpoints (health, metrics) on free loopback ports, so several
                // control planes can run side by side.
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                format!("--cert-dir={}", path(&root.join(cert_dir))),
            ])
        };
        let mut kcm = common("kube-controller-manager")?;
        kcm.extend([
            format!(
                "--service-account-private-key-file={}",
                path(&pki.service_account_key)
            ),
            format!("--root-ca-file={}", path(&pki.ca_cert)),
            "--use-service-account-credentials=false".into(),
            // kwok renews its nodes' heartbeats from one process; on a loaded 2-core machine a
            // renewal can come late, and the node lifecycle controller would then mark every pod
            // on the node NotReady for good (kwok does not make them Ready again). Five minutes
            // of grace keeps a busy test machine from looking like a failed node.
            "--node-monitor-grace-period=300s".into(),
        ]);
        // For benchmarks that should not measure kube-controller-manager's own client limits
        // (e.g. `--kube-api-qps=200 --kube-api-burst=400`): extra flags, space-separated.
        if let Ok(extra) = std::env::var("SWITCHBOARD_CONTROLPLANE_KCM_ARGS") {
            kcm.extend(extra.split_whitespace().map(str::to_owned));
        }
        let scheduler = common("kube-scheduler")?;
        self.spawn(binaries, "kube-controller-manager", kcm)?;
        self.spawn(binaries, "kube-scheduler", scheduler)?;
        let client = self.client().await?;
        if fake_node {
            self.start_kwok(binaries, &kubeconfig, &client).await?;
        }
        // Pods are refused until the namespace's default ServiceAccount exists (kube-controller-manager
        // creates it), so tests that create workloads right away would race without this.
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        self.poll("ServiceAccount default/default", async || {
            Ok(accounts.get_opt("default").await?.is_some())
        })
        .await
    }

    async fn start_kwok(
        &mut self,
        binaries: &Binaries,
        kubeconfig: &str,
        client: &Client,
    ) -> Result<(), Error> {
        let path = |p: &Path| p.display().to_string();
        // An explicit (empty) configuration, so a developer's ~/.kwok/kwok.yaml is not picked up;
        // kwok's built-in stages then make nodes Ready and pods Running.
        let kwok_config = self.root.join("kwok.yaml");
        write_file(
            &kwok_config,
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n",
        )?;
        let kwok = vec![
            format!("--kubeconfig={kubeconfig}"),
            format!("--config={}", path(&kwok_config)),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            "--node-ip=127.0.0.1".into(),
        ];
        self.spawn(binaries, "kwok", kwok)?;

        let nodes: Api<NodeObject> = Api::all(client.clone());
        nodes.create(&PostParams::default(), &fake_node()).await?;
        self.poll(&format!("node {FAKE_NODE} Ready (kwok)"), async || {
            let node = nodes.get(FAKE_NODE).await?;
            Ok(node
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                }))
        })
        .await
    }

    fn spawn(
        &mut self,
        binaries: &Binaries,
        name: &'static str,
        args: Vec<String>,
    ) -> Result<(), Error> {
        let component = Component::spawn(
            &mut self.guardian,
            name,
            &binaries.path(name),
            &args,
            &self.root,
        )?;
        self.components.push(component);
        Ok(())
    }

    /// Polls `ready` until it returns true, failing early if a component exits and at the deadline
    /// with the end of the newest component's log.
    async fn poll(
        &mut self,
        what: &str,
        mut ready: impl AsyncFnMut() -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            for component in &mut self.components {
                component.check_running()?;
            }
            // Transient errors (connection refused while starting) are what we are waiting out.
            if ready().await.unwrap_or(false) {
                return Ok(());
            }
            if start.elapsed() > READY_DEADLINE {
                let context = self
                    .components
                    .last()
                    .map(|c| format!("; the end of {}'s log:\n{}", c.name, c.log_tail()))
                    .unwrap_or_default();
                return Err(Error::Timeout {
                    what: what.into(),
                    waited: READY_DEADLINE,
                    context,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The node's teardown needs the API server and the kubelet still running (it deletes the
        // pods through them), so it goes before anything is stopped.
        if self.node.is_some()
            && let Err(e) = self.guardian.teardown()
        {
            eprintln!(
                "switchboard-testkit: the node teardown failed: {e}; see {}",
                self.root.join("teardown.log").display()
            );
        }
        // Newest first: controllers before the API server, the API server before etcd.
        for component in self.components.iter_mut().rev() {
            component.stop();
        }
        let keep = std::env::var(ENV_KEEP).is_ok_and(|v| v == "1");
        if keep {
            eprintln!(
                "{ENV_KEEP}=1: control-plane files kept in {}",
                self.root.display()
            );
        }
        self.guardian.finish(keep);
    }
}

fn fake_node() -> NodeObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": FAKE_NODE,
            "annotations": { "kwok.x-k8s.io/node": "fake" },
            "labels": { "type": "kwok", "kubernetes.io/hostname": FAKE_NODE, "kubernetes.io/os": "linux" },
        },
        "status": {
            "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "110" },
            "capacity": { "cpu": "32", "memory": "256Gi", "pods": "110" },
        },
    }))
    .expect("static node manifest")
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: switchboard-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: switchboard-test
  context:
    cluster: switchboard-test
    user: admin
    namespace: default
current-context: switchboard-test
",
        ca = ca.display()
    )
}

/// A kubeconfig authenticating with a client certificate (the kubelet's).
fn kubeconfig_cert_yaml(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: switchboard-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: client
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: switchboard-test
  context:
    cluster: switchboard-test
    user: client
current-context: switchboard-test
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display()
    )
}

fn make_root() -> Result<PathBuf, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let root = std::env::temp_dir().join(format!(
        "switchboard-controlplane-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&root)
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    Ok(root)
}

fn write_file(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// A loopback port nothing listens on right now, for a component (or a test's process) to bind.
///
/// Not one the OS picks with port 0: those come from the ephemeral range (32768 and up), where
/// every outgoing connection also takes its source port, so one could take it between our
/// release and the component's bind. Below that range nothing is handed out by the OS; each
/// process walks its own stretch (seeded by its PID, apart from the sidecar tests' stretch) and
/// checks each port is free. A port taken in the remaining window makes the component exit and
/// the start fail with its log, rather than hang.
pub fn free_port() -> Result<u16, Error> {
    const LOW: u32 = 10_000;
    const SPAN: u32 = 5_000; // 10000..14999; the sidecar's test support uses 15000..31999
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seed = (u64::from(std::process::id()) * 977 % u64::from(SPAN)) as u32;
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (LOW + (seed + step) % SPAN) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::io(
        "finding a free port",
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "every port in 10000..15000 is taken",
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_wrapper_module() {
        let version = kubernetes_version();
        assert!(
            version.starts_with("v1.") && version.split('.').count() == 3,
            "{version}"
        );
    }

    #[test]
    fn kubeconfig_is_readable_by_kube() {
        let yaml = kubeconfig_yaml("https://127.0.0.1:6443", Path::new("/tmp/ca.crt"), "t0ken");
        let config = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(config.current_context.as_deref(), Some("switchboard-test"));
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
    }
}
