//! A watch's start: its validated request, and its catch-up phase up to its registration with
//! the hub.
//!
//! A watch catches up from the window of recent events: from its `resource_version` up to the
//! revision it registers at, or with initial events (a list) and their bookmark. A resume from
//! below the window replays the store's history (also after a restart, when the window starts
//! empty) up to the window's floor, then goes on from the window: the window holds every change
//! after its floor, so there is no gap and no duplicate. Below the compaction revision too, it
//! ends with `OUT_OF_RANGE` "too old resource version: N (oldest M)". A watch
//! resuming from close to the present registers at once (its few missed changes are queued
//! from the window by the hub); any other catches up in a task of its own first, waiting for its
//! client to read.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::event::{event, fell_behind, wire_event};
use super::hub::{Hub, RegisterError, Registration};
use super::queue::{Item, Sink};
use super::spec::{SpecKey, WatchSpec};
use crate::proto::v1 as pb;
use crate::proto::v1::watch_event::Type as EventType;
use crate::server::convert::{bookmark_object, secret_into_proto};
use crate::server::metrics::Metrics;
use crate::server::status::{self, store_error};
use coffer_core::store::{ListOptions, Store};

/// Events read from the window per lock.
const READ_BATCH: usize = 128;
/// Items per page while sending initial events.
const INITIAL_PAGE: usize = 500;

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
            let compacted = ctx.store.compact_revision();
            // With history kept, the compaction revision decides (as for reads and lists),
            // even where the window still holds older changes; without history (retention 0,
            // whose compaction revision is always the current one), the window alone does.
            if ctx.store.history_retention().is_zero() {
                if rv < floor && rv < compacted {
                    return Err(status::too_old(rv, floor.min(compacted)));
                }
            } else if rv < compacted {
                return Err(status::too_old(rv, compacted));
            }
        }
        Ok(Self { spec, start })
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
    let item = Item::Owned(sink.watch_id(), Box::new(event));
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Stop::Closed),
        r = sink.queue().push(item) => r.map_err(|_| Stop::Closed),
    }
}

/// Registers a watch that needs no catch-up task; `None` if it needs one.
pub(crate) fn register_now(
    ctx: &WatchContext,
    req: &WatchRequest,
    sink: &Sink,
) -> Option<Result<Registration, Stop>> {
    let spec = &req.spec;
    let Start::After(rv) = req.start else {
        return None;
    };
    if ctx.hub.dispatched() > rv.saturating_add(REGISTER_GAP) || rv < ctx.hub.window().floor() {
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
pub(crate) async fn catch_up_and_register(
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
        // Below the window's floor, the changes come from the store's history first.
        if target > cursor.saturating_add(REGISTER_GAP) || cursor < ctx.hub.window().floor() {
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
                    r = sink.queue().wait_room() => r.map_err(|_| Stop::Closed)?,
                }
            }
            Err(e) => return Err(register_stop(e)),
        }
    }
}

/// Sends the matching changes in (`cursor`, `until`] from the window, or from the store's
/// history below the window; returns the new cursor.
async fn catch_up(
    ctx: &WatchContext,
    spec: &WatchSpec,
    sink: &Sink,
    cancel: &CancellationToken,
    mut cursor: u64,
    until: u64,
) -> Result<u64, Stop> {
    while cursor < until {
        let batch = match ctx.hub.window().read_after(cursor, READ_BATCH) {
            Ok(batch) => batch,
            Err(too_old) => {
                let to = too_old.floor.min(until);
                cursor = replay(ctx, spec, sink, cancel, cursor, to).await?;
                continue;
            }
        };
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

/// Sends the matching changes in (`cursor`, `to`] from the store's history (what is below the
/// window); returns `to`.
async fn replay(
    ctx: &WatchContext,
    spec: &WatchSpec,
    sink: &Sink,
    cancel: &CancellationToken,
    mut cursor: u64,
    to: u64,
) -> Result<u64, Stop> {
    while cursor < to {
        let changes = ctx
            .store
            .changes_after(cursor, to, READ_BATCH)
            .await
            .map_err(|e| Stop::Status(store_error(&e)))?;
        let Some(last) = changes.last().map(|c| c.revision) else {
            return Ok(to);
        };
        for change in &changes {
            if spec.matches(&change.object) {
                send(sink, wire_event(change), cancel).await?;
            }
        }
        ctx.metrics.watch_history_events(changes.len() as u64);
        cursor = last;
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
        namespace: spec.namespace().to_owned(),
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
