//! [`ConnId`]: how the loop, the handlers and the channel registry name a connection.

use std::fmt;

/// A connection's key in the loop's slab (also its mio token). Valid while the connection is
/// open; the key of a closed connection may be given to a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}
