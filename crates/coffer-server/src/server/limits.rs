//! Server-wide limits on the Secrets service: a cap on concurrent watch streams (Watch and
//! WatchMany) and a request rate (a token bucket), with the same limiters as the per-connection
//! limits ([`crate::throttle`]). Both answer `RESOURCE_EXHAUSTED` with a message
//! that says which limit was hit and what to do.
//!
//! [`LimitedSecrets`] wraps the `coffer.v1.Secrets` service only: health checks and reflection
//! are never limited, so a busy server still answers its probes. A Watch or WatchMany call takes
//! a stream permit, held by its response body and given back as soon as the stream ends (its
//! last frame, or the client going away). The request rate is charged by the request gate
//! (`crate::auth::gate`) through [`RequestBudget`], after the caller is authenticated: calls
//! refused as unauthenticated never spend the budget authenticated callers need (a Watch or
//! WatchMany call takes one token when it opens, not one per event; each watch a WatchMany
//! stream creates takes one more).
//!
//! Per-connection limits (and authentication) are not here; see the HTTP/2 settings in
//! [`super`] for what one connection may hold.
//!
//! Both limits are off by default ([`LimitOptions::default`]); `coffer serve` sets them from
//! `--max-watch-streams`, `--max-request-rate` and `--request-burst` ([`LimitArgs`]).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use clap::Args;
use http_body::Frame;
use serde::Deserialize;
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, http};
use tonic::server::NamedService;

use super::ServeError;
use super::status;
use crate::settings::merge_fields;
use crate::throttle::{RequestBudget, StreamCap, StreamPermit, TokenBucket};
use coffer_core::store::Quotas;
use coffer_kms::hygiene::HygieneOptions;

/// The gRPC paths of the streams that take a watch-stream permit.
const WATCH_PATHS: [&str; 2] = ["/coffer.v1.Secrets/Watch", "/coffer.v1.Secrets/WatchMany"];

/// Server-wide limits. Default: none.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitOptions {
    /// The most Watch and WatchMany streams open at once over the whole server; `None`:
    /// unlimited.
    pub max_watch_streams: Option<usize>,
    /// The sustained rate of Secrets calls the server accepts, per second; `None`: unlimited.
    pub max_request_rate: Option<f64>,
    /// How many calls may arrive at once above the rate (the bucket's size); at least 1.
    /// `None`: the rate rounded up (one second's worth).
    pub request_burst: Option<u32>,
}

/// Counters of rejected calls (shown by the metrics endpoint).
#[derive(Debug, Default)]
pub struct LimitCounters {
    /// Watch and WatchMany calls refused because the stream cap was reached.
    pub watch_streams_rejected: AtomicU64,
    /// Calls refused by the rate limit.
    pub rate_limited: AtomicU64,
}

/// The limits' shared state: the stream cap and the token bucket.
#[derive(Debug)]
pub struct Limits {
    /// Places for watch streams: one per open Watch or WatchMany stream.
    streams: Option<Arc<StreamCap>>,
    /// The request rate.
    bucket: Option<TokenBucket>,
    counters: Arc<LimitCounters>,
}

impl Limits {
    /// Limits per `options`, counting rejections in `counters`.
    pub fn new(options: LimitOptions, counters: Arc<LimitCounters>) -> Arc<Self> {
        Arc::new(Self {
            streams: options.max_watch_streams.map(StreamCap::new),
            bucket: options
                .max_request_rate
                .map(|rate| TokenBucket::new(rate, f64::from(burst(&options)))),
            counters,
        })
    }

    /// Whether any limit is set.
    pub fn is_enabled(&self) -> bool {
        self.streams.is_some() || self.bucket.is_some()
    }

    /// Watch streams open now (counted only while a cap is set).
    pub fn watch_streams_open(&self) -> usize {
        self.streams.as_ref().map_or(0, |s| s.open())
    }

    /// Takes one token, or says how the rate limit refuses the call.
    pub fn admit_request(&self) -> Result<(), tonic::Status> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        if bucket.try_take() {
            return Ok(());
        }
        self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        Err(status::status(
            Code::ResourceExhausted,
            format!(
                "rate limit exceeded: the server accepts at most {} requests per second \
                 (burst {}); retry later",
                bucket.rate(),
                bucket.burst()
            ),
        ))
    }

    /// Takes a watch-stream permit (`None` when there is no cap), or says how the cap refuses
    /// the stream.
    pub fn admit_watch_stream(&self) -> Result<Option<StreamPermit>, tonic::Status> {
        let Some(cap) = &self.streams else {
            return Ok(None);
        };
        match cap.try_open() {
            Some(p) => Ok(Some(p)),
            None => {
                self.counters
                    .watch_streams_rejected
                    .fetch_add(1, Ordering::Relaxed);
                Err(status::status(
                    Code::ResourceExhausted,
                    format!(
                        "too many watch streams: the server's limit of {} concurrent Watch and \
                         WatchMany streams is reached; retry later, or multiplex watches over \
                         one WatchMany stream",
                        cap.max()
                    ),
                ))
            }
        }
    }
}

impl RequestBudget for Limits {
    fn charge(&self) -> Result<(), tonic::Status> {
        self.admit_request()
    }
}

fn burst(o: &LimitOptions) -> u32 {
    o.request_burst
        .unwrap_or_else(|| {
            o.max_request_rate
                .map_or(1, |r| r.ceil().min(f64::from(u32::MAX)) as u32)
        })
        .max(1)
}

/// Wraps the Secrets service with [`Limits`] (see the module doc).
#[derive(Debug, Clone)]
pub struct LimitedSecrets<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S> LimitedSecrets<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limits: Arc<Limits>) -> Self {
        Self { inner, limits }
    }
}

impl<S: NamedService> NamedService for LimitedSecrets<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for LimitedSecrets<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The request rate is charged by the gate, after authentication (see the module doc).
        let permit = if WATCH_PATHS.contains(&req.uri().path()) {
            match self.limits.admit_watch_stream() {
                Ok(p) => p,
                Err(s) => return Box::pin(async move { Ok(s.into_http()) }),
            }
        } else {
            None
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(match permit {
                Some(permit) => resp.map(|inner| {
                    Body::new(PermitBody {
                        inner,
                        permit: Some(permit),
                    })
                }),
                None => resp,
            })
        })
    }
}

/// A response body holding a watch-stream permit until the stream ends or is dropped.
#[derive(Debug)]
struct PermitBody {
    inner: Body,
    permit: Option<StreamPermit>,
}

impl http_body::Body for PermitBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            Poll::Ready(Some(Err(_)) | None) => true,
            Poll::Pending => false,
        };
        if ended {
            // The stream is over: give its place back now, not when hyper drops the body.
            this.permit = None;
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

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// `coffer serve` flags for quotas, limits and memory hygiene (flattened into
/// [`super::ServeArgs`]); each can also be set in the `[limits]` table of the `--config` file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitArgs {
    /// Per-namespace quotas (TOML: a [default] table and [namespaces.NAME] tables with
    /// "count/secrets" and "bytes/secrets"); unset: no quota.
    #[arg(long, value_name = "PATH")]
    pub quota_file: Option<PathBuf>,
    /// The most Watch and WatchMany streams open at once, server-wide; 0: unlimited
    /// [default: 0].
    #[arg(long, value_name = "STREAMS")]
    pub max_watch_streams: Option<usize>,
    /// The most Secrets calls per second, server-wide (a token bucket); 0: unlimited
    /// [default: 0].
    #[arg(long, value_name = "PER_SECOND")]
    pub max_request_rate: Option<f64>,
    /// How many calls may arrive at once above the rate [default: one second's worth].
    #[arg(long, value_name = "CALLS")]
    pub request_burst: Option<u32>,
    /// Core dumps and memory locking (`--allow-core-dumps`, `--disable-mlock`): by default the
    /// server sets RLIMIT_CORE to 0, marks itself not dumpable and tries to lock its memory.
    #[command(flatten)]
    #[serde(flatten)]
    pub hygiene: HygieneOptions,
}

merge_fields!(LimitArgs {
    quota_file,
    max_watch_streams,
    max_request_rate,
    request_burst,
    hygiene,
});
merge_fields!(HygieneOptions {
    allow_core_dumps,
    disable_mlock,
});

/// [`LimitArgs`] resolved.
#[derive(Debug, Clone, Default)]
pub struct LimitConfig {
    /// The per-namespace quotas (read from `--quota-file`).
    pub quotas: Quotas,
    /// The server-wide limits.
    pub server: LimitOptions,
    /// Core dumps and memory locking.
    pub hygiene: HygieneOptions,
}

impl LimitArgs {
    /// Reads the quota file and checks the limits (merge the config file's `[limits]` table in
    /// first: [`crate::settings::Merge`]).
    pub fn resolve(&self) -> Result<LimitConfig, ServeError> {
        let quotas = match &self.quota_file {
            Some(path) => {
                Quotas::read(path).map_err(|e| ServeError::Config(format!("--quota-file: {e}")))?
            }
            None => Quotas::unlimited(),
        };
        let max_watch_streams = self.max_watch_streams.filter(|n| *n > 0);
        let rate = self.max_request_rate;
        if let Some(r) = rate
            && !(r.is_finite() && r >= 0.0)
        {
            return Err(ServeError::Config(format!(
                "--max-request-rate: {r} is not a rate (expected a number of calls per second, \
                 0 for unlimited)"
            )));
        }
        if self.request_burst == Some(0) {
            return Err(ServeError::Config(
                "--request-burst: must be at least 1".into(),
            ));
        }
        Ok(LimitConfig {
            quotas,
            server: LimitOptions {
                max_watch_streams,
                max_request_rate: rate.filter(|r| *r > 0.0),
                request_burst: self.request_burst,
            },
            hygiene: self.hygiene,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Merge;

    #[test]
    fn token_bucket() {
        let limits = Limits::new(
            LimitOptions {
                max_request_rate: Some(0.001),
                request_burst: Some(3),
                ..LimitOptions::default()
            },
            Arc::default(),
        );
        for _ in 0..3 {
            assert!(limits.admit_request().is_ok());
        }
        let e = limits.admit_request().expect_err("empty bucket");
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().starts_with("rate limit exceeded"), "{e:?}");
        assert_eq!(limits.counters.rate_limited.load(Ordering::Relaxed), 1);
        let none = Limits::new(LimitOptions::default(), Arc::default());
        assert!(!none.is_enabled());
        for _ in 0..1000 {
            assert!(none.admit_request().is_ok());
        }
    }

    #[test]
    fn stream_permits() {
        let limits = Limits::new(
            LimitOptions {
                max_watch_streams: Some(2),
                ..LimitOptions::default()
            },
            Arc::default(),
        );
        let a = limits.admit_watch_stream().expect("1");
        let _b = limits.admit_watch_stream().expect("2");
        assert_eq!(limits.watch_streams_open(), 2);
        let e = limits.admit_watch_stream().expect_err("3");
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("limit of 2 concurrent"), "{e:?}");
        drop(a);
        assert!(limits.admit_watch_stream().is_ok());
    }

    #[test]
    fn the_config_files_limits_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let quota = dir.path().join("quota.toml");
        std::fs::write(&quota, "[default]\nsecrets = 7\n").expect("quota");
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"/x\"\n[limits]\nquota_file = {:?}\nmax-watch-streams = 5\n\
                 request_burst = 9\nallow_core_dumps = true\n",
                quota.display().to_string()
            ),
        )
        .expect("config");
        let args = super::super::ServeArgs {
            config: Some(config.clone()),
            ..super::super::ServeArgs::default()
        };
        let c = args.resolve().expect("resolve");
        assert_eq!(
            c.limits.quotas.for_namespace("any").map(|q| q.limits.count),
            Some(Some(7))
        );
        assert_eq!(c.options.limits.max_watch_streams, Some(5));
        assert_eq!(c.options.limits.request_burst, Some(9));
        assert!(c.limits.hygiene.allow_core_dumps && !c.limits.hygiene.disable_mlock);
        std::fs::write(&config, "[limits]\nmax_streams = 5\n").expect("config");
        let e = args.resolve().expect_err("unknown key").to_string();
        assert!(e.contains("max_streams"), "{e}");
    }

    #[test]
    fn settings() {
        let c = LimitArgs::default().resolve().expect("defaults");
        assert_eq!(c.server, LimitOptions::default());
        assert!(!c.quotas.is_enabled());
        assert!(!c.hygiene.allow_core_dumps && !c.hygiene.disable_mlock);
        let file: LimitArgs = crate::settings::from_toml(
            "max-watch-streams = 10\nmax_request_rate = 2.5\ndisable_mlock = true\n",
        )
        .expect("toml");
        let args = LimitArgs {
            max_watch_streams: Some(20),
            ..LimitArgs::default()
        };
        let c = args.merge(file).resolve().expect("merge");
        assert_eq!(c.server.max_watch_streams, Some(20));
        assert_eq!(c.server.max_request_rate, Some(2.5));
        assert!(c.hygiene.disable_mlock);
        for (args, flag) in [
            (
                LimitArgs {
                    max_request_rate: Some(f64::NAN),
                    ..LimitArgs::default()
                },
                "--max-request-rate",
            ),
            (
                LimitArgs {
                    request_burst: Some(0),
                    ..LimitArgs::default()
                },
                "--request-burst",
            ),
            (
                LimitArgs {
                    quota_file: Some("/nonexistent/quota.toml".into()),
                    ..LimitArgs::default()
                },
                "--quota-file",
            ),
        ] {
            let e = args.resolve().expect_err(flag).to_string();
            assert!(e.contains(flag), "{e}");
        }
    }
}
