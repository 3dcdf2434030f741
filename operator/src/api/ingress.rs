//! The Ingress (or Gateway API HTTPRoute) in front of the socket server. Engine.IO long-polling
//! needs every request of a session to reach the pod that opened it, hence cookie affinity by
//! default.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.affinity == 'cookie' || !has(self.cookie)")
    .field_path(".cookie")
    .message("spec.ingress.cookie is only allowed with spec.ingress.affinity: cookie"))]
#[x_kube(validation = Rule::new("!has(self.gateway) || !has(self.className)")
    .field_path(".gateway")
    .message("spec.ingress.gateway and spec.ingress.className are mutually exclusive: set className for an Ingress, or gateway for a Gateway API HTTPRoute"))]
#[x_kube(validation = Rule::new("!has(self.gateway) || !has(self.cookie) || (!has(self.cookie.sameSite) && !has(self.cookie.secure) && !has(self.cookie.path))")
    .field_path(".cookie")
    .message("spec.ingress.cookie.sameSite, secure and path cannot be set with spec.ingress.gateway: the Gateway API's sessionPersistence has no cookie attributes (the implementation sets them); for cross-site clients use affinity: session-routing, which needs no cookie"))]
#[x_kube(validation = Rule::new("self.affinity == 'session-routing' || !has(self.networkPolicy)")
    .field_path(".networkPolicy")
    .message("spec.ingress.networkPolicy is only allowed with spec.ingress.affinity: session-routing (it guards the sidecars' peer port)"))]
#[x_kube(validation = Rule::new("!has(self.gateway) || !has(self.tls)")
    .field_path(".tls")
    .message("spec.ingress.tls is not used with spec.ingress.gateway: TLS is terminated by the Gateway's listener (set its certificateRefs there)"))]
pub struct Ingress {
    /// IngressClass to use. Default: the cluster's default class. Cookie affinity is built for
    /// `nginx` (ingress-nginx annotations on the Ingress) and `traefik` (sticky-cookie annotations
    /// on the Service); any other class gets a plain Ingress and needs `affinity: none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,

    /// Attach a Gateway API HTTPRoute to this Gateway instead of creating an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRef>,

    /// Host name clients connect to, e.g. `chat.example.com` (a leading `*.` is allowed).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(r"self.matches('^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')")
        .message("spec.ingress.host must be a lowercase DNS name such as chat.example.com"))]
    pub host: String,

    /// Path prefix routed to the app; socket.io serves under `/socket.io/` below it.
    #[serde(default = "default_path")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("spec.ingress.path must start with /"))]
    pub path: String,

    /// Serve HTTPS with this certificate (Ingress only; a Gateway terminates TLS at its listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngressTls>,

    /// How a client's requests reach the pod that holds its session: a cookie at the ingress
    /// (`cookie`), the sidecars routing by session id (`session-routing`), or nothing (`none`).
    #[serde(default)]
    pub affinity: Affinity,

    /// The affinity cookie (only with `affinity: cookie`). Default: `sb-route`, 48 hours,
    /// `SameSite=Lax`, the path of `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Cookie>,

    /// With `affinity: session-routing`, a NetworkPolicy `<name>-front-peers` that lets only the
    /// app's own pods reach the sidecars' peer port (9093), where they forward sessions to each
    /// other. It isolates the app's pods for ingress: it admits the app's port, the front (9092)
    /// and the sidecar's probes and metrics (9091) from anywhere; any other port the pods serve
    /// needs a NetworkPolicy of your own (policies add up), or `networkPolicy: false`. Default
    /// `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<bool>,

    /// Proxy read/send timeout: how long an idle WebSocket stays open through the Ingress.
    /// Applied with `className: nginx` only: Traefik sets idle timeouts per entryPoint
    /// (`respondingTimeouts`) and per ServersTransport, not per Ingress or Service, and the Gateway
    /// API has no idle timeout (the HTTPRoute gets `timeouts.request: 0s`, no deadline).
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// A cookie pins each client to one pod (needed for long-polling).
    #[default]
    Cookie,
    /// No affinity: only for WebSocket-only clients.
    None,
    /// No cookie: the sidecars route each Engine.IO session's requests to the pod that owns
    /// it (the app Service targets the sidecar's HTTP front). Works behind any load balancer
    /// and any ingress class or Gateway; preview.
    SessionRouting,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.sameSite) || self.sameSite != 'None' || !has(self.secure) || self.secure")
    .field_path(".secure")
    .message("spec.ingress.cookie.secure must be true with sameSite: None: browsers drop a SameSite=None cookie that is not Secure"))]
pub struct Cookie {
    #[serde(default = "default_cookie_name")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    #[serde(default = "default_cookie_max_age")]
    #[schemars(range(min = 1))]
    pub max_age_seconds: i32,

    /// The cookie's `SameSite`. Default `Lax`: sent with the page's own requests and its
    /// WebSocket upgrade. A client on another site (an app embedded in, or served from, another
    /// origin) needs `None`, which browsers accept only on a `Secure` cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,

    /// Send the cookie over HTTPS only. Default: `true` with `sameSite: None`, else `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<bool>,

    /// The cookie's `Path`. Default: `spec.ingress.path`. With `className: traefik` it is
    /// written only when set (the annotation needs Traefik v3.1 or later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/[^;\s]*$"))]
    pub path: Option<String>,
}

/// The cookie used when `spec.ingress.cookie` is left out: the same one the field's own
/// defaults give.
impl Default for Cookie {
    fn default() -> Self {
        Cookie {
            name: default_cookie_name(),
            max_age_seconds: default_cookie_max_age(),
            same_site: None,
            secure: None,
            path: None,
        }
    }
}

/// A cookie's `SameSite` attribute, spelled as in `Set-Cookie`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl Cookie {
    /// The `SameSite` it gets (`Lax` unless set).
    pub fn same_site(&self) -> SameSite {
        self.same_site.unwrap_or(SameSite::Lax)
    }

    /// Whether it is `Secure` (set, or implied by `SameSite=None`).
    pub fn secure(&self) -> bool {
        self.secure.unwrap_or(self.same_site() == SameSite::None)
    }
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// The Gateway an HTTPRoute attaches to (a Gateway API `parentRef`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Namespace of the Gateway. Default: the RealtimeCluster's. A Gateway in another namespace
    /// must admit routes from this one (its listener's `allowedRoutes.namespaces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,

    /// The Gateway listener to attach to, by name. Default: every listener that admits the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub section_name: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    /// The `kubernetes.io/tls` Secret holding the certificate for `host`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

fn default_path() -> String {
    "/".into()
}

fn default_timeout() -> i32 {
    3600
}

fn default_cookie_name() -> String {
    "sb-route".into()
}

fn default_cookie_max_age() -> i32 {
    172_800
}
