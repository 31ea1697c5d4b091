//! The cache of unwrapped seeds/DEKs of one KMS v2 provider, keyed by upstream's cache key
//! ([`super::object::cache_key`]).
//!
//! Better than upstream's (24 h TTL, no size limit: kubernetes #131853, #132967, #134774):
//! - bounded in size, evicting the least recently used entry (recency is a millisecond stamp
//!   stored in the entry on a hit, so a hit writes nothing shared unless the stamp moved);
//! - no expiry by default, so a KMS outage never makes cached data unreadable; an optional
//!   maximum age after which an entry is unwrapped again (for operators whose policy limits how
//!   long key material stays in memory);
//! - one entry is pinned (the current write seed) and is neither evicted nor aged out;
//! - single flight: concurrent readers missing the same entry wait for ONE plugin call; misses
//!   on different entries run in parallel, and no lock is held while the plugin is called;
//! - a hit takes only a shared (read) lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use prometheus::IntGauge;

use crate::error::TransformError;

/// A cache key (SHA-256, see [`super::object::cache_key`]).
pub(crate) type CacheKey = [u8; 32];

/// One cached value with its age and recency.
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    born: Instant,
    used_ms: AtomicU64,
}

type Outcome<V> = Option<Result<Arc<Entry<V>>, TransformError>>;

/// A load in progress; waiters block on `done` until `result` is set.
struct Flight<V> {
    result: Mutex<Outcome<V>>,
    done: Condvar,
}

impl<V> Flight<V> {
    fn finish(&self, outcome: Result<Arc<Entry<V>>, TransformError>) {
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.done.notify_all();
    }

    fn wait(&self) -> Result<Arc<Entry<V>>, TransformError> {
        let mut guard = self.result.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = guard.as_ref() {
                return outcome.clone();
            }
            guard = self
                .done
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

enum Slot<V> {
    Ready(Arc<Entry<V>>),
    Loading(Arc<Flight<V>>),
}

/// See the module docs.
pub(crate) struct SeedCache<V> {
    map: RwLock<HashMap<CacheKey, Slot<V>>>,
    base: Instant,
    capacity: AtomicUsize,
    /// Maximum age in nanoseconds; 0 = none.
    max_age_ns: AtomicU64,
    /// The pinned key (the current write seed) and whether one is set.
    pinned: RwLock<Option<CacheKey>>,
    gauge: IntGauge,
}

/// What a lookup found under the read lock.
enum Found<V> {
    Hit(Arc<Entry<V>>),
    Wait(Arc<Flight<V>>),
    Miss,
}

/// Clears a flight whose loader panicked, so that waiters get an error instead of hanging.
struct LoadGuard<'a, V> {
    cache: &'a SeedCache<V>,
    key: CacheKey,
    flight: Arc<Flight<V>>,
    armed: bool,
}

impl<V> Drop for LoadGuard<'_, V> {
    fn drop(&mut self) {
        if self.armed {
            self.cache.remove_flight(&self.key, &self.flight);
            self.flight.finish(Err(TransformError::KmsV2DecryptDek(
                crate::key_service::KeyServiceError::Failed(
                    "the decrypt of this seed was interrupted".to_owned(),
                ),
            )));
        }
    }
}

impl<V> SeedCache<V> {
    /// An empty cache of at most `capacity` entries; `gauge` follows its size.
    pub(crate) fn new(capacity: usize, gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            map: RwLock::new(HashMap::new()),
            base: Instant::now(),
            capacity: AtomicUsize::new(capacity.max(1)),
            max_age_ns: AtomicU64::new(0),
            pinned: RwLock::new(None),
            gauge,
        }
    }

    /// Changes the size bound (at least 1); evicts down to it.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        self.evict(&mut map);
    }

    /// Sets (or clears) the maximum age of an entry.
    pub(crate) fn set_max_age(&self, max_age: Option<Duration>) {
        let ns = max_age.map_or(0, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
        });
        self.max_age_ns.store(ns, Ordering::Relaxed);
    }

    /// Pins `key` (the current write seed): never evicted, never aged out.
    pub(crate) fn pin(&self, key: CacheKey) {
        *self.pinned.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
    }

    /// Entries held (loads in flight not counted).
    pub(crate) fn len(&self) -> usize {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.values().filter(|s| matches!(s, Slot::Ready(_))).count()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn is_pinned(&self, key: &CacheKey) -> bool {
        self.pinned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            == Some(key)
    }

    fn expired(&self, key: &CacheKey, entry: &Entry<V>) -> bool {
        let max = self.max_age_ns.load(Ordering::Relaxed);
        max != 0
            && u64::try_from(entry.born.elapsed().as_nanos()).unwrap_or(u64::MAX) >= max
            && !self.is_pinned(key)
    }

    fn touch(&self, entry: &Entry<V>) {
        let now = self.now_ms();
        if entry.used_ms.load(Ordering::Relaxed) != now {
            entry.used_ms.store(now, Ordering::Relaxed);
        }
    }

    fn find(&self, map: &HashMap<CacheKey, Slot<V>>, key: &CacheKey) -> Found<V> {
        match map.get(key) {
            Some(Slot::Ready(e)) if !self.expired(key, e) => Found::Hit(e.clone()),
            Some(Slot::Loading(f)) => Found::Wait(f.clone()),
            _ => Found::Miss,
        }
    }

    /// The entry under `key`, or `load()`'s value, inserted. Only one load per key runs at a
    /// time; other callers wait for its outcome (an error is shared, not cached).
    pub(crate) fn get_or_load(
        &self,
        key: CacheKey,
        load: impl FnOnce() -> Result<V, TransformError>,
    ) -> Result<Arc<Entry<V>>, TransformError> {
        let found = {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            self.find(&map, &key)
        };
        let flight = match found {
            Found::Hit(e) => {
                self.touch(&e);
                return Ok(e);
            }
            Found::Wait(f) => return f.wait(),
            Found::Miss => {
                let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
                match self.find(&map, &key) {
                    Found::Hit(e) => return Ok(e),
                    Found::Wait(f) => {
                        drop(map);
                        return f.wait();
                    }
                    Found::Miss => {
                        let f = Arc::new(Flight {
                            result: Mutex::new(None),
                            done: Condvar::new(),
                        });
                        map.insert(key, Slot::Loading(f.clone()));
                        f
                    }
                }
            }
        };
        let mut guard = LoadGuard {
            cache: self,
            key,
            flight: flight.clone(),
            armed: true,
        };
        let outcome = load().map(|value| self.insert_loaded(key, &flight, value));
        guard.armed = false;
        if outcome.is_err() {
            self.remove_flight(&key, &flight);
        }
        flight.finish(outcome.clone());
        outcome
    }

    /// Inserts a value known without a plugin call (the write seed just wrapped).
    pub(crate) fn insert(&self, key: CacheKey, value: V) -> Arc<Entry<V>> {
        let entry = self.entry(value);
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(key, Slot::Ready(entry.clone()));
        self.evict(&mut map);
        entry
    }

    fn entry(&self, value: V) -> Arc<Entry<V>> {
        Arc::new(Entry {
            value,
            born: Instant::now(),
            used_ms: AtomicU64::new(self.now_ms()),
        })
    }

    fn insert_loaded(&self, key: CacheKey, flight: &Arc<Flight<V>>, value: V) -> Arc<Entry<V>> {
        let entry = self.entry(value);
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        // Replace our own flight only (a concurrent `insert` may have put the value already).
        if matches!(map.get(&key), Some(Slot::Loading(f)) if Arc::ptr_eq(f, flight)) {
            map.insert(key, Slot::Ready(entry.clone()));
        }
        self.evict(&mut map);
        entry
    }

    fn remove_flight(&self, key: &CacheKey, flight: &Arc<Flight<V>>) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if matches!(map.get(key), Some(Slot::Loading(f)) if Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }

    /// Drops least recently used entries (never the pinned one, never a load in flight) until
    /// the size bound holds, then updates the gauge.
    fn evict(&self, map: &mut HashMap<CacheKey, Slot<V>>) {
        let capacity = self.capacity.load(Ordering::Relaxed);
        let pinned = *self.pinned.read().unwrap_or_else(PoisonError::into_inner);
        let mut ready = map.values().filter(|s| matches!(s, Slot::Ready(_))).count();
        while ready > capacity {
            let victim = map
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Ready(e) if Some(*k) != pinned => {
                        Some((e.used_ms.load(Ordering::Relaxed), *k))
                    }
                    _ => None,
                })
                .min();
            let Some((_, k)) = victim else { break };
            map.remove(&k);
            ready -= 1;
        }
        self.gauge.set(i64::try_from(ready).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;

    fn cache(cap: usize) -> SeedCache<u32> {
        SeedCache::new(cap, IntGauge::new("test_seeds", "test").unwrap())
    }

    fn key(b: u8) -> CacheKey {
        [b; 32]
    }

    #[test]
    fn evicts_the_least_recently_used_not_the_pinned() {
        let c = cache(3);
        for b in 1..=3 {
            c.get_or_load(key(b), || Ok(u32::from(b))).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
        c.pin(key(1));
        // 2 is used again: 3 becomes least recent after the pinned 1.
        c.get_or_load(key(2), || panic!("cached")).unwrap();
        std::thread::sleep(Duration::from_millis(3));
        c.get_or_load(key(4), || Ok(4)).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.gauge.get(), 3);
        let loads = AtomicUsize::new(0);
        for b in [1, 2, 4] {
            c.get_or_load(key(b), || {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(0)
            })
            .unwrap();
        }
        assert_eq!(loads.load(Ordering::SeqCst), 0, "1, 2 and 4 stay cached");
        let v = c.get_or_load(key(3), || Ok(33)).unwrap();
        assert_eq!(v.value, 33, "3 was evicted and loaded again");
    }

    #[test]
    fn max_age_reloads_except_the_pinned_entry() {
        let c = cache(10);
        c.get_or_load(key(1), || Ok(1)).unwrap();
        c.insert(key(2), 2);
        c.pin(key(2));
        c.set_max_age(Some(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.get_or_load(key(1), || Ok(11)).unwrap().value, 11);
        assert_eq!(c.get_or_load(key(2), || Ok(22)).unwrap().value, 2);
        c.set_max_age(None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.get_or_load(key(1), || Ok(111)).unwrap().value, 11);
    }

    #[test]
    fn concurrent_misses_on_one_key_load_once_and_errors_are_shared_not_cached() {
        let c = Arc::new(cache(10));
        let loads = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, loads, start) = (c.clone(), loads.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    c.get_or_load(key(7), || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        Err(TransformError::ShortData)
                    })
                    .map(|e| e.value)
                })
            })
            .collect();
        for t in threads {
            assert!(matches!(t.join().unwrap(), Err(TransformError::ShortData)));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(c.get_or_load(key(7), || Ok(7)).unwrap().value, 7);
    }

    #[test]
    fn misses_on_different_keys_load_in_parallel() {
        let c = Arc::new(cache(10));
        let both_inside = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2u8)
            .map(|b| {
                let (c, both_inside) = (c.clone(), both_inside.clone());
                std::thread::spawn(move || {
                    // Each load waits for the other to be inside its own load: this only
                    // finishes if the two loads run at the same time.
                    c.get_or_load(key(b), || {
                        both_inside.wait();
                        Ok(u32::from(b))
                    })
                    .unwrap()
                    .value
                })
            })
            .collect();
        let got: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(got, vec![0, 1]);
    }

    #[test]
    fn a_panicking_load_wakes_the_waiters_with_an_error() {
        let c = Arc::new(cache(10));
        let c2 = c.clone();
        let leader = std::thread::spawn(move || {
            let _ = c2.get_or_load(key(1), || -> Result<u32, TransformError> {
                std::thread::sleep(Duration::from_millis(100));
                panic!("plugin client bug")
            });
        });
        std::thread::sleep(Duration::from_millis(30));
        let waited = c.get_or_load(key(1), || Ok(5));
        assert!(leader.join().is_err());
        // Either it waited for the failed flight (error) or came after it (loaded anew).
        match waited {
            Ok(e) => assert_eq!(e.value, 5),
            Err(e) => assert!(e.to_string().contains("interrupted"), "{e}"),
        }
        let v = c.get_or_load(key(1), || Ok(6)).unwrap().value;
        assert!(v == 5 || v == 6, "{v}");
    }
}
