//! The queue behind one watch stream, written to directly by the hub.
//!
//! An idle watch must cost little: no task, no channel blocks, just its place in the hub's index
//! and this queue (a few words while empty). The hub pushes a change into a live watcher's queue
//! without waiting ([`StreamQueue::try_push`]); a full queue means the client is not reading,
//! and the hub ends that watch. A watch that is catching up (initial events, or a resume from
//! the window) has a task for that phase only, which waits for room ([`StreamQueue::push`]).
//! Final statuses and WatchMany acknowledgements go past the bound ([`StreamQueue::push_control`]):
//! there are at most a few per watch.
//!
//! The response stream (tonic polls it to send) pops from the queue; when it is dropped (the
//! client went away or the call ended) the queue is marked gone and producers stop. The queue
//! holds only messages: the stream owns its hub registration (see `super::stream`), so nothing
//! the hub reaches holds the hub.
//!
//! A [`Sink`] names a queue and the watch (of a WatchMany stream) its events belong to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tonic::Status;

use super::event::{HubEvent, canceled};
use crate::proto::v1 as pb;

/// One message waiting in a queue.
#[derive(Debug)]
pub(crate) enum Item {
    /// A change shared with every other receiver, for watch `id` (0 on a Watch stream).
    Shared(u64, Arc<HubEvent>),
    /// An event of one watch only (initial, catch-up, bookmark).
    Owned(u64, Box<pb::WatchEvent>),
    /// A WatchMany acknowledgement or per-watch error.
    Control(Box<pb::WatchManyEvent>),
    /// The stream ends with this status.
    End(Box<Status>),
}

/// The queue is full: the client is not reading fast enough.
#[derive(Debug)]
pub(crate) struct Full;

/// The stream is gone (or already ended): nothing pushed will be read.
#[derive(Debug)]
pub(crate) struct Gone;

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    /// The response stream, waiting for an item.
    reader: Option<Waker>,
    /// A producer waits (on `changed`) for room.
    producer_waiting: bool,
    /// The response stream was dropped.
    gone: bool,
    /// An `End` was queued: nothing after it is read.
    ended: bool,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct StreamQueue {
    state: Mutex<State>,
    /// Woken when room frees up or the stream goes away.
    changed: Notify,
    capacity: usize,
}

impl StreamQueue {
    /// An empty queue holding at most `capacity` pushed items.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            capacity: capacity.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` unless the queue is full. An item for a stream that is gone or ended is
    /// dropped (its watch is going away).
    pub(crate) fn try_push(&self, item: Item) -> Result<(), Full> {
        let mut s = self.lock();
        if s.gone || s.ended {
            return Ok(());
        }
        if s.items.len() >= self.capacity {
            return Err(Full);
        }
        s.items.push_back(item);
        wake(s);
        Ok(())
    }

    /// Queues `item` past the bound: final statuses and acknowledgements. After an `End`
    /// nothing more is queued.
    pub(crate) fn push_control(&self, item: Item) {
        let mut s = self.lock();
        if s.gone || s.ended {
            return;
        }
        s.ended = matches!(item, Item::End(_));
        s.items.push_back(item);
        wake(s);
    }

    /// Queues `item`, waiting for room; fails once the stream is gone or ended.
    pub(crate) async fn push(&self, item: Item) -> Result<(), Gone> {
        let mut item = Some(item);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.gone || s.ended {
                    return Err(Gone);
                }
                if s.items.len() < self.capacity {
                    if let Some(item) = item.take() {
                        s.items.push_back(item);
                    }
                    wake(s);
                    return Ok(());
                }
                s.producer_waiting = true;
            }
            changed.await;
        }
    }

    /// Ends the stream without an error once what is queued has been read.
    pub(crate) fn finish(&self) {
        let mut s = self.lock();
        s.ended = true;
        wake(s);
    }

    /// Waits until the queue is at most half full; fails once the stream is gone or ended.
    pub(crate) async fn wait_room(&self) -> Result<(), Gone> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut s = self.lock();
                if s.gone || s.ended {
                    return Err(Gone);
                }
                if s.items.len() <= self.capacity / 2 {
                    return Ok(());
                }
                s.producer_waiting = true;
            }
            changed.await;
        }
    }

    /// Whether the response stream was dropped.
    pub(crate) fn is_gone(&self) -> bool {
        self.lock().gone
    }

    /// Resolves once the response stream is dropped.
    pub(crate) async fn gone(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_gone() {
                return;
            }
            changed.await;
        }
    }

    /// The next item, for the response stream.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut s = self.lock();
        match s.items.pop_front() {
            Some(item) => {
                if s.items.is_empty() && s.items.capacity() > 8 {
                    // A burst is over; an idle stream keeps no large buffer.
                    s.items.shrink_to(8);
                }
                if std::mem::take(&mut s.producer_waiting) {
                    drop(s);
                    self.changed.notify_waiters();
                }
                Poll::Ready(Some(item))
            }
            None if s.ended => Poll::Ready(None),
            None => {
                if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.reader = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// The response stream is going away: producers stop.
    pub(crate) fn close(&self) {
        {
            let mut s = self.lock();
            s.gone = true;
            s.items.clear();
            s.reader = None;
        }
        self.changed.notify_waiters();
    }
}

fn wake(mut s: MutexGuard<'_, State>) {
    let reader = s.reader.take();
    drop(s);
    if let Some(w) = reader {
        w.wake();
    }
}

/// Where a watcher's events go.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// A Watch stream.
    Single(Arc<StreamQueue>),
    /// One watch (`id`) of a WatchMany stream.
    Many(Arc<StreamQueue>, u64),
}

impl Sink {
    /// The stream's queue.
    pub(crate) fn queue(&self) -> &StreamQueue {
        match self {
            Sink::Single(q) | Sink::Many(q, _) => q,
        }
    }

    /// The watch id events are tagged with (0 on a Watch stream).
    pub(crate) fn watch_id(&self) -> u64 {
        match self {
            Sink::Single(_) => 0,
            Sink::Many(_, id) => *id,
        }
    }

    /// Ends this watcher: the stream of a Watch, one watch of a WatchMany.
    pub(crate) fn end(&self, s: &Status) {
        match self {
            Sink::Single(q) => q.push_control(Item::End(Box::new(s.clone()))),
            Sink::Many(q, id) => q.push_control(Item::Control(Box::new(canceled(*id, Some(s))))),
        }
    }
}
