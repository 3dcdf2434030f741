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
}

impl Framework {
    pub fn preset(self) -> Preset {
        match self {
            Framework::PythonSocketio | Framework::FlaskSocketio => Preset {
                port: Some(5000),
                redis_url_env: &["REDIS_URL"],
                required_env: &[],
            },
            Framework::SocketioNode => Preset {
                port: Some(3000),
                redis_url_env: &["REDIS_URL"],
                required_env: &[],
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
            },
            Framework::Generic => Preset {
                port: None,
                redis_url_env: &["REDIS_URL"],
                required_env: &[],
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
    /// Default: the framework's preset (`REDIS_URL`, plus `WEBSOCKET_REDIS_URL` for open-webui).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 16),
        inner(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))
    )]
    pub redis_url_env: Option<Vec<String>>,
}
