//! [`PubSub`], the `mode = "pubsub"` handler: the handshake's path names the channels a client
//! subscribes to; client messages are published to its path channel when allowed.

use crate::config::Config;
use crate::conn_id::ConnId;
use crate::protocol::handshake::Reject;
use crate::protocol::{CloseCode, Message};
use crate::pubsub::name::channels_of_target;

use super::{Ctx, Handler};

/// Reason of the Close 1008 a client gets for publishing when `client_publish` is off.
pub const CLIENTS_MAY_NOT_PUBLISH: &str = "clients may not publish (client_publish is off)";

/// The built-in pub/sub handler.
#[derive(Clone, Copy, Debug)]
pub struct PubSub {
    max_channels: usize,
    client_publish: bool,
}

impl PubSub {
    pub fn new(config: &Config) -> PubSub {
        PubSub {
            max_channels: config.max_channels_per_connection,
            client_publish: config.client_publish,
        }
    }
}

impl Handler for PubSub {
    fn accept(&mut self, target: &str) -> Result<(), Reject> {
        channels_of_target(target, self.max_channels)
            .map(|_| ())
            .map_err(|e| Reject::BadRequest(e.detail()))
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, target: &str) {
        // `accept` checked the target; the first channel is the path's.
        for name in channels_of_target(target, self.max_channels).unwrap_or_default() {
            let _ = ctx.subscribe(conn, &name);
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, message: Message<'_>) {
        if self.client_publish {
            ctx.publish_to_first_channel(conn, message);
        } else {
            ctx.close(conn, CloseCode::POLICY, CLIENTS_MAY_NOT_PUBLISH);
        }
    }
}
