//! A deadline on the start of every connection.
//!
//! HTTP/2 has no header-read timeout: a peer that connects and sends half a preface (or nothing)
//! would keep its socket, and a file descriptor, for ever, since keepalive pings only start once
//! the handshake is done. [`PrefaceDeadline`] wraps an accepted stream and fails its reads with
//! `TimedOut` unless the client's connection preface (the 24-byte magic and the 9-byte header of
//! the SETTINGS frame that must follow it) arrives within [`PREFACE_TIMEOUT`]; hyper then drops
//! the connection. After that, the wrapper only passes bytes through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// How long a new connection may take to send its HTTP/2 preface and first frame header.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client preface (24 bytes) plus the header of its first frame (SETTINGS, 9 bytes).
const PREFACE_BYTES: usize = 24 + 9;

/// An accepted stream whose first [`PREFACE_BYTES`] must arrive before a deadline.
#[derive(Debug)]
pub(super) struct PrefaceDeadline<S> {
    inner: S,
    /// Bytes read so far, until the preface is complete.
    read: usize,
    /// `None` once the preface is in.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> PrefaceDeadline<S> {
    /// Wraps `inner` with a deadline of `timeout` from now.
    pub(super) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            if let Poll::Ready(Ok(())) = polled {
                this.read += buf.filled().len() - before;
                if this.read >= PREFACE_BYTES {
                    this.deadline = None;
                }
                return polled;
            }
            // Polling the deadline also registers the wakeup that ends a silent peer.
            if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client sent no HTTP/2 preface in time",
                )));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for PrefaceDeadline<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out_and_a_prompt_one_does_not() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut wrapped = PrefaceDeadline::new(server, Duration::from_secs(10));
        client.write_all(&[0u8; 10]).await.expect("write");
        let mut buf = [0u8; 64];
        assert_eq!(wrapped.read(&mut buf).await.expect("read"), 10);
        let err = wrapped.read(&mut buf).await.expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(1024);
        let mut wrapped = PrefaceDeadline::new(server, Duration::from_secs(10));
        client
            .write_all(&[0u8; PREFACE_BYTES])
            .await
            .expect("write");
        let mut got = 0;
        while got < PREFACE_BYTES {
            got += wrapped.read(&mut buf).await.expect("read");
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"later").await.expect("write");
        assert_eq!(wrapped.read(&mut buf).await.expect("read"), 5);
    }
}
