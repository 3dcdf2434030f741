//! Runs the test control plane for shell scripts:
//!
//! ```text
//! switchboard-testkit controlplane up --kubeconfig /tmp/kc [--fake-node]
//! ```
//! The kubeconfig appears (atomically) once the API server is ready; the control plane runs until
//! this process gets SIGINT or SIGTERM, then stops and cleans up.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_testkit::{Binaries, ControlPlane, Options};
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
        #[arg(long)]
        fake_node: bool,
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
    let (kubeconfig, fake_node) = match action {
        Action::Bin => {
            println!("{}", binaries.dir.display());
            return Ok(());
        }
        Action::Up {
            kubeconfig,
            fake_node,
        } => (kubeconfig, fake_node),
    };
    // Listen before starting, so a signal during the start still tears down.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let control_plane = tokio::select! {
        started = ControlPlane::start(&binaries, Options { fake_node }) => started?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
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
