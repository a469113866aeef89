//! Watch streams, the simple way (issue 5 replaces this with an indexed hub).
//!
//! One task subscribes to the store's change events and keeps the most recent ones in an
//! [`EventWindow`] (bounded by count and by bytes). Every watcher holds a cursor (the last
//! revision it has looked at) and reads the window after it, filtering by namespace and
//! selectors; a watcher whose cursor falls below the window (it resumed from too old a revision,
//! or it fell behind) ends with `OUT_OF_RANGE` "too old resource version", and the client
//! re-lists. Watchers wait on a `watch` channel that carries the window's newest revision.
//!
//! Limitation: without the previous state of an object, a MODIFIED that moves an object into or
//! out of a label selector is sent (or dropped) as MODIFIED, not turned into ADDED/DELETED as the
//! Kubernetes watch cache does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::convert::{bookmark_object, secret_into_proto, secret_to_proto};
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
/// Messages buffered per Watch stream before the watcher waits for the client.
pub(crate) const WATCH_BUFFER: usize = 64;
/// Messages buffered per WatchMany stream.
pub(crate) const WATCH_MANY_BUFFER: usize = 256;
/// The most watches one WatchMany stream may hold.
pub const MAX_WATCHES_PER_STREAM: usize = 100_000;
/// How long a final status may wait for room in a stream's buffer.
const FINAL_SEND_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The most recent change events, shared by every watcher.
#[derive(Debug)]
pub(crate) struct EventWindow {
    inner: RwLock<Window>,
    notify: tokio::sync::watch::Sender<u64>,
}

/// A watcher's cursor fell below the window: the oldest revision it could resume from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TooOld {
    pub(crate) floor: u64,
}

impl EventWindow {
    /// Subscribes to `store` and starts the task that feeds the window; it stops with
    /// `shutdown` (or when the store's event channel closes).
    pub(crate) fn start(
        store: &Arc<Store>,
        max_events: usize,
        max_bytes: usize,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let mut rx = store.subscribe();
        // Subscribed first: every change after `floor` reaches the feeder.
        let floor = store.revision();
        let (notify, _) = tokio::sync::watch::channel(floor);
        let window = Arc::new(Self {
            inner: RwLock::new(Window {
                events: VecDeque::new(),
                bytes: 0,
                floor,
                latest: floor,
                max_events: max_events.max(1),
                max_bytes: max_bytes.max(1),
            }),
            notify,
        });
        let w = window.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(ev) => w.push(ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // The next event shows a gap; push() resets the window there.
                        tracing::warn!(
                            missed = n,
                            "watch window fell behind the store's events; older resumes will re-list"
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        window
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Window> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Window> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, ev: Arc<ChangeEvent>) {
        let latest = {
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
            w.latest
        };
        self.notify.send_replace(latest);
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

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }
}

// =============================================================================================
// One watch
// =============================================================================================

/// What every watcher needs from the server.
#[derive(Debug, Clone)]
pub(crate) struct WatchContext {
    pub(crate) store: Arc<Store>,
    pub(crate) window: Arc<EventWindow>,
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
            let floor = ctx.window.floor();
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

    fn matches(&self, s: &Secret) -> bool {
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

/// Where a watch's events go.
#[derive(Debug)]
pub(crate) enum Sink {
    /// A Watch stream.
    Single(mpsc::Sender<Result<pb::WatchEvent, Status>>),
    /// One watch of a WatchMany stream.
    Many {
        /// The stream.
        tx: mpsc::Sender<Result<pb::WatchManyEvent, Status>>,
        /// The watch's id.
        id: u64,
    },
}

impl Sink {
    async fn send(&self, event: pb::WatchEvent, cancel: &CancellationToken) -> Result<(), Stop> {
        let sent = match self {
            Sink::Single(tx) => {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(Stop::Closed),
                    r = tx.send(Ok(event)) => r.is_ok(),
                }
            }
            Sink::Many { tx, id } => {
                let ev = pb::WatchManyEvent {
                    watch_id: *id,
                    event: Some(event),
                    ..pb::WatchManyEvent::default()
                };
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(Stop::Closed),
                    r = tx.send(Ok(ev)) => r.is_ok(),
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
    spec: &WatchSpec,
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

async fn run_inner(
    ctx: &WatchContext,
    spec: &WatchSpec,
    sink: &Sink,
    cancel: &CancellationToken,
) -> Result<(), Stop> {
    let mut notified = ctx.window.subscribe();
    let mut cursor = match spec.start {
        Start::After(rv) => rv,
        Start::Initial => send_initial(ctx, spec, sink, cancel).await?,
    };
    let period = ctx.bookmark_interval.max(Duration::from_millis(1));
    let mut bookmarks = tokio::time::interval_at(Instant::now() + period, period);
    bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        notified.borrow_and_update();
        loop {
            let batch = ctx
                .window
                .read_after(cursor, READ_BATCH)
                .map_err(|t| Stop::Status(status::too_old(cursor, t.floor)))?;
            if batch.is_empty() {
                break;
            }
            for ev in batch {
                cursor = ev.revision;
                if spec.matches(&ev.object) {
                    let obj = secret_to_proto(&ev.object);
                    sink.send(event(kind_of(ev.kind), obj), cancel).await?;
                }
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Stop::Closed),
            _ = sink.closed() => return Err(Stop::Closed),
            changed = notified.changed() => {
                if changed.is_err() {
                    return Err(Stop::Status(status::status(Code::Unavailable, "watch feed ended")));
                }
            }
            _ = bookmarks.tick(), if spec.bookmarks => {
                sink.send(event(EventType::Bookmark, bookmark_object(cursor, false)), cancel).await?;
            }
        }
    }
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

async fn send_final<T>(tx: &mpsc::Sender<Result<T, Status>>, s: Status) {
    let _ = tokio::time::timeout(FINAL_SEND_TIMEOUT, tx.send(Err(s))).await;
}

/// Starts the task behind one Watch stream.
pub(crate) fn spawn_watch(
    ctx: WatchContext,
    spec: WatchSpec,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
) {
    let stream_guard = ctx.metrics.watch_stream();
    let watch_guard = ctx.metrics.watch();
    tokio::spawn(async move {
        let _guards = (stream_guard, watch_guard);
        let sink = Sink::Single(tx);
        let cancel = ctx.shutdown.clone();
        if let Stop::Status(s) = run(&ctx, &spec, &sink, &cancel).await
            && let Sink::Single(tx) = &sink
        {
            send_final(tx, s).await;
        }
    });
}

/// Starts the task behind one WatchMany stream: reads `create`/`cancel` requests and runs each
/// watch as its own task, all writing to `tx`.
pub(crate) fn spawn_watch_many(
    ctx: WatchContext,
    mut input: tonic::Streaming<pb::WatchManyRequest>,
    tx: mpsc::Sender<Result<pb::WatchManyEvent, Status>>,
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
        };
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => {
                    send_final(&tx, status::shutting_down()).await;
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
                            send_final(&tx, fix_decode_limit(s)).await;
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
    tx: mpsc::Sender<Result<pb::WatchManyEvent, Status>>,
    /// Active watches: id -> (its cancel token, the generation of its task).
    watches: HashMap<u64, (CancellationToken, u64)>,
    /// Each task returns (watch id, generation) when its watch ends.
    tasks: tokio::task::JoinSet<(u64, u64)>,
    generation: u64,
    next_auto_id: u64,
    stream_cancel: CancellationToken,
}

impl Mux {
    async fn reply(&self, ev: pb::WatchManyEvent) {
        tokio::select! {
            _ = self.ctx.shutdown.cancelled() => {}
            _ = self.tx.send(Ok(ev)) => {}
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
            let stop = run(&ctx, &spec, &sink, &cancel).await;
            if let Sink::Many { tx, .. } = &sink {
                match stop {
                    // Shutdown ends the whole stream; nothing per watch.
                    Stop::Status(s) if ctx.shutdown.is_cancelled() => drop(s),
                    Stop::Status(s) => {
                        let ev = Ok(canceled(id, Some(&s)));
                        let _ = tokio::time::timeout(FINAL_SEND_TIMEOUT, tx.send(ev)).await;
                    }
                    // Cancelled by the client (not the stream going away): acknowledge.
                    Stop::Closed if cancel.is_cancelled() && !tx.is_closed() => {
                        let ev = Ok(canceled(id, None));
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
