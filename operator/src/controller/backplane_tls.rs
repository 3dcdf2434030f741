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
//!
//! Or the user brings the certificate (`spec.backplane.managed.tlsSecretRef`, typically a
//! cert-manager Certificate's Secret): then nothing is issued, [`check`] tells the status what is
//! wrong with that Secret, and its fingerprint goes on the Redis pod template, so a renewal rolls
//! the pods (one at a time, Sentinel failing over, the sidecars buffering) to serve the new one.
//! Redis reads its certificate only at start, and Sentinel cannot reload it at all.

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

/// The Secret the user brings (`spec.backplane.managed.tlsSecretRef`), if TLS is on.
pub fn referenced(rtc: &RealtimeCluster) -> Option<&str> {
    if !enabled(rtc) {
        return None;
    }
    let managed = rtc.spec.backplane.managed.as_ref()?;
    managed.tls_secret_ref.as_ref().map(|r| r.name.as_str())
}

/// True when the operator issues the certificate itself (TLS on, no Secret brought).
pub fn issued(rtc: &RealtimeCluster) -> bool {
    enabled(rtc) && referenced(rtc).is_none()
}

/// The Secret Redis, Sentinel and the sidecars read the certificate and CA from.
pub fn secret_name(rtc: &RealtimeCluster) -> String {
    referenced(rtc).map_or_else(|| issued_secret_name(rtc), str::to_owned)
}

/// The Secret the operator issues into when no Secret is brought.
pub fn issued_secret_name(rtc: &RealtimeCluster) -> String {
    format!("{}-redis-tls", rtc.name_any())
}

/// The names the sidecars check the certificate against, for the shard and replica counts of
/// the spec: each shard's Service with one server; with Sentinel, its Sentinel Service and every
/// pod's stable name (the Sentinels announce those).
pub fn dialed_names(rtc: &RealtimeCluster) -> Vec<String> {
    let Some(managed) = &rtc.spec.backplane.managed else {
        return Vec::new();
    };
    let namespace = rtc.namespace().unwrap_or_default();
    let mut names = Vec::new();
    for shard in 0..managed.shards {
        if super::backplane::uses_sentinel(managed) {
            names.push(format!(
                "{}.{namespace}.svc",
                sentinel_service_name(rtc, shard)
            ));
            names.extend(
                (0..managed.replicas)
                    .map(|ordinal| super::backplane::pod_host(rtc, shard, ordinal)),
            );
        } else {
            names.push(format!("{}.{namespace}.svc", shard_name(rtc, shard)));
        }
    }
    names
}

/// What is wrong with a brought TLS Secret, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretProblem {
    Missing {
        secret: String,
    },
    KeyMissing {
        secret: String,
        key: &'static str,
    },
    /// The message names the Secret, what fails and what to change.
    Invalid(String),
}

/// Checks the brought Secret (`secret`: what the API server returned for
/// [`referenced`], `None` when it does not exist) the way the sidecars and Redis will use it at
/// `now`: the three keys present, `tls.key` the key of `tls.crt`, the chain signed by `ca.crt`,
/// in date, and valid for every [`dialed_names`]. Returns the fingerprint of what Redis serves.
pub fn check(
    rtc: &RealtimeCluster,
    secret: Option<&Secret>,
    now: Timestamp,
) -> Result<String, SecretProblem> {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

    let name = secret_name(rtc);
    let Some(secret) = secret else {
        return Err(SecretProblem::Missing { secret: name });
    };
    let value = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .filter(|v| !v.0.is_empty())
            .map(|v| v.0.as_slice())
            .ok_or(SecretProblem::KeyMissing {
                secret: name.clone(),
                key,
            })
    };
    let (ca_pem, cert_pem, key_pem) = (value(CA_KEY)?, value(CERT_KEY)?, value(KEY_KEY)?);
    let invalid = |what: String| {
        SecretProblem::Invalid(format!(
            "Secret {name} (spec.backplane.managed.tlsSecretRef): {what}"
        ))
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| invalid(format!("{CA_KEY} is not PEM certificates: {e}")))?;
        roots.add(ca).map_err(|e| {
            invalid(format!(
                "{CA_KEY} holds a certificate that is not a CA: {e}"
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(invalid(format!("{CA_KEY} holds no certificate")));
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{CERT_KEY} is not PEM certificates: {e}")))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(invalid(format!("{CERT_KEY} holds no certificate")));
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(format!("{KEY_KEY} is not a PEM private key: {e}")))?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|e| invalid(format!("{KEY_KEY} does not go with {CERT_KEY}: {e}")))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
        .build()
        .map_err(|e| invalid(format!("{CA_KEY}: {e}")))?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now.as_second()).unwrap_or_default(),
    ));
    for dialed in dialed_names(rtc) {
        let server = ServerName::try_from(dialed.clone())
            .map_err(|e| invalid(format!("{dialed:?}: {e}")))?;
        if let Err(e) = verifier.verify_server_cert(leaf, intermediates, &server, &[], at) {
            let why = match e {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                | rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                ) => format!(
                    "{CERT_KEY} is not valid for {dialed}, a name the sidecars dial; its dnsNames must cover {}",
                    covering_names(rtc).join(", ")
                ),
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                | rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => {
                    format!("{CERT_KEY} is not signed by the CA in {CA_KEY}")
                }
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired
                    | rustls::CertificateError::ExpiredContext { .. },
                ) => format!("{CERT_KEY} has expired; renew it"),
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidYet
                    | rustls::CertificateError::NotValidYetContext { .. },
                ) => format!("{CERT_KEY} is not valid yet"),
                other => format!("{CERT_KEY} does not verify for {dialed}: {other}"),
            };
            return Err(invalid(why));
        }
    }
    Ok(super::sidecar_config::fingerprint([
        ca_pem, cert_pem, key_pem,
    ]))
}

/// The `dnsNames` a brought certificate needs, wildcards where they keep the list short.
pub fn covering_names(rtc: &RealtimeCluster) -> Vec<String> {
    let Some(managed) = &rtc.spec.backplane.managed else {
        return Vec::new();
    };
    let namespace = rtc.namespace().unwrap_or_default();
    (0..managed.shards)
        .flat_map(|shard| {
            if super::backplane::uses_sentinel(managed) {
                vec![
                    format!("{}.{namespace}.svc", sentinel_service_name(rtc, shard)),
                    format!("*.{}.{namespace}.svc", headless_name(rtc, shard)),
                ]
            } else {
                vec![format!("{}.{namespace}.svc", shard_name(rtc, shard))]
            }
        })
        .collect()
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
        metadata: child_meta(
            rtc,
            issued_secret_name(rtc),
            labels(rtc, "redis", "backplane"),
        ),
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

    /// A `kubernetes.io/tls` Secret as cert-manager writes it.
    fn tls_secret(ca: &str, cert: &str, key: &str) -> Secret {
        Secret {
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (CA_KEY.to_owned(), ByteString(ca.as_bytes().to_vec())),
                (CERT_KEY.to_owned(), ByteString(cert.as_bytes().to_vec())),
                (KEY_KEY.to_owned(), ByteString(key.as_bytes().to_vec())),
            ])),
            ..Secret::default()
        }
    }

    fn brought(mut rtc: RealtimeCluster) -> RealtimeCluster {
        rtc.spec.backplane.managed.as_mut().unwrap().tls_secret_ref =
            Some(crate::api::SecretName {
                name: "chat-redis-cert".into(),
            });
        rtc
    }

    /// A certificate for `names` from a fresh CA: (ca, cert, key) in PEM.
    fn signed_for(names: &[String]) -> (String, String, String) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "user-ca");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names.to_vec())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (ca_cert.pem(), cert.pem(), key.serialize_pem())
    }

    fn invalid_because(result: Result<String, SecretProblem>) -> String {
        match result {
            Err(SecretProblem::Invalid(message)) => message,
            other => panic!("expected an invalid certificate, got {other:?}"),
        }
    }

    #[test]
    fn a_brought_secret_replaces_the_issued_one_and_is_checked_as_the_sidecars_will_use_it() {
        let rtc = brought(rtc());
        assert!(enabled(&rtc) && !issued(&rtc));
        assert_eq!(secret_name(&rtc), "chat-redis-cert");
        // The injected sidecar takes its CA from it too.
        let volumes = crate::webhook::sidecar::tls_volumes(&rtc);
        let mounted: Vec<_> = volumes
            .iter()
            .filter_map(|(v, _)| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(mounted, ["chat-redis-cert"]);
        let now = Timestamp::now();

        // Missing, or missing a key.
        assert_eq!(
            check(&rtc, None, now),
            Err(SecretProblem::Missing {
                secret: "chat-redis-cert".into()
            })
        );
        let m = issue(&rtc, now).unwrap();
        let mut no_ca = tls_secret(&m.ca_cert, &m.cert, &m.key);
        no_ca.data.as_mut().unwrap().remove(CA_KEY);
        assert_eq!(
            check(&rtc, Some(&no_ca), now),
            Err(SecretProblem::KeyMissing {
                secret: "chat-redis-cert".into(),
                key: CA_KEY
            })
        );

        // A good one: its fingerprint is stable and changes with the certificate.
        let good = tls_secret(&m.ca_cert, &m.cert, &m.key);
        let fingerprint = check(&rtc, Some(&good), now).unwrap();
        assert_eq!(check(&rtc, Some(&good), now).unwrap(), fingerprint);
        let renewed = issue(&rtc, now).unwrap();
        let renewed = tls_secret(&renewed.ca_cert, &renewed.cert, &renewed.key);
        assert_ne!(check(&rtc, Some(&renewed), now).unwrap(), fingerprint);

        // Exactly the names the sidecars dial are enough (here: Sentinel Service, three pods).
        let (ca, cert, key) = signed_for(&covering_names(&rtc));
        assert_eq!(covering_names(&rtc).len(), 2);
        assert!(check(&rtc, Some(&tls_secret(&ca, &cert, &key)), now).is_ok());

        // The Sentinel Service only: the pods the Sentinels announce are named as missing.
        let (ca, cert, key) = signed_for(&["chat-redis-0-sentinel.apps.svc".to_owned()]);
        let why = invalid_because(check(&rtc, Some(&tls_secret(&ca, &cert, &key)), now));
        assert!(why.contains("Secret chat-redis-cert"), "{why}");
        assert!(
            why.contains("not valid for chat-redis-0-0.chat-redis-0-headless.apps.svc"),
            "{why}"
        );
        assert!(why.contains("*.chat-redis-0-headless.apps.svc"), "{why}");

        // Another CA's certificate, a key of another certificate, and an expired one.
        let (_, other_cert, other_key) = signed_for(&covering_names(&rtc));
        let why = invalid_because(check(
            &rtc,
            Some(&tls_secret(&m.ca_cert, &other_cert, &other_key)),
            now,
        ));
        assert!(why.contains("not signed by the CA in ca.crt"), "{why}");
        let why = invalid_because(check(
            &rtc,
            Some(&tls_secret(&m.ca_cert, &m.cert, &other_key)),
            now,
        ));
        assert!(why.contains("tls.key does not go with tls.crt"), "{why}");
        let later = now + SignedDuration::from_hours(24 * 3660);
        let why = invalid_because(check(&rtc, Some(&good), later));
        assert!(why.contains("has expired"), "{why}");
        let why = invalid_because(check(&rtc, Some(&tls_secret("junk", &m.cert, &m.key)), now));
        assert!(why.contains("ca.crt holds no certificate"), "{why}");
    }

    #[test]
    fn the_cert_manager_example_covers_what_its_cluster_dials() {
        let text = include_str!("../../../manifests/examples/managed-cert-manager.yaml");
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let kind = |d: &serde_yaml::Value, k: &str| d["kind"].as_str() == Some(k);
        let mut rtc: RealtimeCluster = serde_yaml::from_value(
            docs.iter()
                .find(|d| kind(d, "RealtimeCluster"))
                .unwrap()
                .clone(),
        )
        .unwrap();
        rtc.metadata.namespace = Some("apps".into());
        let certificate = docs
            .iter()
            .find(|d| {
                kind(d, "Certificate") && d["spec"]["secretName"].as_str() == referenced(&rtc)
            })
            .expect("a Certificate writing the Secret tlsSecretRef names");
        let dns_names: Vec<String> =
            serde_yaml::from_value(certificate["spec"]["dnsNames"].clone()).unwrap();
        assert_eq!(dns_names, covering_names(&rtc));
    }

    #[test]
    fn one_server_per_shard_needs_only_the_shard_services() {
        let mut rtc = brought(rtc());
        let managed = rtc.spec.backplane.managed.as_mut().unwrap();
        managed.replicas = 1;
        managed.shards = 2;
        assert_eq!(
            dialed_names(&rtc),
            ["chat-redis-0.apps.svc", "chat-redis-1.apps.svc"]
        );
        assert_eq!(covering_names(&rtc), dialed_names(&rtc));
    }
}
