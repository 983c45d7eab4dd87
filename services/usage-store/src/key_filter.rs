//! Which usage-event keys the embedded store may hold, in memory: a Bloom filter the duplicate
//! look-ups ask first, so that a key it has never seen (nearly every event: ids are unique
//! unless a request is retried) costs no search of `usage_events_by_key`.
//!
//! Why: the events route and the aggregator each look every event up before it is stored. On
//! SQLite that is a B-tree search by a random key, on pages the aggregator's writes keep
//! invalidating: measured on `load-tests/events/run.sh`, the two look-ups were about a third of
//! `peage up`'s CPU per event.
//!
//! The rule that keeps it exact: **a key is in the filter before its row can be committed**.
//! The store adds a batch's keys before its insert begins, and every `SqliteUsageStore` of the
//! process opened on the same file shares one filter (the events route's and the aggregator's
//! are two). The filter learns the keys already stored with one scan, in the background, on the
//! first look-up; until that scan ends every look-up goes to SQLite. So "not in the filter"
//! means "not stored", and "maybe" is answered by SQLite as before.
//!
//! Only the process holding the data directory (`peage up`, which locks it) writes usage
//! events, so no other writer can store a key behind the filter's back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};

use futures::TryStreamExt;
use growable_bloom_filter::GrowableBloom;
use sqlx::SqlitePool;

/// One false "maybe" in 1,000 keys in the first layer. Each further layer is sized for twice the
/// keys of the one before, at 0.85 times its error (growable-bloom-filter's defaults), so the
/// whole filter stays under 1 in 150 (at ten million keys, four layers: about 3 in 1,000 and
/// about 28 MB, some 2.8 bytes a key).
const ERROR_RATIO: f64 = 0.001;
/// The first layer's size (about 1.8 MB, allocated on the first insert).
const FIRST_CAPACITY: usize = 1_000_000;
/// Keys added under one hold of the write lock while the scan fills the filter.
const SCAN_CHUNK: usize = 10_000;

/// A set of usage-event keys kept as a growable Bloom filter, trusted only once whoever fills
/// it says it holds every key that matters: the embedded store's filter below, and the billing
/// role's filter fed by the usage topic (`peage billing`, docs/events.md). "Not in the set"
/// then means "not stored"; "maybe" sends the key to the store.
pub struct KeySet {
    bloom: RwLock<GrowableBloom>,
    ready: AtomicBool,
}

impl Default for KeySet {
    fn default() -> Self {
        KeySet {
            bloom: RwLock::new(GrowableBloom::new(ERROR_RATIO, FIRST_CAPACITY)),
            ready: AtomicBool::new(false),
        }
    }
}

impl KeySet {
    /// Records keys (before they can be stored, by whoever fills the set).
    pub fn add(&self, keys: impl Iterator<Item = uuid::Uuid>) {
        let mut bloom = self.bloom.write().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            bloom.insert(key.as_u128());
        }
    }

    /// Lets look-ups trust the set (`true`), or sends them all to the store again (`false`).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The set for one look-up, when it is ready; `None` sends every key to the store.
    pub fn when_ready(&self) -> Option<KeysOut<'_>> {
        self.is_ready().then(|| KeysOut {
            bloom: self.bloom.read().unwrap_or_else(|p| p.into_inner()),
        })
    }
}

/// The filter of one usage database (see the module's documentation).
pub(crate) struct KeyFilter {
    keys: KeySet,
    /// The scan that fills the set has started. A fill that failed leaves the set never ready:
    /// every look-up asks SQLite, slower and never wrong.
    fill_started: AtomicBool,
}

/// The filters of the databases open in this process, by file.
static FILTERS: LazyLock<Mutex<HashMap<PathBuf, Weak<KeyFilter>>>> = LazyLock::new(Mutex::default);

impl KeyFilter {
    fn new() -> KeyFilter {
        KeyFilter {
            keys: KeySet::default(),
            fill_started: AtomicBool::new(false),
        }
    }

    /// The filter every store of this process opened on `path` shares.
    pub(crate) fn of_file(path: &Path) -> Arc<KeyFilter> {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut filters = FILTERS.lock().unwrap_or_else(|p| p.into_inner());
        filters.retain(|_, f| f.strong_count() > 0);
        if let Some(f) = filters.get(&path).and_then(Weak::upgrade) {
            return f;
        }
        let f = Arc::new(KeyFilter::new());
        filters.insert(path, Arc::downgrade(&f));
        f
    }

    /// Records keys about to be stored: call before the insert that stores them begins.
    pub(crate) fn add(&self, keys: impl Iterator<Item = uuid::Uuid>) {
        self.keys.add(keys);
    }

    /// The filter for one look-up, when it is filled; `None` sends every key to the database.
    /// Starts the scan that fills it on the first call.
    pub(crate) fn when_filled(self: &Arc<Self>, pool: &SqlitePool) -> Option<KeysOut<'_>> {
        if let Some(out) = self.keys.when_ready() {
            return Some(out);
        }
        if !self.fill_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(fill(Arc::downgrade(self), pool.clone()));
        }
        None
    }
}

#[cfg(test)]
impl KeyFilter {
    pub(crate) fn is_filled(&self) -> bool {
        self.keys.is_ready()
    }
}

/// A ready set, read-locked for one look-up.
pub struct KeysOut<'a> {
    bloom: std::sync::RwLockReadGuard<'a, GrowableBloom>,
}

impl KeysOut<'_> {
    /// `false`: certainly not stored. `true`: ask the store.
    pub fn may_hold(&self, key: &uuid::Uuid) -> bool {
        self.bloom.contains(key.as_u128())
    }
}

/// Learns every stored key, then lets look-ups trust the filter.
async fn fill(filter: Weak<KeyFilter>, pool: SqlitePool) {
    let started = std::time::Instant::now();
    match scan(&filter, &pool).await {
        Ok(seen) => {
            let Some(f) = filter.upgrade() else { return };
            f.keys.set_ready(true);
            tracing::info!(
                keys = seen,
                seconds = started.elapsed().as_secs_f64(),
                "usage store: the duplicate look-ups' key filter is filled"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "usage store: the key filter could not be filled; every look-up asks the database");
        }
    }
}

/// Adds every stored key to the filter, `SCAN_CHUNK` under one hold of its lock; how many.
async fn scan(filter: &Weak<KeyFilter>, pool: &SqlitePool) -> Result<u64, String> {
    let mut rows = sqlx::query_scalar::<_, Vec<u8>>("SELECT key FROM usage_events").fetch(pool);
    let (mut seen, mut chunk) = (0u64, Vec::with_capacity(SCAN_CHUNK));
    // `false` once no store holds the filter any more: it needs no keys then.
    let mut learn = |chunk: &mut Vec<uuid::Uuid>| match filter.upgrade() {
        Some(f) => {
            seen += chunk.len() as u64;
            f.add(chunk.drain(..));
            true
        }
        None => false,
    };
    while let Some(key) = rows.try_next().await.map_err(|e| e.to_string())? {
        chunk.push(crate::embedded::key_of_bytes(&key).map_err(|e| e.to_string())?);
        if chunk.len() == SCAN_CHUNK && !learn(&mut chunk) {
            return Ok(seen);
        }
    }
    learn(&mut chunk);
    Ok(seen)
}
