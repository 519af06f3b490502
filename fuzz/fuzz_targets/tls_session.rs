//! The wss:// input path: ciphertext through wsd's [`Tls`] layer (cut into reads the way the
//! loop cuts them, a partial record carried to the next read), its plaintext into a server
//! `Session`.
//!
//! Two kinds of input, chosen by the first byte:
//! - raw: the bytes are the ciphertext a client sent (garbage, a truncated ClientHello, …);
//!   wsd must fail or wait, never panic, and never yield plaintext before a handshake;
//! - tunnelled: an in-memory rustls client completes a handshake with wsd, then sends the bytes
//!   as application data (the client's records cut at sizes the input picks); the plaintext wsd
//!   yields must be exactly those bytes, in order, and the session behind it keeps every
//!   invariant `wsd_fuzz::Driver` checks.
#![no_main]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use wsd::tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use wsd::tls::rustls::{self, ClientConfig, ClientConnection, ServerConfig};
use wsd::tls::Tls;
use wsd_fuzz::{limits_from, Driver};

/// The loop's read buffer, smaller so that records straddle reads often.
const READ_BUF: usize = 32 * 1024;

/// One certificate for the whole run (made once: key generation is slow).
fn configs() -> &'static (Arc<ServerConfig>, Arc<ClientConfig>) {
    static CONFIGS: OnceLock<(Arc<ServerConfig>, Arc<ClientConfig>)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = wsd::tls::server_config(vec![der.clone()], key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, Arc::new(client))
    })
}

/// wsd's side: reads cut at `cuts`, as `Conn::read_ready` does them.
struct Server {
    tls: Tls,
    read: Vec<u8>,
    plain: Vec<u8>,
    seal: Vec<u8>,
    /// Every plaintext byte yielded, in order.
    yielded: Vec<u8>,
    failed: bool,
}

impl Server {
    fn new() -> Server {
        Server {
            tls: Tls::new(Arc::clone(&configs().0)).unwrap(),
            read: vec![0; READ_BUF],
            plain: vec![0; READ_BUF],
            seal: Vec::new(),
            yielded: Vec::new(),
            failed: false,
        }
    }

    /// One read of `bytes` (at most what fits after the partial record kept).
    fn read(&mut self, bytes: &[u8], driver: Option<&mut Driver>) -> usize {
        if self.failed {
            return bytes.len();
        }
        let pending = self.tls.take_pending();
        let kept = pending.len();
        assert!(kept < READ_BUF, "a partial record fills the read buffer");
        self.read[..kept].copy_from_slice(&pending);
        let n = bytes.len().min(READ_BUF - kept);
        self.read[kept..kept + n].copy_from_slice(&bytes[..n]);
        let len = kept + n;
        let was_established = self.tls.is_established();
        match self
            .tls
            .decrypt(&mut self.read[..len], &mut self.plain, &mut self.seal)
        {
            Ok(d) => {
                assert!(d.used <= len);
                if !was_established {
                    assert_eq!(d.plain, 0, "plaintext before the handshake completed");
                }
                self.tls.keep_pending(&self.read[d.used..len], Vec::new());
                self.yielded.extend_from_slice(&self.plain[..d.plain]);
                if let Some(driver) = driver {
                    driver.feed(&self.plain[..d.plain]);
                }
            }
            Err(_) => self.failed = true,
        }
        n
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, limits_byte, n, rest @ ..] = data else {
        return;
    };
    // [mode][limits][n][bytes …][n cut bytes]: each cut byte is the size of the next read
    // (1–128 bytes, ×64 with bit 7).
    let n = usize::from(*n).min(rest.len());
    let (bytes, cuts) = rest.split_at(rest.len() - n);
    let cut = |c: u8| {
        let size = usize::from(c & 0x7F) + 1;
        if c & 0x80 != 0 {
            size * 64
        } else {
            size
        }
    };
    let mut server = Server::new();
    if mode & 1 == 0 {
        // Raw ciphertext from a client that may be anything.
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::repeat(&0xFF)) {
            if at >= bytes.len() {
                break;
            }
            let end = (at + cut(c)).min(bytes.len());
            at += server.read(&bytes[at..end], None);
        }
        return;
    }
    // A real client: handshake first, through the same reads.
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(Arc::clone(&configs().1), name).unwrap();
    let mut to_server = Vec::new();
    for _ in 0..8 {
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        let mut at = 0;
        while at < to_server.len() {
            at += server.read(&to_server[at..], None);
        }
        to_server.clear();
        assert!(!server.failed, "the handshake failed");
        let mut answer = &server.seal[..];
        while !answer.is_empty() {
            client.read_tls(&mut answer).unwrap();
            client.process_new_packets().unwrap();
        }
        server.seal.clear();
        if !client.is_handshaking() && server.tls.is_established() {
            break;
        }
    }
    assert!(server.tls.is_established() && !client.is_handshaking());
    // The bytes as application data, in records whose sizes the cuts pick too.
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::repeat(&0xFF)) {
        if at >= bytes.len() {
            break;
        }
        let end = (at + cut(c)).min(bytes.len());
        client.writer().write_all(&bytes[at..end]).unwrap();
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        at = end;
    }
    let mut driver = Driver::new(limits_from(*limits_byte));
    let mut at = 0;
    for &c in cuts.iter().rev().chain(std::iter::repeat(&0xFF)) {
        if at >= to_server.len() {
            break;
        }
        let end = (at + cut(c)).min(to_server.len());
        at += server.read(&to_server[at..end], Some(&mut driver));
    }
    assert!(!server.failed, "a valid record was refused");
    assert!(!server.tls.has_pending(), "a whole record was left pending");
    assert_eq!(server.yielded, bytes, "the plaintext is what the client sent");
});
