//! What the server knows about each accepted connection: a unique id, the remote address, the
//! peer's uid on a unix socket, and the connection's own limits (a [`TokenBucket`] of requests
//! and a [`StreamCap`] on open watch streams, the same limiters as the server-wide ones), and on
//! a TLS listener the client certificates the peer presented (possession proven at the
//! handshake, chain checked per request by the gate).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

pub use crate::throttle::StreamPermit as WatchStreamGuard;
use crate::throttle::{StreamCap, TokenBucket};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Where a connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer.
    Tcp(Option<SocketAddr>),
    /// A unix socket peer, with its uid when the kernel told it.
    Unix {
        /// SO_PEERCRED's uid.
        uid: Option<u32>,
    },
}

/// Per-connection state, shared by every request on the connection.
#[derive(Debug)]
pub struct ConnState {
    /// Unique per accepted connection (since the process started).
    pub id: u64,
    /// The peer.
    pub peer: Peer,
    /// The client certificate chain presented at the TLS handshake (leaf first), if any. Not
    /// verified against the client CA yet: see `crate::auth::tls`.
    peer_certs: Vec<CertificateDer<'static>>,
    /// The request budget, made (full) at the first request: the limits are the server's
    /// settings, which the accept loop that builds this state does not hold.
    bucket: OnceLock<TokenBucket>,
    /// The watch streams open, made at the first one, for the same reason.
    watch_streams: OnceLock<Arc<StreamCap>>,
    /// The watches open on this connection (Watch streams and the watches of WatchMany
    /// streams), counted against `--max-watches-per-connection`.
    watches: WatchCount,
}

/// Watches open under one cap (a connection's, or an identity's).
#[derive(Debug, Default)]
pub struct WatchCount(AtomicUsize);

impl WatchCount {
    /// Counts one more watch, unless `max` are open already.
    pub fn try_add(&self, max: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts `n` watches closed.
    pub fn release(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }

    /// Watches open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection's info as tonic hands it to each request (in the request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo(pub Arc<ConnState>);

impl ConnState {
    /// A new connection's state with a fresh id.
    pub fn new(peer: Peer) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            peer_certs: Vec::new(),
            bucket: OnceLock::new(),
            watch_streams: OnceLock::new(),
            watches: WatchCount::default(),
        }
    }

    /// The client certificate chain presented at the TLS handshake (empty: none).
    pub fn peer_certs(&self) -> &[CertificateDer<'static>] {
        &self.peer_certs
    }

    /// The source address for logs: `IP:PORT`, or `unix` (with `uid=N`).
    pub fn source(&self) -> String {
        match &self.peer {
            Peer::Tcp(Some(a)) => a.to_string(),
            Peer::Tcp(None) => "tcp".to_owned(),
            Peer::Unix { uid: Some(u) } => format!("unix:uid={u}"),
            Peer::Unix { uid: None } => "unix".to_owned(),
        }
    }

    /// The peer's uid on a unix socket.
    pub fn peer_uid(&self) -> Option<u32> {
        match self.peer {
            Peer::Unix { uid } => uid,
            Peer::Tcp(_) => None,
        }
    }

    /// Takes one request token from the connection's bucket (`rate` per second, at most
    /// `burst` saved up; a new connection starts full). False: over the rate. The first call's
    /// `rate` and `burst` hold for the connection's life.
    pub fn take_request(&self, rate: f64, burst: f64) -> bool {
        self.bucket
            .get_or_init(|| TokenBucket::new(rate, burst))
            .try_take()
    }

    /// Counts a watch stream open on this connection, unless `max` are open already. The first
    /// call's `max` holds for the connection's life.
    pub fn open_watch_stream(&self, max: usize) -> Option<WatchStreamGuard> {
        self.watch_streams
            .get_or_init(|| StreamCap::new(max))
            .try_open()
    }

    /// The watches open on this connection.
    pub fn watches(&self) -> &WatchCount {
        &self.watches
    }

    /// Watch streams open on this connection.
    pub fn watch_streams(&self) -> usize {
        self.watch_streams.get().map_or(0, |c| c.open())
    }
}

/// An accepted stream with its [`ConnInfo`].
#[derive(Debug)]
pub struct Conn<S> {
    inner: S,
    info: ConnInfo,
}

impl Conn<tokio::net::TcpStream> {
    /// Wraps an accepted TCP stream.
    pub fn tcp(s: tokio::net::TcpStream) -> Self {
        let peer = Peer::Tcp(s.peer_addr().ok());
        Self {
            inner: s,
            info: ConnInfo(Arc::new(ConnState::new(peer))),
        }
    }
}

impl Conn<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    /// Wraps a TCP stream whose TLS handshake is done, keeping the client's certificates.
    pub fn tls(s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Self {
        let (tcp, session) = s.get_ref();
        let mut state = ConnState::new(Peer::Tcp(tcp.peer_addr().ok()));
        state.peer_certs = session
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        Self {
            inner: s,
            info: ConnInfo(Arc::new(state)),
        }
    }
}

impl Conn<tokio::net::UnixStream> {
    /// Wraps an accepted unix stream, reading the peer's uid (SO_PEERCRED).
    pub fn unix(s: tokio::net::UnixStream) -> Self {
        let uid = s.peer_cred().ok().map(|c| c.uid());
        Self {
            inner: s,
            info: ConnInfo(Arc::new(ConnState::new(Peer::Unix { uid }))),
        }
    }
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_buckets_refill() {
        let a = ConnState::new(Peer::Tcp(None));
        let b = ConnState::new(Peer::Unix { uid: Some(7) });
        assert_ne!(a.id, b.id);
        assert_eq!(b.source(), "unix:uid=7");
        assert_eq!(b.peer_uid(), Some(7));
        // A burst of 3 at a negligible rate: three pass, the fourth does not.
        for _ in 0..3 {
            assert!(a.take_request(0.001, 3.0));
        }
        assert!(!a.take_request(0.001, 3.0));
    }

    #[test]
    fn watch_stream_slots() {
        let c = Arc::new(ConnState::new(Peer::Tcp(None)));
        let g1 = c.open_watch_stream(2).expect("1");
        let _g2 = c.open_watch_stream(2).expect("2");
        assert!(c.open_watch_stream(2).is_none());
        drop(g1);
        assert_eq!(c.watch_streams(), 1);
        assert!(c.open_watch_stream(2).is_some());
    }
}
