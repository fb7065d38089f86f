//! A cache of things that take a round trip to open (a connection, a set of
//! streams on it), keyed by what they lead to: one live item per key, and
//! one opening at a time per key, so concurrent first users wait for the
//! same dial instead of each dialling.

use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;

/// One cached item per key; see the module docs.
pub(crate) struct Pool<K, V> {
    items: DashMap<K, V>,
    /// One opening at a time per key. An entry is a few bytes and there is
    /// one per peer ever used; it is dropped with the pool.
    openings: DashMap<K, Arc<tokio::sync::Mutex<()>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for Pool<K, V> {
    fn default() -> Self {
        Self {
            items: DashMap::new(),
            openings: DashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Pool<K, V> {
    /// The cached item for `key` if `live` accepts it.
    pub(crate) fn get(&self, key: &K, live: impl Fn(&V) -> bool) -> Option<V> {
        self.items
            .get(key)
            .filter(|item| live(item))
            .map(|item| item.value().clone())
    }

    /// The cached item for `key` if `live` accepts it, else one made by
    /// `open` and cached. Of concurrent callers for one key, one opens and
    /// the others wait for it and take its item. An `open` that fails
    /// caches nothing; the next caller tries again.
    ///
    /// Cancel safety: cancelling while waiting or opening caches nothing.
    pub(crate) async fn get_or_open<E, F>(
        &self,
        key: &K,
        live: impl Fn(&V) -> bool,
        open: F,
    ) -> Result<V, E>
    where
        F: std::future::Future<Output = Result<V, E>>,
    {
        if let Some(item) = self.get(key, &live) {
            return Ok(item);
        }
        let gate = Arc::clone(self.openings.entry(key.clone()).or_default().value());
        let _turn = gate.lock().await;
        if let Some(item) = self.get(key, &live) {
            return Ok(item);
        }
        let item = open.await?;
        self.items.insert(key.clone(), item.clone());
        Ok(item)
    }

    /// Drops the item for `key` if `stale` says it is the one to drop (so a
    /// caller that saw an old item never drops its replacement).
    pub(crate) fn remove_if(&self, key: &K, stale: impl FnOnce(&V) -> bool) {
        self.items.remove_if(key, |_, item| stale(item));
    }

    /// Keeps only the items `keep` accepts.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.items.retain(|k, v| keep(k, v));
    }

    /// Drops every item.
    pub(crate) fn clear(&self) {
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_first_users_share_one_opening() {
        let pool: Arc<Pool<u8, u32>> = Arc::default();
        let opened = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pool, opened) = (Arc::clone(&pool), Arc::clone(&opened));
            tasks.push(tokio::spawn(async move {
                pool.get_or_open(&1, |_| true, async {
                    tokio::task::yield_now().await;
                    Ok::<_, ()>(opened.fetch_add(1, Ordering::SeqCst) as u32)
                })
                .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(0));
        }
        assert_eq!(opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_dead_or_failed_item_is_opened_again() {
        let pool: Pool<u8, u32> = Pool::default();
        assert_eq!(
            pool.get_or_open(&1, |_| true, async { Err::<u32, _>("no") })
                .await,
            Err("no")
        );
        assert_eq!(
            pool.get_or_open(&1, |_| true, async { Ok::<_, ()>(5) })
                .await,
            Ok(5)
        );
        // Not live any more: replaced.
        assert_eq!(
            pool.get_or_open(&1, |v| *v != 5, async { Ok::<_, ()>(6) })
                .await,
            Ok(6)
        );
        // Removing an item that was already replaced leaves the new one.
        pool.remove_if(&1, |v| *v == 5);
        assert_eq!(pool.get(&1, |_| true), Some(6));
        pool.remove_if(&1, |v| *v == 6);
        assert_eq!(pool.get(&1, |_| true), None);
    }
}
