//! Binding the server's addresses, and accepting connections on them.
//!
//! Every listener accepts through the one accept loop of Coffer's servers
//! ([`coffer_kms::net::incoming`], shared with the KMS plugins and the metrics endpoint). A TCP
//! or unix connection is wrapped at once with its [`Conn`] info and the HTTP/2 preface deadline
//! ([`PrefaceDeadline`]); a TLS connection first finishes its handshake in a task of its own.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use futures::{Stream, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use std::sync::Arc;

use super::config::ListenAddr;
use super::error::ServeError;
use super::preface::{PREFACE_TIMEOUT, PrefaceDeadline};
use crate::auth::conn::Conn;
use coffer_kms::net::{bind_unix, incoming};

/// An address the server is listening on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    /// A TCP address (with the port chosen, when 0 was asked for).
    Tcp(SocketAddr),
    /// A unix socket.
    Unix(PathBuf),
}

impl std::fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundAddr::Tcp(a) => write!(f, "{a}"),
            BoundAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// Everything [`Server::start`](super::Server::start) binds.
pub(super) struct Bound {
    pub(super) listeners: Vec<Listener>,
    pub(super) addrs: Vec<BoundAddr>,
    /// The unix socket files created (removed at shutdown).
    pub(super) sockets: Vec<PathBuf>,
    pub(super) metrics: Option<TcpListener>,
    pub(super) metrics_addr: Option<SocketAddr>,
}

/// Binds every address; on a failure, removes the socket files it had created.
pub(super) async fn bind_all(
    listen: &[ListenAddr],
    metrics: Option<&str>,
) -> Result<Bound, ServeError> {
    let mut bound = Bound {
        listeners: Vec::new(),
        addrs: Vec::new(),
        sockets: Vec::new(),
        metrics: None,
        metrics_addr: None,
    };
    let result = bind_into(&mut bound, listen, metrics).await;
    match result {
        Ok(()) => Ok(bound),
        Err(e) => {
            drop(bound.listeners);
            for path in &bound.sockets {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

async fn bind_into(
    bound: &mut Bound,
    listen: &[ListenAddr],
    metrics: Option<&str>,
) -> Result<(), ServeError> {
    for addr in listen {
        match addr {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a.as_str())
                    .await
                    .map_err(|e| listen_error(addr, e))?;
                let local = l.local_addr().map_err(|e| listen_error(addr, e))?;
                bound.addrs.push(BoundAddr::Tcp(local));
                bound.listeners.push(Listener::Tcp(l));
            }
            ListenAddr::Unix(path) => {
                let l = bind_unix(path).await.map_err(|e| listen_error(addr, e))?;
                bound.sockets.push(path.clone());
                bound.addrs.push(BoundAddr::Unix(path.clone()));
                bound.listeners.push(Listener::Unix(l));
            }
        }
    }
    if let Some(a) = metrics {
        let err = |source| ServeError::Listen {
            addr: a.to_owned(),
            source,
        };
        let l = TcpListener::bind(a).await.map_err(err)?;
        bound.metrics_addr = Some(l.local_addr().map_err(err)?);
        bound.metrics = Some(l);
    }
    Ok(())
}

fn listen_error(addr: &ListenAddr, source: io::Error) -> ServeError {
    ServeError::Listen {
        addr: addr.to_string(),
        source,
    }
}

/// A bound gRPC listener.
pub(super) enum Listener {
    /// TCP (TLS when the server has a certificate).
    Tcp(TcpListener),
    /// A unix socket.
    Unix(UnixListener),
}

/// Accepted TCP connections (with `TCP_NODELAY`, and a deadline on the HTTP/2 preface: see
/// [`PrefaceDeadline`]). An accept error (out of file descriptors, say) is passed on after a
/// short pause, so the accept loop cannot spin.
pub(super) fn tcp_incoming(
    l: TcpListener,
) -> impl Stream<Item = io::Result<PrefaceDeadline<Conn<TcpStream>>>> {
    incoming(l).map_ok(|s| PrefaceDeadline::new(Conn::tcp(s), PREFACE_TIMEOUT))
}

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepted TLS connections. Each handshake runs in its own task (so a slow or silent client
/// does not hold up the others) and is bounded by [`TLS_HANDSHAKE_TIMEOUT`]; a failed one is
/// logged at debug level and dropped. A client certificate is accepted at the handshake if the
/// client proves it holds its key; its chain is checked per request (see `crate::auth::tls`).
/// Accepting stops when the server drops the stream (at shutdown).
/// At most `handshakes` permits are out at once (shared by every TLS listener): the accept loop
/// waits for one before it accepts the next connection, so excess clients wait in the kernel's
/// backlog rather than in the server's memory.
pub(super) fn tls_incoming(
    l: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: Arc<tokio::sync::Semaphore>,
) -> impl Stream<Item = io::Result<PrefaceDeadline<Conn<TlsStream<TcpStream>>>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(incoming(l));
        loop {
            let permit = tokio::select! {
                () = tx.closed() => break,
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let next = tokio::select! {
                () = tx.closed() => break,
                next = accepted.next() => next,
            };
            let stream = match next {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
                None => break,
            };
            let addr = stream
                .peer_addr()
                .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                // The place is given back as soon as the handshake ends, either way.
                drop(permit);
                match handshake {
                    Ok(Ok(tls)) => {
                        // The HTTP/2 preface has its own deadline once the handshake is done.
                        let conn = PrefaceDeadline::new(Conn::tls(tls), PREFACE_TIMEOUT);
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Accepted unix socket connections, as [`tcp_incoming`].
pub(super) fn unix_incoming(
    l: UnixListener,
) -> impl Stream<Item = io::Result<PrefaceDeadline<Conn<UnixStream>>>> {
    incoming(l).map_ok(|s| PrefaceDeadline::new(Conn::unix(s), PREFACE_TIMEOUT))
}
