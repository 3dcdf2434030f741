//! What every reconcile shares: the client, the Event recorder and the metrics ([`Context`], also
//! used by the webhook), and the running Controller's caches ([`Shared`]).

use std::sync::Arc;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::metrics::Metrics;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// `instance` names this replica in the Events it writes (the pod name in a cluster).
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: String) -> Self {
        let reporter = Reporter {
            controller: crate::controller::FIELD_MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
        }
    }
}

/// What the reconciles of one running Controller share besides the [`Context`]: its caches of the
/// owned children and pods, the HTTPRoutes it last confirmed, and what it last applied.
pub struct Shared {
    pub context: Arc<Context>,
    pub stores: super::apply::Stores,
    pub routes: super::apply::RoutesSeen,
    pub sent: super::apply::SentChildren,
}
