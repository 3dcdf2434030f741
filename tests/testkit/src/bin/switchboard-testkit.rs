//! Runs the test control plane for shell scripts:
//!
//! ```text
//! switchboard-testkit controlplane up --kubeconfig /tmp/kc [--fake-node]
//! switchboard-testkit controlplane up --kubeconfig /tmp/kc --node [--env-file /tmp/node.env]
//! switchboard-testkit controlplane bin
//! ```
//! The kubeconfig appears (atomically) once everything is ready; the control plane runs until this
//! process gets SIGINT or SIGTERM, then stops and cleans up.
//!
//! `--fake-node`: kube-controller-manager, kube-scheduler and kwok with one fake node (fast API
//! tests; nothing really runs).
//!
//! `--node`: a real node on this machine (root only; see the `node` module and
//! tests/node/README.md): containerd, kubelet, kube-proxy and CoreDNS, pods on bridge `sbnode0`
//! (10.244.0.0/24), Services in 10.96.0.0/16, cluster DNS `cluster.local` with no upstream.
//! Binaries: `SWITCHBOARD_CONTROLPLANE_BIN` (tests/controlplane/build.sh) and `SWITCHBOARD_NODE_BIN`
//! (tests/node/build.sh), or their caches. The images `switchboard.test/pause:1`,
//! `switchboard.test/probe:1` and `switchboard.test/traefik:1` are imported; pods must use
//! `imagePullPolicy: Never` (there is no registry). One node run per machine: a second `up --node`
//! waits for the first to finish. On SIGTERM/SIGINT, or if this process is killed, every pod is
//! deleted and the machine is put back as it was (bridge, iptables, sysctls, cgroups, mounts).
//!
//! `--env-file F` (written before the kubeconfig, so waiting for the kubeconfig is enough) holds
//! shell-sourceable `export KEY='value'` lines for scripts: `KUBECONFIG`, `SWITCHBOARD_NODE_NAME`, `SWITCHBOARD_NODE_IP`,
//! `SWITCHBOARD_CONTAINERD_ADDRESS` (for `ctr --address … -n k8s.io images import`),
//! `SWITCHBOARD_CTR`, `SWITCHBOARD_NODE_BIN`, `SWITCHBOARD_NODE_RUN_DIR` (logs), the pod and Service
//! ranges, and the image names. In a script:
//!
//! ```text
//! switchboard-testkit controlplane up --node --kubeconfig "$dir/kc" --env-file "$dir/node.env" &
//! up=$!; trap 'kill $up; wait $up' EXIT
//! until [ -f "$dir/kc" ]; do kill -0 $up || exit 1; sleep 0.5; done
//! . "$dir/node.env"
//! "$SWITCHBOARD_CTR" --address "$SWITCHBOARD_CONTAINERD_ADDRESS" -n k8s.io images import app.tar
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_testkit::{Binaries, ControlPlane, NodeBinaries, Options};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(name = "switchboard-testkit", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The local Kubernetes control plane.
    Controlplane {
        #[command(subcommand)]
        action: Action,
    },
}

#[derive(Subcommand)]
enum Action {
    /// Start it and run until interrupted.
    Up {
        /// Where to write the admin kubeconfig once the API server is ready.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Also run kube-controller-manager, kube-scheduler and kwok with one fake node.
        #[arg(long, conflicts_with = "node")]
        fake_node: bool,
        /// Run a real node (containerd, kubelet, kube-proxy, CoreDNS) on this machine; root only.
        #[arg(long)]
        node: bool,
        /// With --node: where to write the node's facts as shell `export KEY='value'` lines.
        #[arg(long, requires = "node")]
        env_file: Option<PathBuf>,
    },
    /// Print the directory the binaries are taken from, or why they are missing.
    Bin,
}

#[tokio::main]
async fn main() -> ExitCode {
    let Command::Controlplane { action } = Cli::parse().command;
    match run(action).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-testkit: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(action: Action) -> Result<(), Box<dyn std::error::Error>> {
    let binaries = Binaries::locate()?;
    let (kubeconfig, fake_node, node, env_file) = match action {
        Action::Bin => {
            println!("{}", binaries.dir.display());
            return Ok(());
        }
        Action::Up {
            kubeconfig,
            fake_node,
            node,
            env_file,
        } => (kubeconfig, fake_node, node, env_file),
    };
    let node_binaries = if node {
        Some(NodeBinaries::locate()?)
    } else {
        None
    };
    // Listen before starting, so a signal during the start still tears down.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let start = async {
        match &node_binaries {
            Some(node_binaries) => ControlPlane::start_node(&binaries, node_binaries).await,
            None => ControlPlane::start(&binaries, Options { fake_node }).await,
        }
    };
    let started = std::time::Instant::now();
    let control_plane = tokio::select! {
        started = start => started?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    if let Some(node) = control_plane.node() {
        let facts = node.env_file(&kubeconfig, control_plane.dir());
        if let Some(env_file) = &env_file {
            let partial = env_file.with_extension("partial");
            std::fs::write(&partial, &facts)?;
            std::fs::rename(&partial, env_file)?;
        }
        eprintln!(
            "node {} Ready at {} after {:.1} s:\n{facts}",
            node.name(),
            node.ip(),
            started.elapsed().as_secs_f64()
        );
    }
    // Write then rename, so a script waiting for the file never reads half of it.
    let partial = kubeconfig.with_extension("partial");
    std::fs::copy(control_plane.kubeconfig(), &partial)?;
    std::fs::rename(&partial, &kubeconfig)?;
    eprintln!(
        "control plane ready at {} (files in {}); kubeconfig: {}",
        control_plane.server(),
        control_plane.dir().display(),
        kubeconfig.display()
    );
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    eprintln!("stopping the control plane");
    drop(control_plane);
    Ok(())
}
