//! TLS termination with rustls on the `ring` provider: TLS 1.2 and 1.3 only,
//! ALPN `h2` then `http/1.1`, and the certificate chosen by the client's SNI
//! name among the listener's pairs (the first pair is the default).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub(crate) use crate::config::PairPart as Part;
use crate::config::{CertPair, PairError, TlsConfig};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot read certificate file {path}: {reason}")]
    CertFile { path: PathBuf, reason: String },
    #[error("certificate file {path} holds no PEM certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read private key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("private key {path} cannot be used: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("private key {path} does not match certificate {cert}")]
    Mismatch { path: PathBuf, cert: PathBuf },
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("CA file {path} holds no usable PEM certificate")]
    NoCa { path: PathBuf },
    #[error("cannot build the TLS client config: {reason}")]
    Client { reason: String },
}

impl TlsError {
    pub(crate) fn part(&self) -> Part {
        match self {
            TlsError::CertFile { .. }
            | TlsError::NoCert { .. }
            | TlsError::CaFile { .. }
            | TlsError::NoCa { .. } => Part::Cert,
            _ => Part::Key,
        }
    }
}

/// As config validation reports it: at the `cert` or `key` of the pair.
impl From<TlsError> for PairError {
    fn from(e: TlsError) -> PairError {
        PairError {
            part: e.part(),
            message: e.to_string(),
        }
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a certificate chain and its private key, checking that they match.
pub(crate) fn load_pair(pair: &CertPair) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| TlsError::CertFile {
            path: pair.cert.clone(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::CertFile {
            path: pair.cert.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            path: pair.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| TlsError::KeyFile {
        path: pair.key.clone(),
        reason: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: pair.key.clone(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(certs, signing);
    match ck.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::Mismatch {
                path: pair.key.clone(),
                cert: pair.cert.clone(),
            })
        }
        // Unknown: the key type cannot report its public key; accept it.
        Err(_) => {}
    }
    Ok(Arc::new(ck))
}

/// Picks the certificate whose names cover the SNI name; the first otherwise.
#[derive(Debug)]
struct SniResolver {
    keys: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
        let Some(der) = key.cert.first() else {
            return false;
        };
        match webpki::EndEntityCert::try_from(der) {
            Ok(cert) => cert.verify_is_valid_for_subject_name(name).is_ok(),
            Err(_) => false,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = hello.server_name() {
            if let Ok(name) = ServerName::try_from(sni) {
                if let Some(k) = self.keys.iter().find(|k| Self::covers(k, &name)) {
                    return Some(k.clone());
                }
            }
        }
        self.keys.first().cloned()
    }
}

/// Builds the rustls server config for one TLS listener.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let keys = tls
        .certs
        .iter()
        .map(load_pair)
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::BadKey {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { keys }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
