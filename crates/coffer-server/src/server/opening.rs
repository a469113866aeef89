//! Serving before the store is open.
//!
//! A sled data directory's log is authenticated under a key the KMS unwraps, so the store cannot
//! open while the KMS does not answer. `coffer serve` still binds its listeners at once (a
//! supervisor sees the process up, health says NOT_SERVING), answers every other call with
//! `UNAVAILABLE` saying why, and opens the store as soon as the KMS answers: the listeners'
//! service ([`Front`]) then passes every request to the real routes, on the same connections.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use tonic::codegen::{Service, http};
use tonic::service::Routes;

use super::ServeError;
use coffer_core::store::Store;

/// What opens the store in the background: resolves once it is open (or failed for good).
pub(crate) type OpenFuture =
    Pin<Box<dyn Future<Output = Result<Arc<Store>, ServeError>> + Send + 'static>>;

/// Why calls are refused while the store is not open yet (shared with the opener, which
/// updates it with the last failure).
pub(crate) type OpeningReason = Arc<Mutex<String>>;

/// The service every listener serves: the real routes once the store is open; until then the
/// health service (NOT_SERVING) and `UNAVAILABLE` with the reason for everything else.
#[derive(Clone)]
pub(crate) struct Front {
    open: Arc<OnceLock<Routes>>,
    standby: Routes,
    why: OpeningReason,
}

impl Front {
    /// Serves `standby` (the health service) until [`Front::attach`].
    pub(crate) fn new(standby: Routes, why: OpeningReason) -> Self {
        Self {
            open: Arc::new(OnceLock::new()),
            standby,
            why,
        }
    }

    /// From now on every request goes to `routes`.
    pub(crate) fn attach(&self, routes: Routes) {
        // Attached once; a second call (never made) would keep the first routes.
        let _ = self.open.set(routes);
    }
}

impl<B> Service<http::Request<B>> for Front
where
    Routes:
        Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    <Routes as Service<http::Request<B>>>::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Routes are always ready; each call readies its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(routes) = self.open.get() {
            return oneshot(routes.clone(), req);
        }
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            return oneshot(self.standby.clone(), req);
        }
        let why = self
            .why
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        Box::pin(async move { Ok(tonic::Status::unavailable(why).into_http()) })
    }
}

/// Readies `routes`, then calls it with `req`.
fn oneshot<B>(
    mut routes: Routes,
    req: http::Request<B>,
) -> Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>
where
    Routes:
        Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    <Routes as Service<http::Request<B>>>::Future: Send + 'static,
    B: Send + 'static,
{
    Box::pin(async move {
        std::future::poll_fn(|cx| Service::<http::Request<B>>::poll_ready(&mut routes, cx)).await?;
        routes.call(req).await
    })
}
