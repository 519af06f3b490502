//! wsd: a WebSocket (RFC 6455) server daemon for very many connections, with a graceful drain.
//!
//! Layout:
//! - [`protocol`]: sans-IO RFC 6455 — handshake, frames, messages, close rules and the
//!   per-connection [`protocol::Session`]. Pure code over byte slices: no sockets, no clocks.
//! - [`server`]: the single-threaded `mio` loop that owns every socket, timer and signal, and the
//!   drain on SIGTERM.
//! - [`handler`]: the [`Handler`] trait the loop calls for each connection's events, its
//!   [`handler::Ctx`] (send to any connection, subscribe, publish, close), and the built-in
//!   echo and pub/sub handlers.
//! - [`pubsub`]: channels and their subscribers, the fan-out of one loop turn (a publication
//!   framed once, written to each subscriber as shared bytes), and [`Publisher`], the handle
//!   other threads publish through.
//! - [`conn_id`]: [`ConnId`], a connection's name.
//! - [`config`]: every setting with its default, validation, the config file and the command
//!   line.
//! - [`logging`]: the logger (`RUST_LOG`), with journald priority prefixes under systemd.
//! - [`rlimit`]: the open-file limit, raised at start and checked against `max_connections`.
//! - [`tls`]: wss:// — the certificate pair (loaded, checked, reloaded) and one connection's TLS
//!   layer over the loop's buffers (rustls, unbuffered).
#![cfg_attr(test, deny(warnings))]

pub mod config;
pub mod conn_id;
pub mod handler;
pub mod logging;
pub mod protocol;
pub mod pubsub;
pub mod rlimit;
pub mod server;
pub mod tls;

pub use conn_id::ConnId;
pub use handler::{Ctx, Echo, Handler, PubSub};
pub use pubsub::Publisher;
