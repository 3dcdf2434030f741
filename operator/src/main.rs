//! `switchboard-operator`: serves health and metrics, waits to lead, then runs the controller until
//! SIGTERM (graceful: running reconciles finish, the Lease is handed back) or until leadership is
//! lost (exit 1, so the kubelet restarts it as a fresh candidate, as client-go controllers do).

use std::sync::Arc;
use std::time::Duration;

use switchboard_operator::config::Config;
use switchboard_operator::controller::{Context, run};
use switchboard_operator::http::{self, Health};
use switchboard_operator::leader::Elector;
use switchboard_operator::metrics::Metrics;
use tokio::sync::watch;

#[tokio::main]
async fn main() {
    let config = Config::from_process();
    init_logging(&config.log_format);
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => fail(&format!(
            "cannot configure a Kubernetes client ({e}); in a pod it uses the ServiceAccount, elsewhere KUBECONFIG or ~/.kube/config"
        )),
    };
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    let (addr, server) = match http::bind(config.http_listen, health.clone(), metrics.clone()).await
    {
        Ok(bound) => bound,
        Err(e) => fail(&format!(
            "cannot listen on --http-listen {}: {e}",
            config.http_listen
        )),
    };
    tracing::info!(%addr, "health and metrics listening");
    tokio::spawn(server);

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("SIGTERM: shutting down gracefully");
        let _ = stop_tx.send(true);
    });

    wait_for_api(&client, &health, stop.clone()).await;
    let mut elector = Elector::new(client.clone(), config.lease());
    tokio::select! {
        _ = elector.acquire() => {}
        _ = stopped(stop.clone()) => return,
    }
    metrics.leader.set(1);

    // Leadership is held by a task of its own; losing it stops the controller like SIGTERM does.
    let (lost_tx, lost) = watch::channel(None);
    let holder = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                reason = elector.hold() => { let _ = lost_tx.send(Some(reason.to_string())); }
                _ = stopped(stop) => {}
            }
            elector
        })
    };
    let ctx = Arc::new(Context::new(client, metrics.clone(), config.identity()));
    let shutdown = {
        let (stop, lost) = (stop.clone(), lost.clone());
        async move {
            tokio::select! {
                _ = stopped(stop) => {}
                _ = async { let mut lost = lost; let _ = lost.wait_for(Option::is_some).await; } => {}
            }
        }
    };
    run::run(ctx, config.watch_namespace.as_deref(), shutdown).await;
    metrics.leader.set(0);
    if let Some(reason) = lost.borrow().clone() {
        fail(&format!(
            "lost leadership: {reason}; exiting so a fresh candidate starts"
        ));
    }
    let mut elector = holder.await.expect("the Lease holder task does not panic");
    elector.release().await;
}

/// Polls the API server until it answers, so `/readyz` means "can talk to the cluster".
async fn wait_for_api(client: &kube::Client, health: &Health, stop: watch::Receiver<bool>) {
    loop {
        match client.apiserver_version().await {
            Ok(version) => {
                tracing::info!(version = %version.git_version, "connected to the API server");
                health.set_api_reachable();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "the API server does not answer yet; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stopped(stop.clone()) => std::process::exit(0),
        }
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn fail(message: &str) -> ! {
    tracing::error!("{message}");
    eprintln!("switchboard-operator: {message}");
    std::process::exit(1);
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
