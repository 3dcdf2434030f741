//! The `switchboard-sidecar` binary: configuration, logging, signals; the rest is the library.

use switchboard_sidecar::config::Config;

#[tokio::main]
async fn main() {
    let config = Config::from_process();
    init_logging(&config.log_format);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    if let Err(e) = switchboard_sidecar::run(config, shutdown).await {
        tracing::error!(error = %e, "switchboard-sidecar failed");
        eprintln!("switchboard-sidecar: {e}");
        std::process::exit(1);
    }
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
