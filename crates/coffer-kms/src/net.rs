//! Listening sockets: the one accept loop of every Coffer server (the Secret service's TCP, TLS
//! and unix listeners, the metrics endpoint, a KMS plugin's socket), and binding a unix socket
//! without stealing a live one.
//!
//! It lives here, below the server, so that a KMS plugin serves its socket the same way without
//! linking the server.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// How long the accept loop pauses after a failed accept (out of file descriptors, say), so
/// that it cannot spin while the condition lasts.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A bound socket the accept loop takes connections from.
pub trait Listener: Send + Sync + 'static {
    /// An accepted connection.
    type Io: Send + 'static;

    /// Waits for the next connection.
    fn accept_io(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;

    async fn accept_io(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept().await?;
        // Requests and answers are small messages: no Nagle delay on them.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;

    async fn accept_io(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// The accept loop: every connection `listener` accepts, in order, for as long as the stream is
/// polled. A failed accept is passed on (the caller logs or skips it) after
/// [`ACCEPT_ERROR_PAUSE`]. Dropping the stream closes the listener.
pub fn incoming<L: Listener>(listener: L) -> impl Stream<Item = io::Result<L::Io>> + Send {
    futures::stream::unfold(listener, |l| async move {
        let accepted = match l.accept_io().await {
            Ok(io) => Ok(io),
            Err(e) => {
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                Err(e)
            }
        };
        Some((accepted, l))
    })
}

/// Binds a unix socket at `path`, replacing a stale socket file (one nobody answers on) but
/// never a live socket or any other kind of file. The socket is owner-only (0600) from the
/// moment it is bound (bound under umask 077).
pub async fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving on this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket; refusing to replace it",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Bound under umask 077, so the socket is owner-only from the moment it exists (no window
    // between bind and chmod in which another user could connect). The umask is process-wide:
    // for this instant other threads create files owner-only too, which is only stricter.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let l = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn tcp_and_unix_connections_arrive_in_order() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = tcp.local_addr().expect("addr");
        let mut conns = Box::pin(incoming(tcp));
        for i in 0..3u8 {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(&[i]).await.expect("write");
            let mut s = conns.next().await.expect("open").expect("accepted");
            assert!(s.nodelay().expect("nodelay"));
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.expect("read");
            assert_eq!(b[0], i);
        }

        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let unix = bind_unix(&path).await.expect("bind unix");
        let mut conns = Box::pin(incoming(unix));
        let _c = UnixStream::connect(&path).await.expect("connect");
        assert!(conns.next().await.expect("open").is_ok());
    }

    #[tokio::test]
    async fn bind_unix_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("s.sock");
        let live = bind_unix(&path).await.expect("bind");
        let e = bind_unix(&path).await.expect_err("live");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        drop(live);
        let _again = bind_unix(&path).await.expect("stale socket replaced");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let e = bind_unix(&file).await.expect_err("a file");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }
}
