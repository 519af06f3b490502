//! The opening handshake (RFC 6455 §4): the server side (an HTTP/1.1 Upgrade request in, a 101
//! response or an HTTP error status out) and the client side (request out, 101 response checked).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::deflate::{self, Agreed, MAX_EXTENSION_HEADERS};

/// The GUID of §1.3 that every accept key is derived with.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most headers a request may carry; more is answered with 431.
pub const MAX_HEADERS: usize = 32;

/// A valid upgrade request, borrowing from the bytes it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Bytes of the request head, `\r\n\r\n` included; frames may follow them.
    pub head_len: usize,
    pub path: &'a str,
    pub key: &'a str,
    pub origin: Option<&'a str>,
    /// The `Sec-WebSocket-Extensions` header values, in order (the first
    /// [`MAX_EXTENSION_HEADERS`] of them), for [`deflate::negotiate`].
    pub extensions: [Option<&'a [u8]>; MAX_EXTENSION_HEADERS],
}

impl<'a> Request<'a> {
    /// The extension offers, header by header.
    pub fn extension_values(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.extensions.iter().flatten().copied()
    }
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Malformed HTTP, or a required header missing or wrong (400).
    BadRequest(&'static str),
    /// Not a GET (405).
    MethodNotAllowed,
    /// Not `Sec-WebSocket-Version: 13` (426, naming the version we speak).
    UnsupportedVersion,
    /// The head is larger than the limit, or has too many headers (431).
    HeadTooLarge,
    /// The server is not taking connections (503): draining, or full.
    Unavailable,
    /// The `Origin` is not allowed (403).
    Forbidden,
    /// Too many connections from the client's address (429).
    TooManyFromAddress,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::Forbidden => 403,
            Reject::MethodNotAllowed => 405,
            Reject::UnsupportedVersion => 426,
            Reject::TooManyFromAddress => 429,
            Reject::HeadTooLarge => 431,
            Reject::Unavailable => 503,
        }
    }

    fn reason_phrase(self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "Bad Request",
            Reject::Forbidden => "Forbidden",
            Reject::MethodNotAllowed => "Method Not Allowed",
            Reject::UnsupportedVersion => "Upgrade Required",
            Reject::TooManyFromAddress => "Too Many Requests",
            Reject::HeadTooLarge => "Request Header Fields Too Large",
            Reject::Unavailable => "Service Unavailable",
        }
    }

    /// A one-line explanation for the response body and the log.
    pub fn detail(self) -> &'static str {
        match self {
            Reject::BadRequest(why) => why,
            Reject::Forbidden => "origin not allowed",
            Reject::MethodNotAllowed => "a WebSocket handshake must be a GET",
            Reject::UnsupportedVersion => "only WebSocket version 13 is supported",
            Reject::TooManyFromAddress => "too many connections from this address",
            Reject::HeadTooLarge => "request head too large",
            Reject::Unavailable => "server is not accepting connections",
        }
    }

    /// Appends the whole HTTP error response to `out`.
    pub fn write_response(self, out: &mut Vec<u8>) {
        let extra = match self {
            Reject::MethodNotAllowed => "Allow: GET\r\n",
            Reject::UnsupportedVersion => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            _ => "",
        };
        let body = self.detail();
        let head = format!(
            "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\n\r\n",
            self.status(),
            self.reason_phrase(),
            body.len().saturating_add(1)
        );
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body.as_bytes());
        out.push(b'\n');
    }
}

/// Parses the request head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete and shorter than `max_head`.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<Request<'_>>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_head => return Err(Reject::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::BadRequest("malformed HTTP request")),
    };
    if head_len > max_head {
        return Err(Reject::HeadTooLarge);
    }
    // §4.2.1: "An HTTP/1.1 or higher GET request".
    if req.method != Some("GET") {
        return Err(Reject::MethodNotAllowed);
    }
    if req.version != Some(1) {
        return Err(Reject::BadRequest("HTTP/1.1 is required"));
    }
    let path = req.path.unwrap_or("/");

    let mut host = false;
    let mut upgrade = false;
    let mut connection = false;
    let mut version = None;
    let mut key = None;
    let mut origin = None;
    let mut extensions = [None; MAX_EXTENSION_HEADERS];
    let mut n_extensions = 0usize;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(h.value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            if key.is_some() {
                return Err(Reject::BadRequest("more than one Sec-WebSocket-Key"));
            }
            key = Some(h.value);
        } else if name.eq_ignore_ascii_case("origin") {
            origin = std::str::from_utf8(h.value).ok();
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            // Offers past the first few headers are ignored: declining them is always allowed.
            if let Some(slot) = extensions.get_mut(n_extensions) {
                *slot = Some(h.value);
                n_extensions = n_extensions.saturating_add(1);
            }
        }
    }
    if !host {
        return Err(Reject::BadRequest("missing Host header"));
    }
    if !upgrade {
        return Err(Reject::BadRequest("missing Upgrade: websocket"));
    }
    if !connection {
        return Err(Reject::BadRequest("Connection header must contain upgrade"));
    }
    if version.map(trim) != Some(b"13".as_slice()) {
        return Err(Reject::UnsupportedVersion);
    }
    let key = key
        .map(trim)
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| is_valid_key(k))
        .ok_or(Reject::BadRequest(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ))?;
    Ok(Some(Request {
        head_len,
        path,
        key,
        origin,
        extensions,
    }))
}

/// §4.2.1 item 5: the key "when decoded, is 16 bytes in length".
fn is_valid_key(key: &str) -> bool {
    let mut decoded = [0u8; 18];
    matches!(BASE64.decode_slice(key, &mut decoded), Ok(16))
}

/// Whether a comma-separated header value holds `token` (any case), e.g. `keep-alive, Upgrade`.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// `Sec-WebSocket-Accept` for a key (§1.3, §4.2.2 item 5.4).
pub fn accept_key(key: &str) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID);
    let mut out = [0u8; 28];
    // A 20-byte digest is always 28 base64 characters.
    let _ = BASE64.encode_slice(sha.finalize(), &mut out);
    out
}

/// Appends the 101 response that completes the handshake for `key`.
pub fn write_accept(key: &str, out: &mut Vec<u8>) {
    write_accept_with(key, None, out);
}

/// Appends the 101 response for `key`, naming the permessage-deflate parameters agreed (RFC
/// 7692 §5) if any.
pub fn write_accept_with(key: &str, deflate: Option<&Agreed>, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    out.extend_from_slice(b"\r\n");
    if let Some(agreed) = deflate {
        agreed.write_header(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// What a request's offers get in `mode`: the parameters to answer with, or `None`.
pub fn negotiate_deflate(req: &Request<'_>, mode: deflate::Mode) -> Option<Agreed> {
    deflate::negotiate(req.extension_values(), mode)
}

/// Most headers a server's handshake response may carry (client side).
pub const MAX_RESPONSE_HEADERS: usize = 32;

/// Why a server's handshake response was not a valid 101 for our key (client side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// Not parseable as an HTTP/1.1 response head, or too many headers.
    Malformed,
    /// A status other than 101 (the server refused: 503 while draining, 426, …).
    Status(u16),
    /// `Upgrade: websocket` or `Connection: upgrade` missing (§4.1, items 2 and 3).
    NotUpgraded,
    /// `Sec-WebSocket-Accept` missing or not the one derived from our key (§4.1, item 4).
    BadAccept,
    /// An extension answer that is not a permessage-deflate one we could have asked for.
    BadExtension,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::Malformed => f.write_str("malformed handshake response"),
            ResponseError::Status(s) => write!(f, "handshake refused with HTTP {s}"),
            ResponseError::NotUpgraded => f.write_str("response lacks Upgrade/Connection"),
            ResponseError::BadAccept => f.write_str("wrong Sec-WebSocket-Accept"),
            ResponseError::BadExtension => f.write_str("unexpected Sec-WebSocket-Extensions"),
        }
    }
}

impl std::error::Error for ResponseError {}

/// The `Sec-WebSocket-Key` for a 16-byte nonce (§4.1: "a randomly selected 16-byte value that
/// has been base64-encoded"); always 24 base64 characters.
pub fn client_key(nonce: [u8; 16]) -> [u8; 24] {
    let mut out = [0u8; 24];
    // 16 bytes are always 24 base64 characters.
    let _ = BASE64.encode_slice(nonce, &mut out);
    out
}

/// Appends a client's upgrade request for `path` on `host` with `key` (§4.1).
pub fn write_request(host: &str, path: &str, key: &str, out: &mut Vec<u8>) {
    write_request_with(host, path, key, None, out);
}

/// [`write_request`] with an extension offer (a `Sec-WebSocket-Extensions` value).
pub fn write_request_with(
    host: &str,
    path: &str,
    key: &str,
    extensions: Option<&str>,
    out: &mut Vec<u8>,
) {
    for part in [
        "GET ",
        path,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ",
        key,
        "\r\nSec-WebSocket-Version: 13\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    if let Some(value) = extensions {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Checks the server's response head at the start of `buf` against the `key` we sent.
///
/// Returns `Ok(None)` while the head is incomplete, and `Ok(Some(n))` with the length of the
/// head (frames may follow it in `buf`) once it is a valid 101 for `key`.
pub fn check_response(buf: &[u8], key: &str) -> Result<Option<usize>, ResponseError> {
    Ok(check_response_ext(buf, key)?.map(|(head, _)| head))
}

/// [`check_response`] that also reads the server's permessage-deflate answer (client side,
/// see [`deflate::client_agreement`]); an answer that is not a well-formed permessage-deflate
/// one fails the handshake (RFC 7692 §5: the client "MUST _Fail the WebSocket Connection_").
pub fn check_response_ext(
    buf: &[u8],
    key: &str,
) -> Result<Option<(usize, Option<Agreed>)>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ResponseError::Malformed),
    };
    // §4.1: "If the status code received from the server is not 101, the client handles the
    // response per HTTP procedures"; for a WebSocket client that means no connection.
    match resp.code {
        Some(101) => {}
        Some(code) => return Err(ResponseError::Status(code)),
        None => return Err(ResponseError::Malformed),
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accept = None;
    let mut agreed = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("sec-websocket-extensions") {
            if agreed.is_some() {
                return Err(ResponseError::BadExtension);
            }
            agreed = Some(deflate::client_agreement(h.value).ok_or(ResponseError::BadExtension)?);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, "websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, "upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(trim(h.value));
        }
    }
    if !upgrade || !connection {
        return Err(ResponseError::NotUpgraded);
    }
    if accept != Some(accept_key(key).as_slice()) {
        return Err(ResponseError::BadAccept);
    }
    Ok(Some((head_len, agreed)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn with(replace: &str, by: &str) -> Vec<u8> {
        String::from_utf8(GOOD.to_vec())
            .unwrap()
            .replace(replace, by)
            .into_bytes()
    }

    /// §1.3: the sample nonce and its accept value.
    #[test]
    fn rfc_key_and_accept() {
        assert_eq!(
            &accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let req = parse_request(GOOD, 8192).unwrap().unwrap();
        assert_eq!(req.path, "/chat");
        assert_eq!(req.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.origin, Some("http://example.com"));
        assert_eq!(req.head_len, GOOD.len());
        let mut out = Vec::new();
        write_accept(req.key, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn partial_until_complete_then_frames_may_follow() {
        for end in 0..GOOD.len() {
            assert_eq!(parse_request(&GOOD[..end], 8192), Ok(None), "prefix {end}");
        }
        let mut more = GOOD.to_vec();
        more.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        assert_eq!(
            parse_request(&more, 8192).unwrap().unwrap().head_len,
            GOOD.len()
        );
    }

    #[test]
    fn header_tokens_any_case() {
        let req = with("Connection: Upgrade", "connection: keep-alive, UPGRADE");
        assert!(parse_request(&req, 8192).unwrap().is_some());
        let req = with("Upgrade: websocket", "upgrade: WebSocket");
        assert!(parse_request(&req, 8192).unwrap().is_some());
    }

    #[test]
    fn rejections_and_their_status() {
        let cases: &[(Vec<u8>, u16)] = &[
            (with("GET /chat", "POST /chat"), 405),
            (with("HTTP/1.1\r\nHost", "HTTP/1.0\r\nHost"), 400),
            (with("Upgrade: websocket\r\n", ""), 400),
            (with("Connection: Upgrade", "Connection: keep-alive"), 400),
            (
                with("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
                426,
            ),
            (with("Sec-WebSocket-Version: 13\r\n", ""), 426),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), 400),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"), 400),
            (
                with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                400,
            ),
            (with("Host: server.example.com\r\n", ""), 400),
            (b"\x16\x03\x01garbage\r\n\r\n".to_vec(), 400),
        ];
        for (req, status) in cases {
            let got = parse_request(req, 8192).map_err(Reject::status);
            assert_eq!(got, Err(*status), "{}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn oversized_heads_get_431() {
        assert_eq!(parse_request(GOOD, 64), Err(Reject::HeadTooLarge));
        let partial = &GOOD[..100];
        assert_eq!(parse_request(partial, 100), Err(Reject::HeadTooLarge));
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let req = with("Origin", &format!("{many}Origin"));
        assert_eq!(parse_request(&req, 1 << 20), Err(Reject::HeadTooLarge));
    }

    #[test]
    fn error_responses_name_their_status() {
        let mut out = Vec::new();
        Reject::UnsupportedVersion.write_response(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    /// §1.3 / §4.1: the sample nonce "the sample nonce" is the key of the RFC's example.
    #[test]
    fn client_key_encodes_the_nonce() {
        assert_eq!(
            &client_key(*b"the sample nonce"),
            b"dGhlIHNhbXBsZSBub25jZQ=="
        );
    }

    #[test]
    fn client_request_is_accepted_by_the_server_side() {
        let mut req = Vec::new();
        write_request(
            "localhost:9001",
            "/chat",
            "dGhlIHNhbXBsZSBub25jZQ==",
            &mut req,
        );
        let parsed = parse_request(&req, 8192).unwrap().unwrap();
        assert_eq!(parsed.path, "/chat");
        assert_eq!(parsed.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(parsed.head_len, req.len());
    }

    #[test]
    fn client_checks_the_servers_accept() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut resp = Vec::new();
        write_accept(key, &mut resp);
        let head = resp.len();
        for end in 0..head {
            assert_eq!(check_response(&resp[..end], key), Ok(None), "prefix {end}");
        }
        resp.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        assert_eq!(check_response(&resp, key), Ok(Some(head)));
        // The same response for another key is refused.
        assert_eq!(
            check_response(&resp, "AQIDBAUGBwgJCgsMDQ4PEA=="),
            Err(ResponseError::BadAccept)
        );
    }

    #[test]
    fn client_refuses_other_statuses_and_missing_headers() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut out = Vec::new();
        Reject::Unavailable.write_response(&mut out);
        assert_eq!(check_response(&out, key), Err(ResponseError::Status(503)));
        let no_upgrade = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            check_response(no_upgrade, key),
            Err(ResponseError::NotUpgraded)
        );
        let no_accept = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert_eq!(
            check_response(no_accept, key),
            Err(ResponseError::BadAccept)
        );
        assert_eq!(
            check_response(b"\x16\x03garbage\r\n\r\n", key),
            Err(ResponseError::Malformed)
        );
    }
}
