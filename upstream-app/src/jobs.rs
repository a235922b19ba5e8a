//! Background jobs: a bounded queue drained by `jobs.workers` tasks. A full
//! queue answers 503 with `Retry-After`; nothing is dropped silently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::auth::AuthUser;
use crate::error::{AppError, AppPath};
use crate::{metrics, AppState};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting in the queue.
    Queued,
    /// A worker has it.
    Running,
    /// Finished with a result.
    Done,
    /// Finished with an error.
    Failed,
}

/// One job and, once finished, its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// Kind of work.
    pub kind: &'static str,
    /// Who asked for it.
    pub owner: String,
    /// Where it is.
    pub status: Status,
    /// The result, when done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The error, when failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    finished: Option<Instant>,
}

/// The queue and the job table.
pub struct Jobs {
    tx: mpsc::Sender<String>,
    rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
    table: Mutex<HashMap<String, Job>>,
    queued: AtomicUsize,
    running: AtomicUsize,
}

impl Jobs {
    /// A queue holding at most `capacity` waiting jobs (no workers yet).
    pub fn new(capacity: usize) -> Arc<Jobs> {
        let (tx, rx) = mpsc::channel(capacity);
        Arc::new(Jobs {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            table: Mutex::default(),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
        })
    }

    fn publish(&self) {
        metrics::jobs(
            self.queued.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed),
        );
    }

    /// Queues an export for `owner`, or refuses at once when the queue is full.
    pub fn submit(&self, owner: &str) -> Result<String, AppError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let job = Job {
            id: id.clone(),
            kind: "export",
            owner: owner.to_owned(),
            status: Status::Queued,
            result: None,
            error: None,
            finished: None,
        };
        self.table
            .lock()
            .map_err(|_| AppError::Internal)?
            .insert(id.clone(), job);
        if self.tx.try_send(id.clone()).is_err() {
            self.table
                .lock()
                .map_err(|_| AppError::Internal)?
                .remove(&id);
            metrics::job("rejected");
            return Err(AppError::Busy("job queue is full, retry later"));
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.publish();
        Ok(id)
    }

    /// A job as its owner may see it.
    pub fn get(&self, id: &str) -> Option<Job> {
        self.table.lock().ok()?.get(id).cloned()
    }

    /// Queued and running jobs.
    pub fn active(&self) -> Vec<Job> {
        let Ok(t) = self.table.lock() else {
            return Vec::new();
        };
        t.values()
            .filter(|j| matches!(j.status, Status::Queued | Status::Running))
            .cloned()
            .collect()
    }

    /// Jobs queued and running now.
    pub fn depth(&self) -> (usize, usize) {
        (
            self.queued.load(Ordering::Relaxed),
            self.running.load(Ordering::Relaxed),
        )
    }

    fn set(&self, id: &str, f: impl FnOnce(&mut Job)) {
        if let Ok(mut t) = self.table.lock() {
            if let Some(j) = t.get_mut(id) {
                f(j);
            }
        }
    }

    /// Forgets finished jobs older than `jobs.result_ttl`.
    fn expire(&self, ttl: std::time::Duration) {
        if let Ok(mut t) = self.table.lock() {
            t.retain(|_, j| j.finished.is_none_or(|f| f.elapsed() < ttl));
        }
    }
}

/// Starts `jobs.workers` tasks draining the queue.
pub fn spawn_workers(st: &AppState) {
    for _ in 0..st.config.jobs.workers {
        let st = st.clone();
        tokio::spawn(async move {
            loop {
                let next = st.jobs.rx.lock().await.recv().await;
                let Some(id) = next else { return };
                work(&st, &id).await;
            }
        });
    }
}

async fn work(st: &AppState, id: &str) {
    let jobs = &st.jobs;
    jobs.queued.fetch_sub(1, Ordering::Relaxed);
    jobs.running.fetch_add(1, Ordering::Relaxed);
    jobs.publish();
    let owner = jobs.get(id).map(|j| j.owner).unwrap_or_default();
    jobs.set(id, |j| j.status = Status::Running);
    let outcome = crate::items::all_of(st, &owner).await;
    jobs.set(id, |j| {
        j.finished = Some(Instant::now());
        match outcome {
            Ok(items) => {
                j.status = Status::Done;
                j.result = Some(serde_json::json!({ "count": items.len(), "items": items }));
            }
            Err(e) => {
                j.status = Status::Failed;
                j.error = Some(e.to_string());
            }
        }
    });
    let outcome = jobs.get(id).map(|j| j.status);
    metrics::job(if outcome == Some(Status::Done) {
        "done"
    } else {
        "failed"
    });
    jobs.running.fetch_sub(1, Ordering::Relaxed);
    jobs.publish();
    jobs.expire(st.config.jobs.result_ttl);
}

/// `POST /items/export` (auth) → 202 `{job_id}`, or 503 when the queue is full.
pub async fn export(State(st): State<AppState>, user: AuthUser) -> Result<Response, AppError> {
    let id = st.jobs.submit(&user.username)?;
    Ok((
        StatusCode::ACCEPTED,
        [
            (header::LOCATION, format!("/jobs/{id}")),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
        Json(serde_json::json!({ "job_id": id })),
    )
        .into_response())
}

/// `GET /jobs/{id}` (auth, owner only): status and, when done, the result.
pub async fn status(
    State(st): State<AppState>,
    AppPath(id): AppPath<String>,
    user: AuthUser,
) -> Result<Response, AppError> {
    let job = st.jobs.get(&id).ok_or(AppError::NotFound)?;
    if job.owner != user.username {
        return Err(AppError::NotFound);
    }
    Ok(([(header::CACHE_CONTROL, "private, no-store")], Json(job)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_dropping() {
        let jobs = Jobs::new(2);
        assert!(jobs.submit("a").is_ok());
        assert!(jobs.submit("a").is_ok());
        assert!(matches!(jobs.submit("a"), Err(AppError::Busy(_))));
        assert_eq!(jobs.depth(), (2, 0));
        assert_eq!(jobs.active().len(), 2, "the refused job left no trace");
    }
}
