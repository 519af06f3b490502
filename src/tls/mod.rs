//! wss://: the certificate pair (loading, validation, expiry) and one connection's TLS layer.
//!
//! No sockets here either: [`Tls`] turns ciphertext the loop read into plaintext in a buffer the
//! loop owns, and plaintext into ciphertext the loop writes. rustls runs with the `ring` provider
//! (it builds with a C compiler alone), TLS 1.2 and 1.3, ALPN `http/1.1`.

mod conn;
mod der;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

pub use conn::{Decrypted, Tls};
pub use der::not_after;
/// The rustls wsd is built with (for embedders and the fuzz targets that build configurations).
pub use rustls;

/// The ALPN protocol wsd speaks inside TLS: the WebSocket handshake is HTTP/1.1 (RFC 6455 §4.1;
/// RFC 8441's HTTP/2 bootstrap is not supported).
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// A loaded certificate chain and key, ready to serve handshakes.
#[derive(Clone)]
pub struct Certified {
    pub config: Arc<ServerConfig>,
    /// The leaf certificate's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl fmt::Debug for Certified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certified")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A file of the pair that cannot be used, and why (for `--check-config`, start-up and SIGHUP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    /// `tls_cert` or `tls_key`: the setting that names the file.
    pub key: &'static str,
    pub problem: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

impl std::error::Error for LoadError {}

/// Loads `cert` (a PEM chain, leaf first) and `key` (a PEM PKCS#8, PKCS#1 or SEC1 private key)
/// and checks that they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<Certified, LoadError> {
    let bad_cert = |problem: String| LoadError {
        file: cert.to_path_buf(),
        key: "tls_cert",
        problem,
    };
    let bad_key = |problem: String| LoadError {
        file: key.to_path_buf(),
        key: "tls_key",
        problem,
    };
    let cert_pem = std::fs::read(cert).map_err(|e| bad_cert(format!("cannot read: {e}")))?;
    let key_pem = std::fs::read(key).map_err(|e| bad_key(format!("cannot read: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad_cert(format!("not a PEM certificate chain: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(bad_cert("no CERTIFICATE block in the file".to_string()));
    };
    let not_after =
        not_after(leaf).ok_or_else(|| bad_cert("the first certificate is not X.509 DER".into()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad_key(format!("no usable PEM private key: {e}")))?;
    let config = server_config(chain, key_der)
        .map_err(|e| bad_key(format!("does not fit {}: {e}", cert.display())))?;
    Ok(Certified { config, not_after })
}

/// wsd's TLS server configuration for a chain (leaf first) and its key: the ring provider,
/// TLS 1.3 and 1.2, ALPN `http/1.1`. Fails when the key does not match the leaf.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        // Checks that the key matches the leaf certificate's public key.
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(Arc::new(config))
}
