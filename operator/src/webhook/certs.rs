//! The webhook's TLS material: a CA of its own and a serving certificate it signs, kept in one
//! Secret (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`, the keys cert-manager uses too).
//!
//! The CA lives ten years and is kept across rotations, so the `caBundle` the API server trusts
//! rarely changes; the serving certificate lives one year and is re-signed 30 days before it
//! expires, or when the names it must cover change. Its expiry is recorded in an annotation, which
//! saves parsing X.509 to decide. This module is pure (no client): [`plan`] says what to write.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
/// When the serving certificate expires (RFC 3339).
pub const NOT_AFTER_ANNOTATION: &str = "switchboard.dev/serving-cert-not-after";
/// The names the serving certificate covers, comma-separated.
pub const NAMES_ANNOTATION: &str = "switchboard.dev/serving-cert-names";

const CA_NAME: &str = "switchboard-webhook-ca";
const CA_LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 3650);
const SERVING_LIFETIME: SignedDuration = SignedDuration::from_hours(24 * 365);
/// Re-sign this long before expiry: many reconciles and restarts fit in 30 days.
pub const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(24 * 30);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("Secret {secret} has no usable {key}")]
    Missing { secret: String, key: &'static str },
}

/// The PEM blocks the webhook serves and the API server trusts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    pub not_after: Timestamp,
    pub names: Vec<String>,
}

impl Material {
    /// The Secret's `data` and annotations for this material.
    pub fn into_secret_parts(self) -> (BTreeMap<String, ByteString>, BTreeMap<String, String>) {
        let data = [
            (CA_CERT_KEY, self.ca_cert),
            (CA_KEY_KEY, self.ca_key),
            (TLS_CERT_KEY, self.cert),
            (TLS_KEY_KEY, self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
        .collect();
        let annotations = BTreeMap::from([
            (NOT_AFTER_ANNOTATION.to_owned(), self.not_after.to_string()),
            (NAMES_ANNOTATION.to_owned(), self.names.join(",")),
        ]);
        (data, annotations)
    }
}

/// What the Secret needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Valid for long enough and for the right names.
    Keep,
    /// New serving certificate (and a new CA when there was none): write this.
    Write(Box<Material>),
}

/// Decides from the current Secret (if any) whether to (re)issue, and issues.
pub fn plan(
    existing: Option<&Secret>,
    names: &[String],
    now: Timestamp,
) -> Result<Plan, CertError> {
    let text = |key: &str| -> Option<String> {
        let bytes = existing?.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone()).ok()
    };
    let annotation = |key: &str| existing?.metadata.annotations.as_ref()?.get(key).cloned();
    let fresh = annotation(NOT_AFTER_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|not_after| not_after - RENEW_BEFORE > now);
    let same_names = annotation(NAMES_ANNOTATION).as_deref() == Some(names.join(",").as_str());
    let complete = [TLS_CERT_KEY, TLS_KEY_KEY]
        .iter()
        .all(|k| text(k).is_some());
    if fresh && same_names && complete {
        return Ok(Plan::Keep);
    }
    // Keep the CA when there is one: the caBundle the API server holds stays valid.
    let ca = match (text(CA_CERT_KEY), text(CA_KEY_KEY)) {
        (Some(cert), Some(key)) if KeyPair::from_pem(&key).is_ok() => (cert, key),
        _ => new_ca(now)?,
    };
    let (cert, key, not_after) = serving(&ca.1, names, now)?;
    Ok(Plan::Write(Box::new(Material {
        ca_cert: ca.0,
        ca_key: ca.1,
        cert,
        key,
        not_after,
        names: names.to_vec(),
    })))
}

fn ca_params(now: Timestamp) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = date(now - SignedDuration::from_hours(1));
    params.not_after = date(now + CA_LIFETIME);
    Ok(params)
}

fn new_ca(now: Timestamp) -> Result<(String, String), CertError> {
    let key = KeyPair::generate()?;
    let cert = ca_params(now)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A serving certificate for `names` signed by the CA whose key is `ca_key`. The issuer is rebuilt
/// from the CA's fixed subject and its key, which is all a signature needs.
fn serving(
    ca_key: &str,
    names: &[String],
    now: Timestamp,
) -> Result<(String, String, Timestamp), CertError> {
    let ca_key = KeyPair::from_pem(ca_key)?;
    let issuer = Issuer::new(ca_params(now)?, ca_key);
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("switchboard-webhook", String::as_str),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = now + SERVING_LIFETIME;
    params.not_before = date(now - SignedDuration::from_hours(1));
    params.not_after = date(not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), not_after))
}

/// A jiff timestamp as rcgen's `time` value (second precision, which X.509 keeps anyway).
fn date(t: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The serving certificate and key from a Secret (ours or cert-manager's), for the TLS server.
pub fn serving_pair(secret: &Secret) -> Result<(String, String), CertError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let get = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or(CertError::Missing {
                secret: name.clone(),
                key,
            })
    };
    Ok((get(TLS_CERT_KEY)?, get(TLS_KEY_KEY)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["switchboard-webhook.ops.svc".into(), "localhost".into()]
    }

    fn secret_of(material: Material) -> Secret {
        let (data, annotations) = material.into_secret_parts();
        let mut secret = Secret {
            data: Some(data),
            ..Secret::default()
        };
        secret.metadata.annotations = Some(annotations);
        secret
    }

    fn issued(plan: Plan) -> Material {
        match plan {
            Plan::Write(m) => *m,
            Plan::Keep => panic!("expected a new certificate"),
        }
    }

    #[test]
    fn issues_then_keeps_then_renews_with_the_same_ca() {
        let now = Timestamp::now();
        let first = issued(plan(None, &names(), now).unwrap());
        assert!(first.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(first.not_after, now + SERVING_LIFETIME);
        let secret = secret_of(first.clone());

        assert_eq!(plan(Some(&secret), &names(), now).unwrap(), Plan::Keep);
        let later = now + SERVING_LIFETIME - RENEW_BEFORE + SignedDuration::from_hours(1);
        let renewed = issued(plan(Some(&secret), &names(), later).unwrap());
        assert_eq!(renewed.ca_cert, first.ca_cert, "the CA survives a renewal");
        assert_ne!(renewed.cert, first.cert);
    }

    #[test]
    fn new_names_reissue_the_serving_certificate() {
        let now = Timestamp::now();
        let secret = secret_of(issued(plan(None, &names(), now).unwrap()));
        let more = [names(), vec!["127.0.0.1".into()]].concat();
        assert!(matches!(
            plan(Some(&secret), &more, now).unwrap(),
            Plan::Write(_)
        ));
    }

    #[test]
    fn a_secret_without_the_serving_pair_names_the_key() {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("webhook-tls".into()),
                ..Default::default()
            },
            ..Secret::default()
        };
        let err = serving_pair(&secret).unwrap_err().to_string();
        assert_eq!(err, "Secret webhook-tls has no usable tls.crt");
    }
}
