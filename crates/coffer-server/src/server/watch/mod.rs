//! Watch and WatchMany: change events routed by a hub to bounded per-stream queues.
//!
//! # Layout
//!
//! Leaves first; each file names only the ones above it in this list:
//!
//! - `event`: a change converted once to its wire form and shared by every receiver; bookmarks;
//!   the statuses that end a watch.
//! - `window`: the window of recent change events that resumes catch up from.
//! - `spec`: what a watch selects, parsed once and shared by every watch asking the same.
//! - `queue`: the bounded queue behind one stream, and the [`Sink`](queue::Sink) naming a
//!   queue and a watch.
//! - `hub`: the index of live watchers; the feeder task that pushes each change into their
//!   queues; the registration that makes a watcher live.
//! - `catch_up`: a validated request, and the catch-up from the window (or the initial list)
//!   up to the registration.
//! - `stream`: the two RPCs and their response streams, which own their registrations.
//!
//! Ownership runs one way: the hub's index holds each watcher's queue; the stream owns the
//! watcher's registration, which holds the hub weakly. Dropping a stream unregisters it.
//!
//! Limitation: without the previous state of an object, a MODIFIED that moves an object into or
//! out of a label selector is sent (or dropped) as MODIFIED, not turned into ADDED/DELETED as the
//! Kubernetes watch cache does.

mod catch_up;
mod event;
mod hub;
mod queue;
mod spec;
mod stream;
mod window;

pub(crate) use self::catch_up::{WatchContext, WatchRequest};
pub(crate) use self::hub::Hub;
pub use self::stream::MAX_WATCHES_PER_STREAM;
pub(crate) use self::stream::{
    WatchAuthorizer, WatchEvents, WatchManyEvents, open_watch, open_watch_many,
};
pub(crate) use self::window::WindowLimits;
