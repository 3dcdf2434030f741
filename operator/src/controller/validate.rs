//! Checks the CRD schema and its CEL rules cannot express, run before anything is built.
//!
//! The API server already rejects most bad specs; what is left here depends on the object's
//! metadata (names that become Service names), on what this operator version implements, or on
//! data outside the spec (the external URL read from a Secret). Every message names the field and
//! says what to do, because it lands verbatim in the `Ready` condition.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::backplane;
use super::ingress::{NGINX_CLASS, TRAEFIK_CLASS};
use crate::api::{Affinity, RealtimeCluster};

/// The longest RealtimeCluster name with a managed backplane. Its children are named
/// `<name>-redis-<shard>-headless` and `<name>-redis-<shard>-sentinel` (Service names are DNS
/// labels, at most 63 characters), its pods `<name>-redis-<shard>-<ordinal>`, and the
/// StatefulSet's pods get a `controller-revision-hash: <name>-redis-<shard>-<10 chars>` label
/// (label values are at most 63 too); 40 leaves room for all of them with shard numbers up to 31
/// (`validate` checks each name anyway).
pub const MAX_MANAGED_NAME_LEN: usize = 40;
/// A DNS label, a Service name, a label value: at most 63 characters.
const MAX_LABEL_LEN: usize = 63;
/// What the StatefulSet controller appends to the StatefulSet's name for the pods'
/// `controller-revision-hash` label: `-` and a 10-character hash.
const REVISION_HASH_SUFFIX_LEN: usize = 11;

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
        "spec.ingress.affinity: cookie is built for spec.ingress.className nginx or traefik, or for spec.ingress.gateway (a Gateway API HTTPRoute); {class} would get an Ingress that does not pin clients. Set one of those, or affinity: none for WebSocket-only clients"
    )]
    AffinityUnsupported {
        /// The class as the user wrote it, quoted, or a note that none was set.
        class: String,
    },

    #[error(
        "metadata.name {name:?} is too long for spec.backplane.managed: the derived name {derived:?} has {len} characters, more than the {max} Kubernetes allows; use a shorter name"
    )]
    DerivedNameTooLong {
        name: String,
        derived: String,
        len: usize,
        max: usize,
    },

    #[error(
        "the URL in Secret {secret} (key {key}, from spec.backplane.external.urlSecretRef) {reason}"
    )]
    BadExternalUrl {
        secret: String,
        key: String,
        reason: String,
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
        // The schema bounds shards and replicas and MAX_MANAGED_NAME_LEN is chosen to fit them;
        // checking the names themselves keeps that true if either bound moves.
        for shard in 0..managed.shards {
            let set = backplane::shard_name(rtc, shard);
            let derived = [
                backplane::headless_name(rtc, shard),
                backplane::sentinel_service_name(rtc, shard),
                format!("{set}-{}", managed.replicas - 1),
                format!("{set}-{}", "h".repeat(REVISION_HASH_SUFFIX_LEN - 1)),
                set,
            ];
            if let Some(long) = derived.into_iter().find(|n| n.len() > MAX_LABEL_LEN) {
                return Err(ValidateError::DerivedNameTooLong {
                    name,
                    len: long.len(),
                    derived: long,
                    max: MAX_LABEL_LEN,
                });
            }
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
        let pins = ingress.gateway.is_some()
            || matches!(
                ingress.class_name.as_deref(),
                Some(NGINX_CLASS | TRAEFIK_CLASS)
            );
        if ingress.affinity == Affinity::Cookie && !pins {
            return Err(ValidateError::AffinityUnsupported {
                class: match &ingress.class_name {
                    Some(class) => format!("className {class:?}"),
                    None => "an unset className (the cluster's default IngressClass)".to_owned(),
                },
            });
        }
    }
    Ok(())
}

/// Checks the external backplane's URL (read from its Secret) and returns it without its
/// password, fit for a ConfigMap, a log line or a condition message. The value may hold several
/// URLs separated by whitespace, one per shard (the sidecar's `SWITCHBOARD_UPSTREAM_URL`); each
/// must be `redis://` or `redis+sentinel://`, or their TLS forms `rediss://` and
/// `rediss+sentinel://`. `spec.backplane.external.tls` without any TLS URL is refused here rather
/// than in every pod (the sidecar would refuse to start).
pub fn external_url(rtc: &RealtimeCluster, url: &str) -> Result<String, ValidateError> {
    let bad = |reason: String| {
        let r = rtc.spec.backplane.external.as_ref();
        ValidateError::BadExternalUrl {
            secret: r.map(|e| e.url_secret_ref.name.clone()).unwrap_or_default(),
            key: r.map(|e| e.url_secret_ref.key.clone()).unwrap_or_default(),
            reason,
        }
    };
    let urls: Vec<&str> = url.split_whitespace().collect();
    if urls.is_empty() {
        return Err(bad(
            "is empty; put redis://[user:password@]host:port in it".into()
        ));
    }
    if urls.len() > 1 && urls.iter().any(|u| u.contains("+cluster://")) {
        return Err(bad(
            "mixes a redis+cluster:// URL with others; a cluster URL names the whole cluster (its seed nodes, comma-separated) and stands alone".into(),
        ));
    }
    let mut redacted = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let which = if urls.len() == 1 {
            String::new()
        } else {
            format!("(shard {i}, URL {} of {}) ", i + 1, urls.len())
        };
        redacted.push(one_external_url(url).map_err(|reason| bad(format!("{which}{reason}")))?);
    }
    let tls_given = rtc
        .spec
        .backplane
        .external
        .as_ref()
        .is_some_and(|e| e.tls.is_some());
    if tls_given && !redacted.iter().any(|u| u.starts_with("rediss")) {
        return Err(bad(
            "uses no TLS, yet spec.backplane.external.tls is set; write rediss:// (or rediss+sentinel://, rediss+cluster://), or remove spec.backplane.external.tls".into(),
        ));
    }
    Ok(redacted.join(" "))
}

/// One shard's URL without its password, or why it is unusable (never quoting the URL, which may
/// hold the password).
fn one_external_url(url: &str) -> Result<String, &'static str> {
    let schemes = [
        "redis",
        "rediss",
        "redis+sentinel",
        "rediss+sentinel",
        "redis+cluster",
        "rediss+cluster",
    ];
    let Some((scheme, rest)) = schemes.iter().find_map(|s| {
        url.strip_prefix(s)
            .and_then(|r| r.strip_prefix("://"))
            .map(|r| (*s, r))
    }) else {
        return Err(
            "must start with redis://, rediss:// (TLS), redis+sentinel://, rediss+sentinel:// (TLS), redis+cluster:// or rediss+cluster:// (TLS), e.g. rediss://:password@redis.example:6380",
        );
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
        return Err("has no host; use redis://host:port or redis+sentinel://host:26379/<master>");
    }
    let sentinel = scheme.ends_with("+sentinel");
    let cluster = scheme.ends_with("+cluster");
    if !sentinel && !cluster && hosts.contains(',') {
        return Err(
            "lists several hosts, which only redis+sentinel:// and redis+cluster:// take (for one server per shard, separate the URLs with spaces)",
        );
    }
    if cluster && !tail.trim_start_matches('/').is_empty() {
        return Err(
            "names a database, and a Redis Cluster has only database 0; use redis+cluster://host:port[,host:port...]",
        );
    }
    if sentinel && tail.trim_start_matches('/').split('/').next() == Some("") {
        return Err("names no master; use redis+sentinel://host:26379[,host:26379...]/<master>");
    }
    // Keep the username (ACL user), drop the password.
    let user = userinfo
        .and_then(|u| u.split(':').next())
        .filter(|u| !u.is_empty());
    Ok(match user {
        Some(user) => format!("{scheme}://{user}@{hosts}{tail}"),
        None => format!("{scheme}://{hosts}{tail}"),
    })
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
