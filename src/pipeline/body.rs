//! Request and response body types.
//!
//! Bodies stream: ficus never collects a body it only passes through. The request body is wrapped
//! so that its size and the gaps between its chunks are bounded, and so that, when the upstream
//! call fails because of it, the pipeline can tell the client 413 or 408 rather than 502.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body stopped early; shared with the pipeline through [`BodyVerdict`].
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled for longer than the body read timeout")]
    Timeout,
    #[error("reading the request body failed: {0}")]
    Read(#[from] hyper::Error),
}

// 0 (the default) means the body is fine so far.
const VERDICT_TOO_LARGE: u8 = 1;
const VERDICT_TIMEOUT: u8 = 2;
const VERDICT_MALFORMED: u8 = 3;
const VERDICT_CLIENT_GONE: u8 = 4;

/// A client body that broke: the client's fault, never the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    TooLarge,
    Timeout,
    /// Bad framing (a chunk size that does not parse or overflows, a bad h2 frame).
    Malformed,
    /// The client hung up (or reset the stream) before the body was complete.
    Gone,
}

impl ClientFault {
    /// Classifies hyper's error on reading a client body.
    pub fn of(e: &hyper::Error) -> Self {
        if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
            return Self::Gone;
        }
        // An h2 stream the client reset is a hang-up too.
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionAborted
                ) {
                    return Self::Gone;
                }
            }
            if let Some(h2) = s.downcast_ref::<h2::Error>() {
                if h2.is_reset() || h2.is_io() || h2.is_go_away() {
                    return Self::Gone;
                }
            }
            src = s.source();
        }
        Self::Malformed
    }
}

/// What happened to a request body, readable after the body itself was handed to the client.
#[derive(Clone, Default)]
pub struct BodyVerdict(Arc<AtomicU8>);

impl BodyVerdict {
    /// Whether, and how, the client broke its body.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            VERDICT_TOO_LARGE => Some(ClientFault::TooLarge),
            VERDICT_TIMEOUT => Some(ClientFault::Timeout),
            VERDICT_MALFORMED => Some(ClientFault::Malformed),
            VERDICT_CLIENT_GONE => Some(ClientFault::Gone),
            _ => None,
        }
    }
    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Release);
    }
}

/// The body sent upstream.
pub enum RequestBody {
    Empty,
    Full(Option<Bytes>),
    Streaming(Box<GuardedIncoming>),
}

/// The client's body as the stages hand it on: still streaming, or already read by a stage that
/// needed it whole (idempotency fingerprints, later validation and translation).
pub enum InBody {
    Stream(Incoming),
    Buffered(Bytes),
}

pub enum NotRead {
    /// Too large, or of unknown length: handed back untouched, to be streamed.
    Unbounded(InBody),
    /// The client's body broke while it was read.
    Failed(ClientFault, String),
}

/// Reads a client body whole if its declared length is at most `limit`.
pub async fn read_bounded(body: InBody, limit: u64) -> Result<Bytes, NotRead> {
    match body {
        InBody::Buffered(b) => Ok(b),
        InBody::Stream(s) => {
            if s.is_end_stream() {
                return Ok(Bytes::new());
            }
            match s.size_hint().exact() {
                Some(n) if n <= limit => {
                    use http_body_util::BodyExt as _;
                    match http_body_util::Limited::new(s, limit as usize).collect().await {
                        Ok(c) => Ok(c.to_bytes()),
                        Err(e) => {
                            let fault = match e.downcast_ref::<hyper::Error>() {
                                Some(h) => ClientFault::of(h),
                                None => ClientFault::TooLarge,
                            };
                            Err(NotRead::Failed(fault, e.to_string()))
                        }
                    }
                }
                _ => Err(NotRead::Unbounded(InBody::Stream(s))),
            }
        }
    }
}

impl RequestBody {
    /// Guards a streaming client body; a buffered one was bounded when it was read.
    pub fn from_client(inner: InBody, limit: u64, stall: Duration) -> (Self, Option<BodyVerdict>) {
        match inner {
            InBody::Stream(s) => Self::guard(s, limit, stall),
            InBody::Buffered(b) if b.is_empty() => (Self::Empty, None),
            InBody::Buffered(b) => (Self::Full(Some(b)), None),
        }
    }

    /// Wraps a client body in the size and stall guards. Bodies known to be empty skip the wrapper
    /// (and its allocation): that is every GET on the plain route.
    pub fn guard(inner: Incoming, limit: u64, stall: Duration) -> (Self, Option<BodyVerdict>) {
        if inner.is_end_stream() {
            return (Self::Empty, None);
        }
        let verdict = BodyVerdict::default();
        let body = GuardedIncoming {
            inner,
            remaining: limit,
            limit,
            stall,
            timer: None,
            progressed: false,
            verdict: verdict.clone(),
        };
        (Self::Streaming(Box::new(body)), Some(verdict))
    }
}

pub struct GuardedIncoming {
    inner: Incoming,
    remaining: u64,
    limit: u64,
    stall: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    verdict: BodyVerdict,
}

impl Body for GuardedIncoming {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.remaining {
                        this.verdict.set(VERDICT_TOO_LARGE);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
                    }
                    this.remaining -= n;
                }
                this.progressed = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.verdict.set(match ClientFault::of(&e) {
                    ClientFault::Gone => VERDICT_CLIENT_GONE,
                    _ => VERDICT_MALFORMED,
                });
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // The stall timer is armed lazily and only re-armed after progress, so a body that
                // arrives in one read costs no timer at all.
                let deadline = Instant::now() + this.stall;
                match &mut this.timer {
                    None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    Some(t) if this.progressed => t.as_mut().reset(deadline),
                    Some(_) => {}
                }
                this.progressed = false;
                if let Some(t) = &mut this.timer {
                    if t.as_mut().poll(cx).is_ready() {
                        this.verdict.set(VERDICT_TIMEOUT);
                        return Poll::Ready(Some(Err(BodyError::Timeout)));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Streaming(s) => Pin::new(s.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Full(b) => b.is_none(),
            Self::Streaming(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Streaming(s) => s.size_hint(),
        }
    }
}

/// The body sent to the client: the upstream's, streamed, or one ficus made.
pub enum ResponseBody {
    Upstream(Incoming),
    Full(Option<Bytes>),
    /// Streams on while keeping a bounded copy for the shadow comparison.
    Tee(Box<TeeBody>),
}

/// Passes a body through unchanged, copying up to `limit` bytes; at the end the copy goes to
/// `done` (`None` when the body was larger than the limit). Dropped early (the client went
/// away): nothing is sent, and the receiver sees the sender gone.
pub struct TeeBody {
    pub inner: ResponseBody,
    copy: bytes::BytesMut,
    limit: usize,
    overflow: bool,
    done: Option<tokio::sync::oneshot::Sender<Option<Bytes>>>,
}

impl TeeBody {
    pub fn wrap(
        inner: ResponseBody,
        limit: usize,
    ) -> (ResponseBody, tokio::sync::oneshot::Receiver<Option<Bytes>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if inner.is_end_stream() {
            // hyper may never poll a body that is already over.
            let _ = tx.send(Some(Bytes::new()));
            return (inner, rx);
        }
        let tee = Self {
            inner,
            copy: bytes::BytesMut::new(),
            limit,
            overflow: false,
            done: Some(tx),
        };
        (ResponseBody::Tee(Box::new(tee)), rx)
    }

    fn finish(&mut self) {
        if let Some(tx) = self.done.take() {
            let copy = (!self.overflow).then(|| std::mem::take(&mut self.copy).freeze());
            let _ = tx.send(copy);
        }
    }
}

impl ResponseBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        Self::Full(Some(b.into()))
    }
    pub fn empty() -> Self {
        Self::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Upstream(b) => Pin::new(b).poll_frame(cx),
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Tee(t) => {
                let polled = Pin::new(&mut t.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(d) = frame.data_ref() {
                            if t.copy.len() + d.len() > t.limit {
                                t.overflow = true;
                            } else if !t.overflow {
                                t.copy.extend_from_slice(d);
                            }
                        }
                        if t.inner.is_end_stream() {
                            t.finish();
                        }
                    }
                    Poll::Ready(None) => t.finish(),
                    _ => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream(b) => b.is_end_stream(),
            Self::Full(b) => b.is_none(),
            Self::Tee(t) => t.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream(b) => b.size_hint(),
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Tee(t) => t.inner.size_hint(),
        }
    }
}
