//! Keep-alive HTTP/1.1 connections to plain-`http://` upstreams, one pool per serving thread.
//!
//! A call takes an idle connection of its upstream (or opens one), sends on it with hyper's
//! connection-level client, and the connection comes back when the answer's body has been read
//! to its end; one that did not end cleanly is closed. That is all a pool needs here, and it
//! measured 12k instructions a call cheaper than `hyper_util`'s general client (which spawns a
//! task per request to watch for the connection to come back, races a lazy connect against
//! every checkout and locks a shared pool): load-tests/RESULTS.md, 2026-12-01. TLS and HTTP/2
//! upstreams still use that client ([`crate::clients`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::body::UpstreamBody;
use crate::call::route::UpstreamBase;

type Sender = SendRequest<UpstreamBody>;

/// Why a pooled request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    #[error("connecting to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

pub(crate) struct Http1Pool {
    /// Idle connections by upstream slot ([`UpstreamBase::slot`]).
    /// Oldest first: the connection given back longest ago is the one most surely ready.
    idle: Vec<Mutex<VecDeque<Idle>>>,
    connect_timeout: Duration,
    max_idle_per_host: usize,
    idle_timeout: Duration,
}

/// A connection lent to one call, given back by [`Checkin::give_back`] once its answer is read.
pub(crate) struct Checkin {
    pool: Arc<Http1Pool>,
    slot: usize,
    sender: Sender,
}

impl Checkin {
    /// The answer's body ended cleanly: the connection may serve another call.
    pub fn give_back(self) {
        let Some(list) = self.pool.idle.get(self.slot) else {
            return;
        };
        let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < self.pool.max_idle_per_host {
            list.push_back(Idle {
                sender: self.sender,
                since: Instant::now(),
            });
        }
    }
}

impl Http1Pool {
    /// A pool for `slots` upstreams.
    pub fn new(
        slots: usize,
        connect_timeout: Duration,
        max_idle_per_host: usize,
        idle_timeout: Duration,
    ) -> Http1Pool {
        Http1Pool {
            idle: (0..slots).map(|_| Mutex::default()).collect(),
            connect_timeout,
            max_idle_per_host: max_idle_per_host.max(1),
            idle_timeout,
        }
    }

    /// An idle connection to the upstream in `slot`, ready to send.
    fn take(&self, slot: usize) -> Option<Sender> {
        let list = self.idle.get(slot)?;
        loop {
            let idle = list.lock().unwrap_or_else(|p| p.into_inner()).pop_front()?;
            if idle.sender.is_closed() || idle.since.elapsed() > self.idle_timeout {
                continue;
            }
            return Some(idle.sender);
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Sender, PoolError> {
        let failed = |reason: String| PoolError::Connect {
            authority: authority.to_string(),
            reason,
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let open = async {
            let stream = tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| failed(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| failed(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "gateway: upstream connection ended");
                }
            });
            Ok(sender)
        };
        tokio::time::timeout(self.connect_timeout, open)
            .await
            .unwrap_or_else(|_| {
                Err(failed(format!(
                    "no connection within {} ms",
                    self.connect_timeout.as_millis()
                )))
            })
    }

    /// Sends `req` (origin-form URI, `Host` set) to `base` on a pooled connection; one found
    /// closed before the request went out is replaced by a fresh connection, once.
    ///
    /// The common case (an idle connection, ready) awaits nothing but the answer; waiting for a
    /// connection to become ready and connecting are boxed, so this future stays small (it is
    /// copied into every call's).
    pub async fn send(
        self: &Arc<Self>,
        base: &UpstreamBase,
        req: http::Request<UpstreamBody>,
    ) -> Result<(http::Response<Incoming>, Checkin), PoolError> {
        match self.take(base.slot) {
            Some(mut sender) if sender.is_ready() => match sender.try_send_request(req).await {
                Ok(response) => Ok((response, self.checkin(base, sender))),
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection had closed meanwhile.
                    Some(back) => Box::pin(self.send_fresh(base, back)).await,
                    None => Err(e.into_error().into()),
                },
            },
            Some(sender) => Box::pin(self.send_when_ready(base, sender, req)).await,
            None => Box::pin(self.send_fresh(base, req)).await,
        }
    }

    fn checkin(self: &Arc<Self>, base: &UpstreamBase, sender: Sender) -> Checkin {
        Checkin {
            pool: Arc::clone(self),
            slot: base.slot,
            sender,
        }
    }

    /// A pooled connection given back as its body ended, which hyper has not noticed yet.
    async fn send_when_ready(
        self: &Arc<Self>,
        base: &UpstreamBase,
        mut sender: Sender,
        req: http::Request<UpstreamBody>,
    ) -> Result<(http::Response<Incoming>, Checkin), PoolError> {
        if sender.ready().await.is_err() {
            return self.send_fresh(base, req).await;
        }
        match sender.try_send_request(req).await {
            Ok(response) => Ok((response, self.checkin(base, sender))),
            Err(mut e) => match e.take_message() {
                Some(back) => self.send_fresh(base, back).await,
                None => Err(e.into_error().into()),
            },
        }
    }

    /// On a new connection.
    async fn send_fresh(
        self: &Arc<Self>,
        base: &UpstreamBase,
        req: http::Request<UpstreamBody>,
    ) -> Result<(http::Response<Incoming>, Checkin), PoolError> {
        let mut sender = self.connect(&base.authority).await?;
        let response = sender.send_request(req).await?;
        Ok((response, self.checkin(base, sender)))
    }
}
