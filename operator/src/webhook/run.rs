//! The webhook's life: every replica serves it (admission must not wait for a leader election);
//! the leader alone keeps the certificate Secret issued and the `caBundle` current.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};

use super::certs::{self, Plan};
use super::handler::Injector;
use super::server::{self, CertResolver};
use crate::api::RealtimeCluster;
use crate::http::Health;

/// Where the webhook listens and where its certificate lives.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub listen: SocketAddr,
    /// The operator's namespace: the Secret and the Service are there.
    pub namespace: String,
    pub secret: String,
    /// The Service the API server calls; its DNS names go into the certificate.
    pub service: String,
    /// More names for the certificate (e.g. `localhost` when the API server calls a URL).
    pub extra_names: Vec<String>,
    /// The MutatingWebhookConfiguration whose `caBundle` the operator keeps current.
    pub configuration: String,
    /// cert-manager issues the Secret and injects the caBundle; the operator only reads.
    pub cert_manager: bool,
}

impl WebhookSettings {
    pub fn names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        let mut names = vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
            svc.clone(),
        ];
        names.extend(self.extra_names.iter().cloned());
        names
    }
}

/// A cache of the RealtimeClusters (in `namespace`, or all), for admission decisions; fed until
/// the process exits.
pub fn cluster_cache(client: Client, namespace: Option<&str>) -> reflector::Store<RealtimeCluster> {
    let (reader, writer) = reflector::store();
    let api = match namespace {
        Some(namespace) => Api::namespaced(client, namespace),
        None => Api::all(client),
    };
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    reader
}

/// Serves the webhook once its certificate is loaded and the cluster cache is filled; reloads
/// the certificate whenever the Secret changes.
pub async fn serve(
    client: Client,
    settings: WebhookSettings,
    injector: Arc<Injector>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen).await?;
    let certs = Arc::new(CertResolver::default());
    tokio::spawn(reload_certificate(client, settings.clone(), certs.clone()));
    while !certs.is_loaded() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if injector.clusters.wait_until_ready().await.is_err() {
        tracing::error!("the RealtimeCluster cache stopped before it was filled");
    }
    tracing::info!(addr = %settings.listen, "sidecar injection webhook serving");
    health.set_webhook_ready();
    server::serve(listener, certs, injector).await;
    Ok(())
}

/// Polls the Secret (every replica; cheap, and needs no watch permission on Secrets in the
/// operator's namespace beyond `get`) and swaps the certificate in when it changes.
async fn reload_certificate(client: Client, settings: WebhookSettings, certs: Arc<CertResolver>) {
    let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
    let mut loaded_version = None;
    let mut warned = false;
    loop {
        match api.get_opt(&settings.secret).await {
            Ok(Some(secret)) if secret.resource_version() != loaded_version => {
                match certs::serving_pair(&secret)
                    .map_err(|e| e.to_string())
                    .and_then(|(cert, key)| certs.load(&cert, &key))
                {
                    Ok(()) => {
                        tracing::info!(secret = %settings.secret, "webhook certificate loaded");
                        loaded_version = secret.resource_version();
                    }
                    Err(e) => {
                        tracing::warn!(secret = %settings.secret, error = %e, "cannot use the webhook certificate")
                    }
                }
            }
            Ok(Some(_)) => {}
            Ok(None) if !warned => {
                warned = true;
                tracing::info!(secret = %settings.secret, namespace = %settings.namespace, "waiting for the webhook certificate Secret (the leader issues it{})",
                    if settings.cert_manager { "; here cert-manager does" } else { "" });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the webhook certificate Secret"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Leader only: issues or renews the certificate and keeps the caBundle current, checking every
/// minute. With cert-manager it does nothing.
pub async fn keep_certificates(client: Client, settings: WebhookSettings) {
    if settings.cert_manager {
        return;
    }
    loop {
        if let Err(e) = keep_once(&client, &settings).await {
            tracing::warn!(error = %e, "keeping the webhook certificate failed; retrying");
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

async fn keep_once(client: &Client, settings: &WebhookSettings) -> Result<(), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &settings.namespace);
    let existing = secrets.get_opt(&settings.secret).await?;
    let plan = match certs::plan(existing.as_ref(), &settings.names(), Timestamp::now()) {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!(error = %e, "cannot issue the webhook certificate");
            return Ok(());
        }
    };
    let ca = match plan {
        Plan::Keep => existing
            .as_ref()
            .and_then(|s| s.data.as_ref()?.get(certs::CA_CERT_KEY).cloned()),
        Plan::Write(material) => {
            let ca = ByteString(material.ca_cert.clone().into_bytes());
            let (data, annotations) = material.into_secret_parts();
            let mut secret = existing.clone().unwrap_or_else(|| Secret {
                metadata: ObjectMeta {
                    name: Some(settings.secret.clone()),
                    namespace: Some(settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                ..Secret::default()
            });
            secret.data = Some(data);
            secret
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .extend(annotations);
            // Create, or replace at the version read: two leaders in a row cannot both write.
            if existing.is_some() {
                secrets
                    .replace(&settings.secret, &PostParams::default(), &secret)
                    .await?;
            } else {
                secrets.create(&PostParams::default(), &secret).await?;
            }
            tracing::info!(secret = %settings.secret, "issued the webhook serving certificate");
            Some(ca)
        }
    };
    if let Some(ca) = ca {
        ensure_ca_bundle(client, &settings.configuration, &ca).await?;
    }
    Ok(())
}

/// Sets `caBundle` on every webhook of the configuration that lacks it or has another.
async fn ensure_ca_bundle(client: &Client, name: &str, ca: &ByteString) -> Result<(), kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mut configuration) = api.get_opt(name).await? else {
        tracing::warn!(configuration = %name, "MutatingWebhookConfiguration not found: nothing calls the injector (the Helm chart and install.yaml create it)");
        return Ok(());
    };
    let mut changed = false;
    for webhook in configuration.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(ca) {
            webhook.client_config.ca_bundle = Some(ca.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &configuration)
            .await?;
        tracing::info!(configuration = %name, "updated the webhook caBundle");
    }
    Ok(())
}
