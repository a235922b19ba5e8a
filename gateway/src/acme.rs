//! Certificates without a human: ACME (RFC 8555) with http-01 challenges.
//!
//! [`AcmeService`] runs in the background. At start and every [`TICK`] it
//! looks at the certificate for `tls.acme.domains`: loaded from `storage` when
//! one is there (a restart orders nothing), ordered from the ACME server when
//! none is, or when less than `renew_before` of it is left. The http-01
//! challenges are answered by the proxy from [`Challenges`] before routing
//! (`/.well-known/acme-challenge/<token>`, never cached, never redirected). A
//! new certificate is written to `storage` and put in [`Shared`], where the
//! TLS listeners' certificate resolver finds it at the next handshake: no
//! restart, no dropped connection.
//!
//! A failure is logged with its [`Cause`], counted in
//! `gateway_acme_renewals_total{result}`, and retried with exponential backoff;
//! the certificate in use keeps serving. Several gateways sharing `storage`
//! renew one at a time: the one holding `storage/lock` orders, the others pick
//! the new files up from disk.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::Acme;
use crate::metrics;
use crate::state::Shared;

/// The path prefix of http-01 challenges (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// How often the service looks at its certificate (and at `storage`, where
/// another gateway may have put a newer one).
const TICK: Duration = Duration::from_secs(1);
/// After a successful order, the next one is not tried before this, even when
/// `renew_before` is longer than the certificate's lifetime.
const AFTER_SUCCESS: Duration = Duration::from_secs(12 * 3600);
/// The first retry after a failure; doubled per failure up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);
/// One whole order (account, challenges, finalisation, download), at most.
const ORDER_DEADLINE: Duration = Duration::from_secs(120);

/// Tokens of the http-01 challenges in progress and their key authorizations.
#[derive(Default)]
pub struct Challenges {
    tokens: RwLock<HashMap<String, String>>,
}

impl Challenges {
    /// The key authorization to answer for `path`, if it is a challenge in progress.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PREFIX)?;
        self.tokens.read().ok()?.get(token).cloned()
    }

    fn insert(&self, token: &str, key_authorization: &str) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token.to_owned(), key_authorization.to_owned());
        }
    }

    fn clear(&self) {
        if let Ok(mut t) = self.tokens.write() {
            t.clear();
        }
    }
}

/// A certificate chain and its key, as PEM, with what was read from it.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The chain, leaf first.
    pub chain_pem: String,
    /// The private key.
    pub key_pem: String,
    /// The DNS names of the leaf.
    pub names: Vec<String>,
    /// The end of the leaf's validity.
    pub not_after: SystemTime,
    /// The leaf's serial number, hex.
    pub serial: String,
}

impl Issued {
    /// Reads the leaf of `chain_pem`.
    pub fn parse(chain_pem: String, key_pem: String) -> Result<Self, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let leaf = rustls_pki_types::CertificateDer::from(pem.contents.as_slice());
        let names = crate::certs::names_of(&leaf)?;
        let secs = cert.validity().not_after.timestamp();
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        Ok(Self {
            chain_pem,
            key_pem,
            names,
            not_after,
            serial: cert.raw_serial_as_string(),
        })
    }

    /// Whether the certificate names every one of `domains`.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains
            .iter()
            .all(|d| self.names.iter().any(|n| n.eq_ignore_ascii_case(d)))
    }

    /// Time left before it expires (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or_default()
    }
}

/// Why an order failed, as counted in `gateway_acme_renewals_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The ACME server could not be reached or answered garbage.
    Unreachable,
    /// The account or the names hit a rate limit (`rateLimited`).
    RateLimited,
    /// A challenge failed: the name does not resolve to this instance, or its
    /// plain listener is not reachable on port 80 from the ACME server.
    Validation,
    /// `storage` cannot be written (or read).
    Storage,
    /// Anything else the server refused.
    Refused,
}

impl Cause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::Unreachable => "unreachable",
            Cause::RateLimited => "rate_limited",
            Cause::Validation => "validation",
            Cause::Storage => "storage",
            Cause::Refused => "refused",
        }
    }
}

/// An order that failed, with its cause and the details to log.
#[derive(Debug)]
pub struct Failure {
    /// What kind of failure.
    pub cause: Cause,
    /// What happened, for the log.
    pub detail: String,
}

impl Failure {
    fn new(cause: Cause, detail: impl Into<String>) -> Self {
        Self {
            cause,
            detail: detail.into(),
        }
    }

    fn storage(what: &str, path: &Path, e: std::io::Error) -> Self {
        Self::new(Cause::Storage, format!("{what} {}: {e}", path.display()))
    }
}

impl From<instant_acme::Error> for Failure {
    fn from(e: instant_acme::Error) -> Self {
        let cause = match &e {
            instant_acme::Error::Api(p) => classify(p.r#type.as_deref()),
            instant_acme::Error::Http(_)
            | instant_acme::Error::Hyper(_)
            | instant_acme::Error::Json(_)
            | instant_acme::Error::Other(_)
            | instant_acme::Error::Timeout(_) => Cause::Unreachable,
            _ => Cause::Refused,
        };
        Self::new(cause, e.to_string())
    }
}

/// The cause of an ACME problem document's type (RFC 8555 §6.7).
fn classify(problem: Option<&str>) -> Cause {
    let kind = problem
        .and_then(|t| t.strip_prefix("urn:ietf:params:acme:error:"))
        .unwrap_or("");
    match kind {
        "rateLimited" => Cause::RateLimited,
        "connection" | "dns" | "unauthorized" | "incorrectResponse" | "caa" | "tls" => {
            Cause::Validation
        }
        _ => Cause::Refused,
    }
}

/// The files of one `storage` directory.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The storage at `dir` (created 0700 on first write).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn ensure_dir(&self) -> Result<(), Failure> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Failure::storage("cannot create", &self.dir, e))
    }

    /// The account file for `directory` (one account per ACME server).
    fn account_path(&self, directory: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(directory.as_bytes());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("account-{hex}.json"))
    }

    fn cert_paths(&self, domains: &[String]) -> (PathBuf, PathBuf) {
        let first = domains.first().map_or("certificate", String::as_str);
        (
            self.dir.join(format!("{first}.crt")),
            self.dir.join(format!("{first}.key")),
        )
    }

    /// The stored certificate for `domains`, if there is one that names them all.
    pub fn load(&self, domains: &[String]) -> Option<Issued> {
        let (crt, key) = self.cert_paths(domains);
        let chain = fs::read_to_string(&crt).ok()?;
        let key_pem = fs::read_to_string(&key).ok()?;
        match Issued::parse(chain, key_pem) {
            Ok(c) if c.covers(domains) => Some(c),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(file = %crt.display(), error = %e, "stored ACME certificate unreadable; ordering a new one");
                None
            }
        }
    }

    /// When the stored certificate was last written, to notice another
    /// gateway's renewal.
    fn stamp(&self, domains: &[String]) -> Option<SystemTime> {
        fs::metadata(self.cert_paths(domains).0)
            .and_then(|m| m.modified())
            .ok()
    }

    fn save(&self, domains: &[String], cert: &Issued) -> Result<(), Failure> {
        self.ensure_dir()?;
        let (crt, key) = self.cert_paths(domains);
        // The key first: a reader that finds the new chain finds its key.
        write_private(&key, cert.key_pem.as_bytes())?;
        write_private(&crt, cert.chain_pem.as_bytes())
    }

    fn load_account(&self, directory: &str) -> Option<AccountCredentials> {
        let text = fs::read_to_string(self.account_path(directory)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save_account(&self, directory: &str, creds: &AccountCredentials) -> Result<(), Failure> {
        self.ensure_dir()?;
        let json = serde_json::to_vec_pretty(creds)
            .map_err(|e| Failure::new(Cause::Storage, e.to_string()))?;
        write_private(&self.account_path(directory), &json)
    }

    /// Takes `storage/lock` if no other process holds it.
    fn try_lock(&self) -> Result<Option<File>, Failure> {
        self.ensure_dir()?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Failure::storage("cannot open", &path, e))?;
        // SAFETY: flock on a descriptor we own; released when `file` drops.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((rc == 0).then_some(file))
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| Failure::storage("cannot write", path, e))
}

/// Orders a certificate for `settings.domains`, answering its http-01
/// challenges through `challenges`.
pub async fn order(
    settings: &Acme,
    store: &Store,
    challenges: &Challenges,
) -> Result<Issued, Failure> {
    let result = tokio::time::timeout(ORDER_DEADLINE, order_inner(settings, store, challenges))
        .await
        .unwrap_or_else(|_| {
            Err(Failure::new(
                Cause::Unreachable,
                format!("no certificate within {ORDER_DEADLINE:?}"),
            ))
        });
    challenges.clear();
    result
}

async fn order_inner(
    settings: &Acme,
    store: &Store,
    challenges: &Challenges,
) -> Result<Issued, Failure> {
    let account = account(settings, store).await?;
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
            Failure::new(Cause::Refused, format!("no http-01 challenge for {name}"))
        })?;
        let key_authorization = challenge.key_authorization();
        challenges.insert(&challenge.token, key_authorization.as_str());
        challenge.set_ready().await?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(challenge_failure(&mut order).await);
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    Issued::parse(chain_pem, key_pem).map_err(|e| Failure::new(Cause::Refused, e))
}

/// The account for `settings.directory`: the stored one, or a new one (stored).
async fn account(settings: &Acme, store: &Store) -> Result<Account, Failure> {
    let builder = || match &settings.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    if let Some(creds) = store.load_account(&settings.directory) {
        return Ok(builder()?.from_credentials(creds).await?);
    }
    let contact = format!("mailto:{}", settings.email);
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            settings.directory.clone(),
            None,
        )
        .await?;
    store.save_account(&settings.directory, &creds)?;
    tracing::info!(directory = %settings.directory, "ACME account created");
    Ok(account)
}

/// Why an order did not become ready: the first failed challenge's problem.
async fn challenge_failure(order: &mut instant_acme::Order) -> Failure {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        for c in &state.challenges {
            if let Some(p) = &c.error {
                return Failure::new(
                    classify(p.r#type.as_deref()),
                    format!("challenge for {name} failed: {p}"),
                );
            }
        }
    }
    Failure::new(Cause::Validation, "the order did not become ready")
}

/// Background service that keeps the ACME certificate current.
pub struct AcmeService {
    shared: Arc<Shared>,
    challenges: Arc<Challenges>,
}

impl AcmeService {
    /// A service answering through `challenges` and serving what it obtains
    /// through `shared` (the TLS listeners' certificate resolver reads it).
    pub fn new(shared: Arc<Shared>, challenges: Arc<Challenges>) -> Self {
        Self { shared, challenges }
    }
}

/// What the service knows between ticks.
#[derive(Default)]
struct Progress {
    /// The settings the rest was computed for (a reload that changes them
    /// starts over).
    settings: Option<Acme>,
    current: Option<Issued>,
    /// Modification time of the stored file last loaded.
    stamp: Option<SystemTime>,
    not_before: Option<Instant>,
    failures: u32,
}

impl Progress {
    fn backoff(&mut self, now: Instant) {
        self.failures += 1;
        let factor = 1u32 << (self.failures - 1).min(16);
        self.not_before = Some(now + (BACKOFF_FIRST * factor).min(BACKOFF_MAX));
    }
}

#[async_trait]
impl BackgroundService for AcmeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut progress = Progress::default();
        loop {
            let snap = self.shared.snapshot();
            if let Some(settings) = snap.config.tls.as_ref().and_then(|t| t.acme.as_ref()) {
                tokio::select! {
                    _ = self.tick(settings, &mut progress) => {}
                    _ = shutdown.changed() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl AcmeService {
    async fn tick(&self, settings: &Acme, p: &mut Progress) {
        if p.settings.as_ref() != Some(settings) {
            *p = Progress {
                settings: Some(settings.clone()),
                ..Progress::default()
            };
        }
        let store = Store::new(&settings.storage);
        // A certificate on disk that is not the one in use: a restart, or
        // another gateway's renewal.
        let stamp = store.stamp(&settings.domains);
        if stamp.is_some() && stamp != p.stamp {
            p.stamp = stamp;
            if let Some(stored) = store.load(&settings.domains) {
                self.adopt(stored, p, "loaded from storage");
            }
        }
        let now = SystemTime::now();
        let due = p
            .current
            .as_ref()
            .is_none_or(|c| c.remaining(now) < settings.renew_before);
        if let Some(c) = &p.current {
            metrics::tls_certificate_expiry(&c.names, c.remaining(now));
        }
        if !due || p.not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let _lock = match store.try_lock() {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                // Another gateway is ordering; its files will show up.
                p.not_before = Some(Instant::now() + BACKOFF_FIRST);
                return;
            }
            Err(f) => return self.failed(settings, f, p),
        };
        tracing::info!(domains = ?settings.domains, directory = %settings.directory, "ordering a certificate");
        match order(settings, &store, &self.challenges).await {
            Ok(cert) => {
                if let Err(f) = store.save(&settings.domains, &cert) {
                    // Serve it anyway; the next start orders again.
                    self.failed(settings, f, p);
                } else {
                    p.stamp = store.stamp(&settings.domains);
                    metrics::acme_renewal("ok");
                }
                p.failures = 0;
                p.not_before = Some(Instant::now() + AFTER_SUCCESS);
                self.adopt(cert, p, "obtained");
            }
            Err(f) => self.failed(settings, f, p),
        }
    }

    fn adopt(&self, cert: Issued, p: &mut Progress, how: &str) {
        let label = format!(
            "tls.acme ({})",
            p.settings
                .as_ref()
                .map_or("", |s| s.storage.to_str().unwrap_or(""))
        );
        let pair = crate::certs::PemPair {
            cert_path: &label,
            cert_pem: cert.chain_pem.as_bytes(),
            key_path: &label,
            key_pem: cert.key_pem.as_bytes(),
        };
        let installed = crate::certs::CertStore::load(&[pair])
            .map(|store| self.shared.set_acme_certificates(store))
            .map_err(|errors| {
                errors
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect::<Vec<_>>()
                    .join("; ")
            });
        match installed {
            Ok(()) => {
                metrics::tls_certificate_expiry(&cert.names, cert.remaining(SystemTime::now()));
                tracing::info!(names = ?cert.names, serial = %cert.serial, not_after = %humantime::format_rfc3339_seconds(cert.not_after), "ACME certificate {how}");
                p.current = Some(cert);
            }
            Err(e) => {
                tracing::error!(names = ?cert.names, error = %e, "ACME certificate {how} but refused by the TLS listeners");
                metrics::acme_renewal(Cause::Refused.label());
            }
        }
    }

    fn failed(&self, settings: &Acme, f: Failure, p: &mut Progress) {
        p.backoff(Instant::now());
        let retry_in = p
            .not_before
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        tracing::error!(
            domains = ?settings.domains,
            cause = f.cause.label(),
            error = %f.detail,
            retry_in = ?retry_in,
            keeps_serving = p.current.is_some(),
            "ACME order failed",
        );
        metrics::acme_renewal(f.cause.label());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_types_map_to_causes() {
        let t = |s: &str| classify(Some(&format!("urn:ietf:params:acme:error:{s}")));
        assert_eq!(t("rateLimited"), Cause::RateLimited);
        assert_eq!(t("dns"), Cause::Validation);
        assert_eq!(t("connection"), Cause::Validation);
        assert_eq!(t("unauthorized"), Cause::Validation);
        assert_eq!(t("malformed"), Cause::Refused);
        assert_eq!(classify(None), Cause::Refused);
    }

    #[test]
    fn challenges_answer_only_their_tokens() {
        let c = Challenges::default();
        c.insert("tok", "tok.thumb");
        assert_eq!(
            c.answer("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(c.answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.answer("/tok"), None);
        c.clear();
        assert_eq!(c.answer("/.well-known/acme-challenge/tok"), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut p = Progress::default();
        let now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..16 {
            p.backoff(now);
            waits.push(p.not_before.unwrap() - now);
        }
        assert_eq!(waits[0], BACKOFF_FIRST);
        assert_eq!(waits[1], BACKOFF_FIRST * 2);
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
    }

    #[test]
    fn a_stored_certificate_is_read_back_with_its_names_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("acme");
        let store = Store::new(&storage);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["a.example".into(), "b.example".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let issued = Issued::parse(cert.pem(), key.serialize_pem()).unwrap();
        let domains = vec!["a.example".to_string(), "b.example".to_string()];
        assert!(issued.covers(&domains));
        assert!(!issued.covers(&["c.example".to_string()]));
        store.save(&domains, &issued).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&storage), 0o700);
        assert_eq!(mode(&storage.join("a.example.crt")), 0o600);
        assert_eq!(mode(&storage.join("a.example.key")), 0o600);
        let back = store.load(&domains).unwrap();
        assert_eq!(back.serial, issued.serial);
        assert!(store.load(&["c.example".to_string()]).is_none());
        // One holder of the lock at a time.
        let held = store.try_lock().unwrap();
        assert!(held.is_some());
        let other = Store::new(&storage);
        let file = OpenOptions::new()
            .write(true)
            .open(storage.join("lock"))
            .unwrap();
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(rc, 0, "a second descriptor cannot take the lock");
        drop(held);
        assert!(other.try_lock().unwrap().is_some());
    }
}
