//! wsd: a WebSocket (RFC 6455) server daemon for very many connections, with a graceful drain.
//!
//! Layout:
//! - [`protocol`]: sans-IO RFC 6455 — handshake, frames, messages, close rules and the
//!   per-connection [`protocol::Session`]. Pure code over byte slices: no sockets, no clocks.
//! - [`server`]: the single-threaded `mio` loop that owns every socket, timer and signal, and the
//!   drain on SIGTERM.
//! - [`handler`]: the [`Handler`] trait the loop calls for each connection's events, and the
//!   built-in echo handler.
//! - [`config`]: every setting with its default, validation, the config file and the command
//!   line.
//! - [`logging`]: the logger (`RUST_LOG`), with journald priority prefixes under systemd.
//! - [`rlimit`]: the open-file limit, raised at start and checked against `max_connections`.
#![cfg_attr(test, deny(warnings))]

pub mod config;
pub mod handler;
pub mod logging;
pub mod protocol;
pub mod rlimit;
pub mod server;

pub use handler::{Echo, Handler};
