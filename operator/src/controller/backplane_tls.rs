//! TLS for the managed backplane (`spec.backplane.managed.tls`, on by default): Redis, its
//! replication and the Sentinels speak only TLS, and the sidecars verify them, so nothing between
//! pods travels in clear text.
//!
//! The operator issues, once per RealtimeCluster, a CA and one serving certificate signed by it,
//! and keeps them in the Secret `<rtc>-redis-tls` (`ca.crt`, `tls.crt`, `tls.key`). The CA's key
//! is thrown away after signing: nothing can issue another certificate this CA vouches for. The
//! certificate covers every name a client dials for any shard count the API allows (the Redis and
//! Sentinel Services, each pod's stable name, and loopback for the scripts inside the pods), so
//! scaling shards never needs a new one. Both live ten years; to rotate, delete the Secret and
//! restart the backplane and the app's pods.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::backplane::{headless_name, sentinel_service_name, shard_name};
use super::meta::{child_meta, labels};
use crate::api::RealtimeCluster;

pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
/// Where the Redis and Sentinel containers mount the Secret.
pub const MOUNT_DIR: &str = "/tls";
pub const VOLUME: &str = "tls";

/// The most shards the API allows (`spec.backplane.managed.shards`).
const MAX_SHARDS: i32 = 32;
const LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 3650);

/// True when `rtc` has a managed backplane served over TLS.
pub fn enabled(rtc: &RealtimeCluster) -> bool {
    rtc.spec.backplane.external.is_none()
        && rtc.spec.backplane.managed.as_ref().is_some_and(|m| m.tls)
}

pub fn secret_name(rtc: &RealtimeCluster) -> String {
    format!("{}-redis-tls", rtc.name_any())
}

/// The PEM blocks of a freshly issued pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub ca_cert: String,
    pub cert: String,
    pub key: String,
}

/// The DNS names the serving certificate covers (see the module's doc).
pub fn dns_names(rtc: &RealtimeCluster) -> Vec<String> {
    let namespace = rtc.namespace().unwrap_or_default();
    let mut names = vec!["localhost".to_owned()];
    for shard in 0..MAX_SHARDS {
        names.push(format!("{}.{namespace}.svc", shard_name(rtc, shard)));
        names.push(format!(
            "{}.{namespace}.svc",
            sentinel_service_name(rtc, shard)
        ));
        names.push(format!("*.{}.{namespace}.svc", headless_name(rtc, shard)));
    }
    names
}

/// Issues a CA and a serving certificate for [`dns_names`] (and 127.0.0.1).
pub fn issue(rtc: &RealtimeCluster, now: Timestamp) -> Result<Material, rcgen::Error> {
    let date = |t: Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(t.as_second())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("{}-redis-ca", rtc.name_any()));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = date(now - SignedDuration::from_hours(1));
    ca.not_after = date(now + LIFETIME);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let mut serving = CertificateParams::new(dns_names(rtc))?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    serving
        .distinguished_name
        .push(DnType::CommonName, format!("{}-redis", rtc.name_any()));
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Redis presents it to the servers it connects to as well (replication, Sentinel).
    serving.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    serving.not_before = date(now - SignedDuration::from_hours(1));
    serving.not_after = date(now + LIFETIME);
    let key = KeyPair::generate()?;
    let cert = serving.signed_by(&key, &issuer)?;
    Ok(Material {
        ca_cert: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The Secret. `material` is what to create it with when it does not exist yet (`None` when it
/// does: the applier never rewrites it, and pruning only needs its name).
pub fn secret(rtc: &RealtimeCluster, material: Option<&Material>) -> Secret {
    Secret {
        metadata: child_meta(rtc, secret_name(rtc), labels(rtc, "redis", "backplane")),
        type_: Some("Opaque".into()),
        data: material.map(|m| {
            BTreeMap::from([
                (
                    CA_KEY.to_owned(),
                    ByteString(m.ca_cert.clone().into_bytes()),
                ),
                (CERT_KEY.to_owned(), ByteString(m.cert.clone().into_bytes())),
                (KEY_KEY.to_owned(), ByteString(m.key.clone().into_bytes())),
            ])
        }),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn rtc() -> RealtimeCluster {
        serde_yaml::from_str(include_str!("../../tests/fixtures/sentinel.yaml")).unwrap()
    }

    #[test]
    fn the_certificate_verifies_for_every_name_a_client_dials_and_no_other() {
        let rtc = rtc();
        let m = issue(&rtc, Timestamp::now()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(m.ca_cert.as_bytes()).unwrap())
            .unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let cert = CertificateDer::from_pem_slice(m.cert.as_bytes()).unwrap();
        let verifies = |name: &str| {
            verifier
                .verify_server_cert(
                    &cert,
                    &[],
                    &ServerName::try_from(name.to_owned()).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .is_ok()
        };
        let ns = rtc.namespace().unwrap();
        for name in [
            format!("chat-redis-0.{ns}.svc"),
            format!("chat-redis-0-sentinel.{ns}.svc"),
            format!("chat-redis-0-2.chat-redis-0-headless.{ns}.svc"),
            // A shard added later is covered already.
            format!("chat-redis-31-0.chat-redis-31-headless.{ns}.svc"),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ] {
            assert!(verifies(&name), "{name}");
        }
        for name in [
            format!("other.{ns}.svc"),
            "chat-redis-0.elsewhere.svc".to_owned(),
        ] {
            assert!(!verifies(&name), "{name} must not verify");
        }
        // The CA's key is not kept anywhere.
        let secret = secret(&rtc, Some(&m));
        let keys: Vec<&String> = secret.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    }
}
