//! An idle timeout for a client connection.
//!
//! hyper has a header-read timeout (which, with ficus's patch, times a request's head from its
//! first byte) but nothing that closes a connection on which no bytes move. This wrapper notes
//! whether bytes moved and fails the connection once it has been quiet for the configured time,
//! unless a request on it is still being answered (a slow upstream is not the client's
//! idleness).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::pipeline::request::ConnInfo;

pub struct IdleIo<T> {
    inner: T,
    tick: Duration,
    /// Bytes moved since the last tick. A flag, not a timestamp: reading the clock on every
    /// read and write showed up in profiles of the plain route.
    active: bool,
    quiet_ticks: u8,
    timer: Pin<Box<Sleep>>,
    /// Whose requests in flight keep the connection busy; `None` (the admin listener): bytes
    /// alone.
    conn: Option<Arc<ConnInfo>>,
}

/// The idle timeout is checked in quarters, so a connection is closed between 1x and 1.25x the
/// configured time after its last byte.
const TICKS: u8 = 4;

impl<T> IdleIo<T> {
    pub fn new(inner: T, idle: Duration, conn: Option<Arc<ConnInfo>>) -> Self {
        let tick = (idle / u32::from(TICKS)).max(Duration::from_millis(1));
        Self {
            inner,
            tick,
            active: false,
            quiet_ticks: 0,
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + tick)),
            conn,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let busy = self
                .conn
                .as_ref()
                .is_some_and(|c| c.in_flight.load(Ordering::Acquire) > 0);
            if self.active || busy {
                self.active = false;
                self.quiet_ticks = 0;
            } else {
                self.quiet_ticks += 1;
                if self.quiet_ticks >= TICKS {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle timeout"));
                }
            }
            let next = Instant::now() + self.tick;
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
            Poll::Ready(Ok(())) if buf.filled().len() > before => this.active = true,
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
            Poll::Ready(Ok(n)) if n > 0 => this.active = true,
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
            Poll::Ready(Ok(n)) if n > 0 => this.active = true,
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
