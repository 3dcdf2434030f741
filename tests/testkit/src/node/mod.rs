//! Node mode: a real single-node cluster on this machine, next to the control plane
//! ([`crate::ControlPlane::start_node`]). Owns everything NODE.md lists: containerd (CRI), the
//! kubelet, kube-proxy (iptables), a bridge with a pod range that exists only here, CoreDNS for the
//! cluster domain with no upstream, the node's own images (pause, probe, traefik), and the undoing
//! of all of it (`teardown.sh`, run by the guardian).
//!
//! Nothing leaves the machine: pods have routes only to the pod and Service ranges, forwarding is
//! on for the bridge alone, and a guard rule drops pod traffic leaving by any other interface. The
//! API server is served on the bridge address, so pods reach it through the `kubernetes` Service.
//! Runs are root-only and change host iptables, sysctls and cgroups, so one run at a time per
//! machine: the guardian holds [`LOCK_PATH`] from before the first change until after the last undo.
//!
//! Driving it from bash: see `switchboard-testkit controlplane up --node` (src/bin), which writes an
//! env file with [`Node::env_file`]'s variables.

pub mod config;
pub mod image;

use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::api::Api;

use crate::pki::Pki;
use crate::{Binaries, ControlPlane, ENV_CACHE, Error, free_port, write_file};
use config::{KubeletPorts, Layout};
use image::StaticImage;

/// Directory holding the node binaries (tests/node/build.sh's last line); overrides the cache.
pub const ENV_NODE_BIN: &str = "SWITCHBOARD_NODE_BIN";
/// The machine-wide lock: one node run at a time.
pub const LOCK_PATH: &str = "/run/switchboard-testkit-node.lock";
/// How long a run waits for another run's lock (a test binary runs its node tests one by one).
pub const LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

pub const NODE_NAME: &str = "switchboard-node";
/// The bridge's address: the node IP, where the API server, the kubelet and CoreDNS listen.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The `kubernetes` Service's ClusterIP (the first of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
pub const BRIDGE: &str = "sbnode0";
pub const CLUSTER_DOMAIN: &str = "cluster.local";
const CNI_NETWORK: &str = "switchboard";
const GUARD_COMMENT: &str = "switchboard-testkit-node-guard";

/// The sandbox image: `tests/node/pause`, a static binary that sleeps until SIGTERM.
pub const IMAGE_PAUSE: &str = "switchboard.test/pause:1";
/// `tests/node/probe`: a test pod's HTTP backend and in-pod checks (`probe serve|lookup|dial|get`).
pub const IMAGE_PROBE: &str = "switchboard.test/probe:1";
/// Traefik built from source by tests/node/build.sh; entrypoint `/bin/traefik`.
pub const IMAGE_TRAEFIK: &str = "switchboard.test/traefik:1";

/// Machine-wide settings the kubelet and kube-proxy may change; recorded before the run and put
/// back after the node starts and at teardown.
const SYSCTLS: [&str; 10] = [
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
];

const TEARDOWN: &str = include_str!("teardown.sh");
const BUILD_SH: &str = include_str!("../../../node/build.sh");
/// What a node needs; `traefik` is only needed for the ingress (its image is imported when present).
const NODE_BINARIES: [&str; 10] = [
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "coredns",
    "pause",
    "probe",
    "cni/bridge",
    "cni/host-local",
    "cni/loopback",
    "cni/portmap",
];

/// Where tests/node/build.sh put the node binaries.
#[derive(Clone, Debug)]
pub struct NodeBinaries {
    pub dir: PathBuf,
}

impl NodeBinaries {
    /// `$SWITCHBOARD_NODE_BIN`, else build.sh's cache directory for the versions it pins.
    pub fn locate() -> Result<Self, Error> {
        let dir = match std::env::var_os(ENV_NODE_BIN) {
            Some(dir) => PathBuf::from(dir),
            None => default_cache_dir(),
        };
        let missing: Vec<&str> = NODE_BINARIES
            .into_iter()
            .filter(|b| !dir.join(b).is_file())
            .collect();
        if missing.is_empty() {
            Ok(Self { dir })
        } else {
            Err(Error::Node(format!(
                "node binaries missing from {} ({}). Build them with `bash tests/node/build.sh` \
                 (about 10 minutes the first time), or point {ENV_NODE_BIN} at its output",
                dir.display(),
                missing.join(", ")
            )))
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// build.sh names its cache directory after the versions it pins; read them from the script.
fn default_cache_dir() -> PathBuf {
    let pinned = |var: &str| {
        BUILD_SH
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let cache = std::env::var_os(ENV_CACHE)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/switchboard")
        });
    cache
        .join("node")
        .join(format!(
            "containerd-{}-coredns-{}-traefik-{}",
            pinned("CONTAINERD_VERSION"),
            pinned("COREDNS_VERSION"),
            pinned("TRAEFIK_VERSION")
        ))
        .join("bin")
}

/// Why this machine cannot run a node, or `None` if it can: root, and the tools teardown.sh needs.
pub fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Some(
            "node mode needs root (it creates a bridge, iptables rules and cgroups)".into(),
        );
    }
    let missing: Vec<&str> = [
        "ip",
        "iptables",
        "ip6tables",
        "runc",
        "flock",
        "findmnt",
        "kubectl",
        "tar",
        "sha256sum",
    ]
    .into_iter()
    .filter(|tool| !on_path(tool))
    .collect();
    (!missing.is_empty()).then(|| format!("node mode needs {} on PATH", missing.join(", ")))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// A running node's facts, for tests and scripts.
#[derive(Clone, Debug)]
pub struct Node {
    layout: Layout,
    bin: NodeBinaries,
    saved_sysctls: Vec<(String, String)>,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.layout.node_name
    }
    pub fn ip(&self) -> Ipv4Addr {
        self.layout.node_ip
    }
    /// containerd's socket: `ctr --address <this> -n k8s.io images import <tarball>`.
    pub fn containerd_address(&self) -> PathBuf {
        self.layout.containerd_socket()
    }
    pub fn ctr(&self) -> PathBuf {
        self.bin.path("ctr")
    }
    pub fn binaries(&self) -> &NodeBinaries {
        &self.bin
    }
    /// Whether the Traefik image ([`IMAGE_TRAEFIK`]) was imported (tests/node/build.sh built it).
    pub fn has_traefik(&self) -> bool {
        self.bin.path("traefik").is_file()
    }

    /// The machine's values of the settings the node may change, as recorded before the start.
    pub fn saved_sysctls(&self) -> &[(String, String)] {
        &self.saved_sysctls
    }

    /// Imports a docker-archive tarball into the node's containerd (namespace `k8s.io`).
    pub fn import_image(&self, tarball: &Path) -> Result<(), Error> {
        image::import(&self.ctr(), &self.containerd_address(), tarball)
    }

    /// Shell-sourceable `export KEY='value'` lines describing this node (see the CLI's `--env-file`).
    pub fn env_file(&self, kubeconfig: &Path, run_dir: &Path) -> String {
        let mut lines = vec![
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("SWITCHBOARD_NODE_NAME", self.name().to_owned()),
            ("SWITCHBOARD_NODE_IP", self.ip().to_string()),
            (
                "SWITCHBOARD_CONTAINERD_ADDRESS",
                self.containerd_address().display().to_string(),
            ),
            ("SWITCHBOARD_CTR", self.ctr().display().to_string()),
            ("SWITCHBOARD_NODE_BIN", self.bin.dir.display().to_string()),
            ("SWITCHBOARD_NODE_RUN_DIR", run_dir.display().to_string()),
            ("SWITCHBOARD_POD_CIDR", POD_CIDR.to_owned()),
            ("SWITCHBOARD_SERVICE_CIDR", SERVICE_CIDR.to_owned()),
            ("SWITCHBOARD_IMAGE_PAUSE", IMAGE_PAUSE.to_owned()),
            ("SWITCHBOARD_IMAGE_PROBE", IMAGE_PROBE.to_owned()),
            ("SWITCHBOARD_IMAGE_TRAEFIK", IMAGE_TRAEFIK.to_owned()),
        ]
        .into_iter()
        // Exported, so `. node.env` is enough for kubectl and ctr in the sourcing shell.
        .map(|(k, v)| format!("export {k}='{v}'"))
        .collect::<Vec<_>>();
        lines.push(String::new());
        lines.join("\n")
    }
}

/// Before the first change to the machine: record what will be changed and write `teardown.sh`,
/// so the guardian can undo even a start that fails half-way.
pub(crate) fn prepare(
    root: &Path,
    binaries: &Binaries,
    node_bin: &NodeBinaries,
    kubeconfig: &Path,
) -> Result<Node, Error> {
    if let Some(why) = unsupported() {
        return Err(Error::Node(why));
    }
    for needed in ["kubelet", "kube-proxy"] {
        if !binaries.path(needed).is_file() {
            return Err(Error::Node(format!(
                "{needed} missing from {}: rebuild with `bash tests/controlplane/build.sh`",
                binaries.dir.display()
            )));
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        return Err(Error::Node(format!(
            "a network interface {BRIDGE} already exists, so another node run (or a crashed one \
             whose guardian died too) owns it; if no run is active, `ip link del {BRIDGE}`"
        )));
    }
    let layout = Layout {
        run: root.to_owned(),
        node_bin: node_bin.dir.clone(),
        node_name: NODE_NAME.into(),
        node_ip: NODE_IP,
        bridge: BRIDGE.into(),
        pod_cidr: POD_CIDR.into(),
        service_cidr: SERVICE_CIDR.into(),
        cni_network: CNI_NETWORK.into(),
        sandbox_image: IMAGE_PAUSE.into(),
        cluster_domain: CLUSTER_DOMAIN.into(),
    };
    let saved_sysctls: Vec<(String, String)> = SYSCTLS
        .iter()
        .filter_map(|key| read_sysctl(key).map(|v| ((*key).to_owned(), v)))
        .collect();
    let existed = |p: &str| if Path::new(p).exists() { "1" } else { "0" };
    let env = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("NODE_BIN", node_bin.dir.display().to_string()),
        ("CONTROLPLANE_BIN", binaries.dir.display().to_string()),
        (
            "CONTAINERD_ADDRESS",
            layout.containerd_socket().display().to_string(),
        ),
        ("RUNC_ROOT", layout.runc_root().display().to_string()),
        ("BRIDGE", BRIDGE.into()),
        ("POD_CIDR", POD_CIDR.into()),
        ("GUARD_COMMENT", GUARD_COMMENT.into()),
        ("CNI_NETWORK", CNI_NETWORK.into()),
        (
            "SYSCTLS",
            saved_sysctls
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("HAD_RUN_CONTAINERD", existed("/run/containerd").into()),
        ("HAD_VAR_LIB_CNI", existed("/var/lib/cni").into()),
        ("HAD_VAR_LIB_KUBELET", existed("/var/lib/kubelet").into()),
        (
            "HAD_VAR_LOG_CONTAINERS",
            existed("/var/log/containers").into(),
        ),
    ]
    .iter()
    .map(|(k, v)| format!("{k}='{v}'\n"))
    .collect::<String>();
    write_file(&root.join("node.env"), &env)?;
    let teardown = root.join("teardown.sh");
    write_file(&teardown, TEARDOWN)?;
    std::fs::set_permissions(&teardown, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(format!("making {} executable", teardown.display()), e))?;
    Ok(Node {
        layout,
        bin: node_bin.clone(),
        saved_sysctls,
    })
}

/// The bridge with the node address, forwarding on it alone, and the guard rule.
pub(crate) fn create_network() -> Result<(), Error> {
    let cidr_bits = POD_CIDR.rsplit('/').next().unwrap_or("24");
    sh(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
    sh(&[
        "ip",
        "addr",
        "add",
        &format!("{NODE_IP}/{cidr_bits}"),
        "dev",
        BRIDGE,
    ])?;
    // Pods get IPv4 only; no IPv6 link-local chatter on the bridge either.
    write_sysctl(&format!("net.ipv6.conf.{BRIDGE}.disable_ipv6"), "1")?;
    write_sysctl(&format!("net.ipv4.conf.{BRIDGE}.forwarding"), "1")?;
    sh(&["ip", "link", "set", BRIDGE, "up"])?;
    sh(&[
        "iptables",
        "-I",
        "FORWARD",
        "1",
        "-s",
        POD_CIDR,
        "!",
        "-o",
        BRIDGE,
        "-m",
        "comment",
        "--comment",
        GUARD_COMMENT,
        "-j",
        "DROP",
    ])?;
    Ok(())
}

/// Puts back every recorded setting the node changed.
pub(crate) fn restore_sysctls(node: &Node) -> Result<Vec<String>, Error> {
    let mut restored = Vec::new();
    for (key, value) in &node.saved_sysctls {
        if read_sysctl(key).as_deref() != Some(value) {
            write_sysctl(key, value)?;
            restored.push(format!("{key}={value}"));
        }
    }
    Ok(restored)
}

pub fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key))
        .ok()
        .map(|v| v.trim().to_owned())
}

fn write_sysctl(key: &str, value: &str) -> Result<(), Error> {
    std::fs::write(sysctl_path(key), value)
        .map_err(|e| Error::io(format!("setting {key} = {value}"), e))
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn sh(args: &[&str]) -> Result<(), Error> {
    image::run(std::process::Command::new(args[0]).args(&args[1..]))
}

impl ControlPlane {
    /// containerd, CoreDNS, the kubelet and kube-proxy, once the API server and the controllers run.
    pub(crate) async fn start_node_components(
        &mut self,
        binaries: &Binaries,
        pki: &Pki,
        node: &Node,
    ) -> Result<(), Error> {
        let layout = &node.layout;
        let nb = &node.bin;
        let path = |p: &Path| p.display().to_string();
        for dir in [
            layout.cni_conf_dir(),
            layout.kubelet_dir(),
            layout.run.join("pod-logs"),
            layout.containerd_dir(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        write_file(
            &layout.cni_conf_dir().join("10-switchboard.conflist"),
            &config::cni_conflist(layout),
        )?;

        // CoreDNS as a host process on the node address: no image, no RBAC, it is up before the
        // first pod, and teardown stops it by PID like the rest.
        let ready_port = free_port()?;
        let corefile = layout.run.join("Corefile");
        write_file(
            &corefile,
            &config::corefile(layout, &self.kubeconfig, ready_port),
        )?;
        self.spawn_at(
            "coredns",
            &nb.path("coredns"),
            vec!["-conf".into(), path(&corefile)],
            &[],
        )?;

        let runc = which("runc").ok_or_else(|| Error::Node("runc is not on PATH".into()))?;
        let containerd_toml = layout.containerd_dir().join("config.toml");
        write_file(&containerd_toml, &config::containerd_toml(layout, &runc))?;
        // containerd finds its shim on PATH.
        let shim_path = format!(
            "{}:{}",
            nb.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        self.spawn_at(
            "containerd",
            &nb.path("containerd"),
            vec!["--config".into(), path(&containerd_toml)],
            &[("PATH", shim_path)],
        )?;
        let socket = layout.containerd_socket();
        self.poll("containerd accepting connections", async || {
            Ok(UnixStream::connect(&socket).is_ok())
        })
        .await?;
        // Packed once per build of the binaries (beside them in the cache), imported every run.
        let images = nb.dir.parent().unwrap_or(&nb.dir).join("images");
        std::fs::create_dir_all(&images)
            .map_err(|e| Error::io(format!("creating {}", images.display()), e))?;
        for (reference, binary) in [
            (IMAGE_PAUSE, "pause"),
            (IMAGE_PROBE, "probe"),
            (IMAGE_TRAEFIK, "traefik"),
        ] {
            if binary == "traefik" && !node.has_traefik() {
                eprintln!(
                    "switchboard-testkit: no traefik in {}: its image is not imported",
                    nb.dir.display()
                );
                continue;
            }
            let tarball = images.join(format!("{binary}.tar"));
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            if modified(&tarball) < modified(&nb.path(binary)) {
                image::pack(
                    &images,
                    &StaticImage {
                        reference,
                        binary: &nb.path(binary),
                        args: &[],
                    },
                )?;
            }
            node.import_image(&tarball)?;
        }

        let (kubelet_cert, kubelet_key) = pki.client_cert(
            "kubelet-client",
            &format!("system:node:{}", layout.node_name),
            &["system:nodes"],
        )?;
        let kubelet_kubeconfig = layout.kubelet_dir().join("kubeconfig");
        write_file(
            &kubelet_kubeconfig,
            &crate::kubeconfig_cert_yaml(&self.server, &pki.ca_cert, &kubelet_cert, &kubelet_key),
        )?;
        write_file(
            &layout.kubelet_dir().join("resolv.conf"),
            &format!("nameserver {}\n", layout.node_ip),
        )?;
        let kubelet_config = layout.kubelet_dir().join("config.yaml");
        write_file(
            &kubelet_config,
            &config::kubelet_yaml(
                layout,
                &pki.ca_cert,
                &KubeletPorts {
                    port: free_port()?,
                    healthz: free_port()?,
                },
            ),
        )?;
        self.spawn_at(
            "kubelet",
            &binaries.path("kubelet"),
            vec![
                format!("--config={}", path(&kubelet_config)),
                format!("--kubeconfig={}", path(&kubelet_kubeconfig)),
                format!("--root-dir={}", path(&layout.kubelet_dir().join("root"))),
                // Its default is /var/lib/kubelet/pki whatever the root directory.
                format!("--cert-dir={}", path(&layout.kubelet_dir().join("pki"))),
                format!("--node-ip={}", layout.node_ip),
                format!("--hostname-override={}", layout.node_name),
            ],
            &[],
        )?;
        let proxy_config = layout.run.join("kube-proxy.yaml");
        write_file(
            &proxy_config,
            &config::kube_proxy_yaml(layout, &self.kubeconfig, free_port()?, free_port()?),
        )?;
        self.spawn_at(
            "kube-proxy",
            &binaries.path("kube-proxy"),
            vec![format!("--config={}", path(&proxy_config))],
            &[],
        )?;

        let client = self.client().await?;
        let nodes: Api<NodeObject> = Api::all(client);
        let name = layout.node_name.clone();
        self.poll(&format!("node {name} Ready (kubelet)"), async || {
            let Some(node) = nodes.get_opt(&name).await? else {
                return Ok(false);
            };
            Ok(node
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|conditions| {
                    conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                }))
        })
        .await?;
        // The kubelet sets its kernel tunables while starting, before it reports Ready.
        for setting in restore_sysctls(node)? {
            eprintln!("switchboard-testkit: put back {setting} after the kubelet changed it");
        }
        let ready = format!("127.0.0.1:{ready_port}");
        self.poll("CoreDNS ready (kubernetes plugin synced)", async || {
            Ok(http_ok(&ready, "/ready"))
        })
        .await
    }

    fn spawn_at(
        &mut self,
        name: &'static str,
        binary: &Path,
        args: Vec<String>,
        env: &[(&str, String)],
    ) -> Result<(), Error> {
        let component = crate::process::Component::spawn_with_env(
            &mut self.guardian,
            name,
            binary,
            &args,
            env,
            &self.root,
        )?;
        self.components.push(component);
        Ok(())
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// A plain HTTP/1.0 GET on loopback answering 200.
fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut read = 0;
    while read < head.len() && Instant::now() < deadline {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    head.starts_with(b"HTTP/1.") && head[9..12] == *b"200"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cache_dir_follows_build_sh() {
        let dir = default_cache_dir();
        let name = dir.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("containerd-v2."), "{name}");
        assert!(
            name.contains("-coredns-v1.") && name.contains("-traefik-v3."),
            "{name}"
        );
    }

    #[test]
    fn env_file_is_shell_sourceable() {
        let node = Node {
            layout: Layout {
                run: "/tmp/r".into(),
                node_bin: "/b".into(),
                node_name: NODE_NAME.into(),
                node_ip: NODE_IP,
                bridge: BRIDGE.into(),
                pod_cidr: POD_CIDR.into(),
                service_cidr: SERVICE_CIDR.into(),
                cni_network: CNI_NETWORK.into(),
                sandbox_image: IMAGE_PAUSE.into(),
                cluster_domain: CLUSTER_DOMAIN.into(),
            },
            bin: NodeBinaries { dir: "/b".into() },
            saved_sysctls: Vec::new(),
        };
        let text = node.env_file(Path::new("/tmp/kc"), Path::new("/tmp/r"));
        assert!(text.contains("export SWITCHBOARD_NODE_IP='10.244.0.1'"));
        assert!(
            text.contains("SWITCHBOARD_CONTAINERD_ADDRESS='/tmp/r/containerd/containerd.sock'")
        );
        assert!(!text.lines().any(|l| l.matches('\'').count() % 2 == 1));
    }
}
