//! Certificates for TLS tests, made here (rcgen): a CA, a server certificate for `localhost`
//! and 127.0.0.1, and a client certificate, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::sentinel::TlsFiles;

/// A CA, a server certificate for `localhost` and 127.0.0.1, and a client certificate, as PEM
/// files in `dir`.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A self-signed CA named `name`.
pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes `pem` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

impl Certificates {
    pub fn generate(dir: &Path) -> Self {
        let ca = ca("switchboard-test-backplane-ca");
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "redis");
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client
            .distinguished_name
            .push(DnType::CommonName, "sidecar");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();
        Certificates {
            ca: write(dir, "ca.crt", &ca.pem()),
            server_cert: write(dir, "server.crt", &server_cert.pem()),
            server_key: write(dir, "server.key", &server_key.serialize_pem()),
            client_cert: write(dir, "client.crt", &client_cert.pem()),
            client_key: write(dir, "client.key", &client_key.serialize_pem()),
        }
    }
}

impl Certificates {
    /// The server side's files, for a TLS Sentinel group.
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            ca: self.ca.clone(),
        }
    }
}
