//! Prometheus metrics: counters and histograms kept in atomics (no lock on the request path),
//! rendered in the Prometheus text format and served by hyper's HTTP/1 server on
//! `--metrics-listen`.
//!
//! - `coffer_grpc_requests_total{method,code}`: finished RPCs by method and gRPC code.
//! - `coffer_grpc_request_duration_seconds{method}`: a histogram of RPC durations (for streams,
//!   the life of the stream).
//! - `coffer_grpc_requests_in_flight{method}`: RPCs started and not yet finished.
//! - `coffer_watch_streams_open`: open Watch and WatchMany streams; `coffer_watches_open`: the
//!   watches they carry.
//! - `coffer_kms_calls_total{op,result}`: calls to the KMS plugin, counted by [`CountingKms`].
//! - `coffer_seal_total` / `coffer_open_total`: records sealed and opened by the store.
//! - `coffer_limit_rejections_total{limit}`: calls refused by a server-wide limit
//!   (`watch_streams`, `request_rate`; see [`super::limits`]) or by their connection's limit
//!   (`connection_watch_streams`, `connection_request_rate`; counted by [`Security`]).
//! - `coffer_audit_errors_total`: audit records that could not be written (counted by the
//!   [`Auditor`](crate::audit::Auditor)).
//!
//! Counters that belong to a lower layer (auth, audit) are kept there, where the event happens;
//! [`Metrics::read_from`] hands the renderer the [`Security`] that holds them.
//!
//! RPCs are observed by [`MetricsService`], which wraps the whole gRPC router: it reads the
//! `grpc-status` of a trailers-only answer from the response headers, and otherwise from the
//! trailers at the end of the body. It also turns tonic's `OUT_OF_RANGE` for a request above the
//! decoding limit into a clear `RESOURCE_EXHAUSTED`, and its `INTERNAL` for a request that is not
//! valid protobuf into `INVALID_ARGUMENT` ([`super::status::fix_decode_limit`]).

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::codegen::{Bytes, Service, http};
use zeroize::Zeroizing;

use crate::auth::Security;
use coffer_core::kms::{Kms, KmsError, KmsStatus, Wrapped};
use coffer_core::store::Store;

/// The Secrets methods and the etcd door's (prefixed `etcd.`), in label order; anything else
/// counts as `other`.
const METHODS: [&str; 17] = [
    "Create",
    "Get",
    "Update",
    "Delete",
    "List",
    "Watch",
    "WatchMany",
    "History",
    "etcd.Range",
    "etcd.Put",
    "etcd.DeleteRange",
    "etcd.Txn",
    "etcd.Compact",
    "etcd.Watch",
    "etcd.Lease",
    "etcd.Maintenance",
    "other",
];
const ETCD_PATH: &str = "/etcdserverpb.";
const SECRETS_PATH: &str = "/coffer.v1.Secrets/";
const N_CODES: usize = 17;
/// Upper bounds of the duration histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const KMS_OPS: [&str; 3] = ["status", "encrypt", "decrypt"];

#[derive(Debug, Default)]
struct MethodStats {
    codes: [AtomicU64; N_CODES],
    /// Cumulative counts are computed at render time; each slot counts one bucket (the last is
    /// `+Inf`).
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// The server's metrics. Cheap to update from any task; shared as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    methods: [MethodStats; METHODS.len()],
    in_flight: [AtomicI64; METHODS.len()],
    watch_streams: AtomicI64,
    watches: AtomicI64,
    /// Changes watches replayed from the store's history (resumes from below the window).
    watch_history_events: AtomicU64,
    /// `[op][0 = ok, 1 = error]`.
    kms: [[AtomicU64; 2]; KMS_OPS.len()],
    /// Calls refused by the server-wide limits.
    limits: Arc<super::limits::LimitCounters>,
    /// The security state whose counters (audit errors, per-connection rejections) are
    /// rendered; set by the server that uses this registry.
    security: ArcSwapOption<Security>,
}

/// The index of a method in [`METHODS`] from a request path.
fn method_index(path: &str) -> usize {
    let other = METHODS.len() - 1;
    let name = match (
        path.strip_prefix(SECRETS_PATH),
        path.strip_prefix(ETCD_PATH),
    ) {
        (Some(m), _) => m,
        (None, Some(etcd)) => match etcd {
            "KV/Range" => "etcd.Range",
            "KV/Put" => "etcd.Put",
            "KV/DeleteRange" => "etcd.DeleteRange",
            "KV/Txn" => "etcd.Txn",
            "KV/Compact" => "etcd.Compact",
            "Watch/Watch" => "etcd.Watch",
            l if l.starts_with("Lease/") => "etcd.Lease",
            _ => "etcd.Maintenance",
        },
        (None, None) => return other,
    };
    METHODS[..other]
        .iter()
        .position(|x| *x == name)
        .unwrap_or(other)
}

/// The label of the code with number `i` (see [`coffer_kms::code`]).
fn code_name(i: usize) -> &'static str {
    coffer_kms::code::label(Code::from_i32(i32::try_from(i).unwrap_or(-1)))
}

impl Metrics {
    /// New, all zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records one finished RPC.
    fn record(&self, method: usize, code: Code, elapsed: Duration) {
        let Some(m) = self.methods.get(method) else {
            return;
        };
        let code = (code as usize).min(N_CODES - 1);
        m.codes[code].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        m.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        m.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts changes a watch replayed from the store's history.
    pub(crate) fn watch_history_events(&self, n: u64) {
        self.watch_history_events.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an open watch stream until the guard is dropped.
    pub fn watch_stream(self: &Arc<Self>) -> GaugeGuard {
        GaugeGuard::new(self.clone(), |m| &m.watch_streams)
    }

    /// Counts an open watch (one per Watch stream, one per WatchMany watch) until dropped.
    pub fn watch(self: &Arc<Self>) -> GaugeGuard {
        GaugeGuard::new(self.clone(), |m| &m.watches)
    }

    /// Adds `delta` to the open-watch gauge (the watch hub counts its live watchers this way,
    /// rather than with a guard per watcher).
    pub(crate) fn add_watches(&self, delta: i64) {
        self.watches.fetch_add(delta, Ordering::Relaxed);
    }

    /// The number of `method` RPCs (e.g. `"Create"`) started and not yet finished.
    pub fn in_flight(&self, method: &str) -> i64 {
        METHODS
            .iter()
            .position(|m| *m == method)
            .map_or(0, |i| self.in_flight[i].load(Ordering::Relaxed))
    }

    /// The number of open watch streams.
    pub fn watch_streams_open(&self) -> i64 {
        self.watch_streams.load(Ordering::Relaxed)
    }

    /// The number of finished RPCs of `method` (e.g. `"Create"`) with `code`.
    pub fn requests(&self, method: &str, code: Code) -> u64 {
        METHODS
            .iter()
            .position(|m| *m == method)
            .and_then(|i| self.methods[i].codes.get(code as usize))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The counters the server-wide limits update.
    pub fn limit_counters(&self) -> Arc<super::limits::LimitCounters> {
        self.limits.clone()
    }

    /// Renders the counters `security` keeps (audit errors, per-connection limit rejections)
    /// from now on. [`Server::start`](super::Server::start) calls it.
    pub fn read_from(&self, security: Arc<Security>) {
        self.security.store(Some(security));
    }

    /// Audit records that could not be written (by the auditor of the security state this
    /// registry reads from).
    pub fn audit_errors(&self) -> u64 {
        self.security
            .load()
            .as_ref()
            .map_or(0, |s| s.auditor().errors())
    }

    fn kms_call(&self, op: usize, ok: bool) {
        if let Some(slot) = self.kms.get(op) {
            slot[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Renders every metric in the Prometheus text format (version 0.0.4). `store` adds the
    /// seal and open counters.
    pub fn render(&self, store: Option<&Store>) -> String {
        let mut out = String::with_capacity(8 * 1024);
        out.push_str(
            "# HELP coffer_grpc_requests_total Finished gRPC requests by method and code.\n\
             # TYPE coffer_grpc_requests_total counter\n",
        );
        for (mi, m) in self.methods.iter().enumerate() {
            for (ci, c) in m.codes.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "coffer_grpc_requests_total{{method=\"{}\",code=\"{}\"}} {n}",
                        METHODS[mi],
                        code_name(ci)
                    );
                }
            }
        }
        out.push_str(
            "# HELP coffer_grpc_request_duration_seconds gRPC request duration (streams: their whole life).\n\
             # TYPE coffer_grpc_request_duration_seconds histogram\n",
        );
        for (mi, m) in self.methods.iter().enumerate() {
            let counts: Vec<u64> = m
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let method = METHODS[mi];
            let mut cumulative = 0u64;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += counts[i];
                let _ = writeln!(
                    out,
                    "coffer_grpc_request_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "coffer_grpc_request_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {total}"
            );
            let sum = m.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "coffer_grpc_request_duration_seconds_sum{{method=\"{method}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "coffer_grpc_request_duration_seconds_count{{method=\"{method}\"}} {total}"
            );
        }
        out.push_str(
            "# HELP coffer_grpc_requests_in_flight gRPC requests started and not yet finished.\n\
             # TYPE coffer_grpc_requests_in_flight gauge\n",
        );
        for (mi, g) in self.in_flight.iter().enumerate() {
            let _ = writeln!(
                out,
                "coffer_grpc_requests_in_flight{{method=\"{}\"}} {}",
                METHODS[mi],
                g.load(Ordering::Relaxed)
            );
        }
        let _ = write!(
            out,
            "# HELP coffer_watch_streams_open Open Watch and WatchMany streams.\n\
             # TYPE coffer_watch_streams_open gauge\n\
             coffer_watch_streams_open {}\n\
             # HELP coffer_watches_open Open watches (one per Watch stream, one per WatchMany watch).\n\
             # TYPE coffer_watches_open gauge\n\
             coffer_watches_open {}\n",
            self.watch_streams.load(Ordering::Relaxed),
            self.watches.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP coffer_kms_calls_total Calls to the KMS by operation and result.\n\
             # TYPE coffer_kms_calls_total counter\n",
        );
        for (oi, op) in KMS_OPS.iter().enumerate() {
            for (ri, result) in ["ok", "error"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "coffer_kms_calls_total{{op=\"{op}\",result=\"{result}\"}} {}",
                    self.kms[oi][ri].load(Ordering::Relaxed)
                );
            }
        }
        let security = self.security.load();
        let (conn_streams, conn_rate, unauthenticated, sampled_out) =
            security.as_ref().map_or((0, 0, 0, 0), |s| {
                let r = s.rejections();
                (
                    r.watch_streams(),
                    r.rate_limited(),
                    r.unauthenticated(),
                    s.auditor().refusals_sampled_out(),
                )
            });
        let _ = write!(
            out,
            "# HELP coffer_limit_rejections_total Calls refused by a server-wide or per-connection limit.\n\
             # TYPE coffer_limit_rejections_total counter\n\
             coffer_limit_rejections_total{{limit=\"watch_streams\"}} {}\n\
             coffer_limit_rejections_total{{limit=\"request_rate\"}} {}\n\
             coffer_limit_rejections_total{{limit=\"connection_watch_streams\"}} {conn_streams}\n\
             coffer_limit_rejections_total{{limit=\"connection_request_rate\"}} {conn_rate}\n\
             # HELP coffer_unauthenticated_requests_total Calls refused because they could not be authenticated.\n\
             # TYPE coffer_unauthenticated_requests_total counter\n\
             coffer_unauthenticated_requests_total {unauthenticated}\n\
             # HELP coffer_audit_refusals_sampled_out_total Refusals of unauthenticated or over-rate calls left out of the audit log by sampling.\n\
             # TYPE coffer_audit_refusals_sampled_out_total counter\n\
             coffer_audit_refusals_sampled_out_total {sampled_out}\n\
             # HELP coffer_audit_errors_total Audit records that could not be written.\n\
             # TYPE coffer_audit_errors_total counter\n\
             coffer_audit_errors_total {}\n",
            self.limits.watch_streams_rejected.load(Ordering::Relaxed),
            self.limits.rate_limited.load(Ordering::Relaxed),
            self.audit_errors()
        );
        let _ = write!(
            out,
            "# HELP coffer_watch_history_events_total Changes watches replayed from the store's history.\n\
             # TYPE coffer_watch_history_events_total counter\n\
             coffer_watch_history_events_total {}\n",
            self.watch_history_events.load(Ordering::Relaxed)
        );
        if let Some(store) = store {
            let history = store.history_stats();
            let _ = write!(
                out,
                "# HELP coffer_history_versions Superseded versions and delete tombstones kept.\n\
                 # TYPE coffer_history_versions gauge\n\
                 coffer_history_versions {}\n\
                 # HELP coffer_history_bytes Stored bytes of the kept versions.\n\
                 # TYPE coffer_history_bytes gauge\n\
                 coffer_history_bytes {}\n\
                 # HELP coffer_compact_revision Reads, lists and watches below this revision are refused.\n\
                 # TYPE coffer_compact_revision gauge\n\
                 coffer_compact_revision {}\n",
                history.versions, history.bytes, history.compact_revision
            );
            let _ = write!(
                out,
                "# HELP coffer_seal_total Records sealed (encrypted) since start.\n\
                 # TYPE coffer_seal_total counter\n\
                 coffer_seal_total {}\n\
                 # HELP coffer_open_total Records opened (decrypted) since start.\n\
                 # TYPE coffer_open_total counter\n\
                 coffer_open_total {}\n\
                 # HELP coffer_store_revision The store's current revision.\n\
                 # TYPE coffer_store_revision gauge\n\
                 coffer_store_revision {}\n",
                store.seal_count(),
                store.open_count(),
                store.revision()
            );
        }
        out
    }
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard {
    metrics: Arc<Metrics>,
    gauge: fn(&Metrics) -> &AtomicI64,
}

impl GaugeGuard {
    fn new(metrics: Arc<Metrics>, gauge: fn(&Metrics) -> &AtomicI64) -> Self {
        gauge(&metrics).fetch_add(1, Ordering::Relaxed);
        Self { metrics, gauge }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        (self.gauge)(&self.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The KMS call counter
// ---------------------------------------------------------------------------------------------

/// A [`Kms`] decorator that counts calls (by operation and result) into [`Metrics`].
#[derive(Debug)]
pub struct CountingKms {
    inner: Arc<dyn Kms>,
    metrics: Arc<Metrics>,
}

impl CountingKms {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Kms>, metrics: Arc<Metrics>) -> Arc<dyn Kms> {
        Arc::new(Self { inner, metrics })
    }
}

#[async_trait]
impl Kms for CountingKms {
    async fn status(&self) -> Result<KmsStatus, KmsError> {
        let r = self.inner.status().await;
        self.metrics.kms_call(0, r.is_ok());
        r
    }

    async fn encrypt(&self, uid: &str, plaintext: &[u8]) -> Result<Wrapped, KmsError> {
        let r = self.inner.encrypt(uid, plaintext).await;
        self.metrics.kms_call(1, r.is_ok());
        r
    }

    async fn decrypt(&self, uid: &str, wrapped: &Wrapped) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let r = self.inner.decrypt(uid, wrapped).await;
        self.metrics.kms_call(2, r.is_ok());
        r
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

// ---------------------------------------------------------------------------------------------
// The RPC observer
// ---------------------------------------------------------------------------------------------

/// Wraps the gRPC router: times every RPC and counts it by method and final code.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> MetricsService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S, B> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MetricsBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_index(req.uri().path());
        let start = Instant::now();
        let metrics = self.metrics.clone();
        let in_flight = InFlight::new(metrics.clone(), method);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            // A trailers-only answer (an error before any message) carries its status here.
            if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
                let code = status.code();
                let fixed = super::status::fix_decode_limit(status);
                if fixed.code() != code {
                    let headers = resp.headers_mut();
                    headers.remove("grpc-status");
                    headers.remove("grpc-message");
                    let _ = fixed.add_header(headers);
                }
                metrics.record(method, fixed.code(), start.elapsed());
                return Ok(resp.map(|body| MetricsBody {
                    inner: body,
                    recorder: None,
                }));
            }
            Ok(resp.map(|body| MetricsBody {
                inner: body,
                recorder: Some(Recorder {
                    metrics,
                    method,
                    start,
                    _in_flight: in_flight,
                }),
            }))
        })
    }
}

#[derive(Debug)]
struct Recorder {
    metrics: Arc<Metrics>,
    method: usize,
    start: Instant,
    _in_flight: InFlight,
}

/// Counts one RPC in flight until dropped (whichever way the RPC ends).
#[derive(Debug)]
struct InFlight {
    metrics: Arc<Metrics>,
    method: usize,
}

impl InFlight {
    fn new(metrics: Arc<Metrics>, method: usize) -> Self {
        if let Some(g) = metrics.in_flight.get(method) {
            g.fetch_add(1, Ordering::Relaxed);
        }
        Self { metrics, method }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = self.metrics.in_flight.get(self.method) {
            g.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A response body that records the RPC's code when its trailers pass by (or `Cancelled` when
/// it is dropped unfinished: the client went away).
#[derive(Debug)]
pub struct MetricsBody {
    inner: tonic::body::Body,
    recorder: Option<Recorder>,
}

impl MetricsBody {
    fn finish(&mut self, code: Code) {
        if let Some(r) = self.recorder.take() {
            r.metrics.record(r.method, code, r.start.elapsed());
        }
    }
}

impl http_body::Body for MetricsBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code =
                        tonic::Status::from_header_map(trailers).map_or(Code::Ok, |s| s.code());
                    this.finish(code);
                }
            }
            Poll::Ready(Some(Err(s))) => this.finish(s.code()),
            Poll::Ready(None) => this.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for MetricsBody {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP endpoint
// ---------------------------------------------------------------------------------------------

/// The longest request head the endpoint reads (hyper answers 431 past it; 8 KiB is hyper's
/// smallest buffer).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long one connection may take, request and answer (the answer is small and in memory).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Every answer's type: the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled, with hyper's HTTP/1
/// server: one request per connection (`Connection: close`), header names in title case as
/// before.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(false)
        .title_case_headers(true)
        .max_buf_size(MAX_REQUEST_HEAD);
    // The accept loop every Coffer server shares.
    let mut accepted = std::pin::pin!(coffer_kms::net::incoming(listener));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = accepted.next() => match next {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "metrics endpoint: accept failed");
                    continue;
                }
                None => return,
            },
        };
        let metrics = metrics.clone();
        let store = store.clone();
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper::service::service_fn(move |req| {
                let answer = respond(&req, || metrics.render(Some(&store)));
                async move { Ok::<_, std::convert::Infallible>(answer) }
            }),
        );
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    }
}

/// The answer to one request: the metrics (`render`ed), a pointer to them, 404 or 405.
fn respond<B>(
    req: &http::Request<B>,
    render: impl FnOnce() -> String,
) -> http::Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => (http::StatusCode::OK, render()),
        (&http::Method::GET, "/") => (
            http::StatusCode::OK,
            "coffer metrics: see /metrics\n".into(),
        ),
        (&http::Method::GET, _) => (http::StatusCode::NOT_FOUND, "not found\n".into()),
        _ => (http::StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into()),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_rendering() {
        assert_eq!(method_index("/coffer.v1.Secrets/Create"), 0);
        assert_eq!(method_index("/coffer.v1.Secrets/WatchMany"), 6);
        assert_eq!(method_index("/coffer.v1.Secrets/History"), 7);
        assert_eq!(method_index("/etcdserverpb.KV/Range"), 8);
        assert_eq!(method_index("/etcdserverpb.Lease/LeaseGrant"), 14);
        assert_eq!(method_index("/etcdserverpb.Maintenance/Status"), 15);
        assert_eq!(method_index("/grpc.health.v1.Health/Check"), 16);
        assert_eq!(method_index("/coffer.v1.Secrets/other"), 16);
        let m = Metrics::new();
        m.record(0, Code::Ok, Duration::from_millis(2));
        m.record(0, Code::AlreadyExists, Duration::from_secs(20));
        let g = m.watch_stream();
        let text = m.render(None);
        drop(g);
        assert!(text.contains("coffer_grpc_requests_total{method=\"Create\",code=\"OK\"} 1"));
        assert!(
            text.contains("coffer_grpc_requests_total{method=\"Create\",code=\"AlreadyExists\"} 1")
        );
        assert!(text.contains(
            "coffer_grpc_request_duration_seconds_bucket{method=\"Create\",le=\"0.0025\"} 1"
        ));
        assert!(text.contains(
            "coffer_grpc_request_duration_seconds_bucket{method=\"Create\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("coffer_watch_streams_open 1"));
        assert_eq!(m.watch_streams_open(), 0);
        assert_eq!(m.requests("Create", Code::Ok), 1);
    }

    #[test]
    fn the_endpoint_answers_get_only_and_says_the_format() {
        let req = |method: &str, uri: &str| {
            http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .expect("request")
        };
        let render = || "coffer_store_revision 1\n".to_owned();
        let r = respond(&req("GET", "/metrics?x=1"), render);
        assert_eq!(r.status(), http::StatusCode::OK);
        assert_eq!(r.headers()[http::header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(r.headers()[http::header::CONNECTION], "close");
        assert_eq!(respond(&req("GET", "/"), render).status(), 200);
        assert_eq!(respond(&req("GET", "/x"), render).status(), 404);
        assert_eq!(respond(&req("POST", "/metrics"), render).status(), 405);
        assert_eq!(respond(&req("HEAD", "/metrics"), render).status(), 405);
    }
}
