//! wss:// test helpers: a test CA and certificates made at test time (no key is committed), and
//! a rustls client that trusts only that CA.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::WAIT;

/// A TLS stream to wsd.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;
/// A WebSocket client over TLS.
pub type TlsClient = tungstenite::WebSocket<TlsStream>;

/// A certificate authority in a directory of its own, issuing `localhost` certificates.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A certificate wsd serves: its files and its DER (to compare with what a client sees).
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Pki {
    /// A new CA; `tag` names its directory under the temporary directory.
    pub fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("wsd-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wsd test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    /// The CA certificate's PEM file (for Python's `ssl` and for browsers).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a `localhost`/127.0.0.1 certificate valid until the start of `year`, written as
    /// `name.pem` and `name.key`.
    pub fn issue(&self, name: &str, year: i32) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
            der: cert.der().clone(),
        };
        // The chain: leaf, then the CA.
        std::fs::write(&issued.cert, format!("{}{}", cert.pem(), self.ca.pem())).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// A client configuration that trusts this CA alone and offers ALPN `http/1.1`.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A TLS connection to `addr` (as `localhost`), handshake completed.
    pub fn connect_tls(&self, addr: SocketAddr) -> TlsStream {
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(self.client_config(), name).unwrap();
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("TLS handshake");
        }
        stream
    }

    /// A WebSocket client over TLS to `addr`, upgraded at `path`.
    pub fn connect_wss(&self, addr: SocketAddr, path: &str) -> TlsClient {
        let stream = self.connect_tls(addr);
        let (ws, _) =
            tungstenite::client(format!("ws://localhost{path}"), stream).expect("upgrade");
        ws
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The certificate a client was served.
pub fn served(ws: &TlsClient) -> CertificateDer<'static> {
    ws.get_ref()
        .conn
        .peer_certificates()
        .expect("a certificate")[0]
        .clone()
}

/// `--tls-cert` and `--tls-key` for `issued`.
pub fn tls_args(issued: &Issued) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        path(&issued.cert),
        "--tls-key".into(),
        path(&issued.key),
    ]
}

pub fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}
