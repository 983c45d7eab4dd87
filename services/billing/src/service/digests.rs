//! The duplicate look-ups of concurrent `POST /v1/events` requests, made together: while one
//! query to the usage store runs, the requests that arrive queue up, and the next query asks
//! for all their keys at once. Each query costs the store a fixed price besides its keys (in
//! ClickHouse, parsing and planning cost more than finding 100 keys), so under load the store
//! answers one query per round instead of one per request; alone, a request waits for nothing
//! (docs/events.md, "Durable, and counted once").

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use peage_usage_store::{UsageKey, UsageStore, UsageStoreError};
use tokio::sync::oneshot;

/// The most keys one query asks for: a round takes whole requests until it has this many.
const MAX_KEYS_PER_QUERY: usize = 2_000;

/// What a round found: the digests of every stored key of the round's requests.
type Found = Result<Arc<HashMap<UsageKey, String>>, Arc<UsageStoreError>>;

/// One query: the store's digests of these keys.
type Lookup = Arc<
    dyn Fn(
            Vec<UsageKey>,
        ) -> Pin<
            Box<dyn Future<Output = Result<HashMap<UsageKey, String>, UsageStoreError>> + Send>,
        > + Send
        + Sync,
>;

#[derive(Default)]
struct Queue {
    waiting: Vec<(Vec<UsageKey>, oneshot::Sender<Found>)>,
    /// A task is taking rounds: a new request only queues.
    running: bool,
}

/// Stored digests, looked up in rounds (see the module's documentation).
#[derive(Default, Clone)]
pub struct DigestLookups {
    queue: Arc<Mutex<Queue>>,
}

impl DigestLookups {
    /// The digests of the stored usage events among `keys` (and maybe of others: the map
    /// covers the whole round).
    pub async fn stored(
        &self,
        usage: &Arc<dyn UsageStore>,
        keys: Vec<UsageKey>,
    ) -> Result<Arc<HashMap<UsageKey, String>>, UsageStoreError> {
        let usage = Arc::clone(usage);
        let lookup: Lookup = Arc::new(move |keys| {
            let usage = Arc::clone(&usage);
            Box::pin(async move { usage.stored_usage_digests(&keys).await })
        });
        self.stored_with(lookup, keys).await
    }

    async fn stored_with(
        &self,
        lookup: Lookup,
        keys: Vec<UsageKey>,
    ) -> Result<Arc<HashMap<UsageKey, String>>, UsageStoreError> {
        if keys.is_empty() {
            return Ok(Arc::default());
        }
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push((keys, tx));
            !std::mem::replace(&mut q.running, true)
        };
        if lead {
            tokio::spawn(rounds(Arc::clone(&self.queue), lookup));
        }
        match rx.await {
            Ok(found) => found.map_err(|e| again(&e)),
            // The task ended without answering (it panicked): nothing was looked up.
            Err(_) => Err(UsageStoreError::Unavailable(
                "the duplicate look-up ended without an answer".into(),
            )),
        }
    }
}

/// Takes rounds until no request waits.
async fn rounds(queue: Arc<Mutex<Queue>>, lookup: Lookup) {
    // A panic ends this task: the requests it holds are answered (their senders dropped),
    // and the next request starts another one.
    struct Running {
        queue: Arc<Mutex<Queue>>,
        done: bool,
    }
    impl Drop for Running {
        fn drop(&mut self) {
            if !self.done {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                q.waiting.clear();
                q.running = false;
            }
        }
    }
    let mut running = Running {
        queue: Arc::clone(&queue),
        done: false,
    };
    loop {
        let round = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.waiting.is_empty() {
                // Under the lock: a request queued after this starts a task of its own.
                q.running = false;
                running.done = true;
                return;
            }
            let (mut take, mut keys) = (0, 0);
            while take < q.waiting.len()
                && (take == 0 || keys + q.waiting[take].0.len() <= MAX_KEYS_PER_QUERY)
            {
                keys += q.waiting[take].0.len();
                take += 1;
            }
            q.waiting.drain(..take).collect::<Vec<_>>()
        };
        let keys: Vec<UsageKey> = round.iter().flat_map(|(k, _)| k.iter().cloned()).collect();
        let found: Found = lookup(keys).await.map(Arc::new).map_err(Arc::new);
        for (_, tx) in round {
            // A request whose client went away no longer listens.
            let _ = tx.send(found.clone());
        }
    }
}

/// A round's error, for each of its requests: unavailable stays unavailable (the client
/// retries); anything else keeps its words.
fn again(e: &UsageStoreError) -> UsageStoreError {
    match e {
        UsageStoreError::Unavailable(m) => UsageStoreError::Unavailable(m.clone()),
        other => UsageStoreError::Shared(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn key(i: u128) -> UsageKey {
        ("prt_a".to_string(), uuid::Uuid::from_u128(i))
    }

    /// A store holding the even keys, answering after 20 ms, counting its queries and the
    /// most keys one query asked for.
    fn slow_store(queries: Arc<AtomicUsize>, widest: Arc<AtomicUsize>) -> Lookup {
        Arc::new(move |keys: Vec<UsageKey>| {
            let (queries, widest) = (Arc::clone(&queries), Arc::clone(&widest));
            Box::pin(async move {
                queries.fetch_add(1, Ordering::SeqCst);
                widest.fetch_max(keys.len(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(keys
                    .into_iter()
                    .filter(|(_, k)| k.as_u128() % 2 == 0)
                    .map(|k| (k.clone(), format!("d{}", k.1.as_u128())))
                    .collect())
            })
        })
    }

    #[tokio::test]
    async fn concurrent_requests_share_rounds_and_each_finds_its_own_keys() {
        let (queries, widest) = (Arc::default(), Arc::default());
        let store = slow_store(Arc::clone(&queries), Arc::clone(&widest));
        let lookups = DigestLookups::default();
        let requests = (0..40u128).map(|r| {
            let (lookups, store) = (lookups.clone(), Arc::clone(&store));
            tokio::spawn(async move {
                let keys: Vec<UsageKey> = (r * 100..r * 100 + 100).map(key).collect();
                let found = lookups.stored_with(store, keys.clone()).await.unwrap();
                for k in keys {
                    let want = (k.1.as_u128() % 2 == 0).then(|| format!("d{}", k.1.as_u128()));
                    assert_eq!(found.get(&k).cloned(), want, "{k:?}");
                }
            })
        });
        for r in futures::future::join_all(requests).await {
            r.unwrap();
        }
        // 40 requests of 100 keys in rounds of at most 2,000 keys.
        let queries = queries.load(Ordering::SeqCst);
        assert!(
            (2..=10).contains(&queries),
            "{queries} queries for 40 requests"
        );
        assert!(widest.load(Ordering::SeqCst) <= MAX_KEYS_PER_QUERY);
        // Idle again: a lone request is answered by a query of its own.
        let found = lookups.stored_with(store, vec![key(2)]).await.unwrap();
        assert_eq!(found.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_round_fails_each_of_its_requests_in_its_words_and_the_next_one_runs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let store: Lookup = Arc::new(move |_keys| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match n {
                    0 => Err(UsageStoreError::Unavailable("connection refused".into())),
                    1 => Err(UsageStoreError::ClickHouse("syntax error".into())),
                    _ => Ok(HashMap::new()),
                }
            })
        });
        let lookups = DigestLookups::default();
        let e = lookups.stored_with(Arc::clone(&store), vec![key(1)]).await;
        assert!(matches!(e, Err(UsageStoreError::Unavailable(m)) if m == "connection refused"));
        let e = lookups.stored_with(Arc::clone(&store), vec![key(1)]).await;
        assert!(matches!(e, Err(UsageStoreError::Shared(m)) if m == "clickhouse: syntax error"));
        assert!(lookups
            .stored_with(store, vec![key(1)])
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_panicking_round_answers_its_requests_and_does_not_stall_the_next() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let store: Lookup = Arc::new(move |_keys| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                assert!(n > 0, "the first query panics");
                Ok(HashMap::new())
            })
        });
        let lookups = DigestLookups::default();
        let e = lookups.stored_with(Arc::clone(&store), vec![key(1)]).await;
        assert!(matches!(e, Err(UsageStoreError::Unavailable(_))), "{e:?}");
        assert!(lookups
            .stored_with(store, vec![key(1)])
            .await
            .unwrap()
            .is_empty());
    }
}
