//! Push: channels, their subscribers and the fan-out of publications, beside the loop.
//!
//! - [`name`]: the channel-name rule and the channels a handshake's target asks for.
//! - [`hub`]: the registry (channel → subscribers) and one loop turn's publications, framed
//!   once and handed to each subscriber as slices of shared bytes.
//! - [`api`]: the HTTP publish API's requests, parsed sans-IO.
//! - [`redis`]: the broker's Redis commands and replies, sans-IO.
//! - [`remote`]: [`Publisher`], the `Send` handle other threads publish through.

pub mod api;
pub mod hub;
pub mod name;
pub mod redis;
pub mod remote;

pub use hub::{Delivered, Hub, Ticket};
pub use name::ChannelError;
pub use remote::{Job, PublishError, Publisher};
