//! The ConfigMap of `SWITCHBOARD_*` variables the injected sidecar reads (the flags of
//! `sidecar/src/config.rs`), and the content hash the injector puts on the pod template so a change
//! rolls the pods.
//!
//! No secret ever goes in here: the upstream URL is written without its password. The managed
//! Redis password is in the Secret `backplane::password_secret_name` (key `backplane::PASSWORD_KEY`)
//! and reaches the sidecar as an env var set by the injector.
//!
//! TODO(issue 4/5): the sidecar has no separate upstream-password setting yet, only
//! `SWITCHBOARD_UPSTREAM_URL` (whose userinfo carries it) and `SWITCHBOARD_PASSWORD` (the *local*
//! listener's password). Until it gains one (e.g. `SWITCHBOARD_UPSTREAM_PASSWORD`), the injector
//! has to compose the URL in the container's `env` with `$(VAR)` expansion.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use sha1::{Digest, Sha1};

use super::meta::{child_meta, labels};
use crate::api::RealtimeCluster;

/// The pod-template annotation holding [`config_hash`] of the ConfigMap.
pub const CONFIG_HASH_ANNOTATION: &str = "switchboard.dev/sidecar-config-hash";

pub const ENV_UPSTREAM_URL: &str = "SWITCHBOARD_UPSTREAM_URL";
pub const ENV_CHANNEL_PREFIX: &str = "SWITCHBOARD_CHANNEL_PREFIX";
pub const ENV_PUBLISH_BUFFER_BYTES: &str = "SWITCHBOARD_PUBLISH_BUFFER_BYTES";
pub const ENV_PUBLISH_BUFFER_MESSAGES: &str = "SWITCHBOARD_PUBLISH_BUFFER_MESSAGES";
pub const ENV_CLIENT_BUFFER_BYTES: &str = "SWITCHBOARD_CLIENT_BUFFER_BYTES";

/// Name of the sidecar's ConfigMap.
pub fn config_map_name(rtc: &RealtimeCluster) -> String {
    format!("{}-sidecar", rtc.name_any())
}

/// The sidecar's ConfigMap. `upstream_url` is the backplane's URL without a password:
/// `backplane::shard_url(rtc, 0)` for a managed backplane, `validate::external_url` for an
/// external one.
pub fn config_map(rtc: &RealtimeCluster, upstream_url: &str) -> ConfigMap {
    let sidecar = &rtc.spec.sidecar;
    let data = BTreeMap::from([
        (ENV_UPSTREAM_URL.to_owned(), upstream_url.to_owned()),
        (
            ENV_CHANNEL_PREFIX.to_owned(),
            rtc.spec.backplane.channel_prefix.clone(),
        ),
        (
            ENV_PUBLISH_BUFFER_BYTES.to_owned(),
            sidecar.publish_buffer_bytes.to_string(),
        ),
        (
            ENV_PUBLISH_BUFFER_MESSAGES.to_owned(),
            sidecar.publish_buffer_messages.to_string(),
        ),
        (
            ENV_CLIENT_BUFFER_BYTES.to_owned(),
            sidecar.client_buffer_bytes.to_string(),
        ),
    ]);
    ConfigMap {
        metadata: child_meta(
            rtc,
            config_map_name(rtc),
            labels(rtc, "switchboard-sidecar", "sidecar"),
        ),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// A stable hash of the ConfigMap's data: SHA-1 (the `sha1` crate, already in the dependency tree;
/// this detects changes, it does not defend against anyone) over the entries in key order, each
/// key and value length-prefixed so no two different maps hash alike. Lowercase hex.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut hasher = Sha1::new();
    for (key, value) in config_map.data.iter().flatten() {
        for part in [key, value] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
