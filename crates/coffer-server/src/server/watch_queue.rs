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
//! client went away or the call ended) the queue is marked gone, producers stop, and its
//! registration (if the queue holds one) leaves the hub.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tonic::Status;

use super::hub::{HubEvent, Registration};
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
    /// A Watch stream's hub registration, dropped with the stream (a WatchMany stream's
    /// registrations are held per watch by its task).
    registration: Mutex<Option<Registration>>,
}

impl StreamQueue {
    /// An empty queue holding at most `capacity` pushed items.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            capacity: capacity.max(1),
            registration: Mutex::new(None),
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

    /// Keeps `registration` until the stream is dropped (dropped at once if it already was).
    pub(crate) fn hold(&self, registration: Registration) {
        let mut slot = self.registration.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_gone() {
            *slot = Some(registration);
        }
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
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

    /// The response stream is going away: producers stop, the registration leaves the hub.
    fn close(&self) {
        {
            let mut s = self.lock();
            s.gone = true;
            s.items.clear();
            s.reader = None;
        }
        self.changed.notify_waiters();
        let registration = self
            .registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(registration);
    }
}

fn wake(mut s: MutexGuard<'_, State>) {
    let reader = s.reader.take();
    drop(s);
    if let Some(w) = reader {
        w.wake();
    }
}

/// Gauges an open stream or watch holds (see [`super::metrics::Metrics`]).
type Guard = super::metrics::GaugeGuard;

/// The response stream of Watch.
#[derive(Debug)]
pub struct WatchEvents {
    queue: Arc<StreamQueue>,
    _guard: Guard,
}

impl WatchEvents {
    pub(crate) fn new(queue: Arc<StreamQueue>, stream: Guard) -> Self {
        Self {
            queue,
            _guard: stream,
        }
    }
}

impl Drop for WatchEvents {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl futures::Stream for WatchEvents {
    type Item = Result<pb::WatchEvent, Status>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match std::task::ready!(self.queue.poll_pop(cx)) {
                None => Poll::Ready(None),
                Some(Item::Shared(_, ev)) => Poll::Ready(Some(Ok(ev.event.clone()))),
                Some(Item::Owned(_, ev)) => Poll::Ready(Some(Ok(*ev))),
                Some(Item::End(s)) => Poll::Ready(Some(Err(*s))),
                Some(Item::Control(_)) => continue,
            };
        }
    }
}

/// The response stream of WatchMany.
#[derive(Debug)]
pub struct WatchManyEvents {
    queue: Arc<StreamQueue>,
    _guard: Guard,
}

impl WatchManyEvents {
    pub(crate) fn new(queue: Arc<StreamQueue>, stream: Guard) -> Self {
        Self {
            queue,
            _guard: stream,
        }
    }
}

impl Drop for WatchManyEvents {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl futures::Stream for WatchManyEvents {
    type Item = Result<pb::WatchManyEvent, Status>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let tagged = |watch_id, ev| pb::WatchManyEvent {
            watch_id,
            event: Some(ev),
            ..pb::WatchManyEvent::default()
        };
        Poll::Ready(match std::task::ready!(self.queue.poll_pop(cx)) {
            None => None,
            Some(Item::Shared(id, ev)) => Some(Ok(tagged(id, ev.event.clone()))),
            Some(Item::Owned(id, ev)) => Some(Ok(tagged(id, *ev))),
            Some(Item::Control(ev)) => Some(Ok(*ev)),
            Some(Item::End(s)) => Some(Err(*s)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use futures::StreamExt;

    use super::*;

    fn owned(rv: u64) -> Item {
        Item::Owned(
            0,
            Box::new(pb::WatchEvent {
                r#type: 0,
                object: Some(super::super::convert::bookmark_object(rv, false)),
            }),
        )
    }

    fn events(q: &Arc<StreamQueue>) -> WatchEvents {
        let m = super::super::metrics::Metrics::new();
        WatchEvents::new(q.clone(), m.watch_stream())
    }

    #[tokio::test]
    async fn bounded_push_control_past_the_bound_and_nothing_after_end() {
        let q = StreamQueue::new(2);
        let mut s = pin!(events(&q));
        assert!(q.try_push(owned(1)).is_ok());
        assert!(q.try_push(owned(2)).is_ok());
        assert!(q.try_push(owned(3)).is_err(), "a full queue refuses");
        q.push_control(Item::End(Box::new(Status::aborted("behind"))));
        assert!(q.try_push(owned(4)).is_ok(), "dropped silently after End");
        assert!(s.next().await.is_some_and(|r| r.is_ok()));
        assert!(s.next().await.is_some_and(|r| r.is_ok()));
        let end = s.next().await;
        assert!(matches!(end, Some(Err(ref st)) if st.code() == tonic::Code::Aborted));
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_producer_resumes_when_the_reader_reads_and_stops_when_it_leaves() {
        let q = StreamQueue::new(1);
        let s = events(&q);
        q.push(owned(1)).await.ok();
        let q2 = q.clone();
        let producer = tokio::spawn(async move { q2.push(owned(2)).await.is_ok() });
        let mut s = Box::pin(s);
        assert!(s.next().await.is_some());
        assert!(
            producer.await.unwrap_or(false),
            "room freed: the push lands"
        );
        // Full again; the reader leaves: the waiting producer gives up.
        let q3 = q.clone();
        let producer = tokio::spawn(async move { q3.push(owned(3)).await.is_err() });
        tokio::task::yield_now().await;
        drop(s);
        assert!(producer.await.unwrap_or(false));
        assert!(q.is_gone());
        q.gone().await;
    }
}
