//! The Ingress in front of the socket server, with session affinity, and the Service it routes to.
//!
//! Engine.IO long-polling fails (`400 Session ID unknown`) when a session's requests reach another
//! pod, so each client is pinned by a cookie; WebSockets stay open for hours, so the proxy's idle
//! timeouts are raised to `spec.ingress.timeoutSeconds`. Nothing is built when `spec.ingress` is
//! absent. Only `className: nginx` gets annotations; any other class gets a plain Ingress (and
//! `validate` makes sure that class was not asked for affinity).
//!
//! TODO(issue 4): Traefik (sticky-cookie annotations on the Service) and the Gateway API (an
//! HTTPRoute with `sessionPersistence`). Until then `validate` refuses cookie affinity on any class
//! but `nginx`, rather than create an Ingress that silently does not pin clients.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{child_meta, labels};
use crate::api::{Affinity, RealtimeCluster};

const NGINX: &str = "nginx.ingress.kubernetes.io";
const DEFAULT_COOKIE_NAME: &str = "sb-route";
const DEFAULT_COOKIE_MAX_AGE: i32 = 172_800;

/// Name of the Service (and Ingress) in front of the app's pods.
pub fn app_service_name(rtc: &RealtimeCluster) -> String {
    format!("{}-app", rtc.name_any())
}

/// The Service the Ingress routes to: the app's port on the pods `spec.selector` matches
/// (`validate` has checked the selector is labels only and the port is known).
pub fn app_service(rtc: &RealtimeCluster) -> Option<Service> {
    rtc.spec.ingress.as_ref()?;
    let port = rtc.spec.app_port()?;
    Some(Service {
        metadata: child_meta(
            rtc,
            app_service_name(rtc),
            labels(rtc, "socket-server", "app"),
        ),
        spec: Some(ServiceSpec {
            selector: rtc.spec.selector.match_labels.clone(),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                target_port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The Ingress `spec.ingress` asks for, or `None`.
pub fn ingress(rtc: &RealtimeCluster) -> Option<Ingress> {
    let spec = rtc.spec.ingress.as_ref()?;
    let port = rtc.spec.app_port()?;
    let mut meta = child_meta(
        rtc,
        app_service_name(rtc),
        labels(rtc, "socket-server", "ingress"),
    );
    if spec.class_name.as_deref() == Some("nginx") {
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

fn nginx_annotations(spec: &crate::api::Ingress) -> BTreeMap<String, String> {
    let timeout = spec.timeout_seconds.to_string();
    let mut annotations = BTreeMap::from([
        (format!("{NGINX}/proxy-read-timeout"), timeout.clone()),
        (format!("{NGINX}/proxy-send-timeout"), timeout),
    ]);
    if spec.affinity == Affinity::Cookie {
        let (name, max_age) = spec
            .cookie
            .as_ref()
            .map_or((DEFAULT_COOKIE_NAME, DEFAULT_COOKIE_MAX_AGE), |c| {
                (c.name.as_str(), c.max_age_seconds)
            });
        annotations.extend([
            (format!("{NGINX}/affinity"), "cookie".to_owned()),
            // `balanced` re-pins clients when pods scale, which breaks open long-polling sessions.
            (format!("{NGINX}/affinity-mode"), "persistent".to_owned()),
            (format!("{NGINX}/session-cookie-name"), name.to_owned()),
            (
                format!("{NGINX}/session-cookie-max-age"),
                max_age.to_string(),
            ),
            (format!("{NGINX}/session-cookie-path"), spec.path.clone()),
            // Lax: sent on the page's own requests and the WebSocket upgrade, not on cross-site ones.
            (format!("{NGINX}/session-cookie-samesite"), "Lax".to_owned()),
        ]);
    }
    annotations
}
