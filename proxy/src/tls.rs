//! TLS to clients: the `[tls]` section made into a rustls acceptor (ring as the crypto
//! provider), held behind an `ArcSwap` so a reload (SIGHUP, `POST /api/v1/reload`) re-reads
//! the certificate and key while sessions keep the one they started with.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use shardgate_config::{Tls, TlsMode};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be used. Names the file, like a config error.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert_file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("tls.key_file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("tls: certificate and key do not fit together or are unusable: {0}")]
    Setup(#[from] rustls::Error),
}

/// What the proxy does with TLS right now.
pub(crate) struct TlsState {
    pub mode: TlsMode,
    /// Present unless `mode` is disable.
    pub acceptor: Option<TlsAcceptor>,
    /// The certificate chain served (leaf first), to tell a changed certificate on reload.
    pub chain: Vec<CertificateDer<'static>>,
    /// The certificate file as read, for channel binding (tls-server-end-point hashes the
    /// leaf; pgwire's SCRAM takes it as PEM).
    pub cert_pem: Option<Arc<[u8]>>,
}

impl TlsState {
    fn disabled() -> TlsState {
        TlsState {
            mode: TlsMode::Disable,
            acceptor: None,
            chain: Vec::new(),
            cert_pem: None,
        }
    }

    /// Reads the certificate chain and key named in `tls` and builds the acceptor.
    fn load(tls: &Tls) -> Result<TlsState, TlsError> {
        if tls.mode == TlsMode::Disable {
            return Ok(TlsState::disabled());
        }
        // Validation guarantees both files with any other mode.
        let (Some(cert_path), Some(key_path)) = (&tls.cert_file, &tls.key_file) else {
            return Err(TlsError::Cert {
                path: String::new(),
                reason: format!("tls.mode = \"{}\" needs cert_file and key_file", tls.mode),
            });
        };
        let (chain, cert_pem) = read_chain(cert_path)?;
        let key = read_key(key_path)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)?;
        // PostgreSQL 17 clients offer this ALPN; older ones offer none, which is fine too.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(TlsState {
            mode: tls.mode,
            acceptor: Some(TlsAcceptor::from(Arc::new(config))),
            chain,
            cert_pem: Some(cert_pem.into()),
        })
    }
}

/// The certificates of a PEM file, and the file's bytes.
type Chain = (Vec<CertificateDer<'static>>, Vec<u8>);

fn read_chain(path: &Path) -> Result<Chain, TlsError> {
    let err = |reason: String| TlsError::Cert {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if chain.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok((chain, pem))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let err = |reason: String| TlsError::Key {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| err(format!("no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))
}

/// The live TLS settings of the client listener.
pub(crate) struct ClientTls {
    state: ArcSwap<TlsState>,
}

impl ClientTls {
    /// No TLS: every SSLRequest is answered `N`.
    pub fn disabled() -> ClientTls {
        ClientTls {
            state: ArcSwap::from_pointee(TlsState::disabled()),
        }
    }

    /// Loads `tls` at start; a bad file stops the start.
    pub fn start(&self, tls: &Tls) -> Result<(), TlsError> {
        let state = TlsState::load(tls)?;
        if tls.mode == TlsMode::Disable && tls.cert_file.is_some() {
            tracing::warn!("tls.cert_file is set but tls.mode = \"disable\": clients get no TLS");
        }
        self.state.store(Arc::new(state));
        Ok(())
    }

    /// What new connections use now.
    pub fn current(&self) -> Arc<TlsState> {
        self.state.load_full()
    }

    /// Re-reads the certificate and key (a reload, e.g. after the files were renewed) and
    /// swaps them in; connections already encrypted keep theirs. Returns what to report:
    /// `tls` when the section changed, `tls.certificate` when only the files' contents did,
    /// nothing when neither did. A file that cannot be used leaves the previous certificate
    /// (and mode) in place, which is reported too.
    pub fn reload(&self, old: &Tls, new: &Tls) -> Vec<String> {
        match TlsState::load(new) {
            Ok(state) => {
                let changed_cert = state.chain != self.state.load().chain;
                self.state.store(Arc::new(state));
                if old != new {
                    vec!["tls".into()]
                } else if changed_cert {
                    tracing::info!("TLS certificate reloaded");
                    vec!["tls.certificate".into()]
                } else {
                    Vec::new()
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS settings not reloaded; the previous ones stay");
                vec![format!(
                    "tls: NOT applied, the previous certificate and mode stay ({e})"
                )]
            }
        }
    }
}
