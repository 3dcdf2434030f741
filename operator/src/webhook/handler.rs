//! The admission handler: reads the namespace's RealtimeClusters from a local cache, lets
//! [`mutate`](super::mutate::mutate) decide, answers, and reports the decision as an Event on the
//! pod's owner and in the metrics. It always allows the pod: a webhook that denied pods would turn
//! an operator outage into an application outage.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod};
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use super::mutate::{Decision, InjectSettings, SkipReason, mutate, select};
use crate::api::RealtimeCluster;
use crate::controller::sidecar_config;
use crate::metrics::Metrics;

/// How long the handler waits for the API server when its cache has no cluster for a pod; well
/// inside the webhook's own timeout, so a slow API server costs a pod its sidecar, not its start.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Injector {
    pub client: Client,
    pub clusters: Store<RealtimeCluster>,
    pub recorder: Recorder,
    pub settings: InjectSettings,
    pub metrics: Arc<Metrics>,
}

impl Injector {
    pub async fn review(&self, review: AdmissionReview<Pod>) -> AdmissionReview<DynamicObject> {
        let request: AdmissionRequest<Pod> = match review.try_into() {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "malformed AdmissionReview");
                return AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}"))
                    .into_review();
            }
        };
        let response = AdmissionResponse::from(&request);
        let (Some(pod), Some(namespace)) = (&request.object, &request.namespace) else {
            return response.into_review();
        };
        let mut clusters = self.clusters.state();
        // The cache trails the API server by a watch event: a pod created right after its
        // RealtimeCluster (`kubectl apply -k` sends both at once) can reach a replica that has not
        // seen the cluster yet, and would go in without its sidecar, silently (seen on the real
        // node: one pod of three). So a miss is confirmed against the API server before the pod
        // goes in unselected: one namespaced LIST per pod that no cached cluster selects.
        if matches!(
            select(pod, namespace, &clusters),
            Ok(None) | Err(SkipReason::UnknownCluster(_))
        ) && let Some(listed) = self.clusters_from_api(namespace).await
        {
            clusters = listed;
        }
        // The pod carries the hash of the configuration it starts with, so a pod left on an
        // older one can be named after the ConfigMap changes.
        let config_hash = match select(pod, namespace, &clusters) {
            Ok(Some(rtc)) => self.config_hash(namespace, &rtc.name_any()).await,
            _ => None,
        };
        let decision = mutate(
            pod,
            namespace,
            &clusters,
            &self.settings,
            config_hash.as_deref(),
        );
        let owner = owner_reference(pod, namespace);
        match decision {
            Decision::NotSelected => response.into_review(),
            // The API server calls again after other webhooks mutate (reinvocation), and finds
            // the sidecar this webhook added: nothing to report.
            Decision::Skip {
                reason: SkipReason::AlreadyInjected,
                ..
            } => response.into_review(),
            Decision::Skip { cluster, reason } => {
                self.metrics.injection("skipped", reason.reason());
                tracing::info!(%namespace, owner = ?owner.name, ?reason, "sidecar not injected");
                if !request.dry_run {
                    self.event(owner, skip_event(cluster.as_deref(), &reason));
                }
                response.into_review()
            }
            Decision::Inject { cluster, patch } => match response.clone().with_patch(patch) {
                Ok(patched) => {
                    self.metrics.injection("injected", "");
                    tracing::info!(%namespace, owner = ?owner.name, %cluster, "sidecar injected");
                    if !request.dry_run {
                        self.event(
                            owner,
                            Event {
                                type_: EventType::Normal,
                                reason: "SidecarInjected".into(),
                                note: Some(format!(
                                    "switchboard sidecar injected for RealtimeCluster {cluster}"
                                )),
                                action: "Inject".into(),
                                secondary: None,
                            },
                        );
                    }
                    patched.into_review()
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not serialize the injection patch");
                    self.metrics.injection("failed", "patch");
                    response.into_review()
                }
            },
        }
    }

    /// The namespace's RealtimeClusters as the API server has them now; `None` (and a warning:
    /// the cache decides then) when it cannot answer within [`API_TIMEOUT`].
    async fn clusters_from_api(&self, namespace: &str) -> Option<Vec<Arc<RealtimeCluster>>> {
        let api: Api<RealtimeCluster> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(API_TIMEOUT, api.list(&ListParams::default())).await {
            Ok(Ok(list)) => Some(list.items.into_iter().map(Arc::new).collect()),
            Ok(Err(e)) => {
                tracing::warn!(%namespace, error = %e, "cannot list RealtimeClusters; deciding from the cache");
                None
            }
            Err(_) => {
                tracing::warn!(%namespace, timeout = ?API_TIMEOUT, "listing RealtimeClusters timed out; deciding from the cache");
                None
            }
        }
    }

    async fn config_hash(&self, namespace: &str, cluster: &str) -> Option<String> {
        let name = format!("{cluster}-sidecar");
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(&name).await {
            Ok(found) => found.map(|cm| sidecar_config::config_hash(&cm)),
            Err(e) => {
                tracing::warn!(%namespace, configmap = %name, error = %e, "cannot read the sidecar ConfigMap; injecting without its hash");
                None
            }
        }
    }

    /// Records `event` without holding up the admission answer.
    fn event(&self, reference: ObjectReference, event: Event) {
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not record an injection Event");
            }
        });
    }
}

fn skip_event(cluster: Option<&str>, reason: &SkipReason) -> Event {
    // Skips that need the user's attention are warnings; asked-for ones are not.
    let type_ = match reason {
        SkipReason::OptedOut | SkipReason::AlreadyInjected | SkipReason::OperatorNamespace => {
            EventType::Normal
        }
        _ => EventType::Warning,
    };
    let for_cluster = cluster.map_or(String::new(), |c| format!(" (RealtimeCluster {c})"));
    Event {
        type_,
        reason: "SidecarSkipped".into(),
        note: Some(format!("{reason}{for_cluster}")),
        action: "Inject".into(),
        secondary: None,
    }
}

/// The object an Event about a new pod goes to: its controller (a ReplicaSet, a StatefulSet…),
/// since the pod has no name yet when it comes from `generateName`; a bare pod is its own.
fn owner_reference(pod: &Pod, namespace: &str) -> ObjectReference {
    match pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .or(pod.owner_references().first())
    {
        Some(owner) => ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            uid: Some(owner.uid.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        },
        None => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod
                .metadata
                .name
                .clone()
                .or_else(|| pod.metadata.generate_name.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        },
    }
}
