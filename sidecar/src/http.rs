//! Health and metrics over HTTP, for the kubelet's probes and Prometheus.
//!
//! `/healthz` answers while the process serves; `/readyz` only while the backplane is connected
//! (always in embedded mode) and the app has not stopped listening (see [`crate::listening`]),
//! so a pod cut off from Redis, or deaf to broadcasts, leaves the Service's endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use warp::Filter;
use warp::http::StatusCode;

use crate::listening::Check;
use crate::metrics::Metrics;
use crate::relay::Relay;

pub async fn serve(
    addr: SocketAddr,
    relay: Arc<Relay>,
    metrics: Arc<Metrics>,
    listening: Arc<Check>,
) -> std::io::Result<()> {
    let healthz = warp::path!("healthz").map(|| "ok\n".to_string());
    let readyz = warp::path!("readyz").map(move || {
        if !relay.is_ready() {
            let why = relay
                .last_error()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            warp::reply::with_status(
                format!("not ready: the backplane is not connected{why}\n"),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        } else if let Some(reason) = listening.not_listening() {
            warp::reply::with_status(format!("{reason}\n"), StatusCode::SERVICE_UNAVAILABLE)
        } else {
            warp::reply::with_status("ready\n".to_string(), StatusCode::OK)
        }
    });
    let metrics = warp::path!("metrics").map(move || {
        warp::reply::with_header(
            metrics.render(),
            "content-type",
            "text/plain; version=0.0.4; charset=utf-8",
        )
    });
    let routes = warp::get().and(healthz.or(readyz).or(metrics));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "health and metrics listening");
    warp::serve(routes).incoming(listener).run().await;
    Ok(())
}
