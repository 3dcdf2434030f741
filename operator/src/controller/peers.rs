//! The NetworkPolicy of session routing: only the app's own pods reach the sidecars' peer port.
//!
//! With `affinity: session-routing` each sidecar's front takes the ingress's requests on one port
//! ([`FRONT_PORT`]) and the sessions other pods forward to it on another ([`FRONT_PEER_PORT`]):
//! a forwarded request is steered into a session, so besides the fleet's secret the peer port is
//! kept off-limits to everyone but the fleet. A NetworkPolicy cannot deny one port and leave the
//! rest as they were: the pods it selects become isolated for ingress, admitting only what some
//! policy allows. So this one admits, from anywhere, what the pods serve that the operator knows
//! of (the app's port, the front, the sidecar's probes and metrics), and the peer port from the
//! fleet's pods alone: those `spec.selector` matches (the app Service's pods) and those labelled
//! [`CLUSTER_LABEL`] with the cluster's name. Admitting every other port from anywhere would
//! have kept other ports open, but it would also open them in a namespace whose default-deny
//! policy closed them; a port the operator does not know of needs the user's own policy.
//! Enforcement is the CNI's: without a NetworkPolicy-enforcing plugin the object is inert, and
//! the secret alone guards the peer port.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::meta::{child_meta, labels};
use crate::api::RealtimeCluster;
use crate::names::{CLUSTER_LABEL, FRONT_PEER_PORT, FRONT_PORT, HTTP_PORT};

/// `<name>-front-peers`.
pub fn name(rtc: &RealtimeCluster) -> String {
    format!("{}-front-peers", rtc.name_any())
}

/// The NetworkPolicy guarding the peer port, or `None` (no session routing, or
/// `spec.ingress.networkPolicy: false`). `validate` has checked the selector is labels only.
pub fn network_policy(rtc: &RealtimeCluster) -> Option<NetworkPolicy> {
    if !rtc.spec.peer_network_policy() {
        return None;
    }
    let app = LabelSelector {
        match_labels: rtc.spec.selector.match_labels.clone(),
        ..LabelSelector::default()
    };
    let labelled = LabelSelector {
        match_labels: Some(BTreeMap::from([(CLUSTER_LABEL.to_owned(), rtc.name_any())])),
        ..LabelSelector::default()
    };
    // The app's port and its workers' (a probe may name either), the front, the sidecar's own.
    let mut public: Vec<i32> = rtc.spec.app_port().into_iter().collect();
    for port in rtc
        .spec
        .app_ports()
        .into_iter()
        .chain([FRONT_PORT, HTTP_PORT])
    {
        if !public.contains(&port) {
            public.push(port);
        }
    }
    let public = public.into_iter().map(tcp).collect();
    Some(NetworkPolicy {
        metadata: child_meta(
            rtc,
            name(rtc),
            labels(rtc, "socket-server", "network-policy"),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(app.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                // No `from`: any source.
                NetworkPolicyIngressRule {
                    ports: Some(public),
                    from: None,
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(FRONT_PEER_PORT)]),
                    from: Some(
                        [app, labelled]
                            .into_iter()
                            .map(|selector| NetworkPolicyPeer {
                                pod_selector: Some(selector),
                                ..NetworkPolicyPeer::default()
                            })
                            .collect(),
                    ),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    })
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}
