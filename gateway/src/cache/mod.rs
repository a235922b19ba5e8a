//! The response cache: storage ([`storage`]), what is stored and under which
//! key ([`policy`]), which response directives the gateway follows
//! ([`targeted`], RFC 9213), the client's directives ([`request`]) and purges
//! ([`purge`]), and the second tier in Redis ([`shared`]). The outcome reported to clients and metrics is
//! [`crate::outcome::CacheOutcome`], a vocabulary of its own so that the
//! metrics sit below the cache.

pub mod policy;
pub mod purge;
pub mod request;
pub mod shared;
pub mod storage;
pub mod targeted;

use std::sync::OnceLock;
use std::time::Duration;

use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};

pub use crate::outcome::CacheOutcome;
pub use storage::MemStorage;

/// The process-wide store (Pingora's cache API wants `&'static`). Its size is
/// fixed at start; a reload keeps it (and its contents).
static STORE: OnceLock<MemStorage> = OnceLock::new();

/// Coalesces concurrent misses for one key: one request goes upstream, the
/// others wait for its response (bounded by `cache.lock_timeout`).
static LOCK: OnceLock<Box<CacheLock>> = OnceLock::new();

/// Creates the store and the lock; later calls keep the first ones.
pub fn init(max_size: u64, max_object_size: u64, lock_timeout: Duration) -> &'static MemStorage {
    LOCK.get_or_init(|| CacheLock::new_boxed(lock_timeout));
    STORE.get_or_init(|| MemStorage::new(max_size, max_object_size))
}

/// The miss lock, once created.
pub fn lock() -> Option<&'static CacheKeyLockImpl> {
    LOCK.get().map(|l| l.as_ref() as &CacheKeyLockImpl)
}

/// The store, once created.
pub fn store() -> Option<&'static MemStorage> {
    STORE.get()
}
