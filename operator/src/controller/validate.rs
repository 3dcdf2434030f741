//! Checks the CRD schema and its CEL rules cannot express, run before anything is built.
//!
//! The API server already rejects most bad specs; what is left here depends on the object's
//! metadata (names that become Service names), on what this operator version implements, or on
//! data outside the spec (the external URL read from a Secret). Every message names the field and
//! says what to do, because it lands verbatim in the `Ready` condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::api::{Affinity, RealtimeCluster};

/// The longest RealtimeCluster name with a managed backplane. Its children are named
/// `<name>-redis-<shard>-headless` (Service names are DNS labels, at most 63 characters) and the
/// StatefulSet's pods get a `controller-revision-hash: <name>-redis-<shard>-<10 chars>` label
/// (label values are at most 63 too); 40 leaves room for both with shard numbers up to 31.
pub const MAX_MANAGED_NAME_LEN: usize = 40;

/// A spec this operator cannot build, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error("metadata.{0} is missing; the controller needs it to own the objects it creates")]
    MissingMetadata(&'static str),

    #[error(
        "metadata.name {name:?} must be a DNS label (lowercase letters, digits and '-', starting with a letter) of at most {max} characters with a managed backplane, because it prefixes the Redis Service names"
    )]
    NameUnfitForServices { name: String, max: usize },

    #[error(
        "spec.app.port is required: framework {framework} has no preset port, so there is nothing for the Ingress to route to"
    )]
    MissingAppPort { framework: String },

    #[error(
        "spec.selector must use matchLabels only when spec.ingress is set: the Service the Ingress routes to selects pods by labels and cannot express matchExpressions"
    )]
    SelectorNotServiceable,

    #[error(
        "spec.ingress.affinity: cookie is implemented for className: nginx only in this version (Traefik and the Gateway API are planned); set spec.ingress.className: nginx, or affinity: none for WebSocket-only clients"
    )]
    AffinityNeedsNginx,

    #[error(
        "spec.backplane.managed.replicas: {0} needs Redis Sentinel, which this operator version does not deploy yet; use replicas: 1"
    )]
    SentinelNotImplemented(i32),

    #[error(
        "spec.backplane.managed.shards: {0} is not supported yet: the sidecar relays to a single upstream Redis; use shards: 1"
    )]
    ShardsNotSupported(i32),

    #[error(
        "the URL in Secret {secret} (key {key}, from spec.backplane.external.urlSecretRef) {reason}"
    )]
    BadExternalUrl {
        secret: String,
        key: String,
        reason: &'static str,
    },
}

/// Checks `rtc` before anything is built from it.
pub fn validate(rtc: &RealtimeCluster) -> Result<(), ValidateError> {
    if rtc.metadata.name.is_none() {
        return Err(ValidateError::MissingMetadata("name"));
    }
    if rtc.metadata.namespace.is_none() {
        return Err(ValidateError::MissingMetadata("namespace"));
    }
    if rtc.metadata.uid.is_none() {
        return Err(ValidateError::MissingMetadata("uid"));
    }
    let spec = &rtc.spec;
    if let Some(managed) = &spec.backplane.managed {
        let name = rtc.name_any();
        if !is_dns_label(&name) || name.len() > MAX_MANAGED_NAME_LEN {
            return Err(ValidateError::NameUnfitForServices {
                name,
                max: MAX_MANAGED_NAME_LEN,
            });
        }
        if managed.replicas > 1 {
            return Err(ValidateError::SentinelNotImplemented(managed.replicas));
        }
        if managed.shards > 1 {
            return Err(ValidateError::ShardsNotSupported(managed.shards));
        }
    }
    if let Some(ingress) = &spec.ingress {
        if spec.app_port().is_none() {
            return Err(ValidateError::MissingAppPort {
                framework: serde_json::to_value(spec.framework)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            });
        }
        if !selects_by_labels_only(&spec.selector) {
            return Err(ValidateError::SelectorNotServiceable);
        }
        if ingress.affinity == Affinity::Cookie && ingress.class_name.as_deref() != Some("nginx") {
            return Err(ValidateError::AffinityNeedsNginx);
        }
    }
    Ok(())
}

/// Checks the external backplane's URL (read from its Secret) and returns it without its password,
/// fit for a ConfigMap, a log line or a condition message. The sidecar speaks plain `redis://`
/// only: it refuses `rediss://` and has no Sentinel discovery yet.
pub fn external_url(rtc: &RealtimeCluster, url: &str) -> Result<String, ValidateError> {
    let bad = |reason| {
        let r = rtc.spec.backplane.external.as_ref();
        ValidateError::BadExternalUrl {
            secret: r.map(|e| e.url_secret_ref.name.clone()).unwrap_or_default(),
            key: r.map(|e| e.url_secret_ref.key.clone()).unwrap_or_default(),
            reason,
        }
    };
    let url = url.trim();
    let Some(rest) = url.strip_prefix("redis://") else {
        return Err(
            if url.starts_with("rediss://") || url.starts_with("redis+sentinel://") {
                bad(
                    "uses a scheme the sidecar does not support yet (TLS and Sentinel are planned); use redis://host:port",
                )
            } else {
                bad("must start with redis://, e.g. redis://:password@redis.example:6379")
            },
        );
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            // Keep the username (ACL user), drop the password.
            let user = userinfo.split(':').next().unwrap_or_default();
            if user.is_empty() {
                host.to_owned()
            } else {
                format!("{user}@{host}")
            }
        }
        None => authority.to_owned(),
    };
    if authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .is_empty()
    {
        return Err(bad("has no host; use redis://host:port"));
    }
    Ok(format!("redis://{host}{tail}"))
}

fn selects_by_labels_only(selector: &LabelSelector) -> bool {
    selector
        .match_expressions
        .as_ref()
        .is_none_or(Vec::is_empty)
        && selector
            .match_labels
            .as_ref()
            .is_some_and(|l| !l.is_empty())
}

/// RFC 1035 label, as Service names require.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}
