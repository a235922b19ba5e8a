//! Concurrency limits with a short FIFO queue, per route and per upstream.
//!
//! A request that goes upstream (never a cache hit) takes a route slot, then
//! an upstream slot, under one deadline (`queue.timeout`). Slots are tokio
//! semaphore permits (FIFO-fair), held in the request context until the
//! request ends. A limiter belongs to its route's or upstream's runtime state
//! in the configuration snapshot, which hands it to the next snapshot on
//! reload (see [`crate::state`]): in-flight counts and waiters carry over, and
//! a changed limit resizes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One concurrency limit.
pub struct Limiter {
    sem: Arc<Semaphore>,
    max: AtomicUsize,
    waiting: AtomicUsize,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full (or there is no queue and no free slot).
    QueueFull,
    /// No slot within the queue timeout.
    QueueTimeout,
}

impl Shed {
    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
        }
    }
}

impl Limiter {
    /// A limiter admitting `max` requests at once.
    pub fn new(max: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            sem: Arc::new(Semaphore::new(max)),
            max: AtomicUsize::new(max),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Changes the limit (waiters and holders are kept).
    pub fn resize(&self, max: usize) {
        let old = self.max.swap(max, Ordering::AcqRel);
        if max > old {
            self.sem.add_permits(max - old);
        } else if max < old {
            // Free slots go at once; busy ones are not handed out again
            // until the in-flight count has fallen below the new limit.
            let forgotten = self.sem.forget_permits(old - max);
            if forgotten < old - max {
                let sem = self.sem.clone();
                let rest = (old - max - forgotten) as u32;
                tokio::spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(rest).await {
                        p.forget();
                    }
                });
            }
        }
    }

    /// The configured limit.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.max().saturating_sub(self.sem.available_permits())
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A slot at once, if one is free.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_owned().ok()
    }

    /// Waits in line for a slot until `deadline`; refuses at once when
    /// `max_waiting` requests already wait.
    pub async fn acquire(
        &self,
        max_waiting: usize,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, Shed> {
        if let Some(p) = self.try_acquire() {
            return Ok(p);
        }
        // Counted while in line, also when the waiting future is dropped (the
        // client left): the guard leaves the line in every case.
        struct InLine<'a>(&'a AtomicUsize);
        impl Drop for InLine<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let in_line = InLine(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= max_waiting {
            return Err(Shed::QueueFull);
        }
        let got = tokio::time::timeout_at(deadline, self.sem.clone().acquire_owned()).await;
        drop(in_line);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(Shed::QueueTimeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn queue_bound_timeout_and_resize() {
        let l = Limiter::new(1);
        let p = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        let soon = tokio::time::Instant::now() + Duration::from_millis(50);
        assert_eq!(l.acquire(0, soon).await.unwrap_err(), Shed::QueueFull);
        assert_eq!(l.acquire(1, soon).await.unwrap_err(), Shed::QueueTimeout);
        drop(p);
        l.resize(3);
        let held: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        assert_eq!(l.in_flight(), 3);
        assert!(l.try_acquire().is_none());
        drop(held);
        l.resize(2);
        assert_eq!((l.max(), l.in_flight()), (2, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_is_dropped_leaves_the_line() {
        let l = Limiter::new(1);
        let _held = l.try_acquire().unwrap();
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        let waiting = l.acquire(10, far);
        let mut waiting = Box::pin(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        assert_eq!(l.waiting(), 1);
        drop(waiting);
        assert_eq!(l.waiting(), 0, "a client that left is no longer queued");
    }
}
