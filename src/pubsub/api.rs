//! The HTTP/1.1 publish API's requests, parsed sans-IO (httparse) like the handshake: bytes in,
//! a request (borrowing its body) or an error status out, and how many bytes it used.
//!
//! Routes: `POST /publish/{channel}` (the body is the message), `GET /channels`,
//! `GET /metrics`. Bodies need a `Content-Length` (chunked bodies get 411).
//!
//! Every byte here may come from a hostile client, so, as in `protocol/`, nothing may panic.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use super::name::{is_valid, percent_decode};
use crate::protocol::handshake::MAX_HEADERS;

/// Largest request head; a larger one gets 431.
pub const MAX_HEAD: usize = 8 * 1024;

/// A complete, authorised request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// Publish `body` to `channel`, as a text frame when `text` (the body is then UTF-8).
    Publish {
        channel: String,
        text: bool,
        body: &'a [u8],
    },
    Channels,
    Metrics,
}

/// A request and what the connection does after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub request: Request<'a>,
    /// Bytes of the request, body included.
    pub used: usize,
    /// HTTP/1.1 without `Connection: close`.
    pub keep_alive: bool,
}

/// A request that gets an error status; the connection is closed after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiError {
    BadRequest(&'static str),
    Unauthorized,
    NotFound,
    /// The method is not served on this path; carries the one that is.
    MethodNotAllowed(&'static str),
    LengthRequired,
    PayloadTooLarge,
    HeadTooLarge,
}

impl ApiError {
    pub fn status(self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::LengthRequired => 411,
            ApiError::PayloadTooLarge => 413,
            ApiError::HeadTooLarge => 431,
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            ApiError::BadRequest(why) => why,
            ApiError::Unauthorized => "missing or wrong bearer token",
            ApiError::NotFound => "not found: POST /publish/CHANNEL, GET /channels, GET /metrics",
            ApiError::MethodNotAllowed("POST") => "method not allowed: use POST",
            ApiError::MethodNotAllowed(_) => "method not allowed: use GET",
            ApiError::LengthRequired => "a Content-Length is required",
            ApiError::PayloadTooLarge => "body larger than max_message_size",
            ApiError::HeadTooLarge => "request head too large",
        }
    }

    /// Extra response headers the status calls for.
    pub fn headers(self) -> &'static str {
        match self {
            ApiError::Unauthorized => "WWW-Authenticate: Bearer\r\n",
            ApiError::MethodNotAllowed("POST") => "Allow: POST\r\n",
            ApiError::MethodNotAllowed(_) => "Allow: GET\r\n",
            _ => "",
        }
    }
}

/// The text of an HTTP status code wsd answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Appends a whole response to `out`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
    keep_alive: bool,
) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {connection}\r\n{extra_headers}\r\n",
        reason_phrase(status),
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
}

/// Parses the request at the front of `buf`. `Ok(None)`: not complete yet (nothing used).
/// `token`: the bearer token required (empty: none). `max_body`: the largest body accepted.
pub fn parse<'a>(
    buf: &'a [u8],
    token: &str,
    max_body: u64,
) -> Result<Option<Parsed<'a>>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => return Err(ApiError::HeadTooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ApiError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ApiError::HeadTooLarge),
        Err(_) => return Err(ApiError::BadRequest("malformed HTTP request")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ApiError::BadRequest("malformed HTTP request"));
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = version == 0; // HTTP/1.0: one request per connection.
    let mut authorised = token.is_empty();
    let mut text = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| bad("header value is not UTF-8"))?;
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| bad("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        } else if h.name.eq_ignore_ascii_case("authorization") && !token.is_empty() {
            authorised |= value
                .strip_prefix("Bearer ")
                .is_some_and(|t| same_token(t.trim().as_bytes(), token.as_bytes()));
        } else if h.name.eq_ignore_ascii_case("content-type") {
            text = is_text_type(value);
        }
    }
    if chunked {
        return Err(ApiError::LengthRequired);
    }
    if !authorised {
        return Err(ApiError::Unauthorized);
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let route = match path.strip_prefix("/publish/") {
        Some(channel) => Route::Publish(channel),
        None if path == "/channels" => Route::Channels,
        None if path == "/metrics" => Route::Metrics,
        None => return Err(ApiError::NotFound),
    };
    match (&route, method) {
        (Route::Publish(_), "POST") | (Route::Channels | Route::Metrics, "GET") => {}
        (Route::Publish(_), _) => return Err(ApiError::MethodNotAllowed("POST")),
        _ => return Err(ApiError::MethodNotAllowed("GET")),
    }
    let body_len = match (&route, length) {
        (Route::Publish(_), None) => return Err(ApiError::LengthRequired),
        (_, Some(n)) if n > max_body => return Err(ApiError::PayloadTooLarge),
        (_, n) => usize::try_from(n.unwrap_or(0)).map_err(|_| ApiError::PayloadTooLarge)?,
    };
    let used = head_len
        .checked_add(body_len)
        .ok_or(ApiError::PayloadTooLarge)?;
    let Some(body) = buf.get(head_len..used) else {
        return Ok(None);
    };
    let request = match route {
        Route::Publish(channel) => {
            let channel = percent_decode(channel)
                .ok()
                .filter(|c| is_valid(c))
                .ok_or(bad(
                    "invalid channel name: 1-200 bytes of A-Z a-z 0-9 _ - . : /",
                ))?;
            if text && std::str::from_utf8(body).is_err() {
                return Err(bad("a text body must be UTF-8"));
            }
            Request::Publish {
                channel,
                text,
                body,
            }
        }
        Route::Channels => Request::Channels,
        Route::Metrics => Request::Metrics,
    };
    Ok(Some(Parsed {
        request,
        used,
        keep_alive: !close,
    }))
}

enum Route<'a> {
    Publish(&'a str),
    Channels,
    Metrics,
}

fn bad(why: &'static str) -> ApiError {
    ApiError::BadRequest(why)
}

/// `text/*` and `application/json` bodies are sent as text frames.
fn is_text_type(value: &str) -> bool {
    let media = value.split(';').next().unwrap_or_default().trim();
    media
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("text/"))
        || media.eq_ignore_ascii_case("application/json")
}

/// Compares tokens in time independent of where they differ.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn p(req: &str) -> Result<Option<Parsed<'_>>, ApiError> {
        parse(req.as_bytes(), "", 1000)
    }

    #[test]
    fn a_publish_with_its_body() {
        let r = "POST /publish/news HTTP/1.1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhelloPOST";
        let parsed = p(r).unwrap().unwrap();
        assert_eq!(
            parsed.request,
            Request::Publish {
                channel: "news".into(),
                text: true,
                body: b"hello"
            }
        );
        assert_eq!(parsed.used, r.len() - 4);
        assert!(parsed.keep_alive);
        let r = b"POST /publish/chat%2Froom-1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n\x00\xff";
        let parsed = parse(r, "", 1000).unwrap().unwrap();
        assert!(
            matches!(parsed.request, Request::Publish { ref channel, text: false, .. } if channel == "chat/room-1")
        );
        let r = "POST /publish/a HTTP/1.1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        let parsed = p(r).unwrap().unwrap();
        assert!(matches!(
            parsed.request,
            Request::Publish { text: true, .. }
        ));
        assert!(!parsed.keep_alive);
    }

    #[test]
    fn short_input_is_not_an_error() {
        let r = "POST /publish/news HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel";
        assert_eq!(p(r), Ok(None));
        assert_eq!(p("GET /chan"), Ok(None));
    }

    #[test]
    fn every_error_status() {
        let status = |r: &str| p(r).unwrap_err().status();
        assert_eq!(status("BLAH\x01 / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET /nowhere HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("GET /publish/news HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(
            status("POST /channels HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            405
        );
        assert_eq!(status("POST /publish/news HTTP/1.1\r\n\r\n"), 411);
        assert_eq!(
            status("POST /publish/news HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            status("POST /publish/news HTTP/1.1\r\nContent-Length: 1001\r\n\r\n"),
            413
        );
        assert_eq!(
            status("POST /publish/news HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST /publish/a%20b HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            400
        );
        let r = b"POST /publish/a HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\n\xff";
        assert_eq!(parse(r, "", 1000).unwrap_err().status(), 400);
        let huge = format!(
            "GET /channels HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(status(&huge), 431);
    }

    #[test]
    fn the_bearer_token_is_required_when_set() {
        let with = |auth: &str| {
            let r = format!("GET /channels HTTP/1.1\r\n{auth}\r\n");
            parse(r.as_bytes(), "s3cret", 10).map(|p| p.map(|p| p.request == Request::Channels))
        };
        assert_eq!(with("Authorization: Bearer s3cret\r\n"), Ok(Some(true)));
        assert_eq!(
            with("Authorization: Bearer s3cre\r\n"),
            Err(ApiError::Unauthorized)
        );
        assert_eq!(
            with("Authorization: Basic s3cret\r\n"),
            Err(ApiError::Unauthorized)
        );
        assert_eq!(with(""), Err(ApiError::Unauthorized));
    }

    #[test]
    fn responses_carry_length_and_connection() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "application/json", "", b"{}", true);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
        );
    }
}
