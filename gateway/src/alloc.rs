//! The allocator's settings: mimalloc (the binary's global allocator) gives
//! freed memory back to the system quickly, and a purge of the cache asks it
//! to do so at once. With the `dhat-heap` feature the binary profiles its
//! heap with `dhat` instead (see [`dhat_profile`]).
//!
//! The option numbers are those of the mimalloc v3 sources that
//! `libmimalloc-sys` 0.1.49 builds (`include/mimalloc.h`, `mi_option_t`); the
//! crate's own constants follow v2's numbering, which v3 changed.

use std::cell::Cell;
use std::os::raw::{c_int, c_long};
use std::sync::Mutex;

use libmimalloc_sys as _; // links mimalloc, whichever allocator is global

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
}

/// `mi_option_purge_delay`: milliseconds before freed pages go back to the OS.
const PURGE_DELAY: c_int = 15;
/// `mi_option_arena_purge_mult`: the same delay's multiplier for arenas.
const ARENA_PURGE_MULT: c_int = 24;

/// Freed pages are purged (given back to the OS) after this many milliseconds.
pub const PURGE_DELAY_MS: c_long = 100;

/// Sets mimalloc's options; call first thing in `main`. An environment
/// `MIMALLOC_PURGE_DELAY` still wins (an operator's explicit choice).
pub fn configure() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: plain option setters of the linked mimalloc, valid at any time.
    unsafe {
        mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
        mi_option_set(ARENA_PURGE_MULT, 1);
    }
}

/// The runtimes of the threads that serve requests. mimalloc hands a block
/// freed by another thread (a purge runs on the admin thread) back to the
/// owning thread, which frees its pages only when it next collects: an idle
/// worker would keep them. One handle per thread, so this stays tiny.
static WORKERS: Mutex<Vec<tokio::runtime::Handle>> = Mutex::new(Vec::new());

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Records the calling request thread's runtime, once per thread (a
/// thread-local check afterwards).
pub fn register_worker() {
    if REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    if let (Ok(handle), Ok(mut workers)) = (tokio::runtime::Handle::try_current(), WORKERS.lock()) {
        workers.push(handle);
    }
}

/// Asks the allocator to give free memory back now (after a large purge): on
/// this thread, and on every request thread (as a task on its runtime).
pub fn release() {
    // SAFETY: collects the calling thread's heap and the shared arenas.
    unsafe { mi_collect(true) }
    if let Ok(workers) = WORKERS.lock() {
        for handle in workers.iter() {
            // SAFETY: as above, on that worker's own thread.
            handle.spawn(async { unsafe { mi_collect(true) } });
        }
    }
}

/// With the `dhat-heap` feature: profiles the heap from now for
/// `DHAT_SECS` seconds (default 60), then writes `DHAT_FILE`
/// (default `dhat-heap.json`; view it with dhat's `dh_view.html`). The
/// gateway keeps running; Pingora exits without dropping anything, so the
/// profile is written on a timer rather than at exit. (Not `GATEWAY_*`
/// variables: those are configuration.)
#[cfg(feature = "dhat-heap")]
pub fn dhat_profile() {
    let secs: u64 = std::env::var("DHAT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let file = std::env::var("DHAT_FILE").unwrap_or_else(|_| "dhat-heap.json".into());
    let (started, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let profiler = dhat::Profiler::builder()
            .file_name(file)
            .trim_backtraces(Some(16))
            .build();
        let _ = started.send(());
        std::thread::sleep(std::time::Duration::from_secs(secs));
        drop(profiler); // writes the file
        eprintln!("dhat: profile written");
    });
    let _ = wait.recv();
}
