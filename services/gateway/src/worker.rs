//! What one serving thread owns: its upstream clients (their pools and connections live on the
//! thread's runtime) and its metrics shard.

use std::sync::Arc;

use crate::body::UpstreamBody;
use crate::clients::HttpClient;
use crate::metrics::Shard;
use crate::pool::Http1Pool;
use crate::{Gateway, Loaded};

pub(crate) struct Worker {
    pub gateway: Arc<Gateway>,
    /// Events go into a queue of this thread's own.
    pub emitter: peage_eventlog::LocalEmitter,
    /// API keys this thread has seen, without touching the shared cache per call.
    pub keys: crate::keys::LocalKeys,
    /// Quota entries this thread has used, without the shared map's lock per call.
    pub quota_entries: crate::quota::LocalEntries,
    /// Plain-`http://` HTTP/1.1 upstreams (HTTP and GraphQL calls): the pool of the catalog
    /// generation whose upstream slots it has.
    pool: arc_swap::ArcSwap<(u64, Arc<Http1Pool>)>,
    /// `https://` upstreams (HTTP/1.1 or HTTP/2 by ALPN).
    pub http: HttpClient<UpstreamBody>,
    /// gRPC upstreams, HTTP/2 only.
    pub grpc: HttpClient<UpstreamBody>,
    pub metrics: Arc<Shard>,
}

impl Worker {
    fn new_pool(gateway: &Gateway, loaded: &Loaded) -> (u64, Arc<Http1Pool>) {
        let outbound = &gateway.config.outbound;
        let pool = Http1Pool::new(
            loaded.routes.upstreams,
            outbound.connect_timeout,
            outbound.pool_max_idle_per_host,
            outbound.pool_idle_timeout,
        );
        (loaded.generation, Arc::new(pool))
    }

    /// The pool for calls routed on `loaded`. After a reload the next call makes a pool for
    /// the new upstream slots; the old one's connections close as their calls give them back.
    pub fn pool(&self, loaded: &Loaded) -> Arc<Http1Pool> {
        let current = self.pool.load();
        if current.0 == loaded.generation {
            return Arc::clone(&current.1);
        }
        let fresh = Arc::new(Worker::new_pool(&self.gateway, loaded));
        // A call routed before a reload that this thread has already seen gets a pool of its
        // own: its upstream slots are the old catalog's, not the pool's.
        if loaded.generation > current.0 {
            self.pool.store(Arc::clone(&fresh));
        }
        Arc::clone(&fresh.1)
    }

    /// Call on the serving thread's runtime.
    pub fn new(gateway: Arc<Gateway>) -> Worker {
        Worker {
            emitter: gateway.emitter.local(),
            keys: crate::keys::LocalKeys::default(),
            quota_entries: crate::quota::LocalEntries::default(),
            pool: arc_swap::ArcSwap::from_pointee(Worker::new_pool(&gateway, &gateway.loaded())),
            http: gateway.clients.http(),
            grpc: gateway.clients.grpc(),
            metrics: gateway.metrics.shard(),
            gateway,
        }
    }
}
