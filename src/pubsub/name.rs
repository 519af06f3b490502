//! Channel names, and the channels a pub/sub handshake asks for (its path and `channel=` query
//! parameters, percent-decoded).

/// Longest channel name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Whether `name` may name a channel: 1–200 bytes of `A-Z a-z 0-9 _ - . : /`. The set keeps
/// names printable in logs, URLs and JSON without escaping.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

/// Why a handshake's channels were refused (answered with HTTP 400 and this text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// A name outside the allowed bytes or lengths.
    InvalidName,
    /// Neither the path nor a `channel=` parameter names a channel.
    NoChannel,
    /// More channels than `max_channels_per_connection`.
    TooMany,
    /// A `%` not followed by two hex digits.
    BadEscape,
}

impl ChannelError {
    pub fn detail(self) -> &'static str {
        match self {
            ChannelError::InvalidName => {
                "invalid channel name: 1-200 bytes of A-Z a-z 0-9 _ - . : /"
            }
            ChannelError::NoChannel => "name a channel in the path (/news) or with ?channel=NAME",
            ChannelError::TooMany => "too many channels for one connection",
            ChannelError::BadEscape => "bad percent-escape in the request target",
        }
    }
}

/// The channels a request target (`/news?channel=a&channel=b`) subscribes to, in order, without
/// duplicates: the path's first (unless the path is `/`), then each `channel=` parameter.
pub fn channels_of_target(target: &str, max: usize) -> Result<Vec<String>, ChannelError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: String| -> Result<(), ChannelError> {
        if !is_valid(&name) {
            return Err(ChannelError::InvalidName);
        }
        if !names.contains(&name) {
            if names.len() >= max {
                return Err(ChannelError::TooMany);
            }
            names.push(name);
        }
        Ok(())
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    if !path.is_empty() {
        add(percent_decode(path)?)?;
    }
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("channel=") {
            add(percent_decode(value)?)?;
        }
    }
    if names.is_empty() {
        return Err(ChannelError::NoChannel);
    }
    Ok(names)
}

/// Decodes `%XX` escapes (and `+` as a space, as in a query string; a space is then refused
/// by the name rule). Bytes that do not form UTF-8 are refused the same way.
pub fn percent_decode(text: &str) -> Result<String, ChannelError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(ChannelError::BadEscape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| ChannelError::BadEscape)?;
                let value = u8::from_str_radix(hex, 16).map_err(|_| ChannelError::BadEscape)?;
                out.push(value);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ChannelError::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        assert!(is_valid("news"));
        assert!(is_valid("chat/room-1"));
        assert!(is_valid("a.b:c_d-E9"));
        assert!(is_valid(&"x".repeat(200)));
        assert!(!is_valid(&"x".repeat(201)));
        assert!(!is_valid(""));
        for bad in ["a b", "a?b", "ä", "a\"b", "a\\b", "a%b", "a#b"] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_path_and_each_channel_parameter_subscribe() {
        let t = |s| channels_of_target(s, 16);
        assert_eq!(t("/news").unwrap(), ["news"]);
        assert_eq!(t("/chat/room-1").unwrap(), ["chat/room-1"]);
        assert_eq!(
            t("/news?channel=sport&x=1&channel=chat%2Froom-2").unwrap(),
            ["news", "sport", "chat/room-2"]
        );
        assert_eq!(t("/?channel=a&channel=a").unwrap(), ["a"]);
        assert_eq!(t("/"), Err(ChannelError::NoChannel));
        assert_eq!(t("/a b"), Err(ChannelError::InvalidName));
        assert_eq!(t("/news?channel=a%20b"), Err(ChannelError::InvalidName));
        assert_eq!(t("/news?channel="), Err(ChannelError::InvalidName));
        assert_eq!(t("/new%zz"), Err(ChannelError::BadEscape));
        assert_eq!(t("/new%4"), Err(ChannelError::BadEscape));
        assert_eq!(t("/%ff"), Err(ChannelError::InvalidName));
        assert_eq!(
            channels_of_target("/a?channel=b&channel=c", 2),
            Err(ChannelError::TooMany)
        );
        assert_eq!(channels_of_target("/a?channel=b", 2).unwrap(), ["a", "b"]);
    }
}
