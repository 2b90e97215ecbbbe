//! The server's TLS from its PEM files: tonic's configuration for gRPC, and a rustls
//! acceptor for HTTP offering HTTP/2 and HTTP/1.1.

use std::sync::Arc;

use thiserror::Error;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::config::TlsFiles;

#[derive(Debug, Error)]
#[error("TLS {what} {path}: {source}")]
pub struct TlsError {
    pub what: &'static str,
    pub path: String,
    pub source: std::io::Error,
}

/// The server's TLS identity from its PEM files.
pub fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let read = |what, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| TlsError {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let identity = Identity::from_pem(read("certificate", &files.cert)?, read("key", &files.key)?);
    Ok(ServerTlsConfig::new().identity(identity))
}

/// HTTP's TLS from the same PEM files, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn http_tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let bad = |what: &'static str, path: &std::path::Path, e: String| TlsError {
        what,
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("certificate", &files.cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("key", &files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| bad("certificate and key", &files.cert, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
