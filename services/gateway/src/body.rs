//! Body wrappers that count bytes as they stream, and emit the call's event when the response
//! body ends, fails, or is dropped because the client went away: exactly one event per call.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Counts the bytes of a request body into a shared counter.
pub struct CountingBody<B> {
    inner: B,
    counter: Arc<AtomicU64>,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        CountingBody { inner, counter }
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
                self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
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

/// What the call's event needs once the response is over.
pub trait OnFinish: Send + 'static {
    /// `response_bytes` sent to the client; `outcome` says how the body ended.
    fn finish(self: Box<Self>, response_bytes: u64, outcome: &'static str);
}

/// A response body that calls its `OnFinish` exactly once.
pub struct MeteredBody<B: Body> {
    inner: B,
    bytes: u64,
    on_finish: Option<Box<dyn OnFinish>>,
}

impl<B: Body> MeteredBody<B> {
    pub fn new(inner: B, on_finish: Box<dyn OnFinish>) -> Self {
        MeteredBody {
            inner,
            bytes: 0,
            on_finish: Some(on_finish),
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        if let Some(f) = self.on_finish.take() {
            f.finish(self.bytes, outcome);
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
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
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
