//! The simulated users of the upstream-app contract, as goose scenarios:
//!
//! - **browsers** list items, open one, and come back to it with
//!   `If-None-Match` (a 304 is a success);
//! - **members** register once and log in (on start), then `GET /auth/me`,
//!   create an item and update their own item;
//! - **exporters** register and log in, then `POST /items/export` and poll
//!   `GET /jobs/{id}` until the job is done (at most 20 polls, 0.5 s apart).
//!
//! Every request goes through [`send`], which records a [`Sample`] and tells
//! goose that only transport failures, 5xx and 429 are failures (goose counts
//! every non-2xx as one by default). A member or exporter whose token stops
//! working (Redis lost its data) registers again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use goose::prelude::*;
use rand::Rng;
use serde_json::{json, Value};

use crate::record::{self, Sample};

/// How many of each kind of user, and how long each waits between actions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// Relative weights of browsers, members and exporters.
    pub weights: [usize; 3],
    /// Think time between actions (min, max); (0, 0) is throughput mode.
    pub think: (Duration, Duration),
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: [7, 2, 1],
            think: (Duration::from_secs(1), Duration::from_secs(3)),
        }
    }
}

impl Mix {
    /// Parses `WEIGHTS` (`7,2,1`: browsers, members, exporters) and `THINK`
    /// (`1-3` seconds, `0.5-1`, or `0` for throughput mode).
    pub fn parse(weights: Option<&str>, think: Option<&str>) -> Result<Mix, String> {
        let mut mix = Mix::default();
        if let Some(w) = weights {
            let v: Vec<usize> = w
                .split(',')
                .map(|x| x.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("WEIGHTS={w}: expected three integers like 7,2,1"))?;
            mix.weights = <[usize; 3]>::try_from(v)
                .map_err(|_| format!("WEIGHTS={w}: expected three integers like 7,2,1"))?;
            if mix.weights.iter().all(|&x| x == 0) {
                return Err(format!("WEIGHTS={w}: at least one weight must be > 0"));
            }
        }
        if let Some(t) = think {
            let secs = |x: &str| {
                x.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 600.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("THINK={t}: expected seconds like 1-3 or 0"))
            };
            mix.think = match t.split_once('-') {
                Some((a, b)) => (secs(a)?, secs(b)?),
                None => (secs(t)?, secs(t)?),
            };
            if mix.think.0 > mix.think.1 {
                return Err(format!("THINK={t}: the minimum is above the maximum"));
            }
        }
        Ok(mix)
    }
}

/// The goose scenarios for `mix` (those with weight 0 left out).
pub fn scenarios(mix: &Mix) -> Result<Vec<Scenario>, GooseError> {
    let wait = |s: Scenario| -> Result<Scenario, GooseError> {
        if mix.think.1.is_zero() {
            Ok(s)
        } else {
            s.set_wait_time(mix.think.0, mix.think.1)
        }
    };
    let mut out = Vec::new();
    if mix.weights[0] > 0 {
        out.push(wait(
            scenario!("browser")
                .set_weight(mix.weights[0])?
                .register_transaction(transaction!(browse_list).set_name("list items"))
                .register_transaction(transaction!(browse_open).set_name("open item"))
                .register_transaction(transaction!(browse_revisit).set_name("revisit item")),
        )?);
    }
    if mix.weights[1] > 0 {
        out.push(wait(
            scenario!("member")
                .set_weight(mix.weights[1])?
                .register_transaction(transaction!(member_start).set_on_start())
                .register_transaction(transaction!(member_me).set_name("me"))
                .register_transaction(transaction!(member_create).set_name("create item"))
                .register_transaction(transaction!(member_update).set_name("update item")),
        )?);
    }
    if mix.weights[2] > 0 {
        out.push(wait(
            scenario!("exporter")
                .set_weight(mix.weights[2])?
                .register_transaction(transaction!(exporter_start).set_on_start())
                .register_transaction(transaction!(exporter_export).set_name("export")),
        )?);
    }
    Ok(out)
}

/// Items the test-start transaction makes sure exist, so browsers have
/// something to read from the first second.
pub const SEED_ITEMS: usize = 20;

/// The answer to one request, body read.
pub struct Answer {
    /// Status; 0 for a transport failure.
    pub status: u16,
    /// `ETag`, if any.
    pub etag: Option<String>,
    /// Body parsed as JSON (`Null` when it is not JSON).
    pub json: Value,
}

/// Sends one request named `name` for goose's report, records it, and marks
/// it a goose failure only when it is an error in the sense of
/// [`record::is_error`].
pub async fn send(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Answer, Box<TransactionError>> {
    let start_ms = record::now_ms();
    let started = Instant::now();
    let mut rb = user.get_request_builder(&method, path)?;
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let req = GooseRequest::builder()
        .set_request_builder(rb)
        .name(name)
        .build();
    let mut goose = user.request(req).await?;
    let mut answer = Answer {
        status: 0,
        etag: None,
        json: Value::Null,
    };
    let mut stale = false;
    if let Ok(resp) = goose.response {
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        stale = header("x-cache").is_some_and(|v| v.eq_ignore_ascii_case("stale"));
        answer.etag = header("etag");
        // A body cut short is a transport failure too.
        if let Ok(bytes) = resp.bytes().await {
            answer.status = status;
            answer.json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        }
    }
    record::record(Sample {
        start_ms,
        latency_ms: started.elapsed().as_secs_f32() * 1000.0,
        status: answer.status,
        stale,
    });
    if record::is_error(answer.status) {
        if goose.request.success {
            user.set_failure(
                "transport failure or overload",
                &mut goose.request,
                None,
                None,
            )?;
        }
    } else if !goose.request.success {
        user.set_success(&mut goose.request)?;
    }
    Ok(answer)
}

// ---------------------------------------------------------------- browsers

#[derive(Clone, Default)]
struct Browser {
    ids: Vec<u64>,
    /// (id, etag) of items opened, the latest last; at most 20.
    seen: Vec<(u64, String)>,
}

fn session<T: Default + Clone + Send + Sync + 'static>(user: &mut GooseUser) -> &mut T {
    if user.get_session_data::<T>().is_none() {
        user.set_session_data(T::default());
    }
    user.get_session_data_unchecked_mut::<T>()
}

fn ids_of(list: &Value) -> Vec<u64> {
    list["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["id"].as_u64()).collect())
        .unwrap_or_default()
}

async fn browse_list(user: &mut GooseUser) -> TransactionResult {
    // Mostly the first page (the one everybody sees), sometimes the next one.
    let path = match session::<Browser>(user).ids.last() {
        Some(last) if rand::rng().random_bool(0.3) => format!("/items?limit=20&cursor={last}"),
        _ => "/items?limit=20".to_owned(),
    };
    let a = send(user, GooseMethod::Get, &path, "GET /items", &[], None).await?;
    let ids = ids_of(&a.json);
    if !ids.is_empty() {
        session::<Browser>(user).ids = ids;
    }
    Ok(())
}

async fn browse_open(user: &mut GooseUser) -> TransactionResult {
    let ids = session::<Browser>(user).ids.clone();
    let id = if ids.is_empty() {
        1
    } else {
        ids[rand::rng().random_range(0..ids.len())]
    };
    let a = send(
        user,
        GooseMethod::Get,
        &format!("/items/{id}"),
        "GET /items/{id}",
        &[],
        None,
    )
    .await?;
    if let (200, Some(etag)) = (a.status, a.etag) {
        let b = session::<Browser>(user);
        b.seen.retain(|(i, _)| *i != id);
        b.seen.push((id, etag));
        if b.seen.len() > 20 {
            b.seen.remove(0);
        }
    }
    Ok(())
}

async fn browse_revisit(user: &mut GooseUser) -> TransactionResult {
    let Some((id, etag)) = session::<Browser>(user).seen.last().cloned() else {
        return Ok(());
    };
    send(
        user,
        GooseMethod::Get,
        &format!("/items/{id}"),
        "GET /items/{id} If-None-Match",
        &[("if-none-match", &etag)],
        None,
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- members

#[derive(Clone, Default)]
struct Member {
    token: Option<String>,
    item: Option<u64>,
}

static NEXT_USER: AtomicU64 = AtomicU64::new(0);

/// A username unique across runs against the same deployment: `lt` + a
/// per-process nonce + a counter.
fn fresh_name() -> String {
    static NONCE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let nonce = NONCE.get_or_init(|| rand::rng().random());
    format!(
        "lt{nonce:08x}u{}",
        NEXT_USER.fetch_add(1, Ordering::Relaxed)
    )
}

const PASSWORD: &str = "load-test-password";

/// Registers a new account and logs in; the token, or `None` when either failed.
async fn register_and_login(user: &mut GooseUser) -> Result<Option<String>, Box<TransactionError>> {
    let name = fresh_name();
    let reg =
        json!({ "username": name, "email": format!("{name}@example.com"), "password": PASSWORD });
    let a = send(
        user,
        GooseMethod::Post,
        "/auth/register",
        "POST /auth/register",
        &[],
        Some(&reg),
    )
    .await?;
    if a.status != 201 {
        return Ok(None);
    }
    let login = json!({ "username": name, "password": PASSWORD });
    let a = send(
        user,
        GooseMethod::Post,
        "/auth/login",
        "POST /auth/login",
        &[],
        Some(&login),
    )
    .await?;
    Ok(a.json["token"].as_str().map(str::to_owned))
}

async fn member_token(user: &mut GooseUser) -> Result<Option<String>, Box<TransactionError>> {
    if let Some(t) = session::<Member>(user).token.clone() {
        return Ok(Some(t));
    }
    let t = register_and_login(user).await?;
    let m = session::<Member>(user);
    m.token = t.clone();
    m.item = None;
    Ok(t)
}

/// Forgets the token after a 401, so that the next action registers again.
fn check_auth(user: &mut GooseUser, status: u16) {
    if status == 401 {
        session::<Member>(user).token = None;
    }
}

async fn member_start(user: &mut GooseUser) -> TransactionResult {
    member_token(user).await?;
    Ok(())
}

async fn member_me(user: &mut GooseUser) -> TransactionResult {
    let Some(token) = member_token(user).await? else {
        return Ok(());
    };
    let auth = format!("Bearer {token}");
    let a = send(
        user,
        GooseMethod::Get,
        "/auth/me",
        "GET /auth/me",
        &[("authorization", &auth)],
        None,
    )
    .await?;
    check_auth(user, a.status);
    Ok(())
}

async fn member_create(user: &mut GooseUser) -> TransactionResult {
    let Some(token) = member_token(user).await? else {
        return Ok(());
    };
    let auth = format!("Bearer {token}");
    let n: u32 = rand::rng().random();
    let body =
        json!({ "name": format!("item {n:08x}"), "description": "made by a load-test member" });
    let a = send(
        user,
        GooseMethod::Post,
        "/items",
        "POST /items",
        &[("authorization", &auth)],
        Some(&body),
    )
    .await?;
    check_auth(user, a.status);
    if a.status == 201 {
        session::<Member>(user).item = a.json["id"].as_u64();
    }
    Ok(())
}

async fn member_update(user: &mut GooseUser) -> TransactionResult {
    let Some(token) = member_token(user).await? else {
        return Ok(());
    };
    let Some(id) = session::<Member>(user).item else {
        return Ok(());
    };
    let auth = format!("Bearer {token}");
    let n: u32 = rand::rng().random();
    let body =
        json!({ "name": format!("item {n:08x}"), "description": "updated by a load-test member" });
    let a = send(
        user,
        GooseMethod::Put,
        &format!("/items/{id}"),
        "PUT /items/{id}",
        &[("authorization", &auth)],
        Some(&body),
    )
    .await?;
    check_auth(user, a.status);
    if a.status == 404 {
        session::<Member>(user).item = None;
    }
    Ok(())
}

// ---------------------------------------------------------------- exporters

async fn exporter_start(user: &mut GooseUser) -> TransactionResult {
    member_token(user).await?;
    Ok(())
}

/// Polls of one job at most, and the pause between them.
const POLLS: usize = 20;
const POLL_EVERY: Duration = Duration::from_millis(500);

async fn exporter_export(user: &mut GooseUser) -> TransactionResult {
    let Some(token) = member_token(user).await? else {
        return Ok(());
    };
    let auth = format!("Bearer {token}");
    let a = send(
        user,
        GooseMethod::Post,
        "/items/export",
        "POST /items/export",
        &[("authorization", &auth)],
        None,
    )
    .await?;
    check_auth(user, a.status);
    let Some(job) = a.json["job_id"].as_str().map(str::to_owned) else {
        return Ok(());
    };
    for _ in 0..POLLS {
        tokio::time::sleep(POLL_EVERY).await;
        let a = send(
            user,
            GooseMethod::Get,
            &format!("/jobs/{job}"),
            "GET /jobs/{id}",
            &[("authorization", &auth)],
            None,
        )
        .await?;
        check_auth(user, a.status);
        let status = a.json["status"].as_str().unwrap_or("");
        if a.status != 200 || status == "done" || status == "failed" {
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- test start

/// Runs once before the users start: makes sure at least [`SEED_ITEMS`]
/// items exist (registering a seeding account when it has to create them).
pub async fn seed(user: &mut GooseUser) -> TransactionResult {
    let a = send(
        user,
        GooseMethod::Get,
        &format!("/items?limit={SEED_ITEMS}"),
        "seed: GET /items",
        &[],
        None,
    )
    .await?;
    let have = ids_of(&a.json).len();
    if have >= SEED_ITEMS {
        return Ok(());
    }
    let Some(token) = register_and_login(user).await? else {
        return Ok(());
    };
    let auth = format!("Bearer {token}");
    for i in have..SEED_ITEMS {
        let body = json!({ "name": format!("seed item {i}"), "description": "made before the users start" });
        send(
            user,
            GooseMethod::Post,
            "/items",
            "seed: POST /items",
            &[("authorization", &auth)],
            Some(&body),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_defaults_and_parsing() {
        let d = Mix::parse(None, None).unwrap();
        assert_eq!(d.weights, [7, 2, 1]);
        assert_eq!(d.think, (Duration::from_secs(1), Duration::from_secs(3)));
        let m = Mix::parse(Some("1, 0 ,0"), Some("0")).unwrap();
        assert_eq!(m.weights, [1, 0, 0]);
        assert_eq!(m.think, (Duration::ZERO, Duration::ZERO));
        let m = Mix::parse(None, Some("0.5-1")).unwrap();
        assert_eq!(
            m.think,
            (Duration::from_millis(500), Duration::from_secs(1))
        );
        for (w, t) in [
            (Some("1,2"), None),
            (Some("a,b,c"), None),
            (Some("0,0,0"), None),
            (None, Some("3-1")),
            (None, Some("-1")),
            (None, Some("x")),
        ] {
            assert!(Mix::parse(w, t).is_err(), "{w:?} {t:?}");
        }
    }

    #[test]
    fn fresh_names_are_valid_usernames_and_unique() {
        let a = fresh_name();
        let b = fresh_name();
        assert_ne!(a, b);
        assert!((3..=32).contains(&a.len()));
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
