//! Body wrappers that count bytes as they stream, and emit the call's event when the response
//! body ends, fails, or is dropped because the client went away: exactly one event per call.
//! Plus the two concrete body types of a call, so nothing is boxed per request: what goes to
//! the upstream ([`UpstreamBody`]) and what goes back to the partner ([`ResponseBody`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;

use crate::grpc::MessageCounter;
use crate::pool::Checkin;
use crate::server::InFlight;

/// The body sent upstream: the partner's, streamed within the size limit, or one the gateway
/// read whole (GraphQL), counted either way.
pub type UpstreamBody = CountingBody<Either<Limited<Incoming>, Full<Bytes>>>;

/// The body of every answer to a partner: the upstream's, metered as it streams, or one of the
/// gateway's own. It holds the connection's in-flight mark until it is done, so idle
/// connections are told from busy ones.
pub struct ResponseBody {
    inner: Answer,
    in_flight: Option<InFlight>,
    /// The pooled upstream connection the answer came on, given back when it has been read
    /// to its end (dropped, so closed, otherwise).
    checkin: Option<Checkin>,
}

enum Answer {
    Full(Option<Bytes>),
    Upstream(MeteredBody<Incoming>),
}

impl ResponseBody {
    pub fn full(bytes: Bytes) -> ResponseBody {
        ResponseBody {
            inner: Answer::Full((!bytes.is_empty()).then_some(bytes)),
            in_flight: None,
            checkin: None,
        }
    }

    pub(crate) fn upstream(body: MeteredBody<Incoming>, checkin: Option<Checkin>) -> ResponseBody {
        let mut r = ResponseBody {
            inner: Answer::Upstream(body),
            in_flight: None,
            checkin,
        };
        if r.is_end_stream() {
            r.give_back();
        }
        r
    }

    fn give_back(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.give_back();
        }
    }

    pub(crate) fn hold(&mut self, mark: InFlight) {
        self.in_flight = Some(mark);
    }

    /// Bytes of a body the gateway made itself (0 for an upstream's).
    pub fn len(&self) -> u64 {
        match &self.inner {
            Answer::Full(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            Answer::Upstream(_) => 0,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.inner {
            Answer::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Answer::Upstream(m) => {
                let polled = Pin::new(&mut *m).poll_frame(cx);
                let ended = match &polled {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => m.is_end_stream(),
                    _ => false,
                };
                if ended {
                    self.give_back();
                } else if matches!(polled, Poll::Ready(Some(Err(_)))) {
                    self.checkin = None;
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Answer::Full(b) => b.is_none(),
            Answer::Upstream(m) => m.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Answer::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Answer::Upstream(m) => m.size_hint(),
        }
    }
}

/// What a request body has carried so far, shared with the call's event.
#[derive(Default)]
pub struct RequestTally {
    pub bytes: AtomicU64,
    /// gRPC messages; zero for other calls.
    pub messages: AtomicU64,
}

/// Counts the bytes (and, for gRPC, the messages) of a request body into a shared tally.
pub struct CountingBody<B> {
    inner: B,
    tally: Arc<RequestTally>,
    messages: Option<MessageCounter>,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, tally: Arc<RequestTally>, grpc: bool) -> Self {
        CountingBody {
            inner,
            tally,
            messages: grpc.then(MessageCounter::default),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let this = &mut *self;
                this.tally
                    .bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if let Some(m) = &mut this.messages {
                    m.feed(data);
                    this.tally.messages.store(m.messages, Ordering::Relaxed);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a response body ended.
pub struct Finished {
    /// Bytes sent to the client.
    pub bytes: u64,
    /// `complete`, `upstream_body_error` or `client_aborted`.
    pub outcome: &'static str,
    /// gRPC messages in the response (zero for other calls).
    pub messages: u64,
    /// `grpc-status` of the trailers, if the body ended with them.
    pub grpc_status: Option<String>,
}

/// What the call's event needs once the response is over.
pub trait OnFinish: Send + 'static {
    fn finish(self: Box<Self>, finished: Finished);
}

/// A response body that calls its `OnFinish` exactly once.
pub struct MeteredBody<B: Body> {
    inner: B,
    bytes: u64,
    messages: Option<MessageCounter>,
    grpc_status: Option<String>,
    on_finish: Option<Box<dyn OnFinish>>,
}

impl<B: Body> MeteredBody<B> {
    pub fn new(inner: B, on_finish: Box<dyn OnFinish>, grpc: bool) -> Self {
        MeteredBody {
            inner,
            bytes: 0,
            messages: grpc.then(MessageCounter::default),
            grpc_status: None,
            on_finish: Some(on_finish),
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        if let Some(f) = self.on_finish.take() {
            f.finish(Finished {
                bytes: self.bytes,
                outcome,
                messages: self.messages.as_ref().map_or(0, |m| m.messages),
                grpc_status: self.grpc_status.take(),
            });
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let this = &mut *self;
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if let Some(m) = &mut this.messages {
                        m.feed(data);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.grpc_status = crate::grpc::status_of(trailers);
                }
                if self.inner.is_end_stream() {
                    self.finish("complete");
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("upstream_body_error"),
            Poll::Ready(None) => self.finish("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Either the body had nothing to poll (HEAD, 204) or the client went away mid-body.
        let outcome = if self.inner.is_end_stream() {
            "complete"
        } else {
            "client_aborted"
        };
        self.finish(outcome);
    }
}
