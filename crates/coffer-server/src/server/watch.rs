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
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::convert::{bookmark_object, secret_into_proto};
use super::hub::{
    Hub, RegisterError, Registration, Sink, SpecKey, WATCH_QUEUE, canceled, fell_behind, wire_event,
};
use super::metrics::Metrics;
use super::status::{self, fix_decode_limit, store_error};
use super::watch_queue::{Item, StreamQueue, WatchEvents, WatchManyEvents};
use crate::proto::v1 as pb;
use crate::proto::v1::watch_event::Type as EventType;
use coffer_core::model::Secret;
use coffer_core::model::selector::{FieldSelector, LabelSelector};
use coffer_core::model::validation::validate_namespace;
use coffer_core::store::{ChangeEvent, ListOptions, Store, StoreError};

/// Events read from the window per lock.
const READ_BATCH: usize = 128;
/// Items per page while sending initial events.
const INITIAL_PAGE: usize = 500;
/// Messages queued per WatchMany stream (all its watches together) before the watch whose
/// change does not fit is ended as fallen behind.
pub(crate) const WATCH_MANY_QUEUE: usize = 4096;
/// The most watches one WatchMany stream may hold.
pub const MAX_WATCHES_PER_STREAM: usize = 100_000;

// =============================================================================================
// The event window
// =============================================================================================

#[derive(Debug)]
struct Window {
    /// Each event with the time it was pushed.
    events: VecDeque<(Instant, Arc<ChangeEvent>)>,
    /// Sum of the events' approximate sizes.
    bytes: usize,
    /// Every change after this revision (up to `latest`) is in `events`.
    floor: u64,
    /// The newest revision pushed.
    latest: u64,
    max_events: usize,
    max_bytes: usize,
    /// Events older than this leave the window (`None`: no age limit).
    max_age: Option<Duration>,
}

impl Window {
    fn pop_oldest(&mut self) {
        if let Some((_, old)) = self.events.pop_front() {
            self.bytes = self.bytes.saturating_sub(old.object.approx_size());
            self.floor = old.revision;
        }
    }

    /// Drops the events past the age limit.
    fn expire(&mut self, now: Instant) {
        if let Some(age) = self.max_age {
            while self
                .events
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > age)
            {
                self.pop_oldest();
            }
        }
    }
}

/// The most recent change events, shared by every watcher (fed by the [`Hub`]).
#[derive(Debug)]
pub(crate) struct EventWindow {
    inner: RwLock<Window>,
}

/// How much the window keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowLimits {
    /// The most events.
    pub(crate) events: usize,
    /// The most bytes (approximate object sizes).
    pub(crate) bytes: usize,
    /// The oldest an event may be (`None`: no limit).
    pub(crate) age: Option<Duration>,
}

/// A watcher's cursor fell below the window: the oldest revision it could resume from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TooOld {
    pub(crate) floor: u64,
}

impl EventWindow {
    /// An empty window holding every change after `floor`, bounded by count, bytes and age.
    pub(crate) fn new(floor: u64, limits: WindowLimits) -> Self {
        Self {
            inner: RwLock::new(Window {
                events: VecDeque::new(),
                bytes: 0,
                floor,
                latest: floor,
                max_events: limits.events.max(1),
                max_bytes: limits.bytes.max(1),
                max_age: limits.age,
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
        let now = Instant::now();
        w.events.push_back((now, ev));
        while w.events.len() > w.max_events || (w.bytes > w.max_bytes && w.events.len() > 1) {
            w.pop_oldest();
        }
        w.expire(now);
    }

    /// Drops the events past the age limit (also done on every push; the hub calls this
    /// periodically so that a quiet store's window ages too).
    pub(crate) fn expire(&self) {
        self.write().expire(Instant::now());
    }

    /// The oldest revision a watch can resume from.
    pub(crate) fn floor(&self) -> u64 {
        self.read().floor
    }

    /// Up to `max` events after `cursor`, oldest first.
    pub(crate) fn read_after(
        &self,
        cursor: u64,
        max: usize,
    ) -> Result<Vec<Arc<ChangeEvent>>, TooOld> {
        let w = self.read();
        if cursor < w.floor {
            return Err(TooOld { floor: w.floor });
        }
        let start = w.events.partition_point(|(_, e)| e.revision <= cursor);
        Ok(w.events
            .range(start..)
            .take(max)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

// One watch
// =============================================================================================

/// What every watcher needs from the server.
#[derive(Debug, Clone)]
pub(crate) struct WatchContext {
    pub(crate) store: Arc<Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) list_page_bytes: usize,
    /// Cancelled when the server shuts down.
    pub(crate) shutdown: CancellationToken,
}

/// What a watcher selects: shared by every watch with the same request fields (see
/// [`Hub::spec`]), so that a million watches of a few thousand Secrets hold a few thousand of
/// these.
#[derive(Debug)]
pub(crate) struct WatchSpec {
    namespace: String,
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
}

/// A validated watch request: what it selects, and where it starts.
#[derive(Debug)]
pub(crate) struct WatchRequest {
    pub(crate) spec: Arc<WatchSpec>,
    start: Start,
}

#[derive(Debug, Clone)]
enum Start {
    /// Changes after this revision.
    After(u64),
    /// ADDED for the current state (listed with these selectors), a bookmark, then changes.
    Initial {
        label_selector: String,
        field_selector: String,
    },
}

impl WatchSpec {
    fn parse(key: &SpecKey) -> Result<Self, Status> {
        if !key.namespace.is_empty() {
            validate_namespace(&key.namespace).map_err(|e| store_error(&StoreError::from(e)))?;
        }
        let labels = LabelSelector::parse(&key.label_selector).map_err(|e| {
            store_error(&StoreError::BadRequest {
                field: "labelSelector",
                message: e.to_string(),
            })
        })?;
        let fields = FieldSelector::parse(&key.field_selector).map_err(|e| {
            store_error(&StoreError::BadRequest {
                field: "fieldSelector",
                message: e.to_string(),
            })
        })?;
        Ok(Self {
            namespace: key.namespace.clone(),
            labels,
            fields,
            bookmarks: key.bookmarks,
        })
    }
}

impl WatchRequest {
    /// Checks a request: namespace, selectors, and a resource_version the server can serve.
    pub(crate) fn parse(ctx: &WatchContext, req: pb::WatchSecretsRequest) -> Result<Self, Status> {
        let start = if req.send_initial_events {
            Start::Initial {
                label_selector: req.label_selector.clone(),
                field_selector: req.field_selector.clone(),
            }
        } else if req.resource_version == 0 {
            Start::After(ctx.store.revision())
        } else {
            Start::After(req.resource_version)
        };
        let spec = ctx.hub.spec(
            SpecKey {
                namespace: req.namespace,
                label_selector: req.label_selector,
                field_selector: req.field_selector,
                bookmarks: req.allow_bookmarks,
            },
            WatchSpec::parse,
        )?;
        if let Start::After(rv) = start
            && req.resource_version != 0
        {
            let current = ctx.store.revision();
            if rv > current {
                return Err(status::status(
                    Code::OutOfRange,
                    format!("too large resource version: {rv} (current {current})"),
                ));
            }
            let floor = ctx.hub.window().floor();
            if rv < floor {
                return Err(status::too_old(rv, floor));
            }
        }
        Ok(Self { spec, start })
    }
}

impl WatchSpec {
    /// The namespace asked for (empty: all).
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The field selector.
    pub(crate) fn fields(&self) -> &FieldSelector {
        &self.fields
    }

    /// Whether the watcher asked for periodic bookmarks.
    pub(crate) fn wants_bookmarks(&self) -> bool {
        self.bookmarks
    }

    pub(crate) fn matches(&self, s: &Secret) -> bool {
        (self.namespace.is_empty() || s.metadata.namespace == self.namespace)
            && self.fields.matches(s)
            && self.labels.matches(&s.metadata.labels)
    }
}

/// Why a catch-up stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client went away, or cancelled this watch.
    Closed,
    /// The watch ends with this status (shutdown, fell behind, a store error).
    Status(Status),
}

/// A watch resuming at most this many revisions back registers at once, queueing the changes
/// it missed from the window (they fit its empty queue); one further back, or one that wants
/// initial events, first catches up in a task of its own, waiting for its client to read.
const REGISTER_GAP: u64 = 64;

/// Sends `event` into the watch's queue, waiting for room, unless `cancel` fires first.
async fn send(sink: &Sink, event: pb::WatchEvent, cancel: &CancellationToken) -> Result<(), Stop> {
    let item = Item::Owned(sink_id(sink), Box::new(event));
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Stop::Closed),
        r = sink_queue(sink).push(item) => r.map_err(|_| Stop::Closed),
    }
}

fn sink_queue(sink: &Sink) -> &StreamQueue {
    match sink {
        Sink::Single(q) | Sink::Many(q, _) => q,
    }
}

fn sink_id(sink: &Sink) -> u64 {
    match sink {
        Sink::Single(_) => 0,
        Sink::Many(_, id) => *id,
    }
}

fn event(kind: EventType, object: pb::Secret) -> pb::WatchEvent {
    pb::WatchEvent {
        r#type: kind as i32,
        object: Some(object),
    }
}

/// Registers a watch that needs no catch-up task; `None` if it needs one.
fn register_now(
    ctx: &WatchContext,
    req: &WatchRequest,
    sink: &Sink,
) -> Option<Result<Registration, Stop>> {
    let spec = &req.spec;
    let Start::After(rv) = req.start else {
        return None;
    };
    if ctx.hub.dispatched() > rv.saturating_add(REGISTER_GAP) {
        return None;
    }
    Some(match ctx.hub.register(spec.clone(), sink.clone(), rv) {
        Ok(r) => Ok(r),
        Err(e) => Err(register_stop(e)),
    })
}

fn register_stop(e: RegisterError) -> Stop {
    match e {
        RegisterError::TooOld(s) => Stop::Status(s),
        RegisterError::Full { after } => Stop::Status(fell_behind(after)),
        RegisterError::Gone => Stop::Closed,
        RegisterError::ShuttingDown => Stop::Status(status::shutting_down()),
    }
}

/// The catch-up phase of a watch: initial events or the changes from the window, then its
/// registration with the hub (after which it needs no task).
async fn catch_up_and_register(
    ctx: &WatchContext,
    req: &WatchRequest,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<Registration, Stop> {
    let spec = &req.spec;
    let mut cursor = match &req.start {
        Start::After(rv) => *rv,
        // Boxed: a list's future is large.
        Start::Initial {
            label_selector,
            field_selector,
        } => {
            let selectors = (label_selector.clone(), field_selector.clone());
            Box::pin(send_initial(ctx, spec, selectors, sink, cancel)).await?
        }
    };
    loop {
        if cancel.is_cancelled() {
            return Err(Stop::Closed);
        }
        let target = ctx.hub.dispatched();
        if target > cursor.saturating_add(REGISTER_GAP) {
            cursor = catch_up(ctx, spec, sink, cancel, cursor, target).await?;
            continue;
        }
        match ctx.hub.register(spec.clone(), sink.clone(), cursor) {
            Ok(r) => return Ok(r),
            Err(RegisterError::Full { after }) => {
                cursor = after;
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(Stop::Closed),
                    r = sink_queue(sink).wait_room() => r.map_err(|_| Stop::Closed)?,
                }
            }
            Err(e) => return Err(register_stop(e)),
        }
    }
}

/// Sends the matching changes in (`cursor`, `until`] from the window; returns the new cursor.
async fn catch_up(
    ctx: &WatchContext,
    spec: &WatchSpec,
    sink: &Sink,
    cancel: &CancellationToken,
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
                send(sink, wire_event(&ev), cancel).await?;
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
    (label_selector, field_selector): (String, String),
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<u64, Stop> {
    let mut opts = ListOptions {
        namespace: spec.namespace.clone(),
        label_selector,
        field_selector,
        limit: INITIAL_PAGE,
        continue_token: String::new(),
        max_bytes: ctx.list_page_bytes,
        ..ListOptions::default()
    };
    let mut revision = None;
    loop {
        let page = ctx
            .store
            .list(&opts)
            .await
            .map_err(|e| Stop::Status(store_error(&e)))?;
        let rv = *revision.get_or_insert(page.revision);
        for s in page.items {
            send(sink, event(EventType::Added, secret_into_proto(s)), cancel).await?;
        }
        if page.continue_token.is_empty() {
            let end = event(EventType::Bookmark, bookmark_object(rv, true));
            send(sink, end, cancel).await?;
            return Ok(rv);
        }
        opts.continue_token = page.continue_token;
    }
}

// =============================================================================================
// The two RPCs
// =============================================================================================

/// Opens a Watch stream: registered at once when it can be, else after a catch-up task.
pub(crate) fn open_watch(ctx: &WatchContext, req: WatchRequest) -> WatchEvents {
    let queue = StreamQueue::new(WATCH_QUEUE);
    let events = WatchEvents::new(queue.clone(), ctx.metrics.watch_stream());
    let sink = Sink::Single(queue.clone());
    match register_now(ctx, &req, &sink) {
        Some(Ok(r)) => queue.hold(r),
        Some(Err(stop)) => end_single(ctx, &sink, stop),
        None => {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let _counted = ctx.metrics.watch();
                let cancel = ctx.shutdown.clone();
                let r = tokio::select! {
                    r = catch_up_and_register(&ctx, &req, &sink, &cancel) => r,
                    _ = queue.gone() => Err(Stop::Closed),
                };
                match r {
                    Ok(r) => queue.hold(r),
                    Err(stop) => end_single(&ctx, &sink, stop),
                }
            });
        }
    }
    events
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
                    }
                }
                msg = input.message(), if input_open => match msg {
                    Ok(Some(req)) => self.handle(req),
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
