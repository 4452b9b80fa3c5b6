//! TLS to servers, as libpq's `sslmode` over rustls (ring as the crypto provider).
//!
//! | sslmode | SSLRequest | server says `N` | certificate checked |
//! | --- | --- | --- | --- |
//! | disable | not sent | — | — |
//! | prefer | sent | plaintext | no (chain, like verify-ca, when `sslrootcert` is set) |
//! | require | sent | refused | no (chain, like verify-ca, when `sslrootcert` is set) |
//! | verify-ca | sent | refused | chain to a CA in `sslrootcert`, any name |
//! | verify-full | sent | refused | chain, and the certificate names the host |
//!
//! "Not checked" is libpq's meaning too: the connection is encrypted against a passive
//! listener, but whoever answers is believed. Unix sockets never use TLS (as in libpq and
//! PostgreSQL, which answers `N` there).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use shardgate_config::{Host, SslMode};
use shardgate_wire::startup::SSL_REQUEST;
use shardgate_wire::stream::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::TlsConnector;

/// Why TLS to a server could not be set up; shown to clients inside the 08006 message.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
    #[error("host name `{0}` cannot be checked against a certificate (sslmode = verify-full)")]
    BadName(String),
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        io::Error::other(e.to_string())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether `sslmode` refuses a connection the server will not encrypt.
fn requires_tls(mode: SslMode) -> bool {
    !matches!(mode, SslMode::Disable | SslMode::Prefer)
}

/// Whether TLS is attempted at all on a connection to `host`.
fn attempts_tls(host: &Host) -> bool {
    host.sslmode != SslMode::Disable && !host.host.starts_with('/')
}

/// The host name without IPv6 brackets.
fn bare_name(host: &Host) -> &str {
    host.host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&host.host)
}

/// The rustls client configuration `host`'s sslmode asks for. Built per connection (a few
/// tens of microseconds next to the handshake and SCRAM), so a CA file that changes on disk
/// is used from the next connection on.
pub(crate) fn client_config(host: &Host) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (host.sslmode, &host.sslrootcert) {
        (SslMode::VerifyFull, Some(ca)) => webpki_verifier(ca, &provider)?,
        (SslMode::Disable | SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(ca)) => {
            Arc::new(AnyName(webpki_verifier(ca, &provider)?))
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            // Validation refuses this; stay safe if a config bypassed it.
            return Err(TlsError::RootCert {
                path: String::new(),
                reason: format!("sslmode = {} needs sslrootcert", host.sslmode),
            });
        }
        (_, None) => Arc::new(AcceptAnyCertificate(Arc::clone(&provider))),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // What libpq 17 sends; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// The name sent (SNI) and, for verify-full, checked against the certificate.
fn server_name(host: &Host) -> Result<ServerName<'static>, TlsError> {
    match ServerName::try_from(bare_name(host).to_owned()) {
        Ok(name) => Ok(name),
        Err(_) if host.sslmode == SslMode::VerifyFull => Err(TlsError::BadName(host.host.clone())),
        // Any name will do when it is not checked; an IP address sends no SNI.
        Err(_) => Ok(ServerName::IpAddress(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
        )),
    }
}

fn webpki_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let root_err = |reason: String| TlsError::RootCert {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| root_err(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| root_err(format!("not a PEM certificate file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| root_err(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(root_err("holds no certificate".into()));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| root_err(e.to_string()))
}

/// Negotiates TLS on a fresh connection to `host` as its sslmode says: SSLRequest, then the
/// handshake on `S`, plaintext on `N` where allowed. The `Err` text says what failed and under
/// which sslmode (callers wrap it as a connect error, 08006 for clients).
pub(crate) async fn negotiate(stream: &mut Stream, host: &Host) -> io::Result<()> {
    if !attempts_tls(host) {
        return Ok(());
    }
    let config = client_config(host)?;
    let name = server_name(host)?;
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8i32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    stream.write_all(&request).await?;
    // Exactly one byte: anything the server sent after it would be read by TLS, never as
    // plaintext (the buffered-data injection PostgreSQL's CVE-2021-23222 was about).
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => stream
            .connect_tls(&TlsConnector::from(config), name)
            .await
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("TLS handshake failed (sslmode = {}): {e}", host.sslmode),
                )
            }),
        b'N' if requires_tls(host.sslmode) => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "the server does not accept TLS connections, but sslmode = {}",
                host.sslmode
            ),
        )),
        b'N' => Ok(()),
        // A server too old for SSLRequest answers with an ErrorResponse.
        b'E' => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server refused the SSLRequest with an error (set sslmode = \"disable\" for it)",
        )),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {other:#04x} to SSLRequest"),
        )),
    }
}

/// For `verify-ca`, and `prefer`/`require` with a CA file: the chain must lead to a trusted
/// CA, the name is not looked at. webpki checks the chain before the name, so a name
/// mismatch means the chain passed.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// For `prefer` and `require` without a CA file, as libpq: any certificate is accepted, so the
/// connection is encrypted but the server is not authenticated (a man in the middle can
/// answer). The handshake signatures are still checked against the presented certificate.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// Why a control connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlConnectError {
    /// The host's TLS settings cannot be used (root certificate, server name).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The connection or the login failed: tokio-postgres' error with its causes (its own
    /// text, e.g. "error performing TLS handshake", does not say why).
    #[error("{0}")]
    Postgres(String),
}

impl From<tokio_postgres::Error> for ControlConnectError {
    fn from(e: tokio_postgres::Error) -> ControlConnectError {
        ControlConnectError::Postgres(with_causes(&e))
    }
}

/// Opens a tokio-postgres control connection (the health and lag monitor, the rebalancer) to
/// `host` with the same TLS rules as the data path, and drives it in a task.
pub async fn connect_control(
    config: &mut tokio_postgres::Config,
    host: &Host,
) -> Result<tokio_postgres::Client, ControlConnectError> {
    if !attempts_tls(host) {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(client);
    }
    config.ssl_mode(if requires_tls(host.sslmode) {
        tokio_postgres::config::SslMode::Require
    } else {
        tokio_postgres::config::SslMode::Prefer
    });
    let tls = MakeRustls {
        connector: TlsConnector::from(client_config(host)?),
        name: server_name(host)?,
    };
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// An error and its causes: tokio-postgres' own text ("error performing TLS handshake") does
/// not say why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// tokio-postgres' TLS hook over our rustls configuration. The name is fixed from the
/// configured host (tokio-postgres would pass the same one).
#[derive(Clone)]
struct MakeRustls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = MakeRustls;
    type Error = io::Error;

    fn make_tls_connect(&mut self, _domain: &str) -> io::Result<MakeRustls> {
        Ok(self.clone())
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// A TLS stream tokio-postgres can drive.
struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        // The monitor does not offer SCRAM-SHA-256-PLUS; plain SCRAM works over TLS.
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(mode: SslMode, ca: Option<&str>) -> Host {
        Host {
            host: "db.example".into(),
            port: 5432,
            sslmode: mode,
            sslrootcert: ca.map(Into::into),
        }
    }

    #[test]
    fn which_modes_try_and_require_tls() {
        assert!(!attempts_tls(&host(SslMode::Disable, None)));
        assert!(attempts_tls(&host(SslMode::Prefer, None)));
        let mut unix = host(SslMode::Require, None);
        unix.host = "/run/postgresql".into();
        assert!(!attempts_tls(&unix));
        assert!(!requires_tls(SslMode::Prefer));
        assert!(requires_tls(SslMode::Require));
        assert!(requires_tls(SslMode::VerifyFull));
    }

    #[test]
    fn a_missing_ca_file_names_the_file() {
        let e = client_config(&host(SslMode::VerifyFull, Some("/nonexistent/ca.pem")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = client_config(&host(SslMode::VerifyCa, path.to_str()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("holds no certificate"), "{e}");
    }

    #[test]
    fn names_for_sni_and_verification() {
        let mut h = host(SslMode::VerifyFull, None);
        assert!(matches!(server_name(&h), Ok(ServerName::DnsName(_))));
        h.host = "[::1]".into();
        assert!(matches!(server_name(&h), Ok(ServerName::IpAddress(_))));
        h.host = "bad name!".into();
        assert!(server_name(&h).is_err());
        h.sslmode = SslMode::Require;
        assert!(server_name(&h).is_ok());
    }
}
