//! The logger: `RUST_LOG` levels through env_logger; journald priority prefixes under systemd.
//!
//! When stderr is the journal stream systemd set up (`$JOURNAL_STREAM` names its device and
//! inode), each line starts with a `<N>` syslog priority and carries no timestamp of its own:
//! journald adds both, and `journalctl -p warning` then filters by level.

use std::fmt;
use std::io::Write;

use log::Level;

/// Installs the global logger; `RUST_LOG` picks the levels (default: info).
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "{}",
                JournalLine {
                    level: record.level(),
                    target: record.target(),
                    message: record.args(),
                }
            )
        });
    }
    builder.init();
}

/// The syslog priority journald reads from a `<N>` prefix (sd-daemon(3)).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One log line for journald: `<N>target: message`.
pub struct JournalLine<'a, M> {
    pub level: Level,
    pub target: &'a str,
    pub message: M,
}

impl<M: fmt::Display> fmt::Display for JournalLine<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<{}>{}: {}",
            priority(self.level),
            self.target,
            self.message
        )
    }
}

/// Whether stderr is the stream `$JOURNAL_STREAM` (`DEVICE:INODE`) names, as systemd.exec(5)
/// says to check: a child whose stderr was redirected must not emit prefixes.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    // SAFETY: `stat` is plain old data, for which all-zero bytes are a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) writes only into `st`; if fd 2 is closed it fails and we report false.
    let rc = unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) };
    rc == 0 && st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_syslog_priorities() {
        let line = |level| {
            JournalLine {
                level,
                target: "wsd::server",
                message: "hello",
            }
            .to_string()
        };
        assert_eq!(line(Level::Error), "<3>wsd::server: hello");
        assert_eq!(line(Level::Warn), "<4>wsd::server: hello");
        assert_eq!(line(Level::Info), "<6>wsd::server: hello");
        assert_eq!(line(Level::Debug), "<7>wsd::server: hello");
        assert_eq!(line(Level::Trace), "<7>wsd::server: hello");
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }
}
