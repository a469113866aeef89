//! Watch streams over the [`Hub`].
//!
//! A watch registers with the hub (indexed by what it selects), then catches up from the
//! [`EventWindow`] of recent events: from its `resource_version` up to the revision it was
//! registered at, or with initial events (a list) and their bookmark. After that its events come
//! from its bounded hub queue, already converted to their wire form and shared with every other
//! receiver. A resume from below the window ends with `OUT_OF_RANGE` "too old resource version:
//! N (oldest M)"; a watcher whose queue fills (it does not read fast enough) is ended with
//! `ABORTED` "watch fell behind ...; resume from resource version N", N being the last revision it
//! was given, so it can resume without a re-list while N is still in the window.
//!
//! Limitation: without the previous state of an object, a MODIFIED that moves an object into or
//! out of a label selector is sent (or dropped) as MODIFIED, not turned into ADDED/DELETED as the
//! Kubernetes watch cache does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::convert::{bookmark_object, secret_into_proto, secret_to_proto};
use super::hub::{Hub, HubEvent, WATCH_QUEUE};
use super::metrics::Metrics;
use super::status::{self, fix_decode_limit};
use crate::model::Secret;
use crate::model::selector::{FieldSelector, LabelSelector};
use crate::model::validation::validate_namespace;
use crate::proto::v1 as pb;
use crate::proto::v1::watch_event::Type as EventType;
use crate::store::{ChangeEvent, EventKind, ListOptions, Store, StoreError};

/// Events read from the window per lock.
const READ_BATCH: usize = 128;
/// Items per page while sending initial events.
const INITIAL_PAGE: usize = 500;
/// Messages buffered per Watch stream before the watcher waits for the client (its hub queue
/// holds more).
pub(crate) const WATCH_BUFFER: usize = 16;
/// Messages buffered per WatchMany stream.
pub(crate) const WATCH_MANY_BUFFER: usize = 256;
/// The most watches one WatchMany stream may hold.
pub const MAX_WATCHES_PER_STREAM: usize = 100_000;
/// How long a final status may wait for room in a stream's buffer: a watcher ended for falling
/// behind has a full buffer, and sees its status once it reads again (within this time).
const FINAL_SEND_TIMEOUT: Duration = Duration::from_secs(30);

// =============================================================================================
// The event window
// =============================================================================================

#[derive(Debug)]
struct Window {
    events: VecDeque<Arc<ChangeEvent>>,
    /// Sum of the events' approximate sizes.
    bytes: usize,
    /// Every change after this revision (up to `latest`) is in `events`.
    floor: u64,
    /// The newest revision pushed.
    latest: u64,
    max_events: usize,
    max_bytes: usize,
}

/// The most recent change events, shared by every watcher (fed by the [`Hub`]).
#[derive(Debug)]
pub(crate) struct EventWindow {
    inner: RwLock<Window>,
}

/// A watcher's cursor fell below the window: the oldest revision it could resume from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TooOld {
    pub(crate) floor: u64,
}

impl EventWindow {
    /// An empty window holding every change after `floor`.
    pub(crate) fn new(floor: u64, max_events: usize, max_bytes: usize) -> Self {
        Self {
            inner: RwLock::new(Window {
                events: VecDeque::new(),
                bytes: 0,
                floor,
                latest: floor,
                max_events: max_events.max(1),
                max_bytes: max_bytes.max(1),
            }),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Window> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Window> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, ev: Arc<ChangeEvent>) {
        let mut w = self.write();
        if ev.revision <= w.latest {
            return;
        }
        if ev.revision != w.latest + 1 {
            // Events were missed: nothing before this one can be served any more.
            w.events.clear();
            w.bytes = 0;
            w.floor = ev.revision - 1;
        }
        w.bytes = w.bytes.saturating_add(ev.object.approx_size());
        w.latest = ev.revision;
        w.events.push_back(ev);
        while w.events.len() > w.max_events || (w.bytes > w.max_bytes && w.events.len() > 1) {
            if let Some(old) = w.events.pop_front() {
                w.bytes = w.bytes.saturating_sub(old.object.approx_size());
                w.floor = old.revision;
            }
        }
    }

    /// The oldest revision a watch can resume from.
    pub(crate) fn floor(&self) -> u64 {
        self.read().floor
    }

    /// Up to `max` events after `cursor`, oldest first.
    fn read_after(&self, cursor: u64, max: usize) -> Result<Vec<Arc<ChangeEvent>>, TooOld> {
        let w = self.read();
        if cursor < w.floor {
            return Err(TooOld { floor: w.floor });
        }
        let start = w.events.partition_point(|e| e.revision <= cursor);
        Ok(w.events.range(start..).take(max).cloned().collect())
    }
}

// =============================================================================================
// One watch
// =============================================================================================

/// What every watcher needs from the server.
#[derive(Debug, Clone)]
pub(crate) struct WatchContext {
    pub(crate) store: Arc<Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) list_page_bytes: usize,
    /// Cancelled when the server shuts down.
    pub(crate) shutdown: CancellationToken,
}

/// A validated watch request.
#[derive(Debug)]
pub(crate) struct WatchSpec {
    namespace: String,
    label_selector: String,
    field_selector: String,
    labels: LabelSelector,
    fields: FieldSelector,
    start: Start,
    bookmarks: bool,
}

#[derive(Debug, Clone, Copy)]
enum Start {
    /// Changes after this revision.
    After(u64),
    /// ADDED for the current state, a bookmark, then changes.
    Initial,
}

impl WatchSpec {
    /// Checks a request: namespace, selectors, and a resource_version the server can serve.
    pub(crate) fn parse(ctx: &WatchContext, req: pb::WatchSecretsRequest) -> Result<Self, Status> {
        if !req.namespace.is_empty() {
            validate_namespace(&req.namespace).map_err(StoreError::from)?;
        }
        let labels = LabelSelector::parse(&req.label_selector).map_err(|e| {
            Status::from(StoreError::BadRequest {
                field: "labelSelector",
                message: e.to_string(),
            })
        })?;
        let fields = FieldSelector::parse(&req.field_selector).map_err(|e| {
            Status::from(StoreError::BadRequest {
                field: "fieldSelector",
                message: e.to_string(),
            })
        })?;
        let start = if req.send_initial_events {
            Start::Initial
        } else if req.resource_version == 0 {
            Start::After(ctx.store.revision())
        } else {
            let current = ctx.store.revision();
            if req.resource_version > current {
                return Err(status::status(
                    Code::OutOfRange,
                    format!(
                        "too large resource version: {} (current {current})",
                        req.resource_version
                    ),
                ));
            }
            let floor = ctx.hub.window().floor();
            if req.resource_version < floor {
                return Err(status::too_old(req.resource_version, floor));
            }
            Start::After(req.resource_version)
        };
        Ok(Self {
            namespace: req.namespace,
            label_selector: req.label_selector,
            field_selector: req.field_selector,
            labels,
            fields,
            start,
            bookmarks: req.allow_bookmarks,
        })
    }

    /// The namespace asked for (empty: all).
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The field selector.
    pub(crate) fn fields(&self) -> &FieldSelector {
        &self.fields
    }

    pub(crate) fn matches(&self, s: &Secret) -> bool {
        (self.namespace.is_empty() || s.metadata.namespace == self.namespace)
            && self.fields.matches(s)
            && self.labels.matches(&s.metadata.labels)
    }
}

/// Why a watch stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client went away, or cancelled this watch.
    Closed,
    /// The watch ends with this status (shutdown, fell behind, a store error).
    Status(Status),
}

/// What a stream's buffer holds: small (two words), so that an idle stream's channel block is
/// small too; a shared hub event is cloned into its wire message only when tonic encodes it.
#[derive(Debug)]
pub(crate) enum Out {
    /// A change, shared with every other receiver.
    Shared(Arc<HubEvent>),
    /// An event of this watch only (initial, catch-up, bookmark).
    Owned(Box<pb::WatchEvent>),
    /// A WatchMany acknowledgement or per-watch error.
    Control(Box<pb::WatchManyEvent>),
    /// The stream ends with this status.
    End(Box<Status>),
}

/// The response stream of Watch.
#[derive(Debug)]
pub struct WatchEvents(mpsc::Receiver<Out>);

impl futures::Stream for WatchEvents {
    type Item = Result<pb::WatchEvent, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        loop {
            return match std::task::ready!(self.0.poll_recv(cx)) {
                None => std::task::Poll::Ready(None),
                Some(Out::Shared(ev)) => std::task::Poll::Ready(Some(Ok(ev.event.clone()))),
                Some(Out::Owned(ev)) => std::task::Poll::Ready(Some(Ok(*ev))),
                Some(Out::End(s)) => std::task::Poll::Ready(Some(Err(*s))),
                Some(Out::Control(_)) => continue,
            };
        }
    }
}

/// The response stream of WatchMany.
#[derive(Debug)]
pub struct WatchManyEvents(mpsc::Receiver<(u64, Out)>);

impl futures::Stream for WatchManyEvents {
    type Item = Result<pb::WatchManyEvent, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let tagged = |watch_id, ev| pb::WatchManyEvent {
            watch_id,
            event: Some(ev),
            ..pb::WatchManyEvent::default()
        };
        std::task::Poll::Ready(match std::task::ready!(self.0.poll_recv(cx)) {
            None => None,
            Some((id, Out::Shared(ev))) => Some(Ok(tagged(id, ev.event.clone()))),
            Some((id, Out::Owned(ev))) => Some(Ok(tagged(id, *ev))),
            Some((_, Out::Control(ev))) => Some(Ok(*ev)),
            Some((_, Out::End(s))) => Some(Err(*s)),
        })
    }
}

/// Where a watch's events go.
#[derive(Debug)]
pub(crate) enum Sink {
    /// A Watch stream.
    Single(mpsc::Sender<Out>),
    /// One watch of a WatchMany stream.
    Many {
        /// The stream.
        tx: mpsc::Sender<(u64, Out)>,
        /// The watch's id.
        id: u64,
    },
}

impl Sink {
    async fn send(&self, event: pb::WatchEvent, cancel: &CancellationToken) -> Result<(), Stop> {
        self.send_or_overflow(Out::Owned(Box::new(event)), cancel, None)
            .await
    }

    /// Sends `event`, unless `cancel` fires first, or `overflow` does (the watcher's hub queue
    /// filled while it waited for the client): then the watch ends as fallen behind at
    /// `overflow`'s revision.
    async fn send_or_overflow(
        &self,
        event: Out,
        cancel: &CancellationToken,
        overflow: Option<(&CancellationToken, u64)>,
    ) -> Result<(), Stop> {
        let overflowed = async {
            match overflow {
                Some((t, _)) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let behind = || Stop::Status(fell_behind(overflow.map_or(0, |(_, rv)| rv)));
        let sent = match self {
            Sink::Single(tx) => {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(Stop::Closed),
                    _ = overflowed => return Err(behind()),
                    r = tx.send(event) => r.is_ok(),
                }
            }
            Sink::Many { tx, id } => {
                let ev = (*id, event);
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(Stop::Closed),
                    _ = overflowed => return Err(behind()),
                    r = tx.send(ev) => r.is_ok(),
                }
            }
        };
        if sent { Ok(()) } else { Err(Stop::Closed) }
    }

    async fn closed(&self) {
        match self {
            Sink::Single(tx) => tx.closed().await,
            Sink::Many { tx, .. } => tx.closed().await,
        }
    }
}

fn event(kind: EventType, object: pb::Secret) -> pb::WatchEvent {
    pb::WatchEvent {
        r#type: kind as i32,
        object: Some(object),
    }
}

fn kind_of(k: EventKind) -> EventType {
    match k {
        EventKind::Added => EventType::Added,
        EventKind::Modified => EventType::Modified,
        EventKind::Deleted => EventType::Deleted,
    }
}

/// Runs one watch until the client goes away, `cancel` fires, or an error ends it. When the
/// server is shutting down, the result is `UNAVAILABLE` "server shutting down".
pub(crate) async fn run(
    ctx: &WatchContext,
    spec: &Arc<WatchSpec>,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Stop {
    let stop = run_inner(ctx, spec, sink, cancel).await;
    match stop {
        Err(Stop::Closed) | Ok(()) if ctx.shutdown.is_cancelled() => {
            Stop::Status(status::shutting_down())
        }
        Err(s) => s,
        Ok(()) => Stop::Closed,
    }
}

/// `ABORTED`: the watcher's queue filled; it may resume after `rv`, the last revision it was
/// given.
fn fell_behind(rv: u64) -> Status {
    status::status(
        Code::Aborted,
        format!(
            "watch fell behind: more than {WATCH_QUEUE} events queued for it; \
             resume from resource version {rv}"
        ),
    )
}

async fn run_inner(
    ctx: &WatchContext,
    spec: &Arc<WatchSpec>,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<(), Stop> {
    // Registered first, so that nothing after `registered_at` is missed.
    let (tx, mut rx) = mpsc::channel::<Arc<HubEvent>>(WATCH_QUEUE);
    let overflow = CancellationToken::new();
    let registration = ctx.hub.register(spec.clone(), tx, overflow.clone());
    let mut cursor = match spec.start {
        Start::After(rv) => rv,
        // Boxed: a list's future is large, and would otherwise be part of every idle watch's
        // state.
        Start::Initial => Box::pin(send_initial(ctx, spec, sink, cancel)).await?,
    };
    // Catch up from the window: the changes after `cursor` dispatched before registration.
    if cursor < registration.registered_at {
        cursor = Box::pin(catch_up(
            ctx,
            spec,
            sink,
            cancel,
            &overflow,
            cursor,
            registration.registered_at,
        ))
        .await?;
    }
    cursor = cursor.max(registration.registered_at);
    let period = ctx.bookmark_interval.max(Duration::from_millis(1));
    // A timer only for the watches that asked for bookmarks.
    let mut bookmarks = spec.bookmarks.then(|| {
        let mut i = tokio::time::interval_at(Instant::now() + period, period);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Stop::Closed),
            _ = overflow.cancelled() => return Err(Stop::Status(fell_behind(cursor))),
            ev = rx.recv() => match ev {
                // Events up to `cursor` were sent already (initial events or catch-up).
                Some(ev) if ev.revision <= cursor => {}
                Some(ev) => {
                    let delivered = cursor;
                    cursor = ev.revision;
                    sink.send_or_overflow(Out::Shared(ev), cancel, Some((&overflow, delivered)))
                        .await?;
                }
                None => {
                    return Err(Stop::Status(status::status(Code::Unavailable, "watch feed ended")));
                }
            },
            _ = sink.closed() => return Err(Stop::Closed),
            () = tick(&mut bookmarks) => {
                // Every event up to `dispatched` that concerns this watcher is in its queue;
                // with the queue empty they have all been sent.
                let dispatched = ctx.hub.dispatched();
                let rv = if rx.is_empty() { dispatched.max(cursor) } else { cursor };
                cursor = rv;
                sink.send_or_overflow(
                    Out::Owned(Box::new(event(EventType::Bookmark, bookmark_object(rv, false)))),
                    cancel,
                    Some((&overflow, rv)),
                )
                .await?;
            }
        }
    }
}

/// The next tick of `interval`, or never.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends the matching changes in (`cursor`, `until`] from the window; returns the new cursor.
async fn catch_up(
    ctx: &WatchContext,
    spec: &WatchSpec,
    sink: &Sink,
    cancel: &CancellationToken,
    overflow: &CancellationToken,
    mut cursor: u64,
    until: u64,
) -> Result<u64, Stop> {
    while cursor < until {
        let batch = ctx
            .hub
            .window()
            .read_after(cursor, READ_BATCH)
            .map_err(|t| Stop::Status(status::too_old(cursor, t.floor)))?;
        if batch.is_empty() {
            break;
        }
        for ev in batch {
            if ev.revision > until {
                return Ok(cursor);
            }
            if spec.matches(&ev.object) {
                let obj = secret_to_proto(&ev.object);
                // Until it is sent, the watch has delivered up to `cursor`.
                sink.send_or_overflow(
                    Out::Owned(Box::new(event(kind_of(ev.kind), obj))),
                    cancel,
                    Some((overflow, cursor)),
                )
                .await?;
            }
            cursor = ev.revision;
        }
    }
    Ok(cursor)
}

/// Sends ADDED for every matching object, then the bookmark that ends the initial events;
/// returns the revision the state was read at.
async fn send_initial(
    ctx: &WatchContext,
    spec: &WatchSpec,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<u64, Stop> {
    let mut opts = ListOptions {
        namespace: spec.namespace.clone(),
        label_selector: spec.label_selector.clone(),
        field_selector: spec.field_selector.clone(),
        limit: INITIAL_PAGE,
        continue_token: String::new(),
        max_bytes: ctx.list_page_bytes,
    };
    let mut revision = None;
    loop {
        let page = ctx
            .store
            .list(&opts)
            .await
            .map_err(|e| Stop::Status(e.into()))?;
        let rv = *revision.get_or_insert(page.revision);
        for s in page.items {
            sink.send(event(EventType::Added, secret_into_proto(s)), cancel)
                .await?;
        }
        if page.continue_token.is_empty() {
            sink.send(
                event(EventType::Bookmark, bookmark_object(rv, true)),
                cancel,
            )
            .await?;
            return Ok(rv);
        }
        opts.continue_token = page.continue_token;
    }
}

// =============================================================================================
// The two RPCs
// =============================================================================================

async fn send_final<T>(tx: &mpsc::Sender<T>, end: T) {
    let _ = tokio::time::timeout(FINAL_SEND_TIMEOUT, tx.send(end)).await;
}

/// A Watch stream's buffer and response stream.
pub(crate) fn watch_channel() -> (mpsc::Sender<Out>, WatchEvents) {
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    (tx, WatchEvents(rx))
}

/// A WatchMany stream's buffer and response stream.
pub(crate) fn watch_many_channel() -> (mpsc::Sender<(u64, Out)>, WatchManyEvents) {
    let (tx, rx) = mpsc::channel(WATCH_MANY_BUFFER);
    (tx, WatchManyEvents(rx))
}

/// Starts the task behind one Watch stream.
pub(crate) fn spawn_watch(ctx: WatchContext, spec: WatchSpec, tx: mpsc::Sender<Out>) {
    let stream_guard = ctx.metrics.watch_stream();
    let watch_guard = ctx.metrics.watch();
    tokio::spawn(async move {
        let _guards = (stream_guard, watch_guard);
        let sink = Sink::Single(tx);
        let spec = Arc::new(spec);
        let cancel = ctx.shutdown.clone();
        if let Stop::Status(s) = run(&ctx, &spec, &sink, &cancel).await
            && let Sink::Single(tx) = &sink
        {
            send_final(tx, Out::End(Box::new(s))).await;
        }
    });
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

/// Starts the task behind one WatchMany stream: reads `create`/`cancel` requests and runs each
/// watch as its own task, all writing to `tx`.
pub(crate) fn spawn_watch_many(
    ctx: WatchContext,
    mut input: tonic::Streaming<pb::WatchManyRequest>,
    tx: mpsc::Sender<(u64, Out)>,
    authorize: WatchAuthorizer,
) {
    let stream_guard = ctx.metrics.watch_stream();
    tokio::spawn(async move {
        let _guard = stream_guard;
        let stream_cancel = ctx.shutdown.child_token();
        let mut mux = Mux {
            ctx: ctx.clone(),
            tx: tx.clone(),
            watches: HashMap::new(),
            tasks: tokio::task::JoinSet::new(),
            generation: 0,
            next_auto_id: 1,
            stream_cancel: stream_cancel.clone(),
            authorize,
        };
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => {
                    send_final(&tx, (0, Out::End(Box::new(status::shutting_down())))).await;
                    break;
                }
                _ = tx.closed() => break,
                Some(done) = mux.tasks.join_next(), if !mux.tasks.is_empty() => {
                    if let Ok((id, generation)) = done
                        && mux.watches.get(&id).is_some_and(|(_, g)| *g == generation)
                    {
                        mux.watches.remove(&id);
                    }
                    if !input_open && mux.tasks.is_empty() {
                        break;
                    }
                }
                msg = input.message(), if input_open => match msg {
                    Ok(Some(req)) => mux.handle(req).await,
                    Ok(None) => {
                        // The client sent all its requests; its watches go on.
                        input_open = false;
                        if mux.tasks.is_empty() {
                            break;
                        }
                    }
                    Err(s) => {
                        if s.code() != Code::Cancelled {
                            send_final(&tx, (0, Out::End(Box::new(fix_decode_limit(s))))).await;
                        }
                        break;
                    }
                },
            }
        }
        stream_cancel.cancel();
        mux.tasks.shutdown().await;
    });
}

/// The watches of one WatchMany stream.
#[derive(Debug)]
struct Mux {
    ctx: WatchContext,
    tx: mpsc::Sender<(u64, Out)>,
    /// Active watches: id -> (its cancel token, the generation of its task).
    watches: HashMap<u64, (CancellationToken, u64)>,
    /// Each task returns (watch id, generation) when its watch ends.
    tasks: tokio::task::JoinSet<(u64, u64)>,
    generation: u64,
    next_auto_id: u64,
    stream_cancel: CancellationToken,
    authorize: WatchAuthorizer,
}

impl Mux {
    async fn reply(&self, ev: pb::WatchManyEvent) {
        tokio::select! {
            _ = self.ctx.shutdown.cancelled() => {}
            _ = self.tx.send((ev.watch_id, Out::Control(Box::new(ev)))) => {}
        }
    }

    async fn refuse(&self, watch_id: u64, s: &Status) {
        self.reply(canceled(watch_id, Some(s))).await;
    }

    async fn handle(&mut self, req: pb::WatchManyRequest) {
        use pb::watch_many_request::Op;
        match req.op {
            None => {
                self.refuse(0, &status::required("op")).await;
            }
            Some(Op::Cancel(id)) => match self.watches.remove(&id) {
                // The watch's task sends the `canceled` answer once it has stopped, so that
                // nothing of that watch follows it.
                Some((cancel, _)) => cancel.cancel(),
                None => {
                    let s = status::status(Code::NotFound, format!("watch {id} does not exist"));
                    self.refuse(id, &s).await;
                }
            },
            Some(Op::Create(create)) => self.create(create).await,
        }
    }

    async fn create(&mut self, create: pb::WatchCreate) {
        let id = if create.watch_id == 0 {
            while self.watches.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        } else {
            create.watch_id
        };
        if self.watches.contains_key(&id) {
            let s = status::invalid_argument(format!("watch_id {id} is already in use"));
            return self.refuse(id, &s).await;
        }
        if self.watches.len() >= MAX_WATCHES_PER_STREAM {
            let s = status::status(
                Code::ResourceExhausted,
                format!("a WatchMany stream holds at most {MAX_WATCHES_PER_STREAM} watches"),
            );
            return self.refuse(id, &s).await;
        }
        let Some(req) = create.watch else {
            return self.refuse(id, &status::required("watch")).await;
        };
        if let Err(s) = (self.authorize.0)(id, &req) {
            return self.refuse(id, &s).await;
        }
        let spec = match WatchSpec::parse(&self.ctx, req) {
            Ok(spec) => spec,
            Err(s) => return self.refuse(id, &s).await,
        };
        self.reply(pb::WatchManyEvent {
            watch_id: id,
            created: true,
            ..pb::WatchManyEvent::default()
        })
        .await;
        self.generation += 1;
        let generation = self.generation;
        let cancel = self.stream_cancel.child_token();
        self.watches.insert(id, (cancel.clone(), generation));
        let ctx = self.ctx.clone();
        let tx = self.tx.clone();
        let guard = ctx.metrics.watch();
        self.tasks.spawn(async move {
            let _guard = guard;
            let sink = Sink::Many { tx, id };
            let spec = Arc::new(spec);
            let stop = run(&ctx, &spec, &sink, &cancel).await;
            if let Sink::Many { tx, .. } = &sink {
                match stop {
                    // Shutdown ends the whole stream; nothing per watch.
                    Stop::Status(s) if ctx.shutdown.is_cancelled() => drop(s),
                    Stop::Status(s) => {
                        let ev = (id, Out::Control(Box::new(canceled(id, Some(&s)))));
                        let _ = tokio::time::timeout(FINAL_SEND_TIMEOUT, tx.send(ev)).await;
                    }
                    // Cancelled by the client (not the stream going away): acknowledge.
                    Stop::Closed if cancel.is_cancelled() && !tx.is_closed() => {
                        let ev = (id, Out::Control(Box::new(canceled(id, None))));
                        let _ = tokio::time::timeout(FINAL_SEND_TIMEOUT, tx.send(ev)).await;
                    }
                    Stop::Closed => {}
                }
            }
            (id, generation)
        });
    }
}

fn canceled(watch_id: u64, error: Option<&Status>) -> pb::WatchManyEvent {
    pb::WatchManyEvent {
        watch_id,
        canceled: true,
        error_code: error.map_or(0, |s| s.code() as i32),
        error_message: error.map(|s| s.message().to_owned()).unwrap_or_default(),
        ..pb::WatchManyEvent::default()
    }
}
