//! The webhook's HTTPS server: TLS by tokio-rustls with a certificate that can be swapped while
//! serving (rotation needs no restart), HTTP by hyper, routes by warp (`POST /mutate`).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionReview;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use warp::Filter;

use super::handler::Injector;

/// The API server's own webhook timeout is at most 30 s; a handshake never needs that long.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The serving certificate, replaced in place when the Secret changes.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertResolver {
    /// Loads a PEM certificate chain and key; a bad pair leaves the previous one serving.
    pub fn load(&self, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the serving certificate is not PEM: {e}"))?;
        if chain.is_empty() {
            return Err("the serving certificate is empty".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("the serving key is not PEM: {e}"))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| format!("the serving key is unusable: {e}"))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(CertifiedKey::new(chain, signer)));
        Ok(())
    }

    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Serves `POST /mutate` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, certs: Arc<CertResolver>, injector: Arc<Injector>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_cert_resolver(certs);
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let mutate = warp::post()
        .and(warp::path!("mutate"))
        // The API server sends one Pod per review; 8 MiB is far above any real pod spec.
        .and(warp::body::content_length_limit(8 << 20))
        .and(warp::body::json())
        .then(move |review: AdmissionReview<Pod>| {
            let injector = injector.clone();
            async move { warp::reply::json(&injector.review(review).await) }
        });
    let routes = mutate.or(warp::path!("healthz").map(|| "ok\n".to_string()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(warp::service(routes.clone()));
        tokio::spawn(async move {
            // A client that stalls the handshake must not hold a task and a socket forever.
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return log_refused(peer, &e),
                Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
            };
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}

fn log_refused(peer: SocketAddr, e: &std::io::Error) {
    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
}
