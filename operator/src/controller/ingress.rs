//! The route in front of the socket server, with session affinity, and the Service it routes to.
//!
//! Engine.IO long-polling fails (`400 Session ID unknown`) when a session's requests reach another
//! pod, so each client is pinned by a cookie; WebSockets stay open for hours, so idle timeouts are
//! raised where the proxy allows it. Nothing is built when `spec.ingress` is absent. Three ways to
//! pin, picked by the spec:
//! - `className: nginx`: ingress-nginx annotations on the Ingress (cookie and proxy timeouts).
//! - `className: traefik`: Traefik's sticky-cookie annotations on the app Service (Traefik reads
//!   stickiness from the Service, not the Ingress) and a plain Ingress.
//! - `gateway`: a Gateway API HTTPRoute with `sessionPersistence`, and no Ingress.
//!
//! Any other class gets a plain Ingress, and `validate` makes sure it was not asked for affinity,
//! rather than create an Ingress that silently does not pin clients.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::meta::{child_meta, labels};
use crate::api::{Affinity, Cookie, RealtimeCluster};

/// The IngressClass names whose affinity annotations this module writes. Matched by name: an
/// IngressClass of another name is not assumed to be either controller.
pub const NGINX_CLASS: &str = "nginx";
pub const TRAEFIK_CLASS: &str = "traefik";

const NGINX: &str = "nginx.ingress.kubernetes.io";
const TRAEFIK_STICKY_COOKIE: &str = "traefik.ingress.kubernetes.io/service.sticky.cookie";

/// The Gateway API group and the HTTPRoute version built here (`v1`, standard channel).
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
pub const HTTP_ROUTE_VERSION: &str = "v1";
/// A Gateway API Duration is at most four `<1-5 digits><unit>` parts, so hours top out at 99999.
const MAX_GATEWAY_DURATION_SECONDS: i64 = 99_999 * 3600;

/// Name of the Service (and Ingress or HTTPRoute) in front of the app's pods.
pub fn app_service_name(rtc: &RealtimeCluster) -> String {
    format!("{}-app", rtc.name_any())
}

/// The Service the route leads to: the app's port on the pods `spec.selector` matches
/// (`validate` has checked the selector is labels only and the port is known). With
/// `className: traefik` and cookie affinity it carries Traefik's sticky-cookie annotations.
pub fn app_service(rtc: &RealtimeCluster) -> Option<Service> {
    let spec = rtc.spec.ingress.as_ref()?;
    let port = rtc.spec.app_port()?;
    let mut meta = child_meta(
        rtc,
        app_service_name(rtc),
        labels(rtc, "socket-server", "app"),
    );
    if spec.gateway.is_none()
        && spec.class_name.as_deref() == Some(TRAEFIK_CLASS)
        && spec.affinity == Affinity::Cookie
    {
        meta.annotations = Some(traefik_service_annotations(spec));
    }
    Some(Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            selector: rtc.spec.selector.match_labels.clone(),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                // With session routing the sidecar's front answers first and passes to the app.
                // By number: a native sidecar is an init container, whose named ports a Service
                // may not resolve.
                target_port: Some(IntOrString::Int(if rtc.spec.session_routing() {
                    crate::names::FRONT_PORT
                } else {
                    port
                })),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The Ingress `spec.ingress` asks for, or `None` (no `spec.ingress`, or `spec.ingress.gateway`,
/// which gets an [`http_route`] instead).
pub fn ingress(rtc: &RealtimeCluster) -> Option<Ingress> {
    let spec = rtc.spec.ingress.as_ref()?;
    if spec.gateway.is_some() {
        return None;
    }
    let port = rtc.spec.app_port()?;
    let mut meta = child_meta(
        rtc,
        app_service_name(rtc),
        labels(rtc, "socket-server", "ingress"),
    );
    if spec.class_name.as_deref() == Some(NGINX_CLASS) {
        meta.annotations = Some(nginx_annotations(spec));
    }
    Some(Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls.as_ref().map(|tls| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(tls.secret_name.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(spec.path.clone()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: app_service_name(rtc),
                                port: Some(ServiceBackendPort {
                                    number: Some(port),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// The HTTPRoute's API resource (k8s-openapi has no Gateway API types), for a dynamic `Api`.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        GATEWAY_API_GROUP,
        HTTP_ROUTE_VERSION,
        "HTTPRoute",
    ))
}

/// The HTTPRoute `spec.ingress.gateway` asks for, or `None`. One rule: a `PathPrefix` match on
/// `spec.ingress.path` for `spec.ingress.host`, to the app Service, with:
/// - `sessionPersistence` (type `Cookie`, `sessionName` = the cookie name, `absoluteTimeout` =
///   `maxAgeSeconds`) when affinity is `cookie`. It is an Extended feature from the Gateway API's
///   experimental channel (GEP-1619): with only the standard-channel CRDs installed the API
///   server prunes the field, and the route then does not pin (the caller can tell: the applied
///   object comes back without it). `cookieConfig` is left to its default, `lifetimeType:
///   Session`, the Core-supported lifetime; `absoluteTimeout` still bounds how long a pin holds.
/// - `timeouts.request: 0s`, no deadline: long-polling requests last up to the Engine.IO ping
///   interval (25 s) and WebSockets for hours, and some implementations default to a shorter
///   request timeout (Envoy's is 15 s). The Gateway API has no idle timeout, so
///   `spec.ingress.timeoutSeconds` has no equivalent here; set one with the implementation's own
///   policy (e.g. Envoy Gateway's BackendTrafficPolicy `timeout.http.streamIdleTimeout`).
pub fn http_route(rtc: &RealtimeCluster) -> Option<DynamicObject> {
    let spec = rtc.spec.ingress.as_ref()?;
    let gateway = spec.gateway.as_ref()?;
    let port = rtc.spec.app_port()?;
    let mut parent = json!({
        "group": GATEWAY_API_GROUP,
        "kind": "Gateway",
        "name": gateway.name,
    });
    if let Some(namespace) = &gateway.namespace {
        parent["namespace"] = json!(namespace);
    }
    if let Some(section) = &gateway.section_name {
        parent["sectionName"] = json!(section);
    }
    let mut rule = json!({
        "matches": [{ "path": { "type": "PathPrefix", "value": spec.path } }],
        "backendRefs": [{ "group": "", "kind": "Service", "name": app_service_name(rtc), "port": port }],
        "timeouts": { "request": "0s" },
    });
    if spec.affinity == Affinity::Cookie {
        let cookie = cookie(spec);
        rule["sessionPersistence"] = json!({
            "type": "Cookie",
            "sessionName": cookie.name,
            "absoluteTimeout": gateway_duration(cookie.max_age_seconds.into()),
        });
    }
    let mut route =
        DynamicObject::new(&app_service_name(rtc), &http_route_resource()).data(json!({
            "spec": {
                "parentRefs": [parent],
                "hostnames": [spec.host],
                "rules": [rule],
            }
        }));
    route.metadata = child_meta(
        rtc,
        app_service_name(rtc),
        labels(rtc, "socket-server", "ingress"),
    );
    Some(route)
}

/// Seconds as a Gateway API Duration (`^([0-9]{1,5}(h|m|s|ms)){1,4}$`): `172800` → `48h`,
/// `5400` → `1h30m`. Beyond 99999 h (11 years) it is capped, which no browser tells apart.
pub fn gateway_duration(seconds: i64) -> String {
    let seconds = seconds.clamp(0, MAX_GATEWAY_DURATION_SECONDS);
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            out.push_str(&format!("{value}{unit}"));
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// The affinity cookie `spec.ingress.cookie` asks for, or the default one.
fn cookie(spec: &crate::api::Ingress) -> Cookie {
    spec.cookie.clone().unwrap_or_default()
}

fn nginx_annotations(spec: &crate::api::Ingress) -> BTreeMap<String, String> {
    let timeout = spec.timeout_seconds.to_string();
    let mut annotations = BTreeMap::from([
        (format!("{NGINX}/proxy-read-timeout"), timeout.clone()),
        (format!("{NGINX}/proxy-send-timeout"), timeout),
    ]);
    if spec.affinity == Affinity::Cookie {
        let cookie = cookie(spec);
        annotations.extend([
            (format!("{NGINX}/affinity"), "cookie".to_owned()),
            // `balanced` re-pins clients when pods scale, which breaks open long-polling sessions.
            (format!("{NGINX}/affinity-mode"), "persistent".to_owned()),
            (format!("{NGINX}/session-cookie-name"), cookie.name.clone()),
            (
                format!("{NGINX}/session-cookie-max-age"),
                cookie.max_age_seconds.to_string(),
            ),
            (
                format!("{NGINX}/session-cookie-path"),
                cookie.path.clone().unwrap_or_else(|| spec.path.clone()),
            ),
            (
                format!("{NGINX}/session-cookie-samesite"),
                cookie.same_site().as_str().to_owned(),
            ),
        ]);
        if cookie.secure() {
            annotations.insert(format!("{NGINX}/session-cookie-secure"), "true".to_owned());
        }
    }
    annotations
}

/// Traefik's sticky-cookie annotations, read from the Service the Ingress routes to (the
/// `traefik.ingress.kubernetes.io/service.sticky.cookie*` keys of Traefik's Kubernetes Ingress
/// provider). Traefik has no per-Ingress or per-Service idle timeout annotation: timeouts are
/// entryPoint (`respondingTimeouts`) and ServersTransport (`forwardingTimeouts`) settings, so
/// `spec.ingress.timeoutSeconds` is not applied for `className: traefik`. The cookie path is
/// left to Traefik's default (`/`) unless `cookie.path` is set: `service.sticky.cookie.path`
/// exists only in recent Traefik versions, and an unknown key can fail the whole Service's
/// configuration in older ones.
fn traefik_service_annotations(spec: &crate::api::Ingress) -> BTreeMap<String, String> {
    let cookie = cookie(spec);
    let mut annotations = BTreeMap::from([
        (TRAEFIK_STICKY_COOKIE.to_owned(), "true".to_owned()),
        (format!("{TRAEFIK_STICKY_COOKIE}.name"), cookie.name.clone()),
        (
            format!("{TRAEFIK_STICKY_COOKIE}.samesite"),
            cookie.same_site().as_str().to_ascii_lowercase(),
        ),
        // Only the proxy reads it; scripts never need to.
        (
            format!("{TRAEFIK_STICKY_COOKIE}.httponly"),
            "true".to_owned(),
        ),
        (
            format!("{TRAEFIK_STICKY_COOKIE}.maxage"),
            cookie.max_age_seconds.to_string(),
        ),
    ]);
    if cookie.secure() {
        annotations.insert(format!("{TRAEFIK_STICKY_COOKIE}.secure"), "true".to_owned());
    }
    if let Some(path) = &cookie.path {
        annotations.insert(format!("{TRAEFIK_STICKY_COOKIE}.path"), path.clone());
    }
    annotations
}
