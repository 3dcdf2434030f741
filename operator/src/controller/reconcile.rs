//! One reconcile of a RealtimeCluster: `validate -> build -> apply -> observe -> update_status`.
//!
//! [`reconcile`] only times, logs and counts; [`Reconciler`] runs the stages. The pure ones are
//! [`validate`](super::validate), [`build`](super::build), [`observe`](super::observe) and
//! [`status`](super::status); this file is the thin I/O between them: the reads of the Secrets
//! the user names (an external backplane's URL, a brought TLS certificate), the [`Applier`], and the status write with its Events. Pods and owned
//! children come from the Controller's caches, and the applier skips patches that cannot change
//! anything, so a reconcile that finds everything in place and the status unchanged sends no
//! request at all (at most every [`RESYNC_READY`] it re-applies everything, see
//! [`apply`](super::apply)).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use tracing::Instrument;

use super::apply::Applier;
use super::context::Shared;
use super::{build, observe, status, validate};
use crate::api::{RealtimeCluster, RealtimeClusterStatus};
use crate::error::{Error, Result};
use crate::names::FIELD_MANAGER;

/// Re-check a ready cluster this often even without events: drift the watches cannot see.
const RESYNC_READY: Duration = Duration::from_secs(300);
/// Re-check a cluster that is not ready yet this often.
const RESYNC_PENDING: Duration = Duration::from_secs(30);

pub async fn reconcile(rtc: Arc<RealtimeCluster>, shared: Arc<Shared>) -> Result<Action> {
    let ctx = shared.context.clone();
    let _timer = ctx.metrics.reconcile_started();
    let span = tracing::info_span!(
        "reconcile",
        namespace = %rtc.namespace().unwrap_or_default(),
        name = %rtc.name_any(),
        generation = rtc.metadata.generation.unwrap_or_default(),
    );
    let result = Reconciler { rtc, shared }.run().instrument(span).await;
    if let Err(e) = &result {
        ctx.metrics.reconcile_failed(e.metric_label());
    }
    result
}

/// An invalid spec waits for the user to change it; everything else is retried soon.
pub fn error_policy(rtc: Arc<RealtimeCluster>, error: &Error, _shared: Arc<Shared>) -> Action {
    if error.awaits_change() {
        tracing::warn!(name = %rtc.name_any(), %error, "not reconciling until the spec changes");
        Action::await_change()
    } else {
        tracing::warn!(name = %rtc.name_any(), %error, "reconcile failed; retrying");
        Action::requeue(Duration::from_secs(5))
    }
}

struct Reconciler {
    rtc: Arc<RealtimeCluster>,
    shared: Arc<Shared>,
}

impl Reconciler {
    /// `validate -> (read the external Secret) -> build -> apply -> observe -> update_status`.
    async fn run(self) -> Result<Action> {
        if let Err(invalid) = validate::validate(&self.rtc) {
            let status = status::invalid(
                self.rtc.metadata.generation,
                invalid.to_string(),
                self.rtc.status.as_ref(),
                Timestamp::now(),
            );
            self.update_status(status).await?;
            return Err(invalid.into());
        }
        let shared = &*self.shared;
        shared.stores.ready().await;
        let rtc = &*self.rtc;
        let secret = self.external_secret().await?;
        let mut resolved = observe::resolve_backplane(rtc, secret.as_ref());
        let fingerprint = match self.brought_tls_secret().await? {
            None => None,
            Some(brought) => {
                match super::backplane_tls::check(rtc, brought.as_ref(), Timestamp::now()) {
                    Ok(fingerprint) => Some(fingerprint),
                    Err(problem) => {
                        resolved.tls_problem = Some(problem);
                        None
                    }
                }
            }
        };
        let issue = self.new_tls_material()?;
        let desired = build::build(
            rtc,
            resolved.upstream.as_deref(),
            &new_password(),
            &new_password(),
            build::TlsInputs {
                issue: issue.as_ref(),
                fingerprint: fingerprint.as_deref(),
            },
        );
        let applied = Applier {
            client: &shared.context.client,
            stores: &shared.stores,
            routes: &shared.routes,
            sent: &shared.sent,
            rtc,
        }
        .apply(&desired)
        .await?;
        let observed = observe::observe(rtc, &resolved, &applied, &shared.stores.pods.state());
        let status = status::status(
            rtc.metadata.generation,
            &observed,
            rtc.status.as_ref(),
            Timestamp::now(),
        );
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == status::READY && c.status == "True");
        self.update_status(status).await?;
        Ok(Action::requeue(if ready {
            RESYNC_READY
        } else {
            RESYNC_PENDING
        }))
    }

    /// The external backplane's Secret, read from the API (its data is not cached: the operator
    /// keeps only metadata of Secrets); `None` for a managed backplane or a missing Secret.
    async fn external_secret(&self) -> Result<Option<Secret>> {
        let Some(external) = &self.rtc.spec.backplane.external else {
            return Ok(None);
        };
        let name = &external.url_secret_ref.name;
        Api::<Secret>::namespaced(
            self.shared.context.client.clone(),
            &self.rtc.namespace().unwrap_or_default(),
        )
        .get_opt(name)
        .await
        .map_err(Error::kube(format!("reading Secret {name}")))
    }

    /// The TLS Secret the user brings for the managed backplane, read from the API like the
    /// external one: `None` when none is referenced, `Some(None)` when it does not exist.
    async fn brought_tls_secret(&self) -> Result<Option<Option<Secret>>> {
        let Some(name) = super::backplane_tls::referenced(&self.rtc) else {
            return Ok(None);
        };
        Api::<Secret>::namespaced(
            self.shared.context.client.clone(),
            &self.rtc.namespace().unwrap_or_default(),
        )
        .get_opt(name)
        .await
        .map(Some)
        .map_err(Error::kube(format!("reading Secret {name}")))
    }

    /// Writes `status` through the status subresource and records an Event per transition.
    /// A status equal to the one the RealtimeCluster already carries is not written: most
    /// reconciles are triggered by a child's own status moving, which changes nothing here.
    async fn update_status(&self, status: RealtimeClusterStatus) -> Result<()> {
        let rtc = &*self.rtc;
        if rtc.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let name = rtc.name_any();
        let ctx = &self.shared.context;
        let api: Api<RealtimeCluster> =
            Api::namespaced(ctx.client.clone(), &rtc.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": RealtimeCluster::api_version(&()),
            "kind": RealtimeCluster::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube(format!(
            "writing the status of RealtimeCluster {name}"
        )))?;
        for condition in status::transitions(rtc.status.as_ref(), &status) {
            let event = Event {
                type_: if condition.status == "True" {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: condition.reason.clone(),
                note: Some(format!(
                    "{}={}: {}",
                    condition.type_, condition.status, condition.message
                )),
                action: "Reconcile".into(),
                secondary: None,
            };
            // An Event is a courtesy; failing to write one must not fail the reconcile.
            if let Err(e) = ctx.recorder.publish(&event, &rtc.object_ref(&())).await {
                tracing::warn!(error = %e, "could not record an Event");
            }
        }
        Ok(())
    }
}

impl Reconciler {
    /// The managed backplane's TLS material when its Secret is not in the cache yet (issuing
    /// costs a few milliseconds, so it is not done on every reconcile).
    fn new_tls_material(&self) -> Result<Option<super::backplane_tls::Material>> {
        use super::backplane_tls;
        let rtc = &*self.rtc;
        if !backplane_tls::issued(rtc) {
            return Ok(None);
        }
        let name = backplane_tls::issued_secret_name(rtc);
        let namespace = rtc.namespace().unwrap_or_default();
        let cached = self
            .shared
            .stores
            .secrets
            .get(&kube::runtime::reflector::ObjectRef::new(&name).within(&namespace));
        if cached.is_some() {
            return Ok(None);
        }
        backplane_tls::issue(rtc, Timestamp::now())
            .map(Some)
            .map_err(|e| crate::error::Error::Certificate(e.to_string()))
    }
}

/// A password for the Redis password Secret (and the front's secret), used only if that Secret
/// does not exist yet. Alphanumeric: it ends up in a `redis://` URL and in a `$(VAR)`-expanded
/// argument (and the front's secret in an HTTP header).
fn new_password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}
