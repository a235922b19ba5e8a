//! Items owned by users: cursor-paginated list, read, create, update, delete.
//!
//! Public reads are cache-friendly: `Cache-Control: public, max-age`, a strong
//! `ETag` (a digest of the body), `Last-Modified`, `Surrogate-Key` and
//! `Vary: Authorization`, with 304 answers to conditional requests. A read that
//! carries credentials is answered `private`. Writes are atomic Lua scripts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::{hex, AuthUser};
use crate::error::{AppError, AppJson, AppPath, AppQuery};
use crate::AppState;

const INDEX: &str = "app:items";
const NEXT_ID: &str = "app:items:next_id";
const MTIME: &str = "app:items:mtime";

fn item_key(id: u64) -> String {
    format!("app:item:{id}")
}

/// An item as stored and returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    /// Unique, increasing id.
    pub id: u64,
    /// Lowercase username of the owner.
    pub owner: String,
    /// Name (1 to 200 characters).
    pub name: String,
    /// Description (up to 2000 characters).
    pub description: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Milliseconds since the epoch of the last change.
    pub updated_ms: u64,
}

impl Item {
    fn from_hash(h: HashMap<String, String>) -> Option<Item> {
        Some(Item {
            id: h.get("id")?.parse().ok()?,
            owner: h.get("owner")?.clone(),
            name: h.get("name")?.clone(),
            description: h.get("description").cloned().unwrap_or_default(),
            created_at: h.get("created_at")?.clone(),
            updated_ms: h.get("updated_ms")?.parse().ok()?,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Create/update body.
#[derive(Deserialize)]
pub struct ItemInput {
    name: String,
    #[serde(default)]
    description: String,
}

fn validate(input: &ItemInput) -> Result<(), AppError> {
    let mut fields = BTreeMap::new();
    let n = input.name.trim().chars().count();
    if n == 0 || n > 200 {
        fields.insert("name", "1 to 200 characters".into());
    }
    if input.description.chars().count() > 2000 {
        fields.insert("description", "at most 2000 characters".into());
    }
    if fields.is_empty() {
        Ok(())
    } else {
        Err(AppError::Invalid(fields))
    }
}

async fn load(st: &AppState, id: u64) -> Result<Option<Item>, AppError> {
    let key = item_key(id);
    let h: HashMap<String, String> = st
        .db
        .run(|mut c| async move {
            redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut c.conn)
                .await
        })
        .await?;
    Ok(Item::from_hash(h))
}

/// How a public read is answered: the body, or 304, with cache headers.
fn cacheable(
    st: &AppState,
    req: &HeaderMap,
    body: Vec<u8>,
    last_modified_ms: u64,
    surrogate: String,
) -> Response {
    let etag = format!("\"{}\"", &hex(&Sha256::digest(&body))[..32]);
    let last_modified = UNIX_EPOCH + Duration::from_secs(last_modified_ms / 1000);
    let cc = if req.contains_key(header::AUTHORIZATION) {
        format!("private, max-age={}", st.config.items.max_age.as_secs())
    } else {
        format!("public, max-age={}", st.config.items.max_age.as_secs())
    };
    let mut headers = HeaderMap::new();
    let mut put = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(k, v);
        }
    };
    put(header::ETAG, &etag);
    put(header::CACHE_CONTROL, &cc);
    put(header::VARY, "Authorization");
    put(
        header::LAST_MODIFIED,
        &httpdate::fmt_http_date(last_modified),
    );
    put(header::HeaderName::from_static("surrogate-key"), &surrogate);
    if not_modified(req, &etag, last_modified) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, headers, body).into_response()
}

/// RFC 9110 §13.1: `If-None-Match` (weak comparison) wins over `If-Modified-Since`.
fn not_modified(req: &HeaderMap, etag: &str, last_modified: SystemTime) -> bool {
    let inm: Vec<&str> = req
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !inm.is_empty() {
        let bare = |t: &str| t.trim_start_matches("W/").to_owned();
        return inm.iter().any(|t| *t == "*" || bare(t) == bare(etag));
    }
    req.get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| last_modified <= since)
}

/// `GET /items/{id}`
pub async fn get_one(
    State(st): State<AppState>,
    AppPath(id): AppPath<u64>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let item = load(&st, id).await?.ok_or(AppError::NotFound)?;
    let body = serde_json::to_vec(&item).map_err(|_| AppError::Internal)?;
    Ok(cacheable(
        &st,
        &headers,
        body,
        item.updated_ms,
        format!("item-{id} items"),
    ))
}

/// `GET /items` query.
#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /items?limit=&cursor=`: oldest first; `next_cursor` continues after the last item.
pub async fn list(
    State(st): State<AppState>,
    AppQuery(q): AppQuery<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let cfg = &st.config.items;
    let limit = q.limit.unwrap_or(cfg.default_limit);
    if limit == 0 || limit > cfg.max_limit {
        let mut f = BTreeMap::new();
        f.insert("limit", format!("1 to {}", cfg.max_limit));
        return Err(AppError::Invalid(f));
    }
    let after: u64 = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse().map_err(|_| {
            let mut f = BTreeMap::new();
            f.insert("cursor", "a next_cursor from a previous page".to_string());
            AppError::Invalid(f)
        })?,
    };
    let (ids, mtime): (Vec<u64>, Option<u64>) = st
        .db
        .run(|mut c| async move {
            redis::pipe()
                .cmd("ZRANGEBYSCORE")
                .arg(INDEX)
                .arg(format!("({after}"))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit + 1)
                .cmd("GET")
                .arg(MTIME)
                .query_async(&mut c.conn)
                .await
        })
        .await?;
    let more = ids.len() > limit;
    let page: Vec<u64> = ids.into_iter().take(limit).collect();
    let keys: Vec<String> = page.iter().map(|id| item_key(*id)).collect();
    let hashes: Vec<HashMap<String, String>> = if keys.is_empty() {
        Vec::new()
    } else {
        st.db
            .run(|mut c| async move {
                let mut p = redis::pipe();
                for k in keys {
                    p.cmd("HGETALL").arg(k);
                }
                p.query_async(&mut c.conn).await
            })
            .await?
    };
    let items: Vec<Item> = hashes.into_iter().filter_map(Item::from_hash).collect();
    let next_cursor = if more {
        items.last().map(|i| i.id.to_string())
    } else {
        None
    };
    let mut surrogate = String::from("items");
    for i in &items {
        surrogate.push_str(&format!(" item-{}", i.id));
    }
    let body =
        serde_json::to_vec(&serde_json::json!({ "items": items, "next_cursor": next_cursor }))
            .map_err(|_| AppError::Internal)?;
    Ok(cacheable(
        &st,
        &headers,
        body,
        mtime.unwrap_or(0),
        surrogate,
    ))
}

const CREATE: &str = r#"
local id = redis.call('INCR', KEYS[1])
local key = 'app:item:' .. id
redis.call('HSET', key, 'id', id, 'owner', ARGV[1], 'name', ARGV[2], 'description', ARGV[3], 'created_at', ARGV[4], 'updated_ms', ARGV[5])
redis.call('ZADD', KEYS[2], id, id)
redis.call('SET', KEYS[3], ARGV[5])
return id
"#;

/// `POST /items` (auth) → 201 with `Location`.
pub async fn create(
    State(st): State<AppState>,
    user: AuthUser,
    AppJson(input): AppJson<ItemInput>,
) -> Result<Response, AppError> {
    validate(&input)?;
    let (owner, name, desc, created, ms) = (
        user.username.clone(),
        input.name.trim().to_owned(),
        input.description,
        crate::auth::now_rfc3339(),
        now_ms(),
    );
    let id: u64 = st
        .db
        .run(|mut c| {
            let (owner, name, desc, created) =
                (owner.clone(), name.clone(), desc.clone(), created.clone());
            async move {
                redis::Script::new(CREATE)
                    .key(NEXT_ID)
                    .key(INDEX)
                    .key(MTIME)
                    .arg(owner)
                    .arg(name)
                    .arg(desc)
                    .arg(created)
                    .arg(ms)
                    .invoke_async(&mut c.conn)
                    .await
            }
        })
        .await?;
    let item = Item {
        id,
        owner,
        name,
        description: desc,
        created_at: created,
        updated_ms: ms,
    };
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/items/{id}")),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
        axum::Json(item),
    )
        .into_response())
}

const UPDATE: &str = r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 0 end
if owner ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'description', ARGV[3], 'updated_ms', ARGV[4])
redis.call('SET', KEYS[2], ARGV[4])
return 1
"#;

const DELETE: &str = r#"
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return 0 end
if owner ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
return 1
"#;

fn owner_outcome(code: i64) -> Result<(), AppError> {
    match code {
        1 => Ok(()),
        0 => Err(AppError::NotFound),
        _ => Err(AppError::Forbidden("only the owner may change this item")),
    }
}

/// `PUT /items/{id}` (auth, owner only).
pub async fn update(
    State(st): State<AppState>,
    AppPath(id): AppPath<u64>,
    user: AuthUser,
    AppJson(input): AppJson<ItemInput>,
) -> Result<Response, AppError> {
    validate(&input)?;
    let ms = now_ms();
    let (owner, name, desc) = (
        user.username.clone(),
        input.name.trim().to_owned(),
        input.description.clone(),
    );
    let code: i64 = st
        .db
        .run(|mut c| async move {
            redis::Script::new(UPDATE)
                .key(item_key(id))
                .key(MTIME)
                .arg(owner)
                .arg(name)
                .arg(desc)
                .arg(ms)
                .invoke_async(&mut c.conn)
                .await
        })
        .await?;
    owner_outcome(code)?;
    let item = load(&st, id).await?.ok_or(AppError::NotFound)?;
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(item)).into_response())
}

/// `DELETE /items/{id}` (auth, owner only) → 204.
pub async fn delete(
    State(st): State<AppState>,
    AppPath(id): AppPath<u64>,
    user: AuthUser,
) -> Result<StatusCode, AppError> {
    let ms = now_ms();
    let owner = user.username.clone();
    let code: i64 = st
        .db
        .run(|mut c| async move {
            redis::Script::new(DELETE)
                .key(item_key(id))
                .key(INDEX)
                .key(MTIME)
                .arg(owner)
                .arg(id)
                .arg(ms)
                .invoke_async(&mut c.conn)
                .await
        })
        .await?;
    owner_outcome(code)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every item of `owner`, for the export job.
pub async fn all_of(st: &AppState, owner: &str) -> Result<Vec<Item>, AppError> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let ids: Vec<u64> = st
            .db
            .run(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(INDEX)
                    .arg(format!("({after}"))
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(200)
                    .query_async(&mut c.conn)
                    .await
            })
            .await?;
        let Some(&last) = ids.last() else { break };
        after = last;
        let hashes: Vec<HashMap<String, String>> = st
            .db
            .run(|mut c| async move {
                let mut p = redis::pipe();
                for id in ids {
                    p.cmd("HGETALL").arg(item_key(id));
                }
                p.query_async(&mut c.conn).await
            })
            .await?;
        out.extend(
            hashes
                .into_iter()
                .filter_map(Item::from_hash)
                .filter(|i| i.owner == owner),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let lm = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            httpdate::fmt_http_date(lm).parse().unwrap(),
        );
        assert!(not_modified(&h, "\"a\"", lm));
        h.insert(header::IF_NONE_MATCH, "\"b\"".parse().unwrap());
        assert!(
            !not_modified(&h, "\"a\"", lm),
            "a non-matching INM means modified, whatever IMS says"
        );
        h.insert(header::IF_NONE_MATCH, "\"x\", W/\"a\"".parse().unwrap());
        assert!(not_modified(&h, "\"a\"", lm), "weak comparison");
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_MODIFIED_SINCE,
            httpdate::fmt_http_date(lm - Duration::from_secs(1))
                .parse()
                .unwrap(),
        );
        assert!(!not_modified(&h, "\"a\"", lm));
    }
}
