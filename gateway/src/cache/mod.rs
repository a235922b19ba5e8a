//! The response cache: storage ([`storage`]), what is stored and under which
//! key ([`policy`]), the client's directives ([`request`]), and the outcome reported to clients and metrics ([`outcome`]).

pub mod outcome;
pub mod policy;
pub mod request;
pub mod storage;

use std::sync::OnceLock;

pub use outcome::CacheOutcome;
pub use storage::MemStorage;

/// The process-wide store (Pingora's cache API wants `&'static`). Its size is
/// fixed at start; a reload keeps it (and its contents).
static STORE: OnceLock<MemStorage> = OnceLock::new();

/// Creates the store; later calls keep the first one.
pub fn init(max_size: u64, max_object_size: u64) -> &'static MemStorage {
    STORE.get_or_init(|| MemStorage::new(max_size, max_object_size))
}

/// The store, once created.
pub fn store() -> Option<&'static MemStorage> {
    STORE.get()
}
