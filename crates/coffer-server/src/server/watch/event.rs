//! The messages watch streams carry: a change converted once to its wire form and shared by
//! every receiver, bookmarks, and the statuses that end a watch.

use tonic::{Code, Status};
use zeroize::Zeroize;

use crate::proto::v1 as pb;
use crate::proto::v1::watch_event::Type as EventType;
use crate::server::convert::{bookmark_object, secret_to_proto};
use crate::server::status;
use coffer_core::store::{ChangeEvent, EventKind};

/// One change, converted once and shared by every receiver; its data is wiped when the last
/// receiver is done with it.
#[derive(Debug)]
pub(crate) struct HubEvent {
    /// The wire event (the full Secret, or its last state for DELETED).
    pub(crate) event: pb::WatchEvent,
}

impl HubEvent {
    /// The shared form of a change.
    pub(crate) fn of(ev: &ChangeEvent) -> Self {
        Self {
            event: wire_event(ev),
        }
    }

    /// A bookmark at `rv`.
    pub(crate) fn bookmark(rv: u64) -> Self {
        Self {
            event: event(EventType::Bookmark, bookmark_object(rv, false)),
        }
    }
}

impl Drop for HubEvent {
    fn drop(&mut self) {
        if let Some(s) = self.event.object.as_mut() {
            for v in s.data.values_mut() {
                v.zeroize();
            }
        }
    }
}

/// The wire form of a change.
pub(crate) fn wire_event(ev: &ChangeEvent) -> pb::WatchEvent {
    let kind = match ev.kind {
        EventKind::Added => EventType::Added,
        EventKind::Modified => EventType::Modified,
        EventKind::Deleted => EventType::Deleted,
    };
    event(kind, secret_to_proto(&ev.object))
}

/// A wire event of `kind` about `object`.
pub(crate) fn event(kind: EventType, object: pb::Secret) -> pb::WatchEvent {
    pb::WatchEvent {
        r#type: kind as i32,
        object: Some(object),
    }
}

/// `ABORTED`: the watcher's queue filled; it may resume after `rv`.
pub(crate) fn fell_behind(rv: u64) -> Status {
    status::status(
        Code::Aborted,
        format!(
            "watch fell behind: its client is not reading its events; \
             resume from resource version {rv}"
        ),
    )
}

/// The answer that ends one watch of a WatchMany stream (`error` unset: canceled by request).
pub(crate) fn canceled(watch_id: u64, error: Option<&Status>) -> pb::WatchManyEvent {
    pb::WatchManyEvent {
        watch_id,
        canceled: true,
        error_code: error.map_or(0, |s| s.code() as i32),
        error_message: error.map(|s| s.message().to_owned()).unwrap_or_default(),
        ..pb::WatchManyEvent::default()
    }
}
