//! One reconcile of a RealtimeCluster: `validate -> build -> apply -> update_status`.
//!
//! [`reconcile`] only times, logs and counts; [`Reconciler`] holds the stages. The pure stages are
//! in [`validate`](super::validate) and the builders; this file is the thin I/O around them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use tracing::Instrument;

use super::context::Context;
use super::meta::FIELD_MANAGER;
use super::status::{self, Observed};
use super::{apply, backplane, ingress, observe, sidecar_config, validate};
use crate::api::{RealtimeCluster, RealtimeClusterStatus};
use crate::error::{Error, Result};

/// Re-check a ready cluster this often even without events: drift the watches cannot see.
const RESYNC_READY: Duration = Duration::from_secs(300);
/// Re-check a cluster that is not ready yet this often.
const RESYNC_PENDING: Duration = Duration::from_secs(30);

pub async fn reconcile(rtc: Arc<RealtimeCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let span = tracing::info_span!(
        "reconcile",
        namespace = %rtc.namespace().unwrap_or_default(),
        name = %rtc.name_any(),
        generation = rtc.metadata.generation.unwrap_or_default(),
    );
    let result = Reconciler {
        rtc,
        ctx: ctx.clone(),
    }
    .run()
    .instrument(span)
    .await;
    if let Err(e) = &result {
        ctx.metrics.reconcile_failed(e.metric_label());
    }
    result
}

/// An invalid spec waits for the user to change it; everything else is retried soon.
pub fn error_policy(rtc: Arc<RealtimeCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
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
    ctx: Arc<Context>,
}

impl Reconciler {
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
        let (backplane, config_hash) = self.apply_backplane().await?;
        let ingress = self.apply_ingress().await?;
        let pods = observe::selected_pods(&self.ctx.client, &self.rtc).await?;
        let observed = Observed {
            backplane,
            ingress,
            pods: observe::pod_counts(&pods),
            selector: observe::selector_text(&self.rtc),
            uninjected: observe::uninjected(&pods),
            outdated: config_hash
                .map(|hash| observe::outdated(&pods, &hash))
                .unwrap_or_default(),
        };
        let status = status::status(
            self.rtc.metadata.generation,
            &observed,
            self.rtc.status.as_ref(),
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

    /// The Redis objects (managed) or the external URL (external), and the sidecar ConfigMap,
    /// whose content hash it returns when it could write one.
    async fn apply_backplane(&self) -> Result<(status::Backplane, Option<String>)> {
        let client = &self.ctx.client;
        let rtc = &*self.rtc;
        let (observed, upstream) = match &rtc.spec.backplane.external {
            None => {
                self.ensure_password_secret().await?;
                let (mut shards, mut sets, mut services, mut budgets) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for shard in backplane::shards(rtc) {
                    apply::apply(client, &shard.headless_service).await?;
                    apply::apply(client, &shard.service).await?;
                    let set = apply::apply(client, &shard.stateful_set).await?;
                    apply::apply(client, &shard.disruption_budget).await?;
                    shards.push(observe::shard_readiness(&set));
                    sets.push(set.name_any());
                    services.extend([shard.service.name_any(), shard.headless_service.name_any()]);
                    budgets.push(shard.disruption_budget.name_any());
                }
                apply::prune::<StatefulSet>(client, rtc, &sets).await?;
                apply::prune::<PodDisruptionBudget>(client, rtc, &budgets).await?;
                self.prune_services(services).await?;
                (
                    status::Backplane::Managed(shards),
                    backplane::upstream_url(rtc),
                )
            }
            Some(external) => {
                apply::prune::<StatefulSet>(client, rtc, &[]).await?;
                apply::prune::<PodDisruptionBudget>(client, rtc, &[]).await?;
                apply::prune::<Secret>(client, rtc, &[]).await?;
                self.prune_services(Vec::new()).await?;
                let reference = &external.url_secret_ref;
                let namespace = rtc.namespace().unwrap_or_default();
                let secret = observe::secret(client, &namespace, &reference.name).await?;
                match secret.map(|s| observe::secret_value(&s, &reference.key)) {
                    None => (
                        status::Backplane::SecretMissing {
                            secret: reference.name.clone(),
                        },
                        None,
                    ),
                    Some(None) => (
                        status::Backplane::SecretKeyMissing {
                            secret: reference.name.clone(),
                            key: reference.key.clone(),
                        },
                        None,
                    ),
                    Some(Some(url)) => match validate::external_url(rtc, &url) {
                        Ok(redacted) => (
                            status::Backplane::External {
                                url: redacted.clone(),
                            },
                            Some(redacted),
                        ),
                        Err(e) => (status::Backplane::InvalidUrl(e.to_string()), None),
                    },
                }
            }
        };
        // Without a usable upstream the existing ConfigMap stays as it is: pods started meanwhile
        // keep the last good configuration instead of none.
        let Some(upstream) = upstream else {
            return Ok((observed, None));
        };
        let config_map = sidecar_config::config_map(rtc, &upstream);
        apply::apply(client, &config_map).await?;
        apply::prune::<ConfigMap>(client, rtc, &[config_map.name_any()]).await?;
        Ok((observed, Some(sidecar_config::config_hash(&config_map))))
    }

    /// Services are pruned once, with the backplane's and the app's names together.
    async fn prune_services(&self, mut keep: Vec<String>) -> Result<()> {
        if self.rtc.spec.ingress.is_some() {
            keep.push(ingress::app_service_name(&self.rtc));
        }
        apply::prune::<Service>(&self.ctx.client, &self.rtc, &keep).await
    }

    /// The Redis password Secret, created once with a random password and never rewritten, so a
    /// reconcile never rotates the password under running Redis servers and sidecars.
    async fn ensure_password_secret(&self) -> Result<()> {
        let rtc = &*self.rtc;
        let name = backplane::password_secret_name(rtc);
        let api: Api<Secret> = Api::namespaced(
            self.ctx.client.clone(),
            &rtc.namespace().unwrap_or_default(),
        );
        if api
            .get_metadata_opt(&name)
            .await
            .map_err(Error::kube(format!("reading Secret {name}")))?
            .is_some()
        {
            return Ok(());
        }
        let password: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        match api
            .create(
                &PostParams::default(),
                &backplane::password_secret(rtc, &password),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(secret = %name, "generated the Redis password");
                Ok(())
            }
            // Another writer (a previous leader) created it between the read and the create.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(Error::Kube {
                action: format!("creating Secret {name}"),
                source: e,
            }),
        }
    }

    /// The app Service and the route to it: an Ingress, or a Gateway API HTTPRoute.
    async fn apply_ingress(&self) -> Result<status::Ingress> {
        let client = &self.ctx.client;
        let rtc = &*self.rtc;
        let Some(service) = ingress::app_service(rtc) else {
            apply::prune::<Ingress>(client, rtc, &[]).await?;
            self.apply_route(None).await?;
            return Ok(status::Ingress::NotRequested);
        };
        apply::apply(client, &service).await?;
        if let Some(route) = ingress::http_route(rtc) {
            apply::prune::<Ingress>(client, rtc, &[]).await?;
            return self.apply_route(Some(route)).await;
        }
        self.apply_route(None).await?;
        let built = ingress::ingress(rtc).expect("an Ingress when spec.ingress has no gateway");
        let applied = apply::apply(client, &built).await?;
        apply::prune::<Ingress>(client, rtc, &[applied.name_any()]).await?;
        Ok(status::Ingress::Applied {
            kind: "Ingress",
            name: applied.name_any(),
            address: observe::ingress_address(&applied),
            waiting: match applied
                .spec
                .as_ref()
                .and_then(|s| s.ingress_class_name.as_deref())
            {
                Some(class) => format!(
                    "no address published; is an ingress controller for class {class} running?"
                ),
                None => "no address published; is there a default IngressClass and its controller?"
                    .into(),
            },
        })
    }

    /// Applies `route` (or only prunes, with `None`). The Gateway API is optional in a cluster:
    /// when its CRDs are absent the API server answers 404, which is "nothing to prune", or, when
    /// a route is wanted, a condition telling the user to install them.
    async fn apply_route(&self, route: Option<DynamicObject>) -> Result<status::Ingress> {
        let rtc = &*self.rtc;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.ctx.client.clone(),
            &rtc.namespace().unwrap_or_default(),
            &ingress::http_route_resource(),
        );
        let keep: Vec<String> = route.iter().map(ResourceExt::name_any).collect();
        let Some(route) = route else {
            return match apply::prune_in(&api, "HTTPRoute", rtc, &keep).await {
                Err(Error::Kube {
                    source: kube::Error::Api(s),
                    ..
                }) if s.code == 404 => Ok(status::Ingress::NotRequested),
                other => other.map(|()| status::Ingress::NotRequested),
            };
        };
        let name = route.name_any();
        let applied = match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&route),
            )
            .await
        {
            Ok(applied) => applied,
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Ok(status::Ingress::GatewayApiMissing);
            }
            // Server-side apply refuses fields the CRD's schema lacks (instead of pruning them as
            // a create would): the standard-channel CRDs have no sessionPersistence. A route
            // without it would not pin clients, so none is applied.
            Err(kube::Error::Api(s))
                if s.message.contains("sessionPersistence")
                    && s.message.contains("not declared in schema") =>
            {
                return Ok(status::Ingress::SessionPersistenceUnsupported { name });
            }
            Err(e) => {
                return Err(Error::Kube {
                    action: format!("applying HTTPRoute {name}"),
                    source: e,
                });
            }
        };
        apply::prune_in(&api, "HTTPRoute", rtc, &keep).await?;
        Ok(status::Ingress::Applied {
            kind: "HTTPRoute",
            name,
            address: observe::route_acceptance(&applied),
            waiting: format!(
                "no parent Gateway has accepted it; is the Gateway's controller running, and does its listener allow routes from namespace {}?",
                rtc.namespace().unwrap_or_default()
            ),
        })
    }

    /// Writes `status` through the status subresource and records an Event per transition.
    async fn update_status(&self, status: RealtimeClusterStatus) -> Result<()> {
        let rtc = &*self.rtc;
        let name = rtc.name_any();
        let api: Api<RealtimeCluster> = Api::namespaced(
            self.ctx.client.clone(),
            &rtc.namespace().unwrap_or_default(),
        );
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
            if let Err(e) = self
                .ctx
                .recorder
                .publish(&event, &rtc.object_ref(&()))
                .await
            {
                tracing::warn!(error = %e, "could not record an Event");
            }
        }
        Ok(())
    }
}
