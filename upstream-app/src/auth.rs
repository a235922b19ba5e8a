//! Accounts and sessions: register, login, me, logout.
//!
//! Passwords are hashed with argon2id on blocking threads behind a semaphore,
//! so a login storm cannot stall other endpoints. Tokens are 256-bit random,
//! stored in Redis only as their SHA-256 with a TTL, and never logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore};

use crate::config::RawAuth;
use crate::error::{AppError, AppJson};
use crate::AppState;

/// Redis key of a user (by lowercase username).
pub fn user_key(username: &str) -> String {
    format!("app:user:{}", username.to_ascii_lowercase())
}

fn email_key(email: &str) -> String {
    format!("app:email:{}", email.to_ascii_lowercase())
}

fn session_key(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("app:session:{}", hex(&digest))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now as RFC 3339 (seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Password hashing off the async workers, bounded.
pub struct Hasher {
    argon: Argon2<'static>,
    permits: Semaphore,
    wait: Duration,
    /// A hash to verify against for unknown users, so that they take as long.
    dummy: OnceCell<String>,
}

impl Hasher {
    /// From `auth:` settings (already validated).
    pub fn new(cfg: &RawAuth) -> Arc<Hasher> {
        let params = Params::new(cfg.argon2_memory_kib, cfg.argon2_iterations, 1, None)
            .expect("validated argon2 parameters");
        Arc::new(Hasher {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            permits: Semaphore::new(cfg.hash_concurrency),
            wait: cfg.hash_wait,
            dummy: OnceCell::new(),
        })
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let _permit = tokio::time::timeout(self.wait, self.permits.acquire())
            .await
            .map_err(|_| AppError::Busy("password hashing is busy, retry shortly"))?
            .map_err(|_| AppError::Internal)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me.argon))
            .await
            .map_err(|_| AppError::Internal)
    }

    /// A PHC-format argon2id hash of `password`.
    pub async fn hash(self: &Arc<Self>, password: String) -> Result<String, AppError> {
        self.blocking(move |argon| {
            let mut salt = [0u8; 16];
            getrandom::fill(&mut salt).map_err(|_| AppError::Internal)?;
            let salt = SaltString::encode_b64(&salt).map_err(|_| AppError::Internal)?;
            argon
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|_| AppError::Internal)
        })
        .await?
    }

    /// Whether `password` matches `phc`; with `None`, checks a dummy hash
    /// (always false) so that unknown users cost the same time.
    pub async fn verify(
        self: &Arc<Self>,
        password: String,
        phc: Option<String>,
    ) -> Result<bool, AppError> {
        let known = phc.is_some();
        let phc = match phc {
            Some(p) => p,
            None => self
                .dummy
                .get_or_try_init(|| self.hash("not a real password".into()))
                .await?
                .clone(),
        };
        let ok = self
            .blocking(move |argon| {
                PasswordHash::new(&phc)
                    .map(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
                    .unwrap_or(false)
            })
            .await?;
        Ok(ok && known)
    }
}

/// `POST /auth/register` body.
#[derive(Deserialize)]
pub struct Register {
    username: String,
    email: String,
    password: String,
}

fn validate_register(r: &Register) -> Result<(), AppError> {
    let mut fields = BTreeMap::new();
    let u = &r.username;
    if !(3..=32).contains(&u.len())
        || !u
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        fields.insert(
            "username",
            "3 to 32 letters, digits, '_', '.' or '-'".into(),
        );
    }
    let e = &r.email;
    let valid_email = e.len() <= 254
        && !e.contains(char::is_whitespace)
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty()
                && d.contains('.')
                && !d.starts_with('.')
                && !d.ends_with('.')
                && !d.contains('@')
        });
    if !valid_email {
        fields.insert("email", "a valid email address".into());
    }
    let n = r.password.chars().count();
    if !(8..=128).contains(&n) {
        fields.insert("password", "8 to 128 characters".into());
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(AppError::Invalid(fields))
    }
}

const CLAIM: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
redis.call('HSET', KEYS[1], 'username', ARGV[1], 'email', ARGV[2], 'password', ARGV[3], 'created_at', ARGV[4])
redis.call('SET', KEYS[2], ARGV[1])
return 0
"#;

/// `POST /auth/register` → 201, 409 or 422.
pub async fn register(
    State(st): State<AppState>,
    AppJson(r): AppJson<Register>,
) -> Result<Response, AppError> {
    validate_register(&r)?;
    let (uk, ek) = (user_key(&r.username), email_key(&r.email));
    // The two uniqueness lookups run concurrently, before any costly hashing.
    let (name_taken, email_taken) = tokio::try_join!(
        st.db.run(|mut c| {
            let k = uk.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg(k)
                    .query_async::<bool>(&mut c.conn)
                    .await
            }
        }),
        st.db.run(|mut c| {
            let k = ek.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg(k)
                    .query_async::<bool>(&mut c.conn)
                    .await
            }
        }),
    )?;
    if name_taken {
        return Err(AppError::Conflict("username is taken".into()));
    }
    if email_taken {
        return Err(AppError::Conflict("email is taken".into()));
    }
    let hash = st.hasher.hash(r.password.clone()).await?;
    let created_at = now_rfc3339();
    // The claim itself is atomic: of two racing registrations, one wins.
    let outcome: i64 = st
        .db
        .run(|mut c| {
            let (uk, ek, u, e, h, t) = (
                uk.clone(),
                ek.clone(),
                r.username.clone(),
                r.email.clone(),
                hash,
                created_at.clone(),
            );
            async move {
                redis::Script::new(CLAIM)
                    .key(uk)
                    .key(ek)
                    .arg(u)
                    .arg(e)
                    .arg(h)
                    .arg(t)
                    .invoke_async(&mut c.conn)
                    .await
            }
        })
        .await?;
    match outcome {
        0 => Ok((
            StatusCode::CREATED,
            [(header::CACHE_CONTROL, "no-store")],
            Json(serde_json::json!({ "username": r.username, "email": r.email, "created_at": created_at })),
        )
            .into_response()),
        1 => Err(AppError::Conflict("username is taken".into())),
        _ => Err(AppError::Conflict("email is taken".into())),
    }
}

/// `POST /auth/login` body.
#[derive(Deserialize)]
pub struct Login {
    username: String,
    password: String,
}

/// `POST /auth/login` → 200 `{token, expires_in}` or 401 (same for unknown user and wrong password).
pub async fn login(
    State(st): State<AppState>,
    AppJson(l): AppJson<Login>,
) -> Result<Response, AppError> {
    let uk = user_key(&l.username);
    let phc: Option<String> = st
        .db
        .run(|mut c| async move {
            redis::cmd("HGET")
                .arg(uk)
                .arg("password")
                .query_async(&mut c.conn)
                .await
        })
        .await?;
    if !st.hasher.verify(l.password, phc).await? {
        return Err(AppError::Unauthorized("invalid username or password"));
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|_| AppError::Internal)?;
    let token = hex(&raw);
    let ttl = st.config.auth.token_ttl.as_secs().max(1);
    let (sk, user) = (session_key(&token), l.username.to_ascii_lowercase());
    st.db
        .run(|mut c| async move {
            redis::cmd("SET")
                .arg(sk)
                .arg(user)
                .arg("EX")
                .arg(ttl)
                .query_async::<()>(&mut c.conn)
                .await
        })
        .await?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "token": token, "expires_in": ttl })),
    )
        .into_response())
}

/// The authenticated user of a request (`Authorization: Bearer <token>`).
pub struct AuthUser {
    /// Lowercase username.
    pub username: String,
    token: String,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(AppError::Unauthorized("missing or malformed bearer token"))?
            .to_owned();
        let sk = session_key(&token);
        let user: Option<String> = st
            .db
            .run(|mut c| async move { redis::cmd("GET").arg(sk).query_async(&mut c.conn).await })
            .await?;
        let username = user.ok_or(AppError::Unauthorized("invalid or expired token"))?;
        Ok(AuthUser { username, token })
    }
}

/// `GET /auth/me`
pub async fn me(State(st): State<AppState>, user: AuthUser) -> Result<Response, AppError> {
    let uk = user_key(&user.username);
    let fields: Vec<Option<String>> = st
        .db
        .run(|mut c| async move {
            redis::cmd("HMGET")
                .arg(uk)
                .arg("username")
                .arg("email")
                .arg("created_at")
                .query_async(&mut c.conn)
                .await
        })
        .await?;
    let [Some(username), Some(email), Some(created_at)] =
        <[Option<String>; 3]>::try_from(fields).map_err(|_| AppError::Internal)?
    else {
        return Err(AppError::Unauthorized("invalid or expired token"));
    };
    Ok((
        [(header::CACHE_CONTROL, "private, no-store")],
        Json(serde_json::json!({ "username": username, "email": email, "created_at": created_at })),
    )
        .into_response())
}

/// `POST /auth/logout` → 204; the token stops working at once.
pub async fn logout(State(st): State<AppState>, user: AuthUser) -> Result<StatusCode, AppError> {
    let sk = session_key(&user.token);
    st.db
        .run(|mut c| async move {
            redis::cmd("DEL")
                .arg(sk)
                .query_async::<()>(&mut c.conn)
                .await
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
