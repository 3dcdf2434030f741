//! `switchboard-operator`: serves health and metrics, waits to lead, then runs the controller until
//! SIGTERM (graceful: running reconciles finish, the Lease is handed back) or until leadership is
//! lost (exit 1, so the kubelet restarts it as a fresh candidate, as client-go controllers do).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::version::Info;
use switchboard_operator::config::Config;
use switchboard_operator::controller::{Context, run};
use switchboard_operator::http::{self, Health};
use switchboard_operator::leader::Elector;
use switchboard_operator::metrics::Metrics;
use switchboard_operator::webhook;
use switchboard_operator::webhook::handler::Injector;
use switchboard_operator::webhook::mutate::InjectSettings;
use switchboard_operator::webhook::run::{WebhookSettings, keep_certificates};
use tokio::sync::watch;

#[tokio::main]
async fn main() {
    let config = Config::from_process();
    init_logging(&config.log_format);
    let metrics = Arc::new(Metrics::default());
    let client = match counted_client(metrics.clone()).await {
        Ok(client) => client,
        Err(e) => fail(&format!(
            "cannot configure a Kubernetes client ({e}); in a pod it uses the ServiceAccount, elsewhere KUBECONFIG or ~/.kube/config"
        )),
    };
    let webhook = config.webhook();
    let health = Arc::new(Health::new(webhook.is_some()));
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

    let version = wait_for_api(&client, &health, stop.clone()).await;
    if let Some(settings) = &webhook {
        start_webhook(&client, settings, &config, &version, &metrics, &health).await;
    }
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
    if let Some(settings) = webhook {
        tokio::spawn(keep_certificates(client.clone(), settings));
    }
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
    run::run(
        ctx,
        config.watch_namespace.as_deref(),
        config.max_concurrent_reconciles,
        shutdown,
    )
    .await;
    metrics.leader.set(0);
    if let Some(reason) = lost.borrow().clone() {
        fail(&format!(
            "lost leadership: {reason}; exiting so a fresh candidate starts"
        ));
    }
    let mut elector = holder.await.expect("the Lease holder task does not panic");
    elector.release().await;
}

/// The usual client (in-cluster, else `KUBECONFIG`), counting every request it sends in
/// `switchboard_operator_api_requests_total`.
async fn counted_client(metrics: Arc<Metrics>) -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let count =
        tower::util::MapRequestLayer::new(move |request: hyper::Request<kube::client::Body>| {
            metrics.api_request(request.method().as_str(), request.uri().query());
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

/// Starts the injection webhook on this replica (leader or not): a RealtimeCluster cache, the
/// HTTPS server once the certificate exists. Failing to bind is fatal: the port is configuration.
async fn start_webhook(
    client: &kube::Client,
    settings: &WebhookSettings,
    config: &Config,
    version: &Info,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) {
    let injector = Arc::new(Injector {
        client: client.clone(),
        clusters: webhook::run::cluster_cache(client.clone(), config.watch_namespace.as_deref()),
        recorder: Context::new(client.clone(), metrics.clone(), config.identity()).recorder,
        settings: InjectSettings {
            sidecar_image: config.sidecar_image.clone(),
            native_sidecars: supports_native_sidecars(version),
            operator_namespace: settings.namespace.clone(),
        },
        metrics: metrics.clone(),
    });
    tracing::info!(
        native_sidecars = injector.settings.native_sidecars,
        image = %injector.settings.sidecar_image,
        "sidecar injection enabled"
    );
    let serving = webhook::run::serve(client.clone(), settings.clone(), injector, health.clone());
    let listen = settings.listen;
    tokio::spawn(async move {
        if let Err(e) = serving.await {
            fail(&format!("cannot listen on --webhook-listen {listen}: {e}"));
        }
    });
}

/// Native sidecars (init containers with `restartPolicy: Always`) are on by default from 1.29.
fn supports_native_sidecars(version: &Info) -> bool {
    let minor: u32 = version
        .minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(0);
    version.major == "1" && minor >= 29
}

/// Polls the API server until it answers, so `/readyz` means "can talk to the cluster".
async fn wait_for_api(client: &kube::Client, health: &Health, stop: watch::Receiver<bool>) -> Info {
    loop {
        match client.apiserver_version().await {
            Ok(version) => {
                tracing::info!(version = %version.git_version, "connected to the API server");
                health.set_api_reachable();
                return version;
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
