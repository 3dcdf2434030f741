//! Throwaway credentials for one control plane: a CA, the API server's serving certificate and the
//! service-account signing key. Generated per run, so nothing secret is ever checked in.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// Where the generated files were written.
pub struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
}

impl Pki {
    /// `extra_ips`: addresses the API server is also served on (the node's bridge address and the
    /// `kubernetes` Service's ClusterIP in node mode), added to its certificate.
    pub fn generate(dir: &Path, extra_ips: &[Ipv4Addr]) -> Result<Self, Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "switchboard-testkit-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        // Every name a client in these tests may dial: loopback, and the in-cluster service names.
        let mut serving = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        for ip in extra_ips {
            serving
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(*ip)));
        }
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;
        write(&dir.join("ca.crt"), &ca.pem())?;

        let pki = Pki {
            dir: dir.to_owned(),
            ca,
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            service_account_key: dir.join("service-account.key"),
            service_account_public_key: dir.join("service-account.pub"),
        };
        write(&pki.serving_cert, &serving_cert.pem())?;
        write(&pki.serving_key, &serving_key.serialize_pem())?;
        // ECDSA P-256: the API server signs tokens with it (ES256). The verifying side wants the public
        // key in its own file: it does not take it from a PKCS#8 private key.
        let service_account = KeyPair::generate()?;
        write(&pki.service_account_key, &service_account.serialize_pem())?;
        write(
            &pki.service_account_public_key,
            &service_account.public_key_pem(),
        )?;
        Ok(pki)
    }

    /// A client certificate for `user` in `groups` (the API server maps CN to the user name and O to
    /// groups), written as `<file>.crt` and `<file>.key`; returns both paths.
    pub fn client_cert(
        &self,
        file: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<(PathBuf, PathBuf), Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.crt")),
            self.dir.join(format!("{file}.key")),
        );
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
