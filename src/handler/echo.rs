//! [`Echo`], the default mode: every message goes back as it came.

use crate::conn_id::ConnId;
use crate::protocol::Message;

use super::{Ctx, Handler};

/// The built-in handler: every message goes back as it came (text as text, binary as binary).
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Handler for Echo {
    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, message: Message<'_>) {
        ctx.send(conn, message);
    }
}
