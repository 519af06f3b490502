//! wss:// for wsd-load: the client configuration (`--ca FILE`, or `--insecure` for a test
//! certificate) and nonblocking reads and writes through a rustls client connection.
//!
//! The load generator's memory per connection does not matter as the server's does, so it uses
//! rustls's buffered API: plaintext in, ciphertext out, rustls keeping what the socket refuses.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

/// The CA bundle trusted without `--ca` (Debian's).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client configuration: trusting the PEM CAs in `ca`, or (`insecure`) any certificate.
pub fn client_config(ca: &Path, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name certificates are checked against: the URL's host without its port.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = match host.rsplit_once(':') {
        Some((h, port)) if !port.contains(']') => h,
        _ => host,
    };
    let bare = bare.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|e| format!("--url host {host:?}: {e}"))
}

/// `--insecure`: accepts any certificate (signatures are still checked, so the handshake costs
/// what it costs with a real one).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether a TLS error was printed already (one is enough to say what is wrong).
static REPORTED: AtomicBool = AtomicBool::new(false);

/// A TLS error as an IO error, printed the first time (a bad certificate fails every
/// connection the same way).
fn failed(e: rustls::Error) -> io::Error {
    if !REPORTED.swap(true, Ordering::Relaxed) {
        eprintln!("wsd-load: TLS: {e}");
    }
    io::Error::other(e)
}

/// Reads plaintext like a nonblocking socket read: `Ok(0)` at the end (close_notify, or a FIN),
/// `WouldBlock` when nothing is there yet.
pub fn read(tls: &mut ClientConnection, sock: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(0) => {
                tls.process_new_packets().map_err(failed)?;
                return match tls.reader().read(buf) {
                    Ok(n) => Ok(n),
                    Err(_) => Ok(0),
                };
            }
            Ok(_) => {
                tls.process_new_packets().map_err(failed)?;
                // The handshake's answers go out as soon as they exist.
                write_tls(tls, sock)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Hands `plain` to rustls (which keeps it until the handshake is done) and writes what the
/// socket takes; returns the plaintext bytes taken.
pub fn write(tls: &mut ClientConnection, sock: &mut TcpStream, plain: &[u8]) -> io::Result<usize> {
    let n = tls.writer().write(plain)?;
    write_tls(tls, sock)?;
    Ok(n)
}

/// Writes ciphertext until rustls has none or the socket is full.
pub fn write_tls(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
