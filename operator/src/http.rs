//! Health and metrics over HTTP, for the kubelet's probes and Prometheus, served with warp.
//!
//! `/healthz` answers while the process serves. `/readyz` answers once the operator has reached
//! the API server and its injection webhook serves, on the leader and on standbys alike: a standby is healthy, and gating readiness
//! on leadership would stall every rolling update of a two-replica Deployment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use warp::Filter;
use warp::http::StatusCode;

use crate::metrics::Metrics;

/// What the probes read.
pub struct Health {
    api_reachable: AtomicBool,
    /// True when the webhook is disabled, else once it serves with a certificate.
    webhook_ready: AtomicBool,
}

impl Health {
    pub fn new(webhook_enabled: bool) -> Self {
        Self {
            api_reachable: AtomicBool::new(false),
            webhook_ready: AtomicBool::new(!webhook_enabled),
        }
    }

    pub fn set_api_reachable(&self) {
        self.api_reachable.store(true, Ordering::Relaxed);
    }

    pub fn set_webhook_ready(&self) {
        self.webhook_ready.store(true, Ordering::Relaxed);
    }
}

/// Binds `addr` (failing early on a taken port) and returns the server to spawn.
pub async fn bind(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let healthz = warp::path!("healthz").map(|| "ok\n".to_string());
    let readyz = warp::path!("readyz").map(move || {
        if !health.api_reachable.load(Ordering::Relaxed) {
            warp::reply::with_status(
                "not ready: the API server has not answered yet\n".to_string(),
                StatusCode::SERVICE_UNAVAILABLE,
            )
        } else if !health.webhook_ready.load(Ordering::Relaxed) {
            warp::reply::with_status(
                "not ready: the injection webhook has no certificate yet\n".to_string(),
                StatusCode::SERVICE_UNAVAILABLE,
            )
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
    let bound = listener.local_addr()?;
    Ok((bound, warp::serve(routes).incoming(listener).run()))
}
