//! [`Publisher`]: how other threads reach the loop — a bounded queue and a `mio::Waker`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::conn_id::ConnId;
use crate::protocol::CloseCode;

/// Something another thread asked the loop to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Job {
    /// Publish to a channel (`text` chooses a text or a binary frame).
    Publish {
        channel: String,
        text: bool,
        payload: Vec<u8>,
    },
    /// Send to one connection.
    Send {
        conn: ConnId,
        text: bool,
        payload: Vec<u8>,
    },
    /// Close one connection.
    Close {
        conn: ConnId,
        code: CloseCode,
        reason: String,
    },
    /// Call the handler's `on_wake`.
    Wake,
}

/// Why a job was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The queue holds its capacity of jobs the loop has not taken yet: try again later.
    Full,
    /// The loop has ended.
    Closed,
    /// A text payload that is not UTF-8, or a channel name outside the rule.
    Invalid,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::Full => "the loop's queue is full",
            PublishError::Closed => "the loop has ended",
            PublishError::Invalid => "invalid channel name or text that is not UTF-8",
        })
    }
}

impl std::error::Error for PublishError {}

/// Wakes the loop; `mio::Waker` in the server, a stub in tests.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        // A failed wake (the loop's poll is gone) leaves the job queued for nobody; `Closed`
        // reports that on the next call.
        let _ = mio::Waker::wake(self);
    }
}

pub(crate) struct Queue {
    jobs: Mutex<Inner>,
    capacity: usize,
    waker: Box<dyn Wake>,
}

struct Inner {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl Queue {
    pub(crate) fn new(capacity: usize, waker: Box<dyn Wake>) -> Arc<Queue> {
        Arc::new(Queue {
            jobs: Mutex::new(Inner {
                jobs: VecDeque::new(),
                closed: false,
            }),
            capacity: capacity.max(1),
            waker,
        })
    }

    /// Takes up to `max` queued jobs (in order) for the loop.
    pub(crate) fn take(&self, max: usize, into: &mut Vec<Job>) {
        let mut inner = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let n = inner.jobs.len().min(max);
        into.extend(inner.jobs.drain(..n));
    }

    /// Whether jobs are still waiting (the loop took only a share of them).
    pub(crate) fn is_empty(&self) -> bool {
        let inner = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        inner.jobs.is_empty()
    }

    /// The loop has ended: later jobs are refused with `Closed`.
    pub(crate) fn close(&self) {
        let mut inner = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        inner.closed = true;
        inner.jobs.clear();
    }

    fn push(&self, job: Job) -> Result<(), PublishError> {
        let was_empty = {
            let mut inner = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            if inner.closed {
                return Err(PublishError::Closed);
            }
            if inner.jobs.len() >= self.capacity {
                return Err(PublishError::Full);
            }
            inner.jobs.push_back(job);
            inner.jobs.len() == 1
        };
        // One wake per batch: the loop takes everything queued when it wakes.
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }
}

/// A cloneable, `Send` handle to a running loop: publish to channels, send to or close
/// connections, or wake the handler from another thread. Jobs queue up to the capacity given
/// to [`crate::server::Server::publisher`]; past it calls fail with [`PublishError::Full`]
/// (nothing is dropped silently).
#[derive(Clone)]
pub struct Publisher {
    queue: Arc<Queue>,
}

impl Publisher {
    pub(crate) fn new(queue: Arc<Queue>) -> Publisher {
        Publisher { queue }
    }

    /// Publishes a text message to `channel`.
    pub fn publish_text(&self, channel: &str, text: &str) -> Result<(), PublishError> {
        self.publish(channel, true, text.as_bytes().to_vec())
    }

    /// Publishes a binary message to `channel`.
    pub fn publish_binary(&self, channel: &str, data: &[u8]) -> Result<(), PublishError> {
        self.publish(channel, false, data.to_vec())
    }

    /// Publishes `payload` to `channel` as a text (UTF-8 checked) or binary message.
    pub fn publish(&self, channel: &str, text: bool, payload: Vec<u8>) -> Result<(), PublishError> {
        if !super::name::is_valid(channel) || (text && std::str::from_utf8(&payload).is_err()) {
            return Err(PublishError::Invalid);
        }
        self.queue.push(Job::Publish {
            channel: channel.to_string(),
            text,
            payload,
        })
    }

    /// Sends a message to one connection (dropped if it has gone by then).
    pub fn send(&self, conn: ConnId, text: bool, payload: Vec<u8>) -> Result<(), PublishError> {
        if text && std::str::from_utf8(&payload).is_err() {
            return Err(PublishError::Invalid);
        }
        self.queue.push(Job::Send {
            conn,
            text,
            payload,
        })
    }

    /// Closes one connection with `code` and `reason`.
    pub fn close(&self, conn: ConnId, code: CloseCode, reason: &str) -> Result<(), PublishError> {
        self.queue.push(Job::Close {
            conn,
            code,
            reason: reason.to_string(),
        })
    }

    /// Calls the handler's `on_wake` on the loop's thread.
    pub fn wake(&self) -> Result<(), PublishError> {
        self.queue.push(Job::Wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);
    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_full_queue_is_an_error_and_wakes_once_per_batch() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let queue = Queue::new(2, Box::new(Count(Arc::clone(&wakes))));
        let p = Publisher::new(Arc::clone(&queue));
        let q = p.clone();
        assert_eq!(p.publish_text("news", "a"), Ok(()));
        assert_eq!(q.publish_text("news", "b"), Ok(()));
        assert_eq!(p.publish_text("news", "c"), Err(PublishError::Full));
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(
            p.publish("bad name", true, b"x".to_vec()),
            Err(PublishError::Invalid)
        );
        assert_eq!(
            p.publish("news", true, vec![0xff]),
            Err(PublishError::Invalid)
        );
        let mut jobs = Vec::new();
        queue.take(usize::MAX, &mut jobs);
        assert_eq!(jobs.len(), 2);
        assert!(matches!(&jobs[0], Job::Publish { payload, .. } if payload == b"a"));
        assert_eq!(p.publish_text("news", "d"), Ok(()));
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
        queue.close();
        assert_eq!(p.wake(), Err(PublishError::Closed));
    }
}
