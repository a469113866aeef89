//! The two watch RPCs and their response streams.
//!
//! A Watch stream is one watcher; a WatchMany stream multiplexes many, created and cancelled by
//! its requests. Each watcher starts as `super::catch_up` describes, then its events come from
//! its bounded queue, already converted to their wire form and shared with every other
//! receiver. A watcher whose queue fills (it does not read fast enough) is ended with `ABORTED`
//! "watch fell behind ...; resume from resource version N", N being the last revision it was
//! given, so it can resume without a re-list while N is still in the window.
//!
//! The stream owns its registration: a Watch stream holds it ([`WatchEvents`]); a WatchMany
//! stream's task holds one per watch and ends with the stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::catch_up::{Stop, WatchContext, WatchRequest, catch_up_and_register, register_now};
use super::event::canceled;
use super::hub::Registration;
use super::queue::{Item, Sink, StreamQueue};
use crate::auth::gate::WatchBudget;
use crate::proto::v1 as pb;
use crate::server::status::{self, fix_decode_limit};

/// Events queued per Watch stream before its watcher is ended as too slow.
const WATCH_QUEUE: usize = 128;
/// Messages queued per WatchMany stream (all its watches together) before the watch whose
/// change does not fit is ended as fallen behind.
const WATCH_MANY_QUEUE: usize = 4096;
/// The most watches one WatchMany stream may hold.
pub const MAX_WATCHES_PER_STREAM: usize = 100_000;

/// Opens a Watch stream: registered at once when it can be, else after a catch-up task (which
/// hands the registration over to the stream when it is done).
pub(crate) fn open_watch(ctx: &WatchContext, req: WatchRequest) -> WatchEvents {
    let queue = StreamQueue::new(WATCH_QUEUE);
    let guard = ctx.metrics.watch_stream();
    let sink = Sink::Single(queue.clone());
    let (registration, handover) = match register_now(ctx, &req, &sink) {
        Some(Ok(r)) => (Some(r), None),
        Some(Err(stop)) => {
            end_single(ctx, &sink, stop);
            (None, None)
        }
        None => {
            let (tx, rx) = oneshot::channel();
            let ctx = ctx.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                let _counted = ctx.metrics.watch();
                let cancel = ctx.shutdown.clone();
                let r = tokio::select! {
                    r = catch_up_and_register(&ctx, &req, &sink, &cancel) => r,
                    _ = queue.gone() => Err(Stop::Closed),
                };
                match r {
                    // A stream that is gone already refuses it: dropped here, unregistered.
                    Ok(r) => drop(tx.send(r)),
                    Err(stop) => end_single(&ctx, &sink, stop),
                }
            });
            (None, Some(rx))
        }
    };
    WatchEvents {
        queue,
        _registration: registration,
        _handover: handover,
        _guard: guard,
    }
}

fn end_single(ctx: &WatchContext, sink: &Sink, stop: Stop) {
    match stop {
        Stop::Status(s) => sink.end(&s),
        Stop::Closed if ctx.shutdown.is_cancelled() => sink.end(&status::shutting_down()),
        Stop::Closed => {}
    }
}

/// Decides whether one watch of a WatchMany stream may be created (its id, its request); a
/// refusal cancels that watch with the status, not the stream.
#[derive(Clone)]
pub(crate) struct WatchAuthorizer(pub(crate) Arc<AuthorizeWatch>);

/// The function behind a [`WatchAuthorizer`].
pub(crate) type AuthorizeWatch =
    dyn Fn(u64, &pb::WatchSecretsRequest) -> Result<(), Status> + Send + Sync;

impl std::fmt::Debug for WatchAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchAuthorizer")
    }
}

/// Opens a WatchMany stream: a task reads its `create`/`cancel` requests; each watch is a hub
/// registration (plus a task while it catches up), all writing to one queue.
pub(crate) fn open_watch_many(
    ctx: &WatchContext,
    input: tonic::Streaming<pb::WatchManyRequest>,
    authorize: WatchAuthorizer,
    budget: WatchBudget,
) -> WatchManyEvents {
    let queue = StreamQueue::new(WATCH_MANY_QUEUE);
    let events = WatchManyEvents::new(queue.clone(), ctx.metrics.watch_stream());
    let stream_cancel = ctx.shutdown.child_token();
    let mux = Mux {
        ctx: ctx.clone(),
        queue,
        watches: HashMap::new(),
        tasks: tokio::task::JoinSet::new(),
        generation: 0,
        next_auto_id: 1,
        stream_cancel,
        authorize,
        budget,
    };
    tokio::spawn(mux.run(input));
    events
}

/// A watch of a WatchMany stream (small: there may be a million).
#[derive(Debug)]
enum ManyWatch {
    /// Catching up in a task: cancelling the token stops it.
    CatchingUp {
        cancel: CancellationToken,
        generation: u64,
    },
    /// Registered with the hub.
    Live(Registration),
}

/// The watches of one WatchMany stream.
#[derive(Debug)]
struct Mux {
    ctx: WatchContext,
    queue: Arc<StreamQueue>,
    watches: HashMap<u64, ManyWatch>,
    /// Each catch-up task returns (watch id, generation, its registration or why it stopped).
    tasks: tokio::task::JoinSet<(u64, u64, Result<Registration, Stop>)>,
    generation: u64,
    next_auto_id: u64,
    stream_cancel: CancellationToken,
    authorize: WatchAuthorizer,
    /// The stream's watches, counted against the connection's and the identity's caps: one
    /// per entry of `watches` (synced after every change), all given back when the stream ends.
    budget: WatchBudget,
}

impl Mux {
    async fn run(mut self, mut input: tonic::Streaming<pb::WatchManyRequest>) {
        let queue = self.queue.clone();
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => {
                    queue.push_control(Item::End(Box::new(status::shutting_down())));
                    break;
                }
                _ = queue.gone() => break,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok((id, generation, result)) = done {
                        self.caught_up(id, generation, result);
                        self.budget.release_to(self.watches.len());
                    }
                }
                msg = input.message(), if input_open => match msg {
                    Ok(Some(req)) => {
                        // On etcd storage: a revision another replica gave out may not be
                        // published here yet; wait for it (bounded) before the create checks it.
                        if let Some(pb::watch_many_request::Op::Create(c)) = &req.op
                            && let Some(w) = &c.watch
                            && w.resource_version != 0
                        {
                            let _ = self.ctx.store.await_revision(w.resource_version).await;
                        }
                        self.handle(req);
                        self.budget.release_to(self.watches.len());
                    }
                    Ok(None) => {
                        // The client sent all its requests; its watches go on.
                        input_open = false;
                    }
                    Err(s) => {
                        if s.code() != Code::Cancelled {
                            queue.push_control(Item::End(Box::new(fix_decode_limit(s))));
                        }
                        break;
                    }
                },
            }
            if !input_open && self.watches.is_empty() && self.tasks.is_empty() {
                queue.finish();
                break;
            }
        }
        self.stream_cancel.cancel();
        self.tasks.shutdown().await;
        // Dropping the registrations takes them out of the hub.
        self.watches.clear();
    }

    fn reply(&self, ev: pb::WatchManyEvent) {
        self.queue.push_control(Item::Control(Box::new(ev)));
    }

    fn refuse(&self, watch_id: u64, s: &Status) {
        self.reply(canceled(watch_id, Some(s)));
    }

    /// A catch-up task finished.
    fn caught_up(&mut self, id: u64, generation: u64, result: Result<Registration, Stop>) {
        let current = matches!(
            self.watches.get(&id),
            Some(ManyWatch::CatchingUp { generation: g, .. }) if *g == generation
        );
        if !current {
            // Cancelled by the client while catching up: whatever it queued is out; say so.
            drop(result);
            if !self.ctx.shutdown.is_cancelled() {
                self.reply(canceled(id, None));
            }
            return;
        }
        self.watches.remove(&id);
        match result {
            Ok(registration) => {
                self.watches.insert(id, ManyWatch::Live(registration));
            }
            Err(Stop::Status(s)) if !self.ctx.shutdown.is_cancelled() => self.refuse(id, &s),
            Err(_) => {}
        }
    }

    fn handle(&mut self, req: pb::WatchManyRequest) {
        use pb::watch_many_request::Op;
        match req.op {
            None => self.refuse(0, &status::required("op")),
            Some(Op::Cancel(id)) => match self.watches.remove(&id) {
                Some(ManyWatch::Live(registration)) => {
                    // Unregistered first: nothing of this watch follows the answer.
                    drop(registration);
                    self.reply(canceled(id, None));
                }
                // Its task stops, and the answer is sent when it has (see `caught_up`).
                Some(ManyWatch::CatchingUp { cancel, .. }) => cancel.cancel(),
                None => {
                    let s = status::status(Code::NotFound, format!("watch {id} does not exist"));
                    self.refuse(id, &s);
                }
            },
            Some(Op::Create(create)) => self.create(create),
        }
    }

    /// Whether `id` names a watch that is still running (one the hub ended for falling behind
    /// is not: its id may be used again).
    fn in_use(&self, id: u64) -> bool {
        match self.watches.get(&id) {
            Some(ManyWatch::Live(registration)) => registration.is_live(),
            Some(ManyWatch::CatchingUp { .. }) => true,
            None => false,
        }
    }

    fn create(&mut self, create: pb::WatchCreate) {
        let id = if create.watch_id == 0 {
            while self.in_use(self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        } else {
            create.watch_id
        };
        if self.in_use(id) {
            let s = status::invalid_argument(format!("watch_id {id} is already in use"));
            return self.refuse(id, &s);
        }
        if self.watches.len() >= MAX_WATCHES_PER_STREAM {
            let s = status::status(
                Code::ResourceExhausted,
                format!("a WatchMany stream holds at most {MAX_WATCHES_PER_STREAM} watches"),
            );
            return self.refuse(id, &s);
        }
        let Some(req) = create.watch else {
            return self.refuse(id, &status::required("watch"));
        };
        if let Err(s) = (self.authorize.0)(id, &req) {
            return self.refuse(id, &s);
        }
        let req = match WatchRequest::parse(&self.ctx, req) {
            Ok(req) => req,
            Err(s) => return self.refuse(id, &s),
        };
        if let Err(s) = self.budget.try_add() {
            return self.refuse(id, &s);
        }
        self.reply(pb::WatchManyEvent {
            watch_id: id,
            created: true,
            ..pb::WatchManyEvent::default()
        });
        let sink = Sink::Many(self.queue.clone(), id);
        match register_now(&self.ctx, &req, &sink) {
            Some(Ok(registration)) => {
                self.watches.insert(id, ManyWatch::Live(registration));
            }
            Some(Err(Stop::Status(s))) => {
                self.watches.remove(&id);
                self.refuse(id, &s);
            }
            Some(Err(Stop::Closed)) => {
                self.watches.remove(&id);
            }
            None => {
                self.generation += 1;
                let generation = self.generation;
                let cancel = self.stream_cancel.child_token();
                self.watches.insert(
                    id,
                    ManyWatch::CatchingUp {
                        cancel: cancel.clone(),
                        generation,
                    },
                );
                let ctx = self.ctx.clone();
                self.tasks.spawn(async move {
                    let _counted = ctx.metrics.watch();
                    let r = catch_up_and_register(&ctx, &req, &sink, &cancel).await;
                    (id, generation, r)
                });
            }
        }
    }
}

/// Gauges an open stream or watch holds (see [`Metrics`](crate::server::metrics::Metrics)).
type Guard = crate::server::metrics::GaugeGuard;

/// The response stream of Watch. It owns its watcher's hub registration: dropping the stream
/// (the client went away, or the call ended) closes the queue, then unregisters the watcher.
#[derive(Debug)]
pub struct WatchEvents {
    queue: Arc<StreamQueue>,
    /// The registration, when the watch was registered as it opened.
    _registration: Option<Registration>,
    /// Where the catch-up task hands the registration over, when it registers later.
    _handover: Option<oneshot::Receiver<Registration>>,
    _guard: Guard,
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
                object: Some(crate::server::convert::bookmark_object(rv, false)),
            }),
        )
    }

    fn events(q: &Arc<StreamQueue>) -> WatchEvents {
        let m = crate::server::metrics::Metrics::new();
        WatchEvents {
            queue: q.clone(),
            _registration: None,
            _handover: None,
            _guard: m.watch_stream(),
        }
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
