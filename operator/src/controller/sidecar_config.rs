//! The ConfigMap of `SWITCHBOARD_*` variables the injected sidecar reads (the flags of
//! `sidecar/src/config.rs`), the one variable that comes from a Secret instead, and the content
//! hash the injector puts on the pod template so a change rolls the pods.
//!
//! No secret ever goes in the ConfigMap: `SWITCHBOARD_UPSTREAM_URL` is written without a
//! password, one URL per shard separated by single spaces (`backplane::upstream_url` for a
//! managed backplane, `validate::external_url` for an external one). The credential reaches the
//! sidecar through [`upstream_secret_env`], which the injector adds to the sidecar container's
//! `env`:
//! - managed: `SWITCHBOARD_UPSTREAM_PASSWORD` from the operator's password Secret; the sidecar
//!   uses it for every shard's Redis and Sentinels, in place of any password in the URL.
//! - external: `SWITCHBOARD_UPSTREAM_URL` itself, from the user's Secret, password included. The
//!   operator never copies that password into an object of its own (a derived Secret would be a
//!   second copy to keep in sync and to protect); the ConfigMap's password-free URL stays as the
//!   readable record and drives [`config_hash`], so a changed host rolls the pods. A variable in
//!   a container's `env` takes precedence over the same name from `envFrom`, so loading the
//!   ConfigMap with `envFrom` and adding this in `env` gives the sidecar the Secret's URL. (A
//!   password-only change in the user's Secret does not change the hash: restart the pods.)

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, EnvVarSource, Secret, SecretKeySelector};
use kube::ResourceExt;
use sha1::{Digest, Sha1};

use super::backplane;
use super::meta::{child_meta, labels};
use crate::api::RealtimeCluster;

/// The pod annotation holding [`config_hash`] of the ConfigMap (re-exported from the names leaf).
pub use crate::names::CONFIG_HASH_ANNOTATION;
use crate::names::{
    ENV_CHANNEL_PREFIX, ENV_CLIENT_BUFFER_BYTES, ENV_EXPECT_SUBSCRIPTION,
    ENV_LISTENING_GRACE_SECONDS, ENV_PUBLISH_BUFFER_BYTES, ENV_PUBLISH_BUFFER_MESSAGES,
    ENV_UPSTREAM_PASSWORD, ENV_UPSTREAM_TLS_CA_FILE, ENV_UPSTREAM_TLS_CERT_FILE,
    ENV_UPSTREAM_TLS_INSECURE_SKIP_VERIFY, ENV_UPSTREAM_TLS_KEY_FILE, ENV_UPSTREAM_TLS_SERVER_NAME,
    ENV_UPSTREAM_URL,
};

/// Name of the sidecar's ConfigMap.
pub fn config_map_name(rtc: &RealtimeCluster) -> String {
    format!("{}-sidecar", rtc.name_any())
}

/// The sidecar's ConfigMap. `upstream_url` is the backplane's URLs without a password, one per
/// shard separated by single spaces: `backplane::upstream_url` for a managed backplane,
/// `validate::external_url` for an external one.
pub fn config_map(rtc: &RealtimeCluster, upstream_url: &str) -> ConfigMap {
    let sidecar = &rtc.spec.sidecar;
    let mut data = BTreeMap::from([
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
    // The listening check, only when there is something to expect: a sidecar without these
    // variables does not check (generic apps, `spec.app.listening.subscriptions: []`).
    let expected = rtc.spec.listening_subscriptions();
    if !expected.is_empty() {
        data.insert(ENV_EXPECT_SUBSCRIPTION.to_owned(), expected.join(" "));
        data.insert(
            ENV_LISTENING_GRACE_SECONDS.to_owned(),
            rtc.spec.listening_grace_seconds().to_string(),
        );
    }
    // TLS to an external backplane: the files the injector mounts from its Secrets. They are
    // here, not in the pod, so adding or changing them changes the hash and rolls the pods,
    // which picks up the mounts.
    if let Some(tls) = rtc
        .spec
        .backplane
        .external
        .as_ref()
        .and_then(|e| e.tls.as_ref())
    {
        if tls.ca_secret_ref.is_some() {
            data.insert(
                ENV_UPSTREAM_TLS_CA_FILE.to_owned(),
                crate::names::BACKPLANE_CA_FILE.to_owned(),
            );
        }
        if tls.client_certificate_secret_ref.is_some() {
            data.insert(
                ENV_UPSTREAM_TLS_CERT_FILE.to_owned(),
                crate::names::BACKPLANE_CLIENT_CERT_FILE.to_owned(),
            );
            data.insert(
                ENV_UPSTREAM_TLS_KEY_FILE.to_owned(),
                crate::names::BACKPLANE_CLIENT_KEY_FILE.to_owned(),
            );
        }
        if let Some(name) = &tls.server_name {
            data.insert(ENV_UPSTREAM_TLS_SERVER_NAME.to_owned(), name.clone());
        }
        if tls.insecure_skip_verify {
            data.insert(
                ENV_UPSTREAM_TLS_INSECURE_SKIP_VERIFY.to_owned(),
                "true".to_owned(),
            );
        }
    }
    // Session routing: the sidecar's HTTP front in front of the app, on every interface (the
    // app Service reaches its port, the other pods' fronts its peer port); the pod's own address
    // and the fleet's secret come from the injector (the pod IP) and `<rtc>-front` (mounted).
    if rtc.spec.session_routing() {
        use crate::names::{
            ENV_FRONT_APP, ENV_FRONT_LISTEN, ENV_FRONT_PATH, ENV_FRONT_PEER_LISTEN,
            ENV_FRONT_SECRET_FILE, FRONT_PEER_PORT, FRONT_PORT, FRONT_SECRET_FILE,
        };
        data.insert(ENV_FRONT_LISTEN.to_owned(), format!("0.0.0.0:{FRONT_PORT}"));
        data.insert(
            ENV_FRONT_PEER_LISTEN.to_owned(),
            format!("0.0.0.0:{FRONT_PEER_PORT}"),
        );
        let apps: Vec<String> = rtc
            .spec
            .app_ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        if !apps.is_empty() {
            data.insert(ENV_FRONT_APP.to_owned(), apps.join(","));
        }
        data.insert(ENV_FRONT_PATH.to_owned(), rtc.spec.engineio_path());
        data.insert(
            ENV_FRONT_SECRET_FILE.to_owned(),
            FRONT_SECRET_FILE.to_owned(),
        );
    }
    // A managed backplane over TLS: the operator's CA, mounted from `<rtc>-redis-tls`.
    if super::backplane_tls::enabled(rtc) {
        data.insert(
            ENV_UPSTREAM_TLS_CA_FILE.to_owned(),
            crate::names::BACKPLANE_CA_FILE.to_owned(),
        );
    }
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

/// Name of the Secret holding the fleet's front secret (session routing).
pub fn front_secret_name(rtc: &RealtimeCluster) -> String {
    format!("{}-front", rtc.name_any())
}

/// The fleet's front secret, which pod-to-pod forwarded requests carry (session routing). The
/// caller generates `value` once; like the Redis password it is created, never rotated by a
/// reconcile (delete the Secret and restart the pods to rotate it).
pub fn front_secret(rtc: &RealtimeCluster, value: &str) -> Secret {
    super::meta::generated_secret(
        rtc,
        front_secret_name(rtc),
        labels(rtc, "switchboard-sidecar", "front"),
        crate::names::FRONT_SECRET_KEY,
        value,
    )
}

/// The variable the injector sets on the sidecar container from a Secret, next to (and, for the
/// same name, over) the ConfigMap's: `SWITCHBOARD_UPSTREAM_PASSWORD` from
/// `<rtc>-redis-auth`/`password` for a managed backplane, `SWITCHBOARD_UPSTREAM_URL` from
/// `spec.backplane.external.urlSecretRef` for an external one. Not `optional`: a pod whose
/// Secret is missing stays in `CreateContainerConfigError`, which names the Secret, instead of
/// starting a sidecar that cannot log in.
pub fn upstream_secret_env(rtc: &RealtimeCluster) -> Option<EnvVar> {
    let backplane = &rtc.spec.backplane;
    let (name, secret, key) = match (&backplane.managed, &backplane.external) {
        (_, Some(external)) => (
            ENV_UPSTREAM_URL,
            external.url_secret_ref.name.clone(),
            external.url_secret_ref.key.clone(),
        ),
        (Some(_), None) => (
            ENV_UPSTREAM_PASSWORD,
            backplane::password_secret_name(rtc),
            backplane::PASSWORD_KEY.to_owned(),
        ),
        (None, None) => return None,
    };
    Some(EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key,
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    })
}

/// A stable hash of the ConfigMap's data: [`fingerprint`] of its entries in key order.
pub fn config_hash(config_map: &ConfigMap) -> String {
    fingerprint(
        config_map
            .data
            .iter()
            .flatten()
            .flat_map(|(key, value)| [key.as_bytes(), value.as_bytes()]),
    )
}

/// SHA-1 (the `sha1` crate, already in the dependency tree; this detects changes, it does not
/// defend against anyone) over `parts`, each length-prefixed so no two different sequences hash
/// alike. Lowercase hex.
pub fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
