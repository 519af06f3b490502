//! The channel registry and one loop turn's fan-out, as plain data: who is subscribed to what,
//! and what was published or sent during the turn. No sockets here; the loop hands
//! [`Hub::flush`] a function that writes to one connection.
//!
//! A publication is framed once into the turn's arena. At the end of the turn every connection
//! that got anything is handed, in one call, the slices of the arena meant for it, in
//! publication order: the loop writes them with one `writev` and copies only what the socket
//! does not take. A subscriber that got publications from one channel only (the usual case)
//! is handed a suffix of that channel's slice list, built once per channel; one that got
//! several channels' publications or direct sends in the same turn has its list merged in
//! publication order.
//!
//! Subscriptions change at once. A subscriber who joins a channel during a turn gets only the
//! publications made after it joined (each publication remembers the subscriber count it saw);
//! one who leaves gets nothing more, not even a publication of the same turn.

use std::collections::HashMap;
use std::io::IoSlice;

use slab::Slab;

use crate::conn_id::ConnId;
use crate::protocol::deflate::{Deflater, MAX_WINDOW_BITS};
use crate::protocol::frame::{decode_header, write_frame, write_frame_rsv1, OpCode, Role};
use crate::protocol::{CloseCode, Message};

use super::name::{is_valid, ChannelError};

/// A subscriber slot left by a connection during a turn with pending publications; compacted
/// away after the turn's flush (removing it at once would move other subscribers under the
/// pending publications' feet).
const TOMB: u32 = u32::MAX;
/// End of a channel's chain of entries.
const NONE: u32 = u32::MAX;
/// Arena capacity kept from one turn to the next; a turn that needed more gives it back.
const ARENA_KEEP: usize = 1 << 20;

/// What [`Hub::publish`] hands back: the number of local subscribers the publication was queued
/// for is known once the turn is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// No subscriber: nothing was queued.
    Done(u32),
    /// The entry's count, readable with [`Hub::delivered`] after the next flush.
    Pending(u32),
    /// Handed to the broker as publication `id`; the broker answers for it.
    Remote(u64),
}

/// A publication for the broker to send (relay mode): every instance, this one included, gets
/// it back from the broker and delivers it locally.
#[derive(Debug, PartialEq, Eq)]
pub struct Outbound {
    pub id: u64,
    pub channel: String,
    pub text: bool,
    pub payload: Vec<u8>,
}

/// What writing to one connection did, as the loop reports it to [`Hub::flush`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Leading slices queued or written.
    pub queued: usize,
    /// Slices dropped (the connection's output is at its bound).
    pub dropped: usize,
}

/// Counters the metrics read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub publications: u64,
    /// Publications and direct sends queued for a connection.
    pub deliveries: u64,
    /// Deliveries dropped because a subscriber's output was at `max_output_buffer`.
    pub dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Channel(u32),
    Conn(u32),
}

/// One publication or direct send of the current turn.
#[derive(Clone, Copy, Debug)]
struct Entry {
    target: Target,
    /// The frame, in the arena.
    start: usize,
    end: usize,
    /// Subscribers of the channel when it was published: later ones do not get it.
    subs_len: u32,
    /// Next entry of the same channel this turn.
    next: u32,
    delivered: u32,
    /// The target connection went away.
    dead: bool,
    /// The compressed frame (permessage-deflate), in the arena, when a receiver negotiated the
    /// extension and compressing made it shorter; `zstart == zend` otherwise.
    zstart: usize,
    zend: usize,
}

struct Channel {
    name: Box<str>,
    /// Connection keys; [`TOMB`] for those that left during a turn with pending publications.
    subs: Vec<u32>,
    live: u32,
    /// This turn's entries of the channel (a chain through `Entry::next`).
    first: u32,
    last: u32,
    tombs: bool,
    /// A subscriber of this turn's entries negotiated permessage-deflate (set by `mark`).
    zip: bool,
}

/// One subscription of a connection: the channel and the connection's index in its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sub {
    channel: u32,
    pos: u32,
}

/// A connection's subscriptions: one inline (the usual case), more on the heap.
#[derive(Debug, Default)]
enum SubList {
    #[default]
    Empty,
    One(Sub),
    /// A boxed slice (16 bytes, not a Vec's 24): resized only when a subscription changes.
    Many(Box<[Sub]>),
}

impl SubList {
    fn as_slice(&self) -> &[Sub] {
        match self {
            SubList::Empty => &[],
            SubList::One(s) => std::slice::from_ref(s),
            SubList::Many(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Sub] {
        match self {
            SubList::Empty => &mut [],
            SubList::One(s) => std::slice::from_mut(s),
            SubList::Many(v) => v,
        }
    }

    fn push(&mut self, sub: Sub) {
        *self = match std::mem::take(self) {
            SubList::Empty => SubList::One(sub),
            SubList::One(first) => SubList::Many(Box::new([first, sub])),
            SubList::Many(v) => {
                let mut v = v.into_vec();
                v.push(sub);
                SubList::Many(v.into_boxed_slice())
            }
        };
    }

    fn remove(&mut self, channel: u32) -> Option<Sub> {
        let i = self.as_slice().iter().position(|s| s.channel == channel)?;
        let sub = self.as_slice()[i];
        *self = match std::mem::take(self) {
            SubList::Many(v) => {
                let mut v = v.into_vec();
                v.remove(i);
                match v.len() {
                    0 => SubList::Empty,
                    1 => SubList::One(v[0]),
                    _ => SubList::Many(v.into_boxed_slice()),
                }
            }
            _ => SubList::Empty,
        };
        Some(sub)
    }

    fn set_pos(&mut self, channel: u32, pos: u32) {
        if let Some(s) = self
            .as_mut_slice()
            .iter_mut()
            .find(|s| s.channel == channel)
        {
            s.pos = pos;
        }
    }
}

/// Per-connection record, indexed by connection key; only connections that subscribed or were
/// sent to have one.
#[derive(Debug, Default)]
struct Record {
    subs: SubList,
    /// The turn this record was last marked in, and how ([`SINGLE`] or [`MULTI`]); `how` is
    /// only read for connections marked in the turn being flushed.
    mark: u32,
    how: u8,
}

/// Connections that take the compressed-once frames (permessage-deflate with a window at least
/// the hub's), one bit per connection key: a `Record` would cost every connection ~32 bytes
/// even in echo mode, where none subscribes.
#[derive(Default)]
struct ZipSet(Vec<u64>);

impl ZipSet {
    fn get(&self, key: u32) -> bool {
        let (word, bit) = (key as usize / 64, key % 64);
        self.0.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn set(&mut self, key: u32, on: bool) {
        let (word, bit) = (key as usize / 64, key % 64);
        if word >= self.0.len() {
            if !on {
                return;
            }
            self.0.resize(word + 1, 0);
        }
        if on {
            self.0[word] |= 1 << bit;
        } else {
            self.0[word] &= !(1 << bit);
        }
    }
}

const SINGLE: u8 = 1;
const MULTI: u8 = 2;

/// The channel registry and the current turn's publications.
#[derive(Default)]
pub struct Hub {
    names: HashMap<Box<str>, u32>,
    channels: Slab<Channel>,
    records: Vec<Record>,
    subscriptions: usize,
    arena: Vec<u8>,
    entries: Vec<Entry>,
    /// Channels with entries this turn, in the order of their first.
    active: Vec<u32>,
    /// Connections with entries from more than one source this turn.
    multi: Vec<u32>,
    /// Delivered counts of the last flush's entries, for [`Ticket`]s.
    results: Vec<u32>,
    /// Close requests of the turn, applied by the loop after the flush.
    closes: Vec<(ConnId, CloseCode, String)>,
    turn: u32,
    counts: Counts,
    /// The loop's one compressor: fan-out frames (compressed once for every subscriber that
    /// negotiated permessage-deflate) and direct replies.
    deflater: Deflater,
    /// Connections that take compressed frames.
    zips: ZipSet,
    /// Window bits of the compressed-once frames, and the size below which none is made.
    zip_window: u8,
    zip_threshold: usize,
    /// Publications go to the broker instead of straight to local subscribers.
    relay: bool,
    outbox: Vec<Outbound>,
    /// Channels that got their first local subscriber (true) or lost their last (false), in
    /// order, for the broker to subscribe and unsubscribe (relay mode only).
    changes: Vec<(String, bool)>,
    next_remote: u64,
}

impl Hub {
    /// Publications are relayed through a broker from now on (see [`Hub::take_outbox`]).
    pub fn set_relay(&mut self) {
        self.relay = true;
    }

    /// The publications to send to the broker.
    pub fn take_outbox(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbox)
    }

    /// The channel subscriptions to make and end at the broker, in order.
    pub fn take_changes(&mut self) -> Vec<(String, bool)> {
        std::mem::take(&mut self.changes)
    }

    /// Names of the channels with local subscribers.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.channels.iter().map(|(_, c)| &*c.name)
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The loop's compressor.
    pub fn deflater_mut(&mut self) -> &mut Deflater {
        &mut self.deflater
    }

    pub fn deflater(&self) -> &Deflater {
        &self.deflater
    }

    /// A hub whose fan-out frames are compressed as [`Hub::set_compression`] says.
    pub fn with_compression(window_bits: u8, threshold: usize) -> Hub {
        let mut hub = Hub::default();
        hub.set_compression(window_bits, threshold);
        hub
    }

    /// Sets how fan-out frames are compressed: with a `window_bits` window (a subscriber
    /// whose agreed window is smaller gets the plain frame), for messages of at least
    /// `threshold` bytes.
    pub fn set_compression(&mut self, window_bits: u8, threshold: usize) {
        self.zip_window = window_bits;
        self.zip_threshold = threshold;
    }

    /// Records whether `conn` negotiated permessage-deflate, and the window we may compress
    /// with for it (called at open, before the handler can subscribe it).
    pub fn set_deflate(&mut self, conn: ConnId, server_window: Option<u8>) {
        let zip_window = if self.zip_window == 0 {
            MAX_WINDOW_BITS
        } else {
            self.zip_window
        };
        let zip = server_window.is_some_and(|w| w >= zip_window);
        self.zips.set(conn_key(conn), zip);
    }

    /// Channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// Whether anything waits to be flushed (or relayed).
    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
            && self.closes.is_empty()
            && self.outbox.is_empty()
            && self.changes.is_empty()
    }

    /// Whether the turn has entries (a reply sent now would overtake them).
    pub fn has_entries(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Local subscribers of `channel`.
    pub fn subscribers(&self, channel: &str) -> usize {
        self.names
            .get(channel)
            .and_then(|&ch| self.channels.get(ch as usize))
            .map_or(0, |c| c.live as usize)
    }

    /// Every channel and its subscriber count, in name order.
    pub fn channels(&self) -> Vec<(&str, usize)> {
        let mut all: Vec<_> = self
            .channels
            .iter()
            .map(|(_, c)| (&*c.name, c.live as usize))
            .collect();
        all.sort_unstable();
        all
    }

    /// The channels `conn` is subscribed to, in the order it joined them.
    pub fn channels_of(&self, conn: ConnId) -> impl Iterator<Item = &str> + '_ {
        let subs = self
            .records
            .get(conn.0)
            .map_or(&[][..], |r| r.subs.as_slice());
        subs.iter()
            .filter_map(|s| self.channels.get(s.channel as usize).map(|c| &*c.name))
    }

    fn record(&mut self, key: u32) -> &mut Record {
        let i = key as usize;
        if self.records.len() <= i {
            self.records.resize_with(i + 1, Record::default);
        }
        &mut self.records[i]
    }

    /// Subscribes `conn` to `channel`; returns false if it already was.
    pub fn subscribe(&mut self, conn: ConnId, channel: &str) -> Result<bool, ChannelError> {
        if !is_valid(channel) {
            return Err(ChannelError::InvalidName);
        }
        let key = conn_key(conn);
        let ch = match self.names.get(channel) {
            Some(&ch) => ch,
            None => {
                let ch = self.channels.insert(Channel {
                    name: channel.into(),
                    subs: Vec::new(),
                    live: 0,
                    first: NONE,
                    last: NONE,
                    tombs: false,
                    zip: false,
                }) as u32;
                self.names.insert(channel.into(), ch);
                if self.relay {
                    self.changes.push((channel.to_string(), true));
                }
                ch
            }
        };
        if self
            .record(key)
            .subs
            .as_slice()
            .iter()
            .any(|s| s.channel == ch)
        {
            return Ok(false);
        }
        let c = &mut self.channels[ch as usize];
        let pos = c.subs.len() as u32;
        c.subs.push(key);
        c.live += 1;
        self.record(key).subs.push(Sub { channel: ch, pos });
        self.subscriptions += 1;
        Ok(true)
    }

    /// Unsubscribes `conn` from `channel`; returns false if it was not subscribed.
    pub fn unsubscribe(&mut self, conn: ConnId, channel: &str) -> bool {
        let Some(&ch) = self.names.get(channel) else {
            return false;
        };
        let key = conn_key(conn);
        let Some(sub) = self
            .records
            .get_mut(key as usize)
            .and_then(|r| r.subs.remove(ch))
        else {
            return false;
        };
        self.leave(ch, sub.pos);
        true
    }

    /// The connection is gone: it leaves every channel, and nothing more is sent to it.
    pub fn remove_conn(&mut self, conn: ConnId) {
        let key = conn_key(conn);
        // The key is reused by the next connection, which negotiates for itself.
        self.zips.set(key, false);
        let Some(record) = self.records.get_mut(key as usize) else {
            return;
        };
        let subs = std::mem::take(&mut record.subs);
        for sub in subs.as_slice() {
            self.leave(sub.channel, sub.pos);
        }
        for e in &mut self.entries {
            if e.target == Target::Conn(key) {
                e.dead = true;
            }
        }
    }

    /// Takes slot `pos` of channel `ch` away from its subscriber.
    fn leave(&mut self, ch: u32, pos: u32) {
        let Some(c) = self.channels.get_mut(ch as usize) else {
            return;
        };
        c.live -= 1;
        self.subscriptions -= 1;
        if c.first != NONE {
            // Pending publications of this turn index into the list: keep it still.
            c.subs[pos as usize] = TOMB;
            c.tombs = true;
            return;
        }
        c.subs.swap_remove(pos as usize);
        if let Some(&moved) = c.subs.get(pos as usize) {
            self.records[moved as usize].subs.set_pos(ch, pos);
        }
        if c.live == 0 {
            self.drop_channel(ch);
        }
    }

    fn drop_channel(&mut self, ch: u32) {
        let c = self.channels.remove(ch as usize);
        self.names.remove(&c.name);
        if self.relay {
            self.changes.push((c.name.into(), false));
        }
    }

    /// Frames `message` once for every subscriber of `channel`; delivered at the next flush.
    /// In relay mode it goes to the broker instead (`channel` must then be a valid name).
    pub fn publish(&mut self, channel: &str, message: Message<'_>) -> Ticket {
        self.counts.publications += 1;
        if self.relay {
            return self.relay_out(channel.to_string(), message);
        }
        self.publish_local(channel, message)
    }

    /// Frames `message` for the local subscribers of `channel` only (what the broker delivers).
    pub fn publish_local(&mut self, channel: &str, message: Message<'_>) -> Ticket {
        match self.names.get(channel) {
            Some(&ch) => self.publish_to(ch, message),
            None => Ticket::Done(0),
        }
    }

    /// Publishes to the first channel `conn` joined; `None` when it has none.
    pub fn publish_first(&mut self, conn: ConnId, message: Message<'_>) -> Option<Ticket> {
        let ch = self.records.get(conn.0)?.subs.as_slice().first()?.channel;
        self.counts.publications += 1;
        if self.relay {
            let name = self.channels[ch as usize].name.to_string();
            return Some(self.relay_out(name, message));
        }
        Some(self.publish_to(ch, message))
    }

    fn relay_out(&mut self, channel: String, message: Message<'_>) -> Ticket {
        self.next_remote += 1;
        let id = self.next_remote;
        self.outbox.push(Outbound {
            id,
            channel,
            text: message.is_text(),
            payload: message.as_bytes().to_vec(),
        });
        Ticket::Remote(id)
    }

    fn publish_to(&mut self, ch: u32, message: Message<'_>) -> Ticket {
        let c = &mut self.channels[ch as usize];
        if c.live == 0 {
            return Ticket::Done(0);
        }
        let (start, end) = frame_into(&mut self.arena, message);
        let idx = self.entries.len() as u32;
        self.entries.push(Entry {
            target: Target::Channel(ch),
            start,
            end,
            subs_len: c.subs.len() as u32,
            next: NONE,
            delivered: 0,
            dead: false,
            zstart: 0,
            zend: 0,
        });
        if c.first == NONE {
            c.first = idx;
            self.active.push(ch);
        } else {
            self.entries[c.last as usize].next = idx;
        }
        c.last = idx;
        Ticket::Pending(idx)
    }

    /// Queues `message` for one connection, in order with the turn's publications.
    pub fn send(&mut self, conn: ConnId, message: Message<'_>) {
        let key = conn_key(conn);
        self.record(key);
        let (start, end) = frame_into(&mut self.arena, message);
        self.entries.push(Entry {
            target: Target::Conn(key),
            start,
            end,
            subs_len: 0,
            next: NONE,
            delivered: 0,
            dead: false,
            zstart: 0,
            zend: 0,
        });
    }

    /// Asks the loop to close `conn` after what this turn queued for it.
    pub fn close(&mut self, conn: ConnId, code: CloseCode, reason: &str) {
        self.closes.push((conn, code, reason.to_string()));
    }

    /// The close requests of the turn, for the loop to apply after the flush.
    pub fn take_closes(&mut self) -> Vec<(ConnId, CloseCode, String)> {
        std::mem::take(&mut self.closes)
    }

    /// Subscribers a publication was queued for, once its turn was flushed (`None` for a
    /// relayed one: the broker answers for those).
    pub fn delivered(&self, ticket: Ticket) -> Option<u32> {
        match ticket {
            Ticket::Done(n) => Some(n),
            Ticket::Pending(i) => Some(self.results.get(i as usize).copied().unwrap_or(0)),
            Ticket::Remote(_) => None,
        }
    }

    /// Hands every connection with entries this turn its frames, in order, once; `deliver`
    /// writes them and says how many it queued and dropped.
    pub fn flush(&mut self, mut deliver: impl FnMut(ConnId, &[IoSlice<'_>]) -> Delivered) {
        if self.entries.is_empty() {
            return;
        }
        self.turn = self.turn.wrapping_add(1).max(1);
        self.mark();
        self.compress_once();
        let Hub {
            channels,
            records,
            arena,
            entries,
            active,
            multi,
            counts,
            zips,
            ..
        } = self;
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        let mut idxs: Vec<u32> = Vec::new();
        let mut lens: Vec<u32> = Vec::new();
        let mut tally = |entries: &mut [Entry], idxs: &[u32], d: Delivered| {
            for &i in idxs.iter().take(d.queued) {
                entries[i as usize].delivered += 1;
            }
            counts.deliveries += d.queued as u64;
            counts.dropped += d.dropped as u64;
        };
        let mut zslices: Vec<IoSlice<'_>> = Vec::new();
        // Subscribers of one channel only: a suffix of the channel's slices (the compressed
        // frames' list for those that negotiated permessage-deflate).
        for &ch in active.iter() {
            let c = &channels[ch as usize];
            slices.clear();
            zslices.clear();
            idxs.clear();
            lens.clear();
            let mut e = c.first;
            while e != NONE {
                let entry = &entries[e as usize];
                slices.push(IoSlice::new(&arena[entry.start..entry.end]));
                if c.zip {
                    zslices.push(IoSlice::new(&arena[entry.wire(true)]));
                }
                idxs.push(e);
                lens.push(entry.subs_len);
                e = entry.next;
            }
            let max = lens.last().copied().unwrap_or(0);
            let mut first = 0;
            for j in 0..max {
                while lens[first] <= j {
                    first += 1;
                }
                let key = c.subs[j as usize];
                if key == TOMB || records[key as usize].how != SINGLE {
                    continue;
                }
                let list = if zips.get(key) { &zslices } else { &slices };
                let d = deliver(ConnId(key as usize), &list[first..]);
                tally(entries, &idxs[first..], d);
            }
        }
        // Direct sends to connections that got nothing else.
        for i in 0..entries.len() {
            let entry = entries[i];
            let Entry {
                target: Target::Conn(key),
                dead: false,
                ..
            } = entry
            else {
                continue;
            };
            let record = &records[key as usize];
            if record.how != SINGLE {
                continue;
            }
            let frame = &arena[entry.wire(zips.get(key))];
            let d = deliver(ConnId(key as usize), &[IoSlice::new(frame)]);
            tally(entries, &[i as u32], d);
        }
        // The rest: merged in publication order.
        for &key in multi.iter() {
            slices.clear();
            idxs.clear();
            let subs = records[key as usize].subs.as_slice();
            let zip = zips.get(key);
            for (i, e) in entries.iter().enumerate() {
                let wanted = match e.target {
                    _ if e.dead => false,
                    Target::Conn(k) => k == key,
                    Target::Channel(ch) => subs.iter().any(|s| {
                        s.channel == ch
                            && s.pos < e.subs_len
                            && channels[ch as usize].subs[s.pos as usize] == key
                    }),
                };
                if wanted {
                    slices.push(IoSlice::new(&arena[e.wire(zip)]));
                    idxs.push(i as u32);
                }
            }
            let d = deliver(ConnId(key as usize), &slices);
            tally(entries, &idxs, d);
        }
        drop(slices);
        drop(zslices);
        self.finish_turn();
    }

    /// Marks each connection with entries this turn as getting them from one source or more.
    fn mark(&mut self) {
        let turn = self.turn;
        let Hub {
            channels,
            records,
            entries,
            active,
            multi,
            zips,
            ..
        } = self;
        // Returns whether the connection takes compressed frames.
        let mut mark = |key: u32| {
            let r = &mut records[key as usize];
            if r.mark != turn {
                r.mark = turn;
                r.how = SINGLE;
            } else if r.how == SINGLE {
                r.how = MULTI;
                multi.push(key);
            }
            zips.get(key)
        };
        for &ch in active.iter() {
            let c = &mut channels[ch as usize];
            let max = entries[c.last as usize].subs_len as usize;
            let mut zip = false;
            for &key in &c.subs[..max] {
                if key != TOMB {
                    zip |= mark(key);
                }
            }
            c.zip = zip;
        }
        for e in entries.iter() {
            if let (Target::Conn(key), false) = (e.target, e.dead) {
                mark(key);
            }
        }
    }

    /// Compresses, once, each entry that a receiver with permessage-deflate will be handed
    /// (after `mark`): the compressed frame goes into the arena beside the plain one.
    fn compress_once(&mut self) {
        let Hub {
            channels,
            zips,
            arena,
            entries,
            deflater,
            zip_window,
            zip_threshold,
            ..
        } = self;
        let window = if *zip_window == 0 {
            MAX_WINDOW_BITS
        } else {
            *zip_window
        };
        for e in entries.iter_mut() {
            let wanted = match e.target {
                _ if e.dead => false,
                Target::Channel(ch) => channels.get(ch as usize).is_some_and(|c| c.zip),
                Target::Conn(key) => zips.get(key),
            };
            if !wanted {
                continue;
            }
            let Ok(Some(header)) = decode_header(&arena[e.start..e.end], Role::Client) else {
                continue;
            };
            let payload = e.start + header.header_len..e.end;
            if payload.len() < *zip_threshold {
                continue;
            }
            let compressed = deflater.compress(window, &[], &arena[payload.clone()]);
            if compressed.len() >= payload.len() {
                continue; // Incompressible: everyone gets the plain frame.
            }
            let zstart = arena.len();
            write_frame_rsv1(arena, header.opcode, compressed, None);
            (e.zstart, e.zend) = (zstart, arena.len());
        }
    }

    /// Keeps the entries' counts for tickets and clears the turn.
    fn finish_turn(&mut self) {
        self.results.clear();
        self.results
            .extend(self.entries.iter().map(|e| e.delivered));
        let active = std::mem::take(&mut self.active);
        for &ch in &active {
            let c = &mut self.channels[ch as usize];
            c.first = NONE;
            c.last = NONE;
            if c.tombs {
                self.compact(ch);
            }
        }
        self.active = active;
        self.active.clear();
        self.multi.clear();
        self.entries.clear();
        if self.arena.capacity() > ARENA_KEEP {
            self.arena = Vec::new();
        } else {
            self.arena.clear();
        }
    }

    /// Removes the slots of subscribers that left during the turn.
    fn compact(&mut self, ch: u32) {
        let c = &mut self.channels[ch as usize];
        let mut w = 0;
        for r in 0..c.subs.len() {
            let key = c.subs[r];
            if key == TOMB {
                continue;
            }
            if r != w {
                c.subs[w] = key;
                self.records[key as usize].subs.set_pos(ch, w as u32);
            }
            w += 1;
        }
        c.subs.truncate(w);
        c.tombs = false;
        if c.live == 0 {
            self.drop_channel(ch);
        }
    }
}

impl Entry {
    /// The arena range of the frame a receiver gets: the compressed one if it takes those and
    /// one was made.
    fn wire(&self, zip: bool) -> std::ops::Range<usize> {
        if zip && self.zend > self.zstart {
            self.zstart..self.zend
        } else {
            self.start..self.end
        }
    }
}

/// Appends a server frame (unmasked, one frame per message) to the arena; returns its range.
fn frame_into(arena: &mut Vec<u8>, message: Message<'_>) -> (usize, usize) {
    let start = arena.len();
    let opcode = if message.is_text() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    write_frame(arena, true, opcode, message.as_bytes(), None);
    (start, arena.len())
}

/// Connection keys are slab keys below `max_connections`, which config keeps under 2^31.
fn conn_key(conn: ConnId) -> u32 {
    u32::try_from(conn.0).unwrap_or(TOMB - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flushes and returns, per connection, the payloads it was handed (frames decoded by
    /// stripping the 2-byte header of short server frames), with `bound` frames accepted each.
    fn flush(hub: &mut Hub, bound: usize) -> Vec<(usize, Vec<String>)> {
        let mut got = Vec::new();
        hub.flush(|id, slices| {
            let take = slices.len().min(bound);
            let texts = slices[..take]
                .iter()
                .map(|s| String::from_utf8(s[2..].to_vec()).unwrap())
                .collect();
            got.push((id.0, texts));
            Delivered {
                queued: take,
                dropped: slices.len() - take,
            }
        });
        got.sort();
        got
    }

    fn text(s: &str) -> Message<'_> {
        Message::Text(s)
    }

    #[test]
    fn a_publication_reaches_exactly_its_channels_subscribers_in_order() {
        let mut hub = Hub::default();
        for c in 0..3 {
            hub.subscribe(ConnId(c), "news").unwrap();
        }
        hub.subscribe(ConnId(3), "sport").unwrap();
        let t1 = hub.publish("news", text("n1"));
        hub.publish("sport", text("s1"));
        let t2 = hub.publish("news", text("n2"));
        assert_eq!(hub.publish("nobody", text("x")), Ticket::Done(0));
        let got = flush(&mut hub, usize::MAX);
        let news = vec!["n1".to_string(), "n2".to_string()];
        assert_eq!(
            got,
            vec![
                (0, news.clone()),
                (1, news.clone()),
                (2, news),
                (3, vec!["s1".to_string()])
            ]
        );
        assert_eq!((hub.delivered(t1), hub.delivered(t2)), (Some(3), Some(3)));
        assert_eq!(hub.counts().deliveries, 7);
        assert_eq!(hub.counts().publications, 4);
        assert!(hub.is_idle());
    }

    #[test]
    fn several_channels_and_direct_sends_merge_in_publication_order() {
        let mut hub = Hub::default();
        hub.subscribe(ConnId(7), "a").unwrap();
        hub.subscribe(ConnId(7), "b").unwrap();
        hub.subscribe(ConnId(8), "b").unwrap();
        hub.publish("a", text("a1"));
        hub.send(ConnId(7), text("d1"));
        hub.publish("b", text("b1"));
        hub.publish("a", text("a2"));
        let got = flush(&mut hub, usize::MAX);
        assert_eq!(
            got[0],
            (7, vec!["a1".into(), "d1".into(), "b1".into(), "a2".into()])
        );
        assert_eq!(got[1], (8, vec!["b1".to_string()]));
        assert_eq!(hub.channels_of(ConnId(7)).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn joining_mid_turn_gets_only_later_publications_and_leaving_gets_none() {
        let mut hub = Hub::default();
        hub.subscribe(ConnId(1), "c").unwrap();
        hub.subscribe(ConnId(2), "c").unwrap();
        hub.publish("c", text("before"));
        hub.subscribe(ConnId(3), "c").unwrap();
        assert!(hub.unsubscribe(ConnId(1), "c"));
        hub.publish("c", text("after"));
        let got = flush(&mut hub, usize::MAX);
        assert_eq!(
            got,
            vec![
                (2, vec!["before".into(), "after".into()]),
                (3, vec!["after".to_string()])
            ]
        );
        // The tombstone is compacted away and positions stay right for later removals.
        assert_eq!(hub.subscribers("c"), 2);
        hub.remove_conn(ConnId(2));
        hub.publish("c", text("x"));
        assert_eq!(
            flush(&mut hub, usize::MAX),
            vec![(3, vec!["x".to_string()])]
        );
        hub.remove_conn(ConnId(3));
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(hub.subscription_count(), 0);
    }

    #[test]
    fn drops_are_counted_and_a_closed_conn_gets_nothing() {
        let mut hub = Hub::default();
        hub.subscribe(ConnId(1), "c").unwrap();
        hub.subscribe(ConnId(2), "c").unwrap();
        hub.send(ConnId(2), text("direct"));
        for i in 0..5 {
            hub.publish("c", text(&i.to_string()));
        }
        hub.remove_conn(ConnId(2));
        let got = flush(&mut hub, 2);
        assert_eq!(got, vec![(1, vec!["0".into(), "1".into()])]);
        assert_eq!(hub.counts().dropped, 3);
        assert_eq!(hub.counts().deliveries, 2);
    }

    #[test]
    fn relay_mode_hands_publications_and_channel_changes_to_the_broker() {
        let mut hub = Hub::default();
        hub.set_relay();
        hub.subscribe(ConnId(1), "a").unwrap();
        hub.subscribe(ConnId(2), "a").unwrap();
        let t = hub.publish("a", text("x"));
        assert_eq!(t, Ticket::Remote(1));
        assert_eq!(
            hub.publish_first(ConnId(2), Message::Binary(b"y")),
            Some(Ticket::Remote(2))
        );
        assert!(!hub.is_idle());
        let out = hub.take_outbox();
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[1].channel.as_str(), out[1].text, &out[1].payload[..]),
            ("a", false, &b"y"[..])
        );
        // Nothing was delivered locally: that waits for the broker.
        assert_eq!(flush(&mut hub, usize::MAX), vec![]);
        hub.publish_local("a", text("back"));
        assert_eq!(flush(&mut hub, usize::MAX).len(), 2);
        hub.remove_conn(ConnId(1));
        hub.remove_conn(ConnId(2));
        assert_eq!(
            hub.take_changes(),
            vec![("a".to_string(), true), ("a".to_string(), false)]
        );
    }

    #[test]
    fn swap_remove_keeps_every_position_right() {
        let mut hub = Hub::default();
        for c in 0..50 {
            hub.subscribe(ConnId(c), "c").unwrap();
            hub.subscribe(ConnId(c), "d").unwrap();
        }
        for c in (0..50).step_by(3) {
            assert!(hub.unsubscribe(ConnId(c), "c"));
        }
        for c in (1..50).step_by(3) {
            hub.remove_conn(ConnId(c));
        }
        // Every remaining record points at its own slot.
        for (key, r) in hub.records.iter().enumerate() {
            for s in r.subs.as_slice() {
                assert_eq!(
                    hub.channels[s.channel as usize].subs[s.pos as usize],
                    key as u32
                );
            }
        }
        assert_eq!(hub.subscribers("c"), 50 - 17 - 17);
        assert_eq!(hub.subscribers("d"), 50 - 17);
        assert_eq!(hub.subscribe(ConnId(2), "d"), Ok(false));
        assert_eq!(
            hub.subscribe(ConnId(2), "bad name"),
            Err(ChannelError::InvalidName)
        );
    }

    #[test]
    fn a_publication_is_compressed_once_for_the_subscribers_that_take_it() {
        let mut hub = Hub::with_compression(15, 64);
        for c in 0..4 {
            hub.set_deflate(ConnId(c), (c % 2 == 0).then_some(15));
            hub.subscribe(ConnId(c), "news").unwrap();
        }
        // A connection whose agreed window is smaller than the hub's gets plain frames.
        hub.set_deflate(ConnId(4), Some(10));
        hub.subscribe(ConnId(4), "news").unwrap();
        let body = "compressible ".repeat(100);
        hub.publish("news", text(&body));
        hub.publish("news", text("short"));
        let mut got = Vec::new();
        hub.flush(|id, slices| {
            got.push((
                id.0,
                slices
                    .iter()
                    .map(|s| (s[0], s.as_ptr()))
                    .collect::<Vec<_>>(),
            ));
            Delivered {
                queued: slices.len(),
                dropped: 0,
            }
        });
        got.sort();
        let zipped: Vec<_> = got
            .iter()
            .filter(|(id, _)| id % 2 == 0 && *id != 4)
            .collect();
        let plain: Vec<_> = got
            .iter()
            .filter(|(id, _)| id % 2 == 1 || *id == 4)
            .collect();
        for (_, frames) in &zipped {
            assert_eq!(frames[0].0, 0xC1, "FIN, RSV1, text");
            assert_eq!(frames[1].0, 0x81, "below the threshold: plain");
            assert_eq!(
                frames[0].1, zipped[0].1[0].1,
                "the same bytes for every subscriber"
            );
        }
        for (_, frames) in &plain {
            assert_eq!((frames[0].0, frames[1].0), (0x81, 0x81));
        }
        assert_eq!(hub.deflater().counts().messages, 1, "compressed once");
        // A key reused by a connection without the extension gets plain frames.
        hub.remove_conn(ConnId(0));
        hub.set_deflate(ConnId(0), None);
        hub.subscribe(ConnId(0), "news").unwrap();
        hub.publish("news", text(&body));
        hub.flush(|id, slices| {
            if id.0 == 0 {
                assert_eq!(slices[0][0], 0x81);
            }
            Delivered {
                queued: slices.len(),
                dropped: 0,
            }
        });
    }
}
