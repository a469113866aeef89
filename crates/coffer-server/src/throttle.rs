//! The two limiters behind every request limit, used at both scopes: server-wide
//! ([`crate::server::limits`]) and per connection ([`crate::auth::conn`]).
//!
//! - [`TokenBucket`]: a sustained rate with a burst (`--max-request-rate`/`--request-burst`,
//!   `--max-requests-per-second-per-connection`/`--request-burst-per-connection`).
//! - [`StreamCap`]: a cap on streams open at once, a [`StreamPermit`] per open stream
//!   (`--max-watch-streams`, `--max-watch-streams-per-connection`).
//!
//! Neither says how a refusal is answered: each scope words its own error.
//!
//! [`RequestBudget`] is how the request gate (`auth`) charges the server-wide budget that
//! `server` owns, once a caller is authenticated, without naming `server`.
//!
//! This is a leaf: it names nothing else in the crate, so both `server` and `auth` may use it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A server-wide budget of requests, charged by the gate after authentication (so that calls
/// refused as unauthenticated never spend what authenticated callers need).
pub trait RequestBudget: Send + Sync + std::fmt::Debug {
    /// Takes one request from the budget, or the status that refuses the call.
    fn charge(&self) -> Result<(), tonic::Status>;
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up; it starts full.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// `(tokens, last refill)`. A std mutex is enough: it is held for a few instructions and
    /// never across an await.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` tokens a second up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The sustained rate, per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The most tokens saved up.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes one token; false when the bucket is empty (over the rate).
    pub fn try_take(&self) -> bool {
        // A panic elsewhere cannot leave the pair inconsistent: take it over.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A cap on streams open at once. Each open stream holds a [`StreamPermit`]; dropping it frees
/// the place.
#[derive(Debug)]
pub struct StreamCap {
    max: usize,
    open: AtomicUsize,
}

impl StreamCap {
    /// A cap of `max` streams, none open.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// The most streams open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A permit for one more stream, unless `max` are open already.
    pub fn try_open(self: &Arc<Self>) -> Option<StreamPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamPermit(self.clone()))
    }
}

/// One open stream's place under a [`StreamCap`], given back when dropped.
#[derive(Debug)]
pub struct StreamPermit(Arc<StreamCap>);

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_starts_full_and_empties() {
        // A burst of 3 at a negligible rate: three pass, the fourth does not.
        let b = TokenBucket::new(0.001, 3.0);
        for _ in 0..3 {
            assert!(b.try_take());
        }
        assert!(!b.try_take());
        // A fast rate refills at once.
        let fast = TokenBucket::new(1e9, 1.0);
        assert!(fast.try_take());
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert!(fast.try_take());
    }

    #[test]
    fn permits_are_given_back_on_drop() {
        let cap = StreamCap::new(2);
        let a = cap.try_open().expect("1");
        let _b = cap.try_open().expect("2");
        assert_eq!(cap.open(), 2);
        assert!(cap.try_open().is_none());
        drop(a);
        assert_eq!(cap.open(), 1);
        assert!(cap.try_open().is_some());
        assert_eq!(cap.max(), 2);
    }
}
