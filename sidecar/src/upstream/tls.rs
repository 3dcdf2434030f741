//! TLS to the backplane (`rediss://`, `rediss+sentinel://`), as cloud Redis services require.
//!
//! Trust is the system's roots plus an optional CA bundle; every certificate is checked against
//! the host connected to (sent as SNI), or against `--upstream-tls-server-name` when the servers
//! share a certificate issued for another name. A client certificate and key give mutual TLS.
//! Skipping verification exists only when spelled out (`--upstream-tls-insecure-skip-verify`).
//! Handshake failures are turned into sentences that name the cause and the setting to change.
//! The CA, certificate and key files are looked at again before each handshake and re-read when
//! they changed on disk (a renewed Secret); files that do not load leave the previous ones in use.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Where the TLS settings come from (the sidecar's flags).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub insecure_skip_verify: bool,
}

impl TlsOptions {
    /// True when any TLS setting is given.
    pub fn any(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some()
            || self.insecure_skip_verify
    }
}

/// A ready TLS client configuration, shared by every link (clones share its reloads too).
#[derive(Clone)]
pub struct Tls {
    current: Arc<Mutex<Current>>,
    options: Arc<TlsOptions>,
    server_name: Option<ServerName<'static>>,
}

/// The connector in use and what its files looked like when they were read.
struct Current {
    connector: TlsConnector,
    stamp: Stamp,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A cheap fingerprint of every file the configuration is built from. Mounted Secrets are
/// renewed in place: kubelet points the volume's `..data` link at a new directory, so each
/// file (followed through its links) gets a new inode and modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<(&'static str, PathBuf, Option<FileStamp>)>);

/// `None` in a [`Stamp`]: the file cannot be looked at now (mid-swap, removed); reading it then
/// fails and names the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    id: (u64, u64),
}

impl Stamp {
    fn of(options: &TlsOptions) -> Self {
        let ca =
            (!options.insecure_skip_verify).then_some(("--upstream-tls-ca-file", &options.ca_file));
        let files = ca.into_iter().chain([
            ("--upstream-tls-cert-file", &options.cert_file),
            ("--upstream-tls-key-file", &options.key_file),
        ]);
        Stamp(
            files
                .filter_map(|(flag, path)| {
                    let path = path.as_ref()?;
                    let seen = fs::metadata(path).ok().map(|m| FileStamp {
                        modified: m.modified().ok(),
                        len: m.len(),
                        id: file_id(&m),
                    });
                    Some((flag, path.clone(), seen))
                })
                .collect(),
        )
    }

    /// The files that differ from `before`, as the flags and paths the log names.
    fn changed_since(&self, before: &Stamp) -> String {
        self.0
            .iter()
            .filter(|file| !before.0.contains(file))
            .map(|(flag, path, _)| format!("{flag} {}", path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(unix)]
fn file_id(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_: &fs::Metadata) -> (u64, u64) {
    (0, 0)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl Tls {
    /// Builds the client configuration; every error names the flag and the file.
    pub fn new(options: &TlsOptions) -> Result<Self, String> {
        // Taken before reading, so a file replaced while it is read is read again next time.
        let stamp = Stamp::of(options);
        let config = client_config(options)?;
        let server_name = options
            .server_name
            .as_deref()
            .map(|n| {
                ServerName::try_from(n.to_owned())
                    .map_err(|e| format!("--upstream-tls-server-name {n:?}: {e}"))
            })
            .transpose()?;
        Ok(Tls {
            current: Arc::new(Mutex::new(Current {
                connector: TlsConnector::from(Arc::new(config)),
                stamp,
            })),
            options: Arc::new(options.clone()),
            server_name,
        })
    }

    /// The connector for a new connection, rebuilt first if a file changed since it was read.
    /// A rebuild that fails keeps the previous one: a connect must not fail because a renewal
    /// is half-written, and the next handshake tries again.
    fn connector(&self) -> TlsConnector {
        // Held while rebuilding (no await inside) so links connecting together rebuild once.
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = Stamp::of(&self.options);
        if stamp != current.stamp {
            let changed = stamp.changed_since(&current.stamp);
            match client_config(&self.options) {
                Ok(config) => {
                    tracing::info!(files = %changed, "TLS: reloaded the TLS files that changed on disk; new connections use them");
                    *current = Current {
                        connector: TlsConnector::from(Arc::new(config)),
                        stamp,
                    };
                }
                Err(e) => tracing::warn!(
                    files = %changed,
                    error = %e,
                    "TLS: TLS files changed on disk but do not load; new connections keep the previous ones until they do"
                ),
            }
        }
        current.connector.clone()
    }

    /// The TLS handshake over `tcp` with the server at `host`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<TlsStream<TcpStream>, String> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host:?} is not a name a certificate can be checked against ({e}); set --upstream-tls-server-name"))?,
        };
        let shown = self.checked_name(host);
        let connector = self.connector();
        connector.connect(name, tcp).await.map_err(|e| {
            explain(&e, &shown).unwrap_or_else(|| format!("TLS handshake failed: {e}"))
        })
    }

    /// The host name certificates are checked against for a server at `host`.
    pub fn checked_name<'a>(&'a self, host: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.server_name {
            Some(ServerName::DnsName(d)) => d.as_ref().into(),
            Some(other) => format!("{other:?}").into(),
            None => host.into(),
        }
    }
}

/// The client configuration from `options`' files (the server name aside); every error names the
/// flag and the file.
fn client_config(options: &TlsOptions) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if options.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    } else {
        builder.with_root_certificates(roots(options.ca_file.as_deref())?)
    };
    match (&options.cert_file, &options.key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let flag = "--upstream-tls-cert-file";
            let chain = CertificateDer::pem_slice_iter(&read(flag, cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{flag} {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!("{flag} {}: no certificate in it", cert.display()));
            }
            let flag = "--upstream-tls-key-file";
            let key_der = PrivateKeyDer::from_pem_slice(&read(flag, key)?)
                .map_err(|e| format!("{flag} {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!(
                    "--upstream-tls-cert-file and --upstream-tls-key-file do not go together: {e}"
                )
            })
        }
        _ => Err(
            "--upstream-tls-cert-file and --upstream-tls-key-file go together: give both for mutual TLS, or neither"
                .into(),
        ),
    }
}

/// The system's trust roots (honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus `ca_file`.
fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let flag = "--upstream-tls-ca-file";
        let certs = CertificateDer::pem_slice_iter(&read(flag, path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{flag} {}: no certificate in it", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(
            "TLS: no trusted CA (the system has none installed); give the backplane's CA with --upstream-tls-ca-file"
                .into(),
        );
    }
    Ok(roots)
}

/// A TLS error as a sentence: what failed and which setting addresses it (`None`: `e` is not a
/// TLS error). Also for alerts after the handshake: a TLS 1.3 server checks the client's
/// certificate only then, so its refusal arrives on the first read.
pub(crate) fn explain(e: &io::Error, host: &str) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    use rustls::AlertDescription as Alert;
    Some(match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "TLS: the server's certificate is not signed by a CA this sidecar trusts ({c:?}); give its CA with --upstream-tls-ca-file"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "TLS: the server's certificate is not valid for {host:?} ({c:?}); connect by a name it lists, or set --upstream-tls-server-name"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("TLS: the server's certificate has expired ({c:?})")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!("TLS: the server's certificate is not valid yet ({c:?}); check the clocks")
            }
            other => format!("TLS: the server's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(
            alert @ (Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::HandshakeFailure
            | Alert::CertificateUnknown
            | Alert::AccessDenied),
        ) => format!(
            "TLS: the server refused the handshake ({alert:?}); if it requires client certificates, give --upstream-tls-cert-file and --upstream-tls-key-file signed by a CA it trusts"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "TLS: the server did not answer in TLS ({tls}); is this its TLS port? (redis:// is for plain ports)"
        ),
        other => format!("TLS handshake failed: {other}"),
    })
}

/// Accepts any certificate (`--upstream-tls-insecure-skip-verify`), while still checking the
/// handshake's signatures so the session keys are the server's.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The read half of an upstream connection, plain or TLS.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of an upstream connection, plain or TLS.
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl WriteHalf {
    /// Writes all of `bytes` and flushes (TLS holds records back until flushed; TCP does not).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.write_all(bytes).await?;
        if matches!(self, WriteHalf::Tls(_)) {
            self.flush().await?;
        }
        Ok(())
    }
}

/// Splits a connection into halves the links own separately.
pub fn split_plain(tcp: TcpStream) -> (ReadHalf, WriteHalf) {
    let (r, w) = tcp.into_split();
    (ReadHalf::Plain(r), WriteHalf::Plain(w))
}

pub fn split_tls(tls: TlsStream<TcpStream>) -> (ReadHalf, WriteHalf) {
    let (r, w) = tokio::io::split(tls);
    (ReadHalf::Tls(r), WriteHalf::Tls(w))
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Plain(w) => w.is_write_vectored(),
            WriteHalf::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_sidecar_support::TempDir;
    use switchboard_sidecar_support::tls::ca;

    /// Replaces `path` the way kubelet does: a whole new file renamed over it.
    fn replace(path: &Path, contents: &str) {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, contents).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    fn options(ca_file: &Path) -> TlsOptions {
        TlsOptions {
            ca_file: Some(ca_file.to_owned()),
            ..TlsOptions::default()
        }
    }

    #[test]
    fn the_stamp_changes_when_a_file_is_replaced_even_by_the_same_bytes() {
        let dir = TempDir::new("tls-stamp");
        let path = dir.path().join("ca.crt");
        let pem = ca("stamp").pem();
        fs::write(&path, &pem).unwrap();
        let before = Stamp::of(&options(&path));
        assert_eq!(Stamp::of(&options(&path)), before, "nothing changed");
        replace(&path, &pem);
        let after = Stamp::of(&options(&path));
        assert_ne!(after, before);
        assert_eq!(
            after.changed_since(&before),
            format!("--upstream-tls-ca-file {}", path.display())
        );
        fs::remove_file(&path).unwrap();
        assert_ne!(
            Stamp::of(&options(&path)),
            after,
            "a removed file counts as changed"
        );
    }

    #[test]
    fn a_changed_file_is_reloaded_and_one_that_does_not_load_keeps_the_previous_config() {
        let dir = TempDir::new("tls-reload");
        let path = dir.path().join("ca.crt");
        fs::write(&path, ca("first").pem()).unwrap();
        let tls = Tls::new(&options(&path)).unwrap();
        let shared = tls.clone();
        let first = tls.connector().config().clone();
        assert!(
            Arc::ptr_eq(tls.connector().config(), &first),
            "unchanged: kept"
        );

        replace(&path, "-----BEGIN CERTIFICATE-----\nhalf-writ");
        assert!(
            Arc::ptr_eq(tls.connector().config(), &first),
            "bad PEM: kept"
        );
        assert!(
            Arc::ptr_eq(tls.connector().config(), &first),
            "tried again, kept"
        );

        replace(&path, &ca("second").pem());
        let second = shared.connector().config().clone();
        assert!(!Arc::ptr_eq(&second, &first), "a new CA: rebuilt");
        assert!(
            Arc::ptr_eq(tls.connector().config(), &second),
            "clones share it"
        );
    }
}
