//! The sidecar's configuration: read once at start from flags or `SWITCHBOARD_*` variables.
//!
//! This parser is also the contract with the operator, which renders these flags and variables into
//! the injected container; a test parses the operator's output with [`Config::parse_from_env_and_args`]
//! so the two halves cannot drift.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Exit code for a configuration error (BSD `EX_USAGE`), as the house style asks.
pub const EXIT_USAGE: i32 = 64;

/// Most app workers the front spreads sessions over (`--front-app`).
pub const MAX_FRONT_APPS: usize = 64;

/// Bridges an application's Redis adapter to a shared pub/sub backplane.
///
/// With no upstream URL the sidecar runs embedded: it is itself a pub/sub broker for the processes
/// that share its loopback (one pod), which is enough to run a single replica with no Redis at all.
#[derive(Debug, Clone, Parser)]
#[command(name = "switchboard-sidecar", version, about, long_about = None)]
pub struct Config {
    /// Where the application connects (RESP2/RESP3). Keep it on loopback: the pod's own containers
    /// are the only intended clients.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:6379")]
    pub listen: SocketAddr,

    /// Health (`/healthz`, `/readyz`) and Prometheus metrics (`/metrics`). In a pod the operator sets
    /// this to `0.0.0.0:<port>` so the kubelet's probes and Prometheus can reach it.
    #[arg(
        long,
        env = "SWITCHBOARD_HTTP_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub http_listen: SocketAddr,

    /// The HTTP front (preview): where it listens for the app's HTTP traffic, which it passes
    /// to `--front-app`, sending each Engine.IO session's requests to the pod that owns the
    /// session, so no sticky sessions are needed. Unset: no front.
    #[arg(long, env = "SWITCHBOARD_FRONT_LISTEN")]
    pub front_listen: Option<SocketAddr>,

    /// A second port of the front that takes only requests other pods' fronts forward, so a
    /// NetworkPolicy can admit the fleet's pods alone to it while the ingress reaches
    /// `--front-listen`; with it, `--front-listen` refuses forwarded requests. Unset: one port
    /// takes both (each forwarded request still needs the fleet's secret).
    #[arg(long, env = "SWITCHBOARD_FRONT_PEER_LISTEN")]
    pub front_peer_listen: Option<SocketAddr>,

    /// Where the app serves HTTP, on this pod's loopback. Several addresses, comma-separated:
    /// an app that runs one worker process per port; the front spreads new sessions over them
    /// in turn and sends each session's requests to the worker that opened it.
    #[arg(
        long,
        env = "SWITCHBOARD_FRONT_APP",
        default_value = "127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub front_app: Vec<SocketAddr>,

    /// The address the other pods' fronts reach this one at (the pod IP and the front's peer
    /// port, or its one port); defaults to `--front-peer-listen` (else `--front-listen`) when
    /// that is not a wildcard address.
    #[arg(long, env = "SWITCHBOARD_FRONT_ADVERTISE")]
    pub front_advertise: Option<SocketAddr>,

    /// The Engine.IO path the front routes by session (`/ws/socket.io/` for Open WebUI).
    #[arg(long, env = "SWITCHBOARD_FRONT_PATH", default_value = "/socket.io/")]
    pub front_path: String,

    /// A file holding the fleet's secret (at least 16 printable characters) that requests one
    /// front forwards to another carry; required with a backplane.
    #[arg(long, env = "SWITCHBOARD_FRONT_SECRET_FILE")]
    pub front_secret_file: Option<std::path::PathBuf>,

    /// How long a session's owner record lives in the backplane without renewal (renewed a
    /// third of the way while the session lives), in milliseconds.
    #[arg(long, env = "SWITCHBOARD_SESSION_TTL_MS", default_value_t = 30_000)]
    pub session_ttl_ms: u64,

    /// Most sessions this front records at once; beyond it new sessions still open but are not
    /// recorded (their requests reach only pods that saw the handshake), so a handshake flood
    /// cannot grow memory or the backplane without limit.
    #[arg(
        long,
        env = "SWITCHBOARD_FRONT_MAX_SESSIONS",
        default_value_t = 100_000
    )]
    pub front_max_sessions: usize,

    /// At shutdown, how long the front lets requests in flight finish (other pods' long-polls
    /// pass through it; one ends within the app's ping interval) before it cuts them. Keep it
    /// below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "SWITCHBOARD_FRONT_DRAIN_SECONDS", default_value_t = 25)]
    pub front_drain_seconds: u64,

    /// The shared backplane, one URL per shard in shard order (repeat the flag; in the variable,
    /// separate them with spaces): `redis://[user:password@]host:port[/db]` or
    /// `redis+sentinel://[user@]host:26379,host:26379/<master>[/<db>]`; `rediss://` and
    /// `rediss+sentinel://` for TLS (to the Sentinels too). Absent: embedded mode.
    #[arg(
        long = "upstream",
        env = "SWITCHBOARD_UPSTREAM_URL",
        value_delimiter = ' '
    )]
    pub upstreams: Vec<String>,

    /// Password for the backplane (every shard's Redis and its Sentinels); replaces any password
    /// in the URL, so the URL can live in a ConfigMap and this in a Secret. Never logged.
    #[arg(long, env = "SWITCHBOARD_UPSTREAM_PASSWORD", hide_env_values = true)]
    pub upstream_password: Option<Secret>,

    /// PEM file of CA certificates trusted for the backplane's TLS, in addition to the system's.
    #[arg(long, env = "SWITCHBOARD_UPSTREAM_TLS_CA_FILE")]
    pub upstream_tls_ca_file: Option<std::path::PathBuf>,

    /// PEM client certificate (chain) for mutual TLS with the backplane; with
    /// --upstream-tls-key-file.
    #[arg(long, env = "SWITCHBOARD_UPSTREAM_TLS_CERT_FILE")]
    pub upstream_tls_cert_file: Option<std::path::PathBuf>,

    /// PEM private key of --upstream-tls-cert-file.
    #[arg(long, env = "SWITCHBOARD_UPSTREAM_TLS_KEY_FILE")]
    pub upstream_tls_key_file: Option<std::path::PathBuf>,

    /// The name every backplane server's certificate is checked against (and sent as SNI),
    /// instead of the host connected to: for servers (a primary found through Sentinel, by IP)
    /// that share a certificate issued for one name.
    #[arg(long, env = "SWITCHBOARD_UPSTREAM_TLS_SERVER_NAME")]
    pub upstream_tls_server_name: Option<String>,

    /// Accept any certificate from the backplane (the traffic is encrypted, the server is not
    /// authenticated). For tests only.
    #[arg(long, env = "SWITCHBOARD_UPSTREAM_TLS_INSECURE_SKIP_VERIFY")]
    pub upstream_tls_insecure_skip_verify: bool,

    /// Password local clients must send with AUTH or HELLO. Absent: no local authentication
    /// (the listener is loopback-only).
    #[arg(long, env = "SWITCHBOARD_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,

    /// Prepended to every channel and pattern on the backplane, so clusters can share one Redis
    /// without hearing each other. Applications never see it.
    #[arg(long, env = "SWITCHBOARD_CHANNEL_PREFIX", default_value = "")]
    pub channel_prefix: String,

    /// This sidecar's name in the fleet registry (defaults to the host name plus a random suffix).
    #[arg(long, env = "SWITCHBOARD_SIDECAR_ID")]
    pub sidecar_id: Option<String>,

    /// Publishes held while the backplane is unreachable, in bytes; beyond it publishes are dropped,
    /// counted and logged.
    #[arg(long, env = "SWITCHBOARD_PUBLISH_BUFFER_BYTES", default_value_t = 8 << 20)]
    pub publish_buffer_bytes: usize,

    /// Publishes held while the backplane is unreachable, in messages.
    #[arg(
        long,
        env = "SWITCHBOARD_PUBLISH_BUFFER_MESSAGES",
        default_value_t = 10_000
    )]
    pub publish_buffer_messages: usize,

    /// Bytes queued for one local connection before pub/sub messages to it are dropped (counted and
    /// logged); replies to its own commands are never dropped, its reads are paused instead.
    #[arg(long, env = "SWITCHBOARD_CLIENT_BUFFER_BYTES", default_value_t = 32 << 20)]
    pub client_buffer_bytes: usize,

    /// Largest bulk string accepted in a command (a published payload, a key's value).
    #[arg(long, env = "SWITCHBOARD_MAX_BULK_BYTES", default_value_t = 64 << 20)]
    pub max_bulk_bytes: usize,

    /// Most arguments accepted in one command.
    #[arg(long, env = "SWITCHBOARD_MAX_ARGS", default_value_t = 1 << 20)]
    pub max_args: usize,

    /// Pooled pass-through links per protocol (RESP2 and RESP3 apart) to the backplane's first
    /// shard, shared by every local connection for commands that hold no connection state
    /// (1 to 256). Transactions, WATCH, blocking commands, another database or user take a
    /// dedicated link for as long as that state lasts.
    #[arg(long, env = "SWITCHBOARD_PASSTHROUGH_POOL_SIZE", default_value_t = 4)]
    pub passthrough_pool_size: usize,

    /// Pass-through commands one local connection may have unanswered; beyond it the sidecar
    /// stops reading from that connection until replies arrive (1 to 65536).
    #[arg(long, env = "SWITCHBOARD_MAX_IN_FLIGHT", default_value_t = 128)]
    pub max_in_flight: usize,

    /// How long a pass-through command waits for the backplane to be reachable (a failover, a
    /// restart) before it is answered with an error instead; 0: answer at once. Commands the
    /// link was carrying when it died are answered at once either way (they may have run).
    #[arg(
        long,
        env = "SWITCHBOARD_PASSTHROUGH_WAIT_MS",
        default_value_t = 10_000
    )]
    pub passthrough_wait_ms: u64,

    /// On a Redis Cluster backplane, also publish every channel message to the all-messages
    /// channel of this sidecar's copy shard, which serves PSUBSCRIBE. Turn off for apps that
    /// use no patterns (python-socketio, the sharded and streams socket.io adapters): a publish
    /// then costs the cluster one command instead of two, and PSUBSCRIBE is refused. Every
    /// sidecar of a fleet must agree.
    #[arg(
        long,
        env = "SWITCHBOARD_CLUSTER_PATTERN_COPIES",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub cluster_pattern_copies: bool,

    /// Most local connections at once; further ones are told so and closed.
    #[arg(long, env = "SWITCHBOARD_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,

    /// First reconnect delay after the backplane is lost, in milliseconds (doubles, with jitter).
    #[arg(long, env = "SWITCHBOARD_RECONNECT_MIN_MS", default_value_t = 50)]
    pub reconnect_min_ms: u64,

    /// Longest reconnect delay, in milliseconds.
    #[arg(long, env = "SWITCHBOARD_RECONNECT_MAX_MS", default_value_t = 2_000)]
    pub reconnect_max_ms: u64,

    /// How often this sidecar renews its entry in the fleet registry and pings the backplane.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_MS", default_value_t = 2_000)]
    pub heartbeat_ms: u64,

    /// How long a registry entry outlives its last renewal; a sidecar that died stops being
    /// counted after this.
    #[arg(long, env = "SWITCHBOARD_PEER_TTL_MS", default_value_t = 10_000)]
    pub peer_ttl_ms: u64,

    /// After a reconnect, how long to wait for the other sidecars to resubscribe before flushing
    /// the publishes buffered during the outage (so they hear them too).
    #[arg(long, env = "SWITCHBOARD_FLUSH_GRACE_MS", default_value_t = 5_000)]
    pub flush_grace_ms: u64,

    /// Subscriptions the app's Redis adapter holds while it listens (channel, pattern or shard
    /// channel name prefixes; repeat the flag, or separate them with spaces in the variable). Once
    /// the app has held one, holding none for longer than --listening-grace-seconds makes
    /// `/readyz` answer 503 (see `listening`). Absent: no check.
    #[arg(
        long = "expect-subscription",
        env = "SWITCHBOARD_EXPECT_SUBSCRIPTION",
        value_delimiter = ' '
    )]
    pub expect_subscriptions: Vec<String>,

    /// How long the app may hold none of the expected subscriptions before it counts as no longer
    /// listening (an adapter resubscribing after a reconnect takes a moment).
    #[arg(
        long,
        env = "SWITCHBOARD_LISTENING_GRACE_SECONDS",
        default_value_t = 30
    )]
    pub listening_grace_seconds: u64,

    /// Log format: `text` for people, `json` for log pipelines. Filter with `RUST_LOG`.
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A credential: parsed like a string, never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl Config {
    /// Parses flags and the process environment; prints the problem and exits 64 on a bad value.
    pub fn from_process() -> Self {
        match Self::try_parse() {
            Ok(config) => config.validated().unwrap_or_else(|msg| {
                eprintln!("switchboard-sidecar: {msg}");
                std::process::exit(EXIT_USAGE)
            }),
            Err(e) if e.use_stderr() => {
                let _ = e.print();
                std::process::exit(EXIT_USAGE)
            }
            Err(e) => e.exit(),
        }
    }

    /// Parses the given arguments (the first is the program name) and, for unset flags, the
    /// process environment. Used by tests that check what the operator renders.
    pub fn parse_from_env_and_args<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .validated()
    }

    /// Cross-field checks clap cannot express; the message names the flag and variable.
    fn validated(mut self) -> Result<Self, String> {
        if let Some(bad) = self.channel_prefix.chars().find(|c| "*?[]\\".contains(*c)) {
            return Err(format!(
                "--channel-prefix (SWITCHBOARD_CHANNEL_PREFIX) must not contain glob characters; found {bad:?}"
            ));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(format!(
                "--reconnect-min-ms ({}) must be at least 1 and at most --reconnect-max-ms ({})",
                self.reconnect_min_ms, self.reconnect_max_ms
            ));
        }
        if self.heartbeat_ms == 0 || self.peer_ttl_ms < 2 * self.heartbeat_ms {
            return Err(format!(
                "--peer-ttl-ms ({}) must be at least twice --heartbeat-ms ({}), or one late heartbeat drops a live sidecar from the counts",
                self.peer_ttl_ms, self.heartbeat_ms
            ));
        }
        if self.max_bulk_bytes < 1024 {
            return Err(format!(
                "--max-bulk-bytes ({}) is below 1024; clients could not even authenticate",
                self.max_bulk_bytes
            ));
        }
        if !(1..=256).contains(&self.passthrough_pool_size) {
            return Err(format!(
                "--passthrough-pool-size (SWITCHBOARD_PASSTHROUGH_POOL_SIZE) must be 1 to 256, not {}",
                self.passthrough_pool_size
            ));
        }
        if !(1..=65536).contains(&self.max_in_flight) {
            return Err(format!(
                "--max-in-flight (SWITCHBOARD_MAX_IN_FLIGHT) must be 1 to 65536, not {}",
                self.max_in_flight
            ));
        }
        if self.listening_grace_seconds == 0 {
            return Err(
                "--listening-grace-seconds (SWITCHBOARD_LISTENING_GRACE_SECONDS) must be at least 1; an adapter needs a moment to resubscribe after a reconnect"
                    .into(),
            );
        }
        let given = !self.upstreams.is_empty();
        // Any run of whitespace separates URLs: several spaces, or the newline a Secret's value
        // often ends with (`echo url > file`), must not become part of a URL.
        self.upstreams = self
            .upstreams
            .iter()
            .flat_map(|u| u.split_whitespace())
            .map(str::to_owned)
            .collect();
        if given && self.upstreams.is_empty() {
            return Err(
                "--upstream (SWITCHBOARD_UPSTREAM_URL) is set but empty; unset it to run embedded"
                    .into(),
            );
        }
        let mut secure = false;
        for url in &self.upstreams {
            let endpoint = crate::upstream::Endpoint::parse(url)
                .map_err(|e| format!("--upstream (SWITCHBOARD_UPSTREAM_URL): {e}"))?;
            secure |= endpoint.secure;
        }
        if self.tls_options().any() && !secure {
            return Err(
                "--upstream-tls-* settings are given but no --upstream (SWITCHBOARD_UPSTREAM_URL) uses TLS: write rediss:// or rediss+sentinel://"
                    .into(),
            );
        }
        // The files themselves are read at start (`Tls::new`), which names any that is wrong.
        if self.upstream_tls_cert_file.is_some() != self.upstream_tls_key_file.is_some() {
            return Err(
                "--upstream-tls-cert-file and --upstream-tls-key-file go together: give both for mutual TLS, or neither"
                    .into(),
            );
        }
        self.validate_front()?;
        Ok(self)
    }

    /// The address other pods forward this front's sessions to, the value of its session
    /// records: `--front-advertise`, else the peer port, else the one port (`None` when the
    /// front is off).
    pub fn front_advertise(&self) -> Option<SocketAddr> {
        self.front_advertise
            .or(self.front_peer_listen)
            .or(self.front_listen)
    }

    /// The HTTP front's settings (the secret file is read at start, which names what is wrong).
    fn validate_front(&self) -> Result<(), String> {
        let Some(listen) = self.front_listen else {
            if let Some(peer) = self.front_peer_listen {
                return Err(format!(
                    "--front-peer-listen ({peer}) is the HTTP front's second port: give --front-listen too"
                ));
            }
            return Ok(());
        };
        if let Some(advertise) = self.front_advertise()
            && advertise.ip().is_unspecified()
        {
            let flag = match (self.front_advertise, self.front_peer_listen) {
                (Some(_), _) => "--front-advertise",
                (None, Some(_)) => "--front-peer-listen",
                (None, None) => "--front-listen",
            };
            return Err(format!(
                "{flag} ({advertise}) is a wildcard address: give --front-advertise (SWITCHBOARD_FRONT_ADVERTISE), the pod IP and port other pods reach this front at"
            ));
        }
        if let Some(peer) = self.front_peer_listen {
            if peer.port() == listen.port() {
                return Err(format!(
                    "--front-peer-listen ({peer}) needs a port of its own, not --front-listen's ({listen})"
                ));
            }
            if let Some(advertise) = self.front_advertise
                && advertise.port() != peer.port()
            {
                return Err(format!(
                    "--front-advertise ({advertise}) must name the peer port of --front-peer-listen ({peer}): other pods forward there"
                ));
            }
        }
        if self.front_app.len() > MAX_FRONT_APPS {
            return Err(format!(
                "--front-app (SWITCHBOARD_FRONT_APP) names {} workers, more than {MAX_FRONT_APPS}",
                self.front_app.len()
            ));
        }
        for (i, app) in self.front_app.iter().enumerate() {
            if self.front_app[..i].contains(app) {
                return Err(format!(
                    "--front-app (SWITCHBOARD_FRONT_APP) names {app} twice: each worker needs a port of its own"
                ));
            }
        }
        if !self.front_path.starts_with('/') || !self.front_path.ends_with('/') {
            return Err(format!(
                "--front-path (SWITCHBOARD_FRONT_PATH) must start and end with '/', like /socket.io/; not {:?}",
                self.front_path
            ));
        }
        if self.session_ttl_ms < 3000 {
            return Err(format!(
                "--session-ttl-ms (SWITCHBOARD_SESSION_TTL_MS) must be at least 3000, not {}: owners renew a third of the way",
                self.session_ttl_ms
            ));
        }
        if self.front_max_sessions == 0 {
            return Err(
                "--front-max-sessions (SWITCHBOARD_FRONT_MAX_SESSIONS) must be at least 1".into(),
            );
        }
        if !self.upstreams.is_empty() && self.front_secret_file.is_none() {
            return Err(
                "--front-listen with a backplane needs --front-secret-file (SWITCHBOARD_FRONT_SECRET_FILE): pods forward sessions to each other only with the fleet's secret"
                    .into(),
            );
        }
        Ok(())
    }

    /// The backplane's TLS settings (`--upstream-tls-*`).
    pub fn tls_options(&self) -> crate::upstream::TlsOptions {
        crate::upstream::TlsOptions {
            ca_file: self.upstream_tls_ca_file.clone(),
            cert_file: self.upstream_tls_cert_file.clone(),
            key_file: self.upstream_tls_key_file.clone(),
            server_name: self.upstream_tls_server_name.clone(),
            insecure_skip_verify: self.upstream_tls_insecure_skip_verify,
        }
    }

    /// The listening check's expectation (`--expect-subscription`, `--listening-grace-seconds`).
    pub fn listening(&self) -> crate::listening::Expectation {
        crate::listening::Expectation {
            prefixes: self
                .expect_subscriptions
                .iter()
                .flat_map(|p| p.split_whitespace())
                .map(str::to_owned)
                .collect(),
            grace: Duration::from_secs(self.listening_grace_seconds),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn peer_ttl(&self) -> Duration {
        Duration::from_millis(self.peer_ttl_ms)
    }
    pub fn flush_grace(&self) -> Duration {
        Duration::from_millis(self.flush_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_password_is_read_but_never_printed() {
        let config = Config::parse_from_env_and_args([
            "switchboard-sidecar",
            "--upstream=redis://h:6379",
            "--upstream-password=s3cret",
        ])
        .unwrap();
        assert_eq!(
            config.upstream_password.as_ref().map(Secret::expose),
            Some("s3cret")
        );
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn shards_are_space_separated_urls_in_order() {
        let config = Config::parse_from_env_and_args([
            "switchboard-sidecar",
            "--upstream=redis://a:6379  redis+sentinel://s1,s2/b",
            "--upstream=redis://c:6379\n",
        ])
        .unwrap();
        assert_eq!(
            config.upstreams,
            [
                "redis://a:6379",
                "redis+sentinel://s1,s2/b",
                "redis://c:6379"
            ]
        );
        let err =
            Config::parse_from_env_and_args(["switchboard-sidecar", "--upstream= "]).unwrap_err();
        assert!(err.contains("SWITCHBOARD_UPSTREAM_URL"), "{err}");
        let err = Config::parse_from_env_and_args([
            "switchboard-sidecar",
            "--upstream=redis://a:6379 redis+sentinel://nomaster",
        ])
        .unwrap_err();
        assert!(err.contains("name the master"), "{err}");
    }

    #[test]
    fn passthrough_limits_are_checked() {
        let config = Config::parse_from_env_and_args([
            "switchboard-sidecar",
            "--passthrough-pool-size=2",
            "--max-in-flight=16",
        ])
        .unwrap();
        assert_eq!(
            (config.passthrough_pool_size, config.max_in_flight),
            (2, 16)
        );
        for (flag, env) in [
            (
                "--passthrough-pool-size=0",
                "SWITCHBOARD_PASSTHROUGH_POOL_SIZE",
            ),
            (
                "--passthrough-pool-size=1000",
                "SWITCHBOARD_PASSTHROUGH_POOL_SIZE",
            ),
            ("--max-in-flight=0", "SWITCHBOARD_MAX_IN_FLIGHT"),
        ] {
            let err = Config::parse_from_env_and_args(["switchboard-sidecar", flag]).unwrap_err();
            assert!(err.contains(env), "{flag}: {err}");
        }
    }
}
