//! The client side of wsd's HTTP publish API: keep-alive connections POSTing publications.
//!
//! Each connection waits for an answer before it sends the next request (no pipelining), so
//! the connection count bounds the requests in flight.
//!
//! The request writer and the response parser are sans-IO (bytes in, bytes out) and tested
//! here; [`ApiConn`] adds the socket steps a worker drives.

use std::io::{self, Read, Write};
use std::time::Instant;

use mio::net::TcpStream;

/// Room for a response (wsd's is ~110 bytes); more than this without a complete answer is an
/// error rather than a reason to grow.
pub const MAX_RESPONSE: usize = 4096;
/// Headers parsed in a response.
const MAX_HEADERS: usize = 32;

/// Where an API connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiState {
    /// TCP connect in progress.
    Connecting,
    /// Open with no request outstanding.
    Idle,
    /// A request was sent; its answer has not arrived.
    Waiting,
    /// Closed or broken; no more requests.
    Dead,
}

/// The answer to one publish request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `subscribers` from a `200` body, when present.
    pub subscribers: Option<u64>,
    /// The server will close the connection after this answer.
    pub close: bool,
}

/// Why an API connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// The connect itself failed.
    Connect,
    /// Reset, or closed by the server while a request was outstanding.
    Closed,
    /// Not an HTTP/1.1 answer we can read (or a chunked one, or too large).
    Malformed,
}

/// Appends `POST /publish/{channel}` carrying `body` to `out`.
pub fn write_request(
    out: &mut Vec<u8>,
    host: &str,
    channel: &str,
    body: &[u8],
    binary: bool,
    token: Option<&str>,
) {
    let kind = if binary {
        "application/octet-stream"
    } else {
        "text/plain"
    };
    out.extend_from_slice(b"POST /publish/");
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    if let Some(token) = token {
        out.extend_from_slice(b"\r\nAuthorization: Bearer ");
        out.extend_from_slice(token.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// One complete answer at the front of `input`: `Ok(None)` while it is still arriving,
/// otherwise the answer and the bytes it took.
pub fn parse_response(input: &[u8]) -> Result<Option<(Answer, usize)>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ApiError::Malformed),
    };
    let status = resp.code.ok_or(ApiError::Malformed)?;
    let mut length = 0usize;
    // HTTP/1.0 closes by default; 1.1 keeps the connection unless told otherwise.
    let mut close = resp.version != Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(ApiError::Malformed)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // wsd answers with a Content-Length; a chunked body is not one we can bound.
            return Err(ApiError::Malformed);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    let total = head.checked_add(length).ok_or(ApiError::Malformed)?;
    if total > MAX_RESPONSE {
        return Err(ApiError::Malformed);
    }
    let Some(body) = input.get(head..total) else {
        return Ok(None);
    };
    let subscribers = if status == 200 {
        subscribers_field(body)
    } else {
        None
    };
    Ok(Some((
        Answer {
            status,
            subscribers,
            close,
        },
        total,
    )))
}

/// The number after `"subscribers":` in a JSON body like `{"channel":"news","subscribers":3}`.
fn subscribers_field(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"subscribers\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = body.get(at..)?;
    let rest = &rest[rest.iter().position(|b| !b.is_ascii_whitespace())?..];
    let rest = rest.strip_prefix(b":")?;
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits = &rest[start..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// One keep-alive connection to the publish API.
pub struct ApiConn {
    pub sock: Option<TcpStream>,
    pub state: ApiState,
    out: Vec<u8>,
    out_sent: usize,
    input: Box<[u8]>,
    in_len: usize,
    /// Registered for writable readiness (connecting, or output pending).
    pub wants_write: bool,
    /// When the connect, or the outstanding request, started.
    pub since: Instant,
    /// The channel of the outstanding request.
    pub channel: u32,
}

impl ApiConn {
    pub fn new(sock: Option<TcpStream>, now: Instant, request_cap: usize) -> ApiConn {
        ApiConn {
            state: if sock.is_some() {
                ApiState::Connecting
            } else {
                ApiState::Dead
            },
            sock,
            out: Vec::with_capacity(request_cap),
            out_sent: 0,
            input: vec![0; MAX_RESPONSE].into_boxed_slice(),
            in_len: 0,
            wants_write: true,
            since: now,
            channel: 0,
        }
    }

    pub fn has_output(&self) -> bool {
        self.out_sent < self.out.len()
    }

    /// The connect finished (writable): `Ok(false)` for a spurious wake-up.
    pub fn on_connected(&mut self) -> Result<bool, ApiError> {
        let Some(sock) = &self.sock else {
            return Err(ApiError::Connect);
        };
        match sock.take_error() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return Err(ApiError::Connect),
        }
        match sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(_) => return Err(ApiError::Connect),
        }
        self.state = ApiState::Idle;
        Ok(true)
    }

    /// Queues one publish request (the connection must be idle).
    pub fn queue(&mut self, request: impl FnOnce(&mut Vec<u8>), channel: u32, now: Instant) {
        request(&mut self.out);
        self.state = ApiState::Waiting;
        self.channel = channel;
        self.since = now;
    }

    /// Writes pending output; returns whether some is still pending (the socket is full).
    pub fn flush(&mut self) -> Result<bool, ApiError> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        while self.out_sent < self.out.len() {
            match sock.write(&self.out[self.out_sent..]) {
                Ok(0) => return Err(ApiError::Closed),
                Ok(n) => self.out_sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(ApiError::Closed),
            }
        }
        self.out.clear();
        self.out_sent = 0;
        Ok(false)
    }

    /// Reads what arrived; returns the answer once it is complete.
    pub fn read_ready(&mut self) -> Result<Option<Answer>, ApiError> {
        loop {
            let Some(sock) = self.sock.as_mut() else {
                return Err(ApiError::Closed);
            };
            if self.in_len == self.input.len() {
                return Err(ApiError::Malformed);
            }
            match sock.read(&mut self.input[self.in_len..]) {
                Ok(0) => return Err(ApiError::Closed),
                Ok(n) => self.in_len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(ApiError::Closed),
            }
            if let Some((answer, used)) = parse_response(&self.input[..self.in_len])? {
                if used != self.in_len || self.state != ApiState::Waiting {
                    // One request in flight, so one answer: anything more is not HTTP/1.1.
                    return Err(ApiError::Malformed);
                }
                self.in_len = 0;
                self.state = if answer.close {
                    ApiState::Dead
                } else {
                    ApiState::Idle
                };
                return Ok(Some(answer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_contracted_shape() {
        let mut out = Vec::new();
        write_request(&mut out, "127.0.0.1:9002", "news", b"hello", false, None);
        assert_eq!(
            out,
            b"POST /publish/news HTTP/1.1\r\nHost: 127.0.0.1:9002\r\n\
              Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        );
        out.clear();
        write_request(&mut out, "h", "chat/room-1", &[0, 1], true, Some("s3cret"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("POST /publish/chat/room-1 HTTP/1.1\r\n"));
        assert!(text.contains("Content-Type: application/octet-stream\r\n"));
        assert!(text.contains("Authorization: Bearer s3cret\r\n\r\n"));
    }

    #[test]
    fn a_200_answer_in_pieces() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: 35\r\n\r\n{\"channel\":\"news\",\"subscribers\":12}";
        for cut in [0, 10, 40, full.len() - 1] {
            assert_eq!(parse_response(&full[..cut]), Ok(None), "cut at {cut}");
        }
        let want = Answer {
            status: 200,
            subscribers: Some(12),
            close: false,
        };
        assert_eq!(parse_response(full), Ok(Some((want, full.len()))));
    }

    #[test]
    fn errors_closes_and_odd_answers() {
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.unwrap().unwrap().0.status, 503);
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}");
        let (a, _) = r.unwrap().unwrap();
        assert_eq!((a.subscribers, a.close), (None, true));
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(r.unwrap().unwrap().0.close);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_response(chunked), Err(ApiError::Malformed));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\n"),
            Err(ApiError::Malformed)
        );
        assert_eq!(parse_response(b"SSH-2.0\r\n\r\n"), Err(ApiError::Malformed));
    }

    #[test]
    fn subscriber_counts_in_json_bodies() {
        assert_eq!(subscribers_field(br#"{"subscribers": 7 }"#), Some(7));
        assert_eq!(
            subscribers_field(br#"{"channel":"a","subscribers":10000}"#),
            Some(10000)
        );
        assert_eq!(subscribers_field(br#"{"channel":"subscribers"}"#), None);
        assert_eq!(subscribers_field(b"{}"), None);
    }
}
