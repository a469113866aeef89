//! The window of recent change events: what a watch resuming from a recent resource version
//! catches up from. Bounded by count, bytes and age; every change after its floor is in it.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use coffer_core::store::ChangeEvent;

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

/// The most recent change events, shared by every watcher (fed by the hub).
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

    /// Adds the next change. A gap (a change missed) empties the window: nothing before the
    /// new change can be served from it any more.
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
