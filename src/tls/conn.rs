//! One connection's TLS state, driven through rustls's unbuffered API over the loop's buffers.
//!
//! Call order (the loop's): [`Tls::decrypt`] with the ciphertext that arrived (after the bytes
//! [`Tls::take_pending`] gave back), write what it appended to `seal`, hand the plaintext to the
//! WebSocket layer; [`Tls::encrypt`] the plaintext answers into `seal` and write that;
//! [`Tls::close_notify`] once the last bytes are queued.
//!
//! rustls 0.23 decrypts each record in place in the caller's buffer, then moves its plaintext
//! into a short-lived `Vec` of its own (its `ReadTraffic` says in-place reads are to come); we
//! copy that plaintext into the loop's shared plaintext buffer, so frames are still parsed and
//! unmasked in one buffer owned by the loop, and an idle connection keeps no buffer at all.

use std::sync::Arc;

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls::{Error, ServerConfig};

/// Room reserved per record for its header, explicit nonce, content type and tag (TLS 1.2
/// AES-GCM takes 29 bytes, TLS 1.3 22); a wrong guess costs one retry, not an error.
const RECORD_OVERHEAD: usize = 32;
/// Largest plaintext per record (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 16 * 1024;
/// Room for a close_notify alert record.
const ALERT_ROOM: usize = 64;

/// What [`Tls::decrypt`] made of the ciphertext it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decrypted {
    /// Plaintext bytes written to the front of the plaintext buffer.
    pub plain: usize,
    /// Ciphertext bytes used; the rest is a partial record to keep for the next read.
    pub used: usize,
    /// The peer sent close_notify: no more data will come.
    pub peer_closed: bool,
}

/// One connection's TLS: rustls's state, and a partial record that waits for its end.
pub struct Tls {
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record that arrived in part; empty when idle.
    pending: Vec<u8>,
    /// Our close_notify is queued.
    notified: bool,
}

impl Tls {
    pub fn new(config: Arc<ServerConfig>) -> Result<Tls, Error> {
        Ok(Tls {
            conn: UnbufferedServerConnection::new(config)?,
            pending: Vec::new(),
            notified: false,
        })
    }

    /// Whether the handshake is complete (application data may flow).
    pub fn is_established(&self) -> bool {
        !self.conn.is_handshaking()
    }

    /// The partial record kept from the last read (the caller puts it before the next bytes and
    /// gives the buffer back to its pool).
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Keeps `rest` (a partial record) in `buf`, a buffer from the caller's pool.
    pub fn keep_pending(&mut self, rest: &[u8], mut buf: Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(rest);
        self.pending = buf;
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Gives back the pending buffer (the connection is going away).
    pub fn release(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Runs the records in `cipher`: handshake messages go through rustls (its answers are
    /// appended to `seal`), application data is copied to the front of `plain`. Stops at a
    /// partial record, after close_notify, or when `plain` could not hold the next record.
    pub fn decrypt(
        &mut self,
        cipher: &mut [u8],
        plain: &mut [u8],
        seal: &mut Vec<u8>,
    ) -> Result<Decrypted, Error> {
        let mut d = Decrypted::default();
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut cipher[d.used..]);
            let mut stop = false;
            match state? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let payload = record?.payload;
                        // A record's plaintext is shorter than its ciphertext, which fit in a
                        // buffer of the same size: this holds unless the caller shrank `plain`.
                        let end = d.plain + payload.len();
                        let Some(room) = plain.get_mut(d.plain..end) else {
                            return Err(Error::General("plaintext buffer too small".into()));
                        };
                        room.copy_from_slice(payload);
                        d.plain = end;
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => encode_into(&mut encode, seal),
                // The caller writes `seal` (or queues what the socket does not take) before it
                // reads again: from rustls's side it is sent.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    d.peer_closed = true;
                    stop = true;
                }
                // Blocked: the handshake waits for more bytes; WriteTraffic: every complete
                // record is handled. Early data is never enabled, so never offered.
                _ => stop = true,
            }
            d.used += discard;
            if stop {
                return Ok(d);
            }
        }
    }

    /// Encrypts `plain` as application data records appended to `seal` (and any handshake
    /// message rustls has waiting, such as session tickets, before them).
    pub fn encrypt(&mut self, plain: &[u8], seal: &mut Vec<u8>) -> Result<(), Error> {
        self.with_writer(seal, |w, seal| {
            let at = seal.len();
            let records = plain.len().div_ceil(MAX_FRAGMENT).max(1);
            let mut room = plain.len() + records * RECORD_OVERHEAD;
            loop {
                seal.resize(at + room, 0);
                match w.encrypt(plain, &mut seal[at..]) {
                    Ok(n) => {
                        seal.truncate(at + n);
                        return Ok(());
                    }
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) if required_size > room => room = required_size,
                    Err(e) => {
                        seal.truncate(at);
                        return Err(Error::General(format!("encrypt: {e}")));
                    }
                }
            }
        })
    }

    /// Appends a close_notify alert to `seal`, once.
    pub fn close_notify(&mut self, seal: &mut Vec<u8>) {
        if self.notified || !self.is_established() {
            return;
        }
        self.notified = true;
        let _ = self.with_writer(seal, |w, seal| {
            let at = seal.len();
            seal.resize(at + ALERT_ROOM, 0);
            let n = w.queue_close_notify(&mut seal[at..]).unwrap_or(0);
            seal.truncate(at + n);
            Ok(())
        });
    }

    /// Brings rustls to its writing state (encoding any handshake message it has waiting into
    /// `seal` first) and runs `write` there.
    fn with_writer(
        &mut self,
        seal: &mut Vec<u8>,
        write: impl FnOnce(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut write = Some(write);
        loop {
            let status = self.conn.process_tls_records(&mut []);
            match status.state? {
                ConnectionState::EncodeTlsData(mut encode) => encode_into(&mut encode, seal),
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::WriteTraffic(mut w) => {
                    return match write.take() {
                        Some(write) => write(&mut w, seal),
                        None => Ok(()),
                    };
                }
                other => {
                    return Err(Error::General(format!("cannot write in state {other:?}")));
                }
            }
        }
    }
}

/// Appends a handshake record rustls has ready to `seal`, sized as rustls asks.
fn encode_into(encode: &mut EncodeTlsData<'_, ServerConnectionData>, seal: &mut Vec<u8>) {
    let at = seal.len();
    let need = match encode.encode(&mut []) {
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        _ => 0,
    };
    seal.resize(at + need, 0);
    let written = encode.encode(&mut seal[at..]).unwrap_or(0);
    seal.truncate(at + written);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use std::io::Write;

    /// A server `Tls` and a rustls client that trusts its (generated) certificate.
    fn pair() -> (Tls, ClientConnection) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = crate::tls::server_config(vec![der.clone()], key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let client = ClientConnection::new(Arc::new(client), name).unwrap();
        (Tls::new(server).unwrap(), client)
    }

    /// Feeds `cipher` to `tls` `step` bytes per read, as the loop does (a partial record is
    /// kept and put back in front of the next read); returns the plaintext and the answers.
    fn feed(tls: &mut Tls, cipher: &[u8], step: usize) -> (Vec<u8>, Vec<u8>) {
        let (mut plain_out, mut seal) = (Vec::new(), Vec::new());
        let mut read = vec![0u8; 64 * 1024];
        let mut plain = vec![0u8; 64 * 1024];
        for chunk in cipher.chunks(step) {
            let pending = tls.take_pending();
            let kept = pending.len();
            read[..kept].copy_from_slice(&pending);
            read[kept..kept + chunk.len()].copy_from_slice(chunk);
            let len = kept + chunk.len();
            let d = tls
                .decrypt(&mut read[..len], &mut plain, &mut seal)
                .unwrap();
            tls.keep_pending(&read[d.used..len], Vec::new());
            plain_out.extend_from_slice(&plain[..d.plain]);
        }
        (plain_out, seal)
    }

    /// Runs the handshake between the two, the server's side cut into reads of `step` bytes.
    fn handshake(tls: &mut Tls, client: &mut ClientConnection, step: usize) {
        while client.is_handshaking() || !tls.is_established() {
            let mut cipher = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut cipher).unwrap();
            }
            let (plain, seal) = feed(tls, &cipher, step);
            assert!(plain.is_empty());
            let mut answer = &seal[..];
            while !answer.is_empty() {
                client.read_tls(&mut answer).unwrap();
                client.process_new_packets().unwrap();
            }
        }
    }

    #[test]
    fn records_cut_anywhere_come_out_whole_and_in_order() {
        for step in [1, 7, 100, 16 * 1024 + 3] {
            let (mut tls, mut client) = pair();
            handshake(&mut tls, &mut client, step);
            let message: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
            client.writer().write_all(&message).unwrap();
            client.writer().write_all(b"and a second write").unwrap();
            let mut cipher = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut cipher).unwrap();
            }
            let (plain, _) = feed(&mut tls, &cipher, step);
            assert_eq!(plain.len(), message.len() + 18, "step {step}");
            assert_eq!(&plain[..message.len()], &message[..]);
            assert!(!tls.has_pending(), "nothing left once every record arrived");
        }
    }

    #[test]
    fn what_the_server_encrypts_the_client_reads_and_close_notify_ends_it() {
        let (mut tls, mut client) = pair();
        handshake(&mut tls, &mut client, 4096);
        let mut seal = Vec::new();
        tls.encrypt(&vec![7u8; 50_000], &mut seal).unwrap();
        tls.close_notify(&mut seal);
        tls.close_notify(&mut seal); // once only
        let mut input = &seal[..];
        let mut got = Vec::new();
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            let state = client.process_new_packets().unwrap();
            let mut buf = vec![0u8; state.plaintext_bytes_to_read()];
            std::io::Read::read_exact(&mut client.reader(), &mut buf).unwrap();
            got.extend_from_slice(&buf);
        }
        assert_eq!(got, vec![7u8; 50_000]);
        let mut rest = [0u8; 1];
        assert_eq!(
            std::io::Read::read(&mut client.reader(), &mut rest).unwrap(),
            0
        );
    }

    #[test]
    fn garbage_fails_and_yields_nothing() {
        let (mut tls, _) = pair();
        let mut seal = Vec::new();
        let mut read = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut plain = vec![0u8; 1024];
        assert!(tls.decrypt(&mut read, &mut plain, &mut seal).is_err());
        assert!(!tls.is_established());
    }
}
