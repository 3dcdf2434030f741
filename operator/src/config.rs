//! The operator's configuration: read once at start from flags or environment variables; a bad
//! value names the flag and exits 64, as the sidecar does.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::leader::LeaseSettings;
use crate::webhook::run::WebhookSettings;

pub const EXIT_USAGE: i32 = 64;

/// Reconciles RealtimeClusters into a Redis backplane, ingress affinity and sidecar settings.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-operator", version, about, long_about = None)]
pub struct Config {
    /// Health (`/healthz`, `/readyz`) and Prometheus metrics (`/metrics`).
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_HTTP_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub http_listen: SocketAddr,

    /// Watch RealtimeClusters (and their pods) in this namespace only. Default: every namespace.
    #[arg(long, env = "SWITCHBOARD_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Name of the `coordination.k8s.io` Lease the replicas elect a leader on.
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_LEASE_NAME",
        default_value = "switchboard-operator"
    )]
    pub lease_name: String,

    /// Namespace of the Lease: the operator's own (the Helm chart sets it from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "switchboard-system")]
    pub lease_namespace: String,

    /// This replica's identity in the Lease and in Events. Default: the host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long a silent leader keeps the Lease before a standby may take it.
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_LEASE_DURATION_SECONDS",
        default_value_t = 15
    )]
    pub lease_duration_seconds: u64,

    /// How long the leader keeps failing to renew before it steps down (below the lease duration).
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_RENEW_DEADLINE_SECONDS",
        default_value_t = 10
    )]
    pub renew_deadline_seconds: u64,

    /// How often the leader renews and standbys retry (below the renew deadline).
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_RETRY_PERIOD_SECONDS",
        default_value_t = 2
    )]
    pub retry_period_seconds: u64,

    /// Where the sidecar injection webhook listens (HTTPS).
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub webhook_listen: SocketAddr,

    /// Run without the injection webhook (pods then need the sidecar added by hand).
    #[arg(long, env = "SWITCHBOARD_OPERATOR_DISABLE_WEBHOOK")]
    pub disable_webhook: bool,

    /// The Secret (in the operator's namespace) holding the webhook's certificate.
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_WEBHOOK_SECRET",
        default_value = "switchboard-webhook-tls"
    )]
    pub webhook_secret: String,

    /// The Service the API server calls the webhook through; its DNS names go in the certificate.
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_WEBHOOK_SERVICE",
        default_value = "switchboard-webhook"
    )]
    pub webhook_service: String,

    /// More names for the webhook certificate (repeatable), e.g. `localhost`.
    #[arg(
        long = "webhook-host",
        env = "SWITCHBOARD_OPERATOR_WEBHOOK_HOSTS",
        value_delimiter = ','
    )]
    pub webhook_hosts: Vec<String>,

    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_WEBHOOK_CONFIGURATION",
        default_value = "switchboard-sidecar-injector"
    )]
    pub webhook_configuration: String,

    /// cert-manager issues the webhook certificate and injects the caBundle; the operator only
    /// reads the Secret.
    #[arg(long, env = "SWITCHBOARD_OPERATOR_WEBHOOK_CERT_MANAGER")]
    pub webhook_cert_manager: bool,

    /// The sidecar image injected when a RealtimeCluster's `spec.sidecar.image` is unset.
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_SIDECAR_IMAGE",
        default_value = concat!("ghcr.io/switchboard-dev/switchboard-sidecar:", env!("CARGO_PKG_VERSION"))
    )]
    pub sidecar_image: String,

    /// RealtimeClusters reconciled at the same time; the rest wait in the queue (0: no bound). A
    /// burst (an install, a restart with a thousand clusters) then finishes clusters batch by
    /// batch instead of having every one of them wait on a saturated API server.
    #[arg(
        long,
        env = "SWITCHBOARD_OPERATOR_MAX_CONCURRENT_RECONCILES",
        default_value_t = 16
    )]
    pub max_concurrent_reconciles: u16,

    /// Log lines as `text` or `json`.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// Parses the process's flags and environment; exits 64 with a message naming the flag on a
    /// bad value.
    pub fn from_process() -> Self {
        let config = Self::parse();
        if let Err(message) = config.check() {
            eprintln!("switchboard-operator: {message}");
            std::process::exit(EXIT_USAGE);
        }
        config
    }

    fn check(&self) -> Result<(), String> {
        if self.retry_period_seconds == 0 {
            return Err("--retry-period-seconds must be at least 1".into());
        }
        if self.renew_deadline_seconds <= self.retry_period_seconds {
            return Err(format!(
                "--renew-deadline-seconds ({}) must exceed --retry-period-seconds ({}): the leader needs more than one try to renew",
                self.renew_deadline_seconds, self.retry_period_seconds
            ));
        }
        if self.lease_duration_seconds <= self.renew_deadline_seconds {
            return Err(format!(
                "--lease-duration-seconds ({}) must exceed --renew-deadline-seconds ({}): a leader must step down before a standby may take over",
                self.lease_duration_seconds, self.renew_deadline_seconds
            ));
        }
        Ok(())
    }

    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "switchboard-operator".into());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn webhook(&self) -> Option<WebhookSettings> {
        (!self.disable_webhook).then(|| WebhookSettings {
            listen: self.webhook_listen,
            namespace: self.lease_namespace.clone(),
            secret: self.webhook_secret.clone(),
            service: self.webhook_service.clone(),
            extra_names: self.webhook_hosts.clone(),
            configuration: self.webhook_configuration.clone(),
            cert_manager: self.webhook_cert_manager,
        })
    }

    pub fn lease(&self) -> LeaseSettings {
        LeaseSettings {
            name: self.lease_name.clone(),
            namespace: self.lease_namespace.clone(),
            identity: self.identity(),
            lease_duration: Duration::from_secs(self.lease_duration_seconds),
            renew_deadline: Duration::from_secs(self.renew_deadline_seconds),
            retry_period: Duration::from_secs(self.retry_period_seconds),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(), String> {
        let mut argv = vec!["switchboard-operator"];
        argv.extend(args);
        Config::try_parse_from(argv).unwrap().check()
    }

    #[test]
    fn defaults_are_consistent() {
        parse(&[]).unwrap();
    }

    #[test]
    fn lease_timings_must_nest() {
        let e = parse(&["--renew-deadline-seconds", "20"]).unwrap_err();
        assert!(e.contains("--lease-duration-seconds (15)"), "{e}");
        let e = parse(&["--retry-period-seconds", "10"]).unwrap_err();
        assert!(e.contains("--renew-deadline-seconds (10)"), "{e}");
    }
}
