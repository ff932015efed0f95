//! TLS (and mTLS) to a pool's members, with rustls on the same `ring`
//! provider as the listeners.
//!
//! One [`UpstreamTls`] per pool holds one `ClientConfig`, so every
//! connection to the pool (pooled, PROXY-header and health-check ones)
//! shares its session cache and resumes sessions. A pool with TLS is built
//! anew on every reload, which re-reads its CA, certificate and key files.
//!
//! ALPN offers the pool's `alpn` list; a member that picks `h2` is spoken
//! to in HTTP/2 ([`super::connect`]).
//!
//! A failed handshake is a connect failure (retried, fed to ejection) and
//! is counted per member and [`Reason`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamTlsConfig;
use crate::tls::TlsError;

/// Why a TLS connection to a member failed: the `reason` label of
/// `sluice_upstream_tls_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reason {
    /// The member's certificate was not accepted, or it refused ours.
    Certificate,
    /// Anything else in the handshake: protocol versions, ciphers, ALPN,
    /// a connection closed mid-handshake.
    Handshake,
    /// The handshake did not finish within `connect_timeout`.
    Timeout,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Certificate => "certificate",
            Reason::Handshake => "handshake",
            Reason::Timeout => "timeout",
        }
    }

    /// The reason for a rustls error (ours, or an alert from the member).
    pub(crate) fn of(e: &rustls::Error) -> Reason {
        use AlertDescription as A;
        match e {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                Reason::Certificate
            }
            rustls::Error::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::CertificateRequired
                | A::UnknownCA
                | A::AccessDenied,
            ) => Reason::Certificate,
            _ => Reason::Handshake,
        }
    }
}

/// The rustls error inside an IO error from a TLS stream, if any.
pub(crate) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref())
}

/// A pool's TLS client: its config, the names to send, and its error counts.
pub(crate) struct UpstreamTls {
    connector: TlsConnector,
    /// `server_name`, for every member; otherwise [`UpstreamTls::register`]ed names.
    fixed: Option<ServerName<'static>>,
    names: RwLock<HashMap<SocketAddr, ServerName<'static>>>,
    errors: Mutex<BTreeMap<(SocketAddr, Reason), u64>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.fixed)
            .finish()
    }
}

impl UpstreamTls {
    /// Loads the pool's CA (or the system roots) and client pair. With
    /// `verify = false`, warns: this runs at start and at every reload.
    pub(crate) fn load(pool: &str, config: &UpstreamTlsConfig) -> Result<UpstreamTls, TlsError> {
        let provider = crate::tls::provider();
        let client_err = |e: rustls::Error| TlsError::Client {
            reason: e.to_string(),
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(client_err)?;
        let builder = if config.verify {
            let mut roots = RootCertStore::empty();
            match &config.ca {
                Some(path) => {
                    for cert in load_ca(path)? {
                        roots.add(cert).map_err(|e| TlsError::CaFile {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    for e in &found.errors {
                        tracing::warn!(pool, error = %e, "cannot read some system root certificates");
                    }
                    let (added, _) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        tracing::warn!(
                            pool,
                            "no system root certificates found: set [pool.NAME.tls] ca"
                        );
                    }
                }
            }
            builder.with_root_certificates(roots)
        } else {
            tracing::warn!(
                pool,
                "[pool.{pool}.tls] verify = false: upstream certificates are NOT verified, any server is trusted"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        };
        let mut client = match &config.client {
            Some(pair) => {
                let key = crate::tls::load_pair(pair)?;
                builder.with_client_cert_resolver(Arc::new(ClientCert(key)))
            }
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = config.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let fixed = match &config.server_name {
            Some(name) => {
                Some(
                    ServerName::try_from(name.clone()).map_err(|e| TlsError::Client {
                        reason: format!("server_name \"{name}\": {e}"),
                    })?,
                )
            }
            None => None,
        };
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(client)),
            fixed,
            names: RwLock::new(HashMap::new()),
            errors: Mutex::new(BTreeMap::new()),
        })
    }

    /// Records the name for `addr`: the host of its server as configured
    /// (`name:port`, or the IP itself). An SRV record's members (`server`
    /// is the record's `_service._proto.name`) go by their IP.
    pub(crate) fn register(&self, addr: SocketAddr, server: &str) {
        let host = match server.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => server,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = match ServerName::try_from(host.to_string()) {
            Ok(name) if !host.starts_with('_') => name,
            _ => ServerName::from(addr.ip()),
        };
        self.names
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, name);
    }

    fn name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        if let Some(name) = &self.fixed {
            return name.clone();
        }
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| ServerName::from(addr.ip()))
    }

    /// Counts one failure for `addr`.
    pub(crate) fn count(&self, addr: SocketAddr, reason: Reason) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((addr, reason))
            .or_insert(0) += 1;
    }

    /// Failures so far, per member and reason (for metrics).
    pub(crate) fn errors(&self) -> Vec<(SocketAddr, Reason, u64)> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(&(addr, reason), &n)| (addr, reason, n))
            .collect()
    }

    /// The TLS handshake with `addr` over `stream`, by `deadline`. Failures
    /// are counted, and returned as IO errors (`TimedOut` on the deadline)
    /// for the connect-error classification.
    pub(crate) async fn handshake<S>(
        &self,
        addr: SocketAddr,
        stream: S,
        deadline: Instant,
    ) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let connecting = self.connector.connect(self.name_for(addr), stream);
        match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => {
                let reason = rustls_error(&e).map_or(Reason::Handshake, Reason::of);
                self.count(addr, reason);
                Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake ({}): {e}", reason.as_str()),
                ))
            }
            Err(_) => {
                self.count(addr, Reason::Timeout);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            }
        }
    }
}

/// Reads the PEM certificates of a `ca` file.
pub(crate) fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |e: rustls_pki_types::pem::Error| TlsError::CaFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCa {
            path: path.to_path_buf(),
        });
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(TlsError::NoCa {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The pool's client certificate, sent whenever the member asks for one.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `verify = false`: any certificate, any name. Signatures are still
/// checked, so the handshake is with whoever holds the presented key.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_names_drop_the_port() {
        let config = UpstreamTlsConfig {
            server_name: None,
            ca: None,
            client: None,
            verify: false,
            alpn: vec![],
        };
        let tls = UpstreamTls::load("p", &config).expect("loads");
        let a: SocketAddr = "10.0.0.1:443".parse().expect("addr");
        let b: SocketAddr = "[::1]:443".parse().expect("addr");
        tls.register(a, "api.internal:443");
        tls.register(b, "[::1]:443");
        let srv: SocketAddr = "10.0.0.2:8443".parse().expect("addr");
        tls.register(srv, "_https._tcp.api.internal");
        assert_eq!(tls.name_for(srv), ServerName::from(srv.ip()));
        assert_eq!(
            tls.name_for(a),
            ServerName::try_from("api.internal").expect("name")
        );
        assert_eq!(tls.name_for(b), ServerName::from(b.ip()));
        let c: SocketAddr = "10.0.0.3:443".parse().expect("addr");
        assert_eq!(tls.name_for(c), ServerName::from(c.ip()));
    }

    #[test]
    fn reasons_of_rustls_errors() {
        use rustls::{AlertDescription as A, CertificateError};
        for (e, want) in [
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                Reason::Certificate,
            ),
            (
                rustls::Error::AlertReceived(A::CertificateRequired),
                Reason::Certificate,
            ),
            (
                rustls::Error::AlertReceived(A::UnknownCA),
                Reason::Certificate,
            ),
            (
                rustls::Error::AlertReceived(A::HandshakeFailure),
                Reason::Handshake,
            ),
            (rustls::Error::NoApplicationProtocol, Reason::Handshake),
        ] {
            assert_eq!(Reason::of(&e), want, "{e}");
        }
    }
}
