//! The Redis side of the broker, sans-IO: the commands wsd sends (RESP2 arrays of bulk strings,
//! encoded with the `redis-protocol` crate), what the replies mean, `redis://` URLs, which shard
//! a channel lives on, and the tag that keeps text and binary publications apart.
//!
//! Each shard (one Redis server) gets two connections: one in subscribe mode, one for `PUBLISH`
//! and `PING`, whose replies come back in order (RESP2, so that any Redis speaks it).

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};

/// Most arguments one SUBSCRIBE or UNSUBSCRIBE carries; more channels take more commands.
pub const CHANNELS_PER_COMMAND: usize = 1000;

/// Tag of a text publication's payload in Redis; `TAG_BINARY` for binary. A payload without a
/// tag (published to Redis by another program) is text when it is UTF-8, binary otherwise.
pub const TAG_TEXT: &[u8] = b"\0t";
pub const TAG_BINARY: &[u8] = b"\0b";

/// Where a `redis://host:port` URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Parses `redis://HOST[:PORT][/]` (port 6379 by default). Passwords, databases and TLS are not
/// supported (pub/sub ignores databases; say so rather than ignore a password).
pub fn parse_url(url: &str) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url:?} is not a redis:// URL"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(format!("{url:?}: passwords are not supported"));
    }
    if rest.contains('/') {
        return Err(format!(
            "{url:?}: databases do not apply to pub/sub; use redis://HOST:PORT"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse()
                .map_err(|_| format!("{url:?}: {p:?} is not a port"))?,
        ),
        _ => (rest, 6379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(Endpoint {
        host: host.to_string(),
        port,
    })
}

/// The shard of `channel` among `shards`: FNV-1a of the name, so that every instance agrees.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for b in channel.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash as usize) % shards.max(1)
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by `encode_len`: encoding cannot run out of room.
    let written = encode_borrowed(&mut out[start..], &frame, false).unwrap_or(0);
    out.truncate(start + written);
}

/// A Redis payload for a publication.
pub fn encode_payload(text: bool, payload: &[u8]) -> Vec<u8> {
    let tag = if text { TAG_TEXT } else { TAG_BINARY };
    let mut out = Vec::with_capacity(tag.len() + payload.len());
    out.extend_from_slice(tag);
    out.extend_from_slice(payload);
    out
}

/// A publication from a Redis payload: whether it is text (then UTF-8), and its bytes.
pub fn decode_payload(bytes: &[u8]) -> (bool, &[u8]) {
    if let Some(p) = bytes.strip_prefix(TAG_TEXT) {
        if std::str::from_utf8(p).is_ok() {
            return (true, p);
        }
        return (false, p);
    }
    if let Some(p) = bytes.strip_prefix(TAG_BINARY) {
        return (false, p);
    }
    (std::str::from_utf8(bytes).is_ok(), bytes)
}

/// The next complete frame at the front of `input` and its length; `Ok(None)` when incomplete.
pub fn next_frame(input: &[u8]) -> Result<Option<(OwnedFrame, usize)>, String> {
    decode(input).map_err(|e| format!("invalid RESP from Redis: {e:?}"))
}

/// What arrived on the subscribe-mode connection.
#[derive(Debug, PartialEq, Eq)]
pub enum SubEvent {
    /// A publication on `channel` (the Redis name, prefix included).
    Message {
        channel: Vec<u8>,
        payload: Vec<u8>,
    },
    /// A SUBSCRIBE or UNSUBSCRIBE took effect for one channel.
    Confirmed,
    /// The answer to a PING.
    Pong,
    /// An error reply.
    Error(String),
    Other,
}

/// Classifies a frame of the subscribe-mode connection.
pub fn sub_event(frame: OwnedFrame) -> SubEvent {
    match frame {
        OwnedFrame::Array(parts) => {
            let mut parts = parts.into_iter();
            let kind = match parts.next() {
                Some(OwnedFrame::BulkString(k)) => k,
                _ => return SubEvent::Other,
            };
            match (kind.as_slice(), parts.next(), parts.next()) {
                (
                    b"message",
                    Some(OwnedFrame::BulkString(channel)),
                    Some(OwnedFrame::BulkString(payload)),
                ) => SubEvent::Message { channel, payload },
                (b"subscribe" | b"unsubscribe", _, _) => SubEvent::Confirmed,
                (b"pong", _, _) => SubEvent::Pong,
                _ => SubEvent::Other,
            }
        }
        // Before the first SUBSCRIBE the connection answers PING like any other.
        OwnedFrame::SimpleString(s) if s.eq_ignore_ascii_case(b"PONG") => SubEvent::Pong,
        OwnedFrame::Error(e) => SubEvent::Error(e),
        _ => SubEvent::Other,
    }
}

/// A reply on the command connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// PUBLISH: the number of Redis subscribers (wsd instances) that got it.
    Integer(i64),
    Pong,
    Error(String),
    Other,
}

pub fn reply(frame: OwnedFrame) -> Reply {
    match frame {
        OwnedFrame::Integer(n) => Reply::Integer(n),
        OwnedFrame::SimpleString(s) if s.eq_ignore_ascii_case(b"PONG") => Reply::Pong,
        OwnedFrame::Error(e) => Reply::Error(e),
        _ => Reply::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = |h: &str, p| {
            Ok(Endpoint {
                host: h.into(),
                port: p,
            })
        };
        assert_eq!(parse_url("redis://127.0.0.1:6380"), e("127.0.0.1", 6380));
        assert_eq!(parse_url("redis://localhost"), e("localhost", 6379));
        assert_eq!(parse_url("redis://localhost/"), e("localhost", 6379));
        assert_eq!(parse_url("redis://[::1]:7000"), e("::1", 7000));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("redis://:pw@x").unwrap_err().contains("password"));
        assert!(parse_url("redis://x/2").unwrap_err().contains("databases"));
        assert!(parse_url("redis://x:http").is_err());
        assert!(parse_url("redis://").is_err());
    }

    #[test]
    fn commands_are_resp_arrays() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"wsd:news", b"\0thi"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$8\r\nwsd:news\r\n$4\r\n\0thi\r\n"
        );
    }

    #[test]
    fn payload_tags_round_trip() {
        assert_eq!(
            decode_payload(&encode_payload(true, b"hi")),
            (true, &b"hi"[..])
        );
        assert_eq!(
            decode_payload(&encode_payload(false, b"t")),
            (false, &b"t"[..])
        );
        assert_eq!(decode_payload(b"plain"), (true, &b"plain"[..]));
        assert_eq!(decode_payload(b"\xff"), (false, &b"\xff"[..]));
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("news", 1), 0);
        assert_eq!(shard_of("news", 2), shard_of("news", 2));
        let on_first = (0..1000)
            .filter(|i| shard_of(&format!("c{i}"), 2) == 0)
            .count();
        assert!((400..600).contains(&on_first), "{on_first}");
    }

    #[test]
    fn subscribe_mode_frames() {
        let (f, n) = next_frame(b"*3\r\n$7\r\nmessage\r\n$8\r\nwsd:news\r\n$2\r\nhi\r\n+")
            .unwrap()
            .unwrap();
        assert_eq!(n, 39);
        assert_eq!(
            sub_event(f),
            SubEvent::Message {
                channel: b"wsd:news".to_vec(),
                payload: b"hi".to_vec()
            }
        );
        let (f, _) = next_frame(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(sub_event(f), SubEvent::Confirmed);
        let (f, _) = next_frame(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(sub_event(f), SubEvent::Pong);
        assert_eq!(next_frame(b"*3\r\n$7\r\nmess").unwrap(), None);
        let (f, _) = next_frame(b":2\r\n").unwrap().unwrap();
        assert_eq!(reply(f), Reply::Integer(2));
    }
}
