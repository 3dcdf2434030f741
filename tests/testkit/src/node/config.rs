//! The node's configuration files, as text: containerd's TOML, the CNI network, the kubelet's and
//! kube-proxy's YAML, CoreDNS's Corefile. Pure functions of a [`Layout`], so each setting NODE.md
//! found necessary is written (and tested) in one place, with the reason beside it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Where one run keeps everything, and the addresses it uses.
#[derive(Clone, Debug)]
pub struct Layout {
    pub run: PathBuf,
    pub node_bin: PathBuf,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub bridge: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub cni_network: String,
    pub sandbox_image: String,
    pub cluster_domain: String,
}

impl Layout {
    pub fn containerd_dir(&self) -> PathBuf {
        self.run.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_dir().join("containerd.sock")
    }
    pub fn runc_root(&self) -> PathBuf {
        self.containerd_dir().join("runc")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.run.join("cni/net.d")
    }
    pub fn kubelet_dir(&self) -> PathBuf {
        self.run.join("kubelet")
    }
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// containerd 2.x (config version 3), everything under the run directory.
pub fn containerd_toml(layout: &Layout, runc: &Path) -> String {
    let dir = layout.containerd_dir();
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{dir}/ttrpc.sock"

# Its default is /opt/containerd, outside the run.
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

# NRI would listen on /var/run/nri; nothing here uses it.
[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.runtime"]
  # The VM lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj for the pause container, and
  # without this every sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  # Network namespaces under the state directory instead of the host's /var/run/netns.
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
    max_conf_num = 1

  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # No registry here: the sandbox image is imported before the kubelet starts.
      disable_pause_image_pull = true

      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{runc_root}"
        SystemdCgroup = false

[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox}"
"#,
        root = p(&dir.join("root")),
        state = p(&dir.join("state")),
        socket = p(&layout.containerd_socket()),
        dir = p(&dir),
        cni_bin = p(&layout.node_bin.join("cni")),
        cni_conf = p(&layout.cni_conf_dir()),
        runc = p(runc),
        runc_root = p(&layout.runc_root()),
        sandbox = layout.sandbox_image,
    )
}

/// The pod network: the bridge the run created, no gateway (so the plugin leaves the machine's
/// forwarding alone), routes only to the pod and Service ranges, so a pod's packet to anywhere else
/// fails at once with "Network is unreachable".
pub fn cni_conflist(layout: &Layout) -> String {
    let gateway = layout.node_ip.to_string();
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "1.0.0",
        "name": layout.cni_network,
        "plugins": [{
            "type": "bridge",
            "bridge": layout.bridge,
            "isGateway": false,
            "isDefaultGateway": false,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": layout.pod_cidr, "gateway": gateway }]],
                "routes": [{ "dst": layout.service_cidr, "gw": gateway }],
                "dataDir": p(&layout.run.join("cni/ipam")),
            },
        }],
    }))
    .expect("static JSON")
}

/// Ports the kubelet serves on.
pub struct KubeletPorts {
    pub port: u16,
    pub healthz: u16,
}

pub fn kubelet_yaml(layout: &Layout, ca: &Path, ports: &KubeletPorts) -> String {
    let dir = layout.kubelet_dir();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The VM is cgroup v1 (hybrid); since 1.35 the kubelet refuses v1 unless told otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://{socket}
imageServiceEndpoint: unix://{socket}
# The host's resolv.conf is not the pods' business: "Default" DNS pods get the cluster DNS too.
resolvConf: {resolv}
podLogsDir: {logs}
address: {node_ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
clusterDNS: [{node_ip}]
clusterDomain: {domain}
hairpinMode: hairpin-veth
rotateCertificates: false
serverTLSBootstrap: false
# A test machine's disk is often fuller than a real node's: never evict or collect test images.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
        socket = p(&layout.containerd_socket()),
        resolv = p(&dir.join("resolv.conf")),
        logs = p(&layout.run.join("pod-logs")),
        node_ip = layout.node_ip,
        port = ports.port,
        healthz = ports.healthz,
        ca = p(ca),
        domain = layout.cluster_domain,
    )
}

/// kube-proxy in iptables mode, written so it touches no machine-wide setting: NodePorts on the
/// node address only, no localhost NodePorts (it would turn on `route_localnet`), and conntrack
/// limits left alone (0 = do not write the sysctls).
pub fn kube_proxy_yaml(layout: &Layout, kubeconfig: &Path, healthz: u16, metrics: u16) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: {node}
clientConnection:
  kubeconfig: {kubeconfig}
clusterCIDR: {pod_cidr}
nodePortAddresses: ["{node_ip}/32"]
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        node = layout.node_name,
        kubeconfig = p(kubeconfig),
        pod_cidr = layout.pod_cidr,
        node_ip = layout.node_ip,
    )
}

/// CoreDNS answers for the cluster domain and reverse lookups only, bound to the node address:
/// no `forward` plugin, so any other name gets REFUSED and nothing is ever asked upstream.
pub fn corefile(layout: &Layout, kubeconfig: &Path, ready_port: u16) -> String {
    format!(
        r#"{domain}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {node_ip}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
    }}
    cache 5
}}
"#,
        domain = layout.cluster_domain,
        node_ip = layout.node_ip,
        kubeconfig = p(kubeconfig),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            run: "/tmp/run".into(),
            node_bin: "/cache/node/bin".into(),
            node_name: "switchboard-node".into(),
            node_ip: Ipv4Addr::new(10, 244, 0, 1),
            bridge: "sbnode0".into(),
            pod_cidr: "10.244.0.0/24".into(),
            service_cidr: "10.96.0.0/16".into(),
            cni_network: "switchboard".into(),
            sandbox_image: "switchboard.test/pause:1".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn containerd_keeps_its_state_in_the_run_and_never_pulls_the_sandbox() {
        let toml = containerd_toml(&layout(), Path::new("/usr/sbin/runc"));
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains("netns_mounts_under_state_dir = true"));
        assert!(toml.contains("disable_pause_image_pull = true"));
        assert!(toml.contains(r#"sandbox = "switchboard.test/pause:1""#));
        // Every quoted absolute path (comments aside) is in the run, the cache, or runc.
        let quoted = toml
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split('"').skip(1).step_by(2))
            .filter(|value| value.starts_with('/'));
        for path in quoted {
            assert!(
                path.starts_with("/tmp/run/")
                    || path.starts_with("/cache/")
                    || path == "/usr/sbin/runc",
                "a path outside the run: {path}"
            );
        }
    }

    #[test]
    fn pods_get_no_default_route_and_the_bridge_is_no_gateway() {
        let conf: serde_json::Value = serde_json::from_str(&cni_conflist(&layout())).unwrap();
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["isGateway"], false);
        assert_eq!(bridge["ipMasq"], false);
        let routes = bridge["ipam"]["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(routes[0]["dst"], "10.96.0.0/16");
    }

    #[test]
    fn coredns_has_no_upstream() {
        let corefile = corefile(&layout(), Path::new("/tmp/run/kubeconfig"), 9153);
        assert!(!corefile.contains("forward"), "{corefile}");
        assert!(corefile.contains("bind 10.244.0.1"));
    }

    #[test]
    fn kube_proxy_leaves_machine_settings_alone() {
        let yaml = kube_proxy_yaml(&layout(), Path::new("/k"), 1, 2);
        assert!(yaml.contains("localhostNodePorts: false"));
        assert!(yaml.contains("maxPerCore: 0"));
        assert!(yaml.contains(r#"nodePortAddresses: ["10.244.0.1/32"]"#));
    }
}
