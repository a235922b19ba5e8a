//! Process lifecycle: our own signal watcher (Pingora handles no SIGHUP and
//! stops accepting at once on SIGTERM), configuration reload, the pid file,
//! and an exit as soon as the last connection is done.
//!
//! | signal | effect |
//! |---|---|
//! | `SIGHUP` | re-read and validate the file; apply it atomically or keep the old one |
//! | `SIGTERM` | `/ready` → 503, responses close their connections, listeners keep accepting for `shutdown.drain_delay`; then stop accepting, finish in-flight requests, exit within `shutdown.grace_period` |
//! | `SIGQUIT` | hand the listening sockets to a new process started with `-u`, finish in-flight requests, exit |
//! | `SIGINT` | exit at once |
//! | `SIGUSR1` | reopen the access-log file (after logrotate moved it) |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

use crate::config::{self, Config};
use crate::metrics;
use crate::state::{ReloadStatus, Shared};

/// The signal watcher handed to Pingora through `RunArgs`.
pub struct Signals {
    shared: Arc<Shared>,
    phases: std::sync::Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    pid_file: PidFile,
}

impl Signals {
    /// A watcher over `shared`; `phases` comes from `Server::watch_execution_phase`.
    pub fn new(
        shared: Arc<Shared>,
        phases: broadcast::Receiver<ExecutionPhase>,
        pid_file: PidFile,
    ) -> Self {
        Self {
            shared,
            phases: std::sync::Mutex::new(Some(phases)),
            pid_file,
        }
    }

    /// Exits the process as soon as Pingora's grace period has begun and no
    /// client connection is left, instead of sleeping out the whole period.
    fn exit_when_idle(&self) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        let pid_file = self.pid_file.clone();
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            while shared.open_connections() > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::info!("no connection left: exiting");
            // Every answered request is in the log before the process goes.
            crate::access_log::flush(Duration::from_secs(2));
            pid_file.remove();
            std::process::exit(0);
        });
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut hup), Ok(mut term), Ok(mut quit), Ok(mut int), Ok(mut usr1)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::user_defined1()),
        ) else {
            tracing::error!("cannot install signal handlers: stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => reload(&self.shared).await,
                _ = usr1.recv() => crate::access_log::reopen(),
                _ = term.recv() => {
                    let drain = self.shared.snapshot().config.shutdown.drain_delay;
                    tracing::info!(?drain, "SIGTERM: draining (/ready is 503), still accepting");
                    self.shared.start_draining();
                    self.shared.start_closing();
                    tokio::select! {
                        _ = tokio::time::sleep(drain) => {}
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                    }
                    tracing::info!("drain delay over: no longer accepting, finishing in-flight requests");
                    self.exit_when_idle();
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = quit.recv() => {
                    tracing::info!("SIGQUIT: handing the listeners to the new process");
                    self.shared.start_closing();
                    self.exit_when_idle();
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}

/// Keeps the running value of every key that only a restart (or binary
/// upgrade) can change, and names those whose value `next` changes. The one
/// list of such keys, used both to report and to carry over.
fn keep_restart_only(running: &Config, next: &mut Config) -> Vec<String> {
    let mut pending = Vec::new();
    let mut keep = |key: &str, changed: bool| {
        if changed {
            pending.push(key.to_owned());
        }
    };
    macro_rules! restart_only {
        ($($key:literal => $($field:ident).+;)*) => {$(
            keep($key, running.$($field).+ != next.$($field).+);
            next.$($field).+ = running.$($field).+.clone();
        )*};
    }
    restart_only! {
        "listen" => listen;
        "threads" => threads;
        "admin.listen" => admin.listen;
        "pid_file" => pid_file;
        "upgrade_sock" => upgrade_sock;
        "upstream_keepalive_pool_size" => upstream_keepalive_pool_size;
        "cache.max_size" => cache.max_size;
        "cache.max_object_size" => cache.max_object_size;
        "access_log.path" => access_log.target;
        "shared.redis" => redis;
        "cache.shared" => cache.shared;
        "client.h2_max_streams" => client.h2_max_streams;
    }
    // The HTTPS listeners: only their addresses need a restart (certificates,
    // version, deadline, redirect and HSTS apply on reload). Adding or removing
    // the whole block is a listener change too.
    let running_listen = running.tls.as_ref().map(|t| &t.listen);
    let next_listen = next.tls.as_ref().map(|t| &t.listen);
    if running_listen != next_listen {
        pending.push("tls.listen".to_owned());
        match (&running.tls, &mut next.tls) {
            (Some(r), Some(n)) => n.listen = r.listen.clone(),
            (None, Some(_)) => next.tls = None,
            (Some(_), None) => next.tls = running.tls.clone(),
            (None, None) => {}
        }
    }
    pending
}

/// Re-reads the configuration file and swaps it in, or keeps the old one.
pub async fn reload(shared: &Shared) {
    let path = shared.conf_path().to_owned();
    let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
    let mut next = match loaded {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::error!("reload refused, keeping the running configuration: {e}");
            metrics::reload(false);
            shared.set_reload_status(ReloadStatus::record(false, Some(e.to_string()), Vec::new()));
            return;
        }
        Err(e) => {
            tracing::error!("reload failed: {e}");
            metrics::reload(false);
            shared.set_reload_status(ReloadStatus::record(false, Some(e.to_string()), Vec::new()));
            return;
        }
    };
    let pending = keep_restart_only(&shared.snapshot().config, &mut next);
    if !pending.is_empty() {
        tracing::warn!(keys = ?pending, "reload: these keys need a restart or binary upgrade; running values kept");
    }
    shared.apply(next);
    metrics::reload(true);
    shared.set_reload_status(ReloadStatus::record(true, None, pending));
    tracing::info!(file = %shared.conf_path().display(), "configuration reloaded");
}

/// The pid file: written at start in the foreground (Pingora writes it when
/// daemonising), removed at exit only while it still names this process (after
/// a binary upgrade it names the new one).
#[derive(Debug, Clone)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// The pid file at `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
        }
    }

    /// Writes this process's pid (atomically: temp file, then rename).
    pub fn write(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Removes the file if it names this process.
    pub fn remove(&self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_reported_and_kept() {
        let base = r#"
upstreams:
  app: { servers: ["127.0.0.1:5000"] }
routes:
  - { name: a, match: { path_prefix: / }, upstream: app }
"#;
        let running = config::from_yaml_str(base).unwrap();
        let changed = format!(
            "{base}\nthreads: 7\naccess_log: {{ path: /tmp/x.log }}\ncache: {{ max_size: 100MiB }}\nclient: {{ max_headers: 7 }}"
        );
        let mut next = config::from_yaml_str(&changed).unwrap();
        let pending = keep_restart_only(&running, &mut next);
        assert_eq!(pending, ["threads", "cache.max_size", "access_log.path"]);
        assert_eq!(next.threads, running.threads);
        assert_eq!(next.access_log.target, running.access_log.target);
        assert_eq!(next.cache.max_size, running.cache.max_size);
        assert_eq!(next.client.max_headers, 7, "a reloadable key applies");
    }
}
