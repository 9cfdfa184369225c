//! An idle timeout for a client connection.
//!
//! hyper has a header-read timeout but nothing that closes a connection on which no bytes move.
//! This wrapper records the time of the last read or write and fails the connection once it has
//! been quiet for the configured time, unless a request on it is still being answered (a slow
//! upstream is not the client's idleness).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::pipeline::ConnInfo;

pub struct IdleIo<T> {
    inner: T,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    conn: Arc<ConnInfo>,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, idle: Duration, conn: Arc<ConnInfo>) -> Self {
        let last = Instant::now();
        Self {
            inner,
            idle,
            last,
            timer: Box::pin(tokio::time::sleep_until(last + idle)),
            conn,
        }
    }

    /// The timer is only re-armed when it fires, not on every byte: one clock read per I/O call
    /// is the whole steady-state cost.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let busy = self.conn.in_flight.load(Ordering::Acquire) > 0;
            if !busy && now >= self.last + self.idle {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle timeout"));
            }
            let next = if busy {
                now + self.idle
            } else {
                self.last + self.idle
            };
            self.timer.as_mut().reset(next);
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        match res {
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.last = Instant::now(),
            Poll::Pending => this.check(cx)?,
            _ => {}
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        match res {
            Poll::Ready(Ok(n)) if n > 0 => this.last = Instant::now(),
            Poll::Pending => this.check(cx)?,
            _ => {}
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        match res {
            Poll::Ready(Ok(n)) if n > 0 => this.last = Instant::now(),
            Poll::Pending => this.check(cx)?,
            _ => {}
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
