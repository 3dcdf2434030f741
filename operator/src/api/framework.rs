//! Framework presets: what each supported socket server needs to be pointed at the sidecar.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The socket server's framework.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Framework {
    /// python-socketio with `AsyncRedisManager` / `RedisManager`.
    PythonSocketio,
    /// Flask-SocketIO with a `redis://` `message_queue`.
    FlaskSocketio,
    /// Node socket.io with `@socket.io/redis-adapter` (classic, sharded or streams).
    SocketioNode,
    /// Open WebUI (`WEBSOCKET_MANAGER=redis`).
    OpenWebui,
    /// Dify's API server: its Socket.IO `RedisManager` (workflow collaboration) on `PUBSUB_REDIS_URL`.
    Dify,
    /// Anything else that speaks Redis pub/sub; set `app.port` yourself.
    Generic,
}

/// What a framework needs when the spec leaves it unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preset {
    /// The port its examples and images listen on; `None` when there is no convention.
    pub port: Option<i32>,
    /// Variables the app reads its Redis URL from; the injector points each at the sidecar.
    pub redis_url_env: &'static [&'static str],
    /// Variables the app needs to use Redis at all (set only where the pod does not set them).
    pub required_env: &'static [(&'static str, &'static str)],
    /// Name prefixes of the subscriptions (channels, patterns, shard channels) the framework's
    /// adapter holds for as long as it listens: read from each adapter's source.
    pub listening: &'static [&'static str],
    /// Where its Engine.IO server answers (the sidecar's front routes that path by session).
    pub engineio_path: &'static str,
}

impl Framework {
    pub fn preset(self) -> Preset {
        match self {
            // python-socketio's (Async)RedisManager subscribes to its channel, `socketio` unless
            // the app names another.
            Framework::PythonSocketio => Preset {
                port: Some(5000),
                redis_url_env: &["REDIS_URL"],
                required_env: &[],
                listening: &["socketio"],
                engineio_path: "/socket.io/",
            },
            // Flask-SocketIO's `SocketIO(message_queue=...)` defaults its channel to `flask-socketio`.
            Framework::FlaskSocketio => Preset {
                port: Some(5000),
                redis_url_env: &["REDIS_URL"],
                required_env: &[],
                listening: &["flask-socketio"],
                engineio_path: "/socket.io/",
            },
            // @socket.io/redis-adapter: `PSUBSCRIBE socket.io#/#*` plus `socket.io-request#/#` and
            // `socket.io-response#...` (classic), or `SSUBSCRIBE socket.io#/#...` (sharded): all
            // under its key, `socket.io` by default.
            Framework::SocketioNode => Preset {
                port: Some(3000),
                redis_url_env: &["REDIS_URL"],
                required_env: &[],
                listening: &["socket.io"],
                engineio_path: "/socket.io/",
            },
            // Open WebUI reads its socket backplane from WEBSOCKET_REDIS_URL and its app state
            // (sessions, locks, models) from REDIS_URL; both go through the sidecar.
            Framework::OpenWebui => Preset {
                port: Some(8080),
                redis_url_env: &["REDIS_URL", "WEBSOCKET_REDIS_URL"],
                required_env: &[
                    ("ENABLE_WEBSOCKET_SUPPORT", "true"),
                    ("WEBSOCKET_MANAGER", "redis"),
                ],
                // Its `AsyncRedisManager(WEBSOCKET_REDIS_URL)` keeps python-socketio's channel.
                listening: &["socketio"],
                engineio_path: "/ws/socket.io/",
            },
            // Dify's `extensions/ext_socketio.py` builds `socketio.RedisManager` on
            // `dify_config.normalized_pubsub_redis_url`: `PUBSUB_REDIS_URL` (or its alias
            // `EVENT_BUS_REDIS_URL`, which pydantic reads first), falling back to the `REDIS_*`
            // settings the cache and the Celery broker use. Only the pub/sub URL goes through the
            // sidecar; `REDIS_HOST`/`CELERY_BROKER_URL` keep pointing at Dify's own Redis. The
            // channel is `socketio`, behind `REDIS_KEY_PREFIX:` when that is set. The API
            // listens on 5001.
            Framework::Dify => Preset {
                port: Some(5001),
                redis_url_env: &["PUBSUB_REDIS_URL", "EVENT_BUS_REDIS_URL"],
                // The sidecar is one Redis, not a Redis Cluster.
                required_env: &[("PUBSUB_REDIS_USE_CLUSTERS", "false")],
                listening: &["socketio"],
                engineio_path: "/socket.io/",
            },
            // Nothing is known about what a generic app subscribes to: no listening check unless
            // `spec.app.listening` names it.
            Framework::Generic => Preset {
                port: None,
                redis_url_env: &["REDIS_URL"],
                required_env: &[],
                listening: &[],
                engineio_path: "/socket.io/",
            },
        }
    }
}

/// How to reach the application container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct App {
    /// The port the socket server listens on. Default: the framework's preset (5000, 3000 or 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Environment variables the sidecar's URL (`redis://127.0.0.1:6379`) is written to.
    /// Default: the framework's preset (`REDIS_URL`, plus `WEBSOCKET_REDIS_URL` for open-webui;
    /// `PUBSUB_REDIS_URL` and `EVENT_BUS_REDIS_URL` for dify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 16),
        inner(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))
    )]
    pub redis_url_env: Option<Vec<String>>,

    /// The "app stopped listening" check: which subscriptions the app's Redis adapter holds while
    /// it can hear broadcasts, and how long it may hold none before its pod is reported.
    /// Default: the framework's preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening: Option<Listening>,

    /// The path the app's Engine.IO server answers, which the sidecars route by session with
    /// `spec.ingress.affinity: session-routing`. Default: the framework's preset
    /// (`/ws/socket.io/` for open-webui, `/socket.io/` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && self.endsWith('/')").message("spec.app.engineioPath must start and end with /, like /socket.io/"))]
    pub engineio_path: Option<String>,

    /// The ports of the app's worker processes, when it runs several in each pod, each on a
    /// port of its own (python-socketio or Flask-SocketIO as one process per port, a Node
    /// cluster without sticky balancing). The sidecar's front spreads new sessions over them in
    /// turn and sends each session's requests to the worker that opened it. Only with
    /// `spec.ingress.affinity: session-routing`. Default: `spec.app.port` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(range(min = 1, max = 65535)))]
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q == p))").message("spec.app.workerPorts must not name a port twice: each worker needs a port of its own"))]
    pub worker_ports: Option<Vec<i32>>,
}

/// What a listening app holds, and for how long its absence is tolerated. The sidecar checks it
/// only after it has seen the app hold one of these subscriptions once (since the sidecar
/// started), so a pure emitter (python-socketio `write_only`, a worker that only publishes)
/// never trips it; after that, when the app's connections hold none of them for longer than
/// `graceSeconds`, the sidecar's `/readyz` answers 503 naming the reason, and the pod is named in
/// the status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listening {
    /// Name prefixes of channels, patterns or shard channels (`socketio`, `socket.io`). Empty:
    /// no check. Default: the framework's preset (`generic` has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 16),
        inner(length(min = 1, max = 256), regex(pattern = r"^\S+$"))
    )]
    pub subscriptions: Option<Vec<String>>,

    /// Seconds without any of them before the pod is reported (an adapter resubscribing after a
    /// reconnect takes a moment). Default 30.
    #[serde(default = "default_grace_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub grace_seconds: i64,
}

fn default_grace_seconds() -> i64 {
    30
}
