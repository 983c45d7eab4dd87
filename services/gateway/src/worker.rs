//! What one serving thread owns: its upstream clients (their pools and connections live on the
//! thread's runtime) and its metrics shard.

use std::sync::Arc;

use crate::body::UpstreamBody;
use crate::clients::HttpClient;
use crate::metrics::Shard;
use crate::pool::Http1Pool;
use crate::Gateway;

pub(crate) struct Worker {
    pub gateway: Arc<Gateway>,
    /// Events go into a queue of this thread's own.
    pub emitter: peage_eventlog::LocalEmitter,
    /// API keys this thread has seen, without touching the shared cache per call.
    pub keys: crate::keys::LocalKeys,
    /// Quota entries this thread has used, without the shared map's lock per call.
    pub quota_entries: crate::quota::LocalEntries,
    /// Plain-`http://` HTTP/1.1 upstreams (HTTP and GraphQL calls).
    pub pool: Arc<Http1Pool>,
    /// `https://` upstreams (HTTP/1.1 or HTTP/2 by ALPN).
    pub http: HttpClient<UpstreamBody>,
    /// gRPC upstreams, HTTP/2 only.
    pub grpc: HttpClient<UpstreamBody>,
    pub metrics: Arc<Shard>,
}

impl Worker {
    /// Call on the serving thread's runtime.
    pub fn new(gateway: Arc<Gateway>) -> Worker {
        let outbound = &gateway.config.outbound;
        Worker {
            emitter: gateway.emitter.local(),
            keys: crate::keys::LocalKeys::default(),
            quota_entries: crate::quota::LocalEntries::default(),
            pool: Arc::new(Http1Pool::new(
                gateway.routes.upstreams,
                outbound.connect_timeout,
                outbound.pool_max_idle_per_host,
                outbound.pool_idle_timeout,
            )),
            http: gateway.clients.http(),
            grpc: gateway.clients.grpc(),
            metrics: gateway.metrics.shard(),
            gateway,
        }
    }
}
