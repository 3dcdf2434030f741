//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one runs the controller and writes.
//!
//! The algorithm is client-go's `leaderelection`: a candidate takes the Lease when nobody holds it
//! or when its record has not changed for `leaseDurationSeconds` *as timed by this process's own
//! clock* (so clock skew between nodes does not matter); the leader renews every retry period and
//! gives up if it could not renew within the renew deadline, which is shorter than the lease
//! duration, so it has stopped writing before anyone else may take over. Every write carries the
//! `resourceVersion` it read, so two candidates racing for the same Lease cannot both win: the API
//! server refuses the second with a conflict.
//!
//! `kube-leader-election` does the same job but targets kube 4 (this workspace is on kube 5) and
//! writes without a resourceVersion precondition, which is what the conflict check above needs.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

/// Where the Lease is and how it is timed.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// This replica's name in `holderIdentity` (the pod name in a cluster).
    pub identity: String,
    /// How long a silent holder keeps the Lease.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down; below `lease_duration`.
    pub renew_deadline: Duration,
    /// How often candidates retry and the leader renews.
    pub retry_period: Duration,
}

pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The Lease's resourceVersion as last seen, and when this process saw it change.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Waits until this replica holds the Lease. Errors from the API server are logged and
    /// retried: a candidate has nothing better to do.
    pub async fn acquire(&mut self) {
        let mut last_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "became the leader");
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.settings.name, %holder, "standing by: another replica leads");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.settings.name, error = %e, "could not read or take the leader Lease; retrying")
                }
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Renews the Lease every retry period; returns when leadership is lost: another replica
    /// took the Lease, or renewing kept failing for the renew deadline.
    pub async fn hold(&mut self) -> LostLeadership {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let attempt =
                tokio::time::timeout(self.settings.renew_deadline, self.try_acquire_or_renew())
                    .await;
            match attempt {
                Ok(Ok(Attempt::Leading)) => last_renewed = Instant::now(),
                Ok(Ok(Attempt::HeldBy(holder))) => return LostLeadership::TakenBy(holder),
                Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader Lease failed"),
                Err(_) => tracing::warn!("renewing the leader Lease timed out"),
            }
            if last_renewed.elapsed() >= self.settings.renew_deadline {
                return LostLeadership::RenewDeadline(self.settings.renew_deadline);
            }
        }
    }

    /// Hands the Lease back so a standby takes over at once instead of after the lease duration.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(&self.settings.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.settings.name, "released the leader Lease"),
            Err(e) => {
                tracing::warn!(error = %e, "could not release the leader Lease; a standby takes over when it expires")
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leading),
                Err(e) if is_conflict(&e) => Ok(Attempt::HeldBy("(another candidate)".into())),
                Err(e) => Err(e),
            };
        };

        let version = lease.resource_version().unwrap_or_default();
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != version);
        if changed {
            self.observed = Some((version, Instant::now()));
        }
        let seen_at = self
            .observed
            .as_ref()
            .map_or_else(Instant::now, |(_, at)| *at);

        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(&self.settings.identity);
        if let Some(holder) = &holder {
            let duration =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            if !ours && seen_at.elapsed() < duration {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.settings.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.duration_seconds());
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a
        // conflict rather than a second leader.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observed = Some((
                    written.resource_version().unwrap_or_default(),
                    Instant::now(),
                ));
                Ok(Attempt::Leading)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::HeldBy(
                holder.unwrap_or_else(|| "(another candidate)".into()),
            )),
            Err(e) => Err(e),
        }
    }

    fn duration_seconds(&self) -> i32 {
        self.settings
            .lease_duration
            .as_secs()
            .clamp(1, i32::MAX as u64) as i32
    }
}

enum Attempt {
    Leading,
    HeldBy(String),
}

/// Why this replica stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum LostLeadership {
    #[error("the leader Lease was taken by {0}")]
    TakenBy(String),
    #[error("could not renew the leader Lease within the renew deadline ({0:?})")]
    RenewDeadline(Duration),
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}
