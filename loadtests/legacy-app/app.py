"""The app you have today: the guide's starting point.

A plain Flask app under Gunicorn sync workers with the same routes and status
codes as upstream-app, backed by Redis, with one slow database query on every
request that touches the database (DB_DELAY_MS, default 100 ms). Passwords use
argon2id with upstream-app's parameters (19 MiB, 2 iterations). Public reads
send what a careful Flask developer sends: Cache-Control: public, max-age, a
strong ETag, Last-Modified and 304 answers to If-None-Match.

Run it with ./run (it makes the virtualenv); see the README of loadtests.
"""

import hashlib
import json
import os
import secrets
import threading
import time
import uuid
from email.utils import formatdate

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from flask import Flask, g, jsonify, request

DB_DELAY = int(os.environ.get("DB_DELAY_MS", "100")) / 1000.0
MAX_AGE = int(os.environ.get("ITEMS_MAX_AGE", "30"))
TOKEN_TTL = 3600
JOB_TTL = 3600
MAX_RUNNING_JOBS = 100

app = Flask(__name__)
pool = redis.ConnectionPool.from_url(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    socket_timeout=1,
    socket_connect_timeout=1,
    decode_responses=True,
)
hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16)
DUMMY_HASH = hasher.hash("not a real password")
running_jobs = threading.BoundedSemaphore(MAX_RUNNING_JOBS)


class ApiError(Exception):
    def __init__(self, status, message, headers=None, fields=None):
        super().__init__(message)
        self.status, self.message, self.headers, self.fields = status, message, headers or {}, fields


def db():
    """The Redis client; the first use in a request pays the slow query."""
    if "db" not in g:
        time.sleep(DB_DELAY)
        g.db = redis.Redis(connection_pool=pool)
    return g.db


@app.before_request
def request_id():
    rid = request.headers.get("X-Request-Id", "")
    g.request_id = rid if 0 < len(rid) <= 128 and rid.isprintable() else uuid.uuid4().hex


@app.after_request
def echo_request_id(resp):
    resp.headers["X-Request-Id"] = g.get("request_id", "-")
    return resp


@app.errorhandler(ApiError)
def api_error(e):
    body = {"error": e.message, "request_id": g.get("request_id", "-")}
    if e.fields:
        body["fields"] = e.fields
    resp = jsonify(body)
    resp.status_code = e.status
    resp.headers["Cache-Control"] = "no-store"
    for k, v in e.headers.items():
        resp.headers[k] = v
    return resp


@app.errorhandler(redis.RedisError)
def db_down(_e):
    return api_error(ApiError(503, "database unavailable", {"Retry-After": "1"}))


@app.errorhandler(404)
def not_found(_e):
    return api_error(ApiError(404, "not found"))


@app.errorhandler(405)
def not_allowed(_e):
    return api_error(ApiError(405, "method not allowed"))


def body_json():
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "bad request: expected a JSON object")
    return data


def no_store(payload, status=200, cc="no-store", headers=None):
    resp = jsonify(payload)
    resp.status_code = status
    resp.headers["Cache-Control"] = cc
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def session_key(token):
    return "legacy:session:" + hashlib.sha256(token.encode()).hexdigest()


def current_user():
    auth = request.headers.get("Authorization", "")
    token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ""
    if len(token) != 64:
        raise ApiError(401, "missing or malformed bearer token", {"WWW-Authenticate": "Bearer"})
    user = db().get(session_key(token))
    if not user:
        raise ApiError(401, "invalid or expired token", {"WWW-Authenticate": "Bearer"})
    return user, token


def cacheable(payload, last_modified_ms):
    body = json.dumps(payload, separators=(",", ":")).encode()
    etag = '"%s"' % hashlib.sha256(body).hexdigest()[:32]
    private = "Authorization" in request.headers
    headers = {
        "ETag": etag,
        "Cache-Control": ("private" if private else "public") + ", max-age=%d" % MAX_AGE,
        "Vary": "Authorization",
        "Last-Modified": formatdate(last_modified_ms // 1000, usegmt=True),
    }
    inm = [t.strip().removeprefix("W/") for t in request.headers.get("If-None-Match", "").split(",") if t.strip()]
    if "*" in inm or etag in inm:
        resp = app.response_class(status=304)
    else:
        resp = app.response_class(body, status=200, mimetype="application/json")
    resp.headers.update(headers)
    return resp


@app.get("/")
def index():
    return no_store({"service": "legacy-app"}, cc="public, max-age=60")


@app.get("/performance/health")
def health():
    redis.Redis(connection_pool=pool).ping()
    return no_store({"status": "ok", "redis": "up"})


@app.post("/auth/register")
def register():
    data = body_json()
    username, email, password = (str(data.get(k, "")) for k in ("username", "email", "password"))
    fields = {}
    if not (3 <= len(username) <= 32) or not all(c.isalnum() or c in "_-." for c in username):
        fields["username"] = "3 to 32 letters, digits, '_', '-' or '.'"
    if "@" not in email or len(email) > 254:
        fields["email"] = "an email address"
    if not (8 <= len(password) <= 128):
        fields["password"] = "8 to 128 characters"
    if fields:
        raise ApiError(422, "invalid input", fields=fields)
    r = db()
    uk, ek = "legacy:user:" + username.lower(), "legacy:email:" + email.lower()
    if r.exists(uk):
        raise ApiError(409, "username is taken")
    if r.exists(ek):
        raise ApiError(409, "email is taken")
    phc = hasher.hash(password)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not r.set(ek, username.lower(), nx=True):
        raise ApiError(409, "email is taken")
    if not r.hsetnx(uk, "username", username):
        r.delete(ek)
        raise ApiError(409, "username is taken")
    r.hset(uk, mapping={"email": email, "password": phc, "created_at": created})
    return no_store({"username": username, "email": email, "created_at": created}, 201)


@app.post("/auth/login")
def login():
    data = body_json()
    username, password = str(data.get("username", "")), str(data.get("password", ""))
    phc = db().hget("legacy:user:" + username.lower(), "password")
    try:
        ok = hasher.verify(phc or DUMMY_HASH, password) and phc is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    if not ok:
        raise ApiError(401, "invalid username or password", {"WWW-Authenticate": "Bearer"})
    token = secrets.token_hex(32)
    db().set(session_key(token), username.lower(), ex=TOKEN_TTL)
    return no_store({"token": token, "expires_in": TOKEN_TTL})


@app.get("/auth/me")
def me():
    user, _ = current_user()
    u = db().hgetall("legacy:user:" + user)
    if not u:
        raise ApiError(401, "invalid or expired token", {"WWW-Authenticate": "Bearer"})
    return no_store({k: u.get(k) for k in ("username", "email", "created_at")}, cc="private, no-store")


@app.post("/auth/logout")
def logout():
    _, token = current_user()
    db().delete(session_key(token))
    return app.response_class(status=204)


def load_item(r, item_id):
    h = r.hgetall("legacy:item:%d" % item_id)
    if not h:
        return None
    return {
        "id": int(h["id"]), "owner": h["owner"], "name": h["name"],
        "description": h.get("description", ""), "created_at": h["created_at"],
        "updated_ms": int(h["updated_ms"]),
    }


def item_input():
    data = body_json()
    name, desc = str(data.get("name", "")).strip(), str(data.get("description", ""))
    fields = {}
    if not (1 <= len(name) <= 200):
        fields["name"] = "1 to 200 characters"
    if len(desc) > 2000:
        fields["description"] = "at most 2000 characters"
    if fields:
        raise ApiError(422, "invalid input", fields=fields)
    return name, desc


@app.get("/items")
def list_items():
    try:
        limit = int(request.args.get("limit", "20"))
        after = int(request.args.get("cursor") or 0)
    except ValueError:
        raise ApiError(422, "invalid input", fields={"limit": "1 to 100", "cursor": "a next_cursor"})
    if not 1 <= limit <= 100:
        raise ApiError(422, "invalid input", fields={"limit": "1 to 100"})
    r = db()
    ids = r.zrangebyscore("legacy:items", "(%d" % after, "+inf", start=0, num=limit + 1)
    mtime = int(r.get("legacy:items:mtime") or 0)
    page = [int(i) for i in ids[:limit]]
    items = [it for it in (load_item(r, i) for i in page) if it]
    nxt = str(items[-1]["id"]) if len(ids) > limit and items else None
    return cacheable({"items": items, "next_cursor": nxt}, mtime)


@app.get("/items/<int:item_id>")
def get_item(item_id):
    item = load_item(db(), item_id)
    if not item:
        raise ApiError(404, "not found")
    return cacheable(item, item["updated_ms"])


@app.post("/items")
def create_item():
    user, _ = current_user()
    name, desc = item_input()
    r = db()
    now = int(time.time() * 1000)
    item_id = r.incr("legacy:items:next_id")
    item = {"id": item_id, "owner": user, "name": name, "description": desc,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "updated_ms": now}
    pipe = r.pipeline()
    pipe.hset("legacy:item:%d" % item_id, mapping=item)
    pipe.zadd("legacy:items", {str(item_id): item_id})
    pipe.set("legacy:items:mtime", now)
    pipe.execute()
    return no_store(item, 201, headers={"Location": "/items/%d" % item_id})


def owned(r, item_id, user):
    owner = r.hget("legacy:item:%d" % item_id, "owner")
    if owner is None:
        raise ApiError(404, "not found")
    if owner != user:
        raise ApiError(403, "forbidden: only the owner may change this item")


@app.put("/items/<int:item_id>")
def update_item(item_id):
    user, _ = current_user()
    name, desc = item_input()
    r = db()
    owned(r, item_id, user)
    now = int(time.time() * 1000)
    r.hset("legacy:item:%d" % item_id, mapping={"name": name, "description": desc, "updated_ms": now})
    r.set("legacy:items:mtime", now)
    return no_store(load_item(r, item_id))


@app.delete("/items/<int:item_id>")
def delete_item(item_id):
    user, _ = current_user()
    r = db()
    owned(r, item_id, user)
    r.delete("legacy:item:%d" % item_id)
    r.zrem("legacy:items", str(item_id))
    r.set("legacy:items:mtime", int(time.time() * 1000))
    return app.response_class(status=204)


def export_job(job_id, owner):
    """Runs in a thread of the worker that accepted the job; state lives in Redis."""
    r = redis.Redis(connection_pool=pool)
    try:
        key = "legacy:job:" + job_id
        job = json.loads(r.get(key) or "{}")
        job["status"] = "running"
        r.set(key, json.dumps(job), ex=JOB_TTL)
        time.sleep(DB_DELAY)
        items = [it for it in (load_item(r, int(i)) for i in r.zrange("legacy:items", 0, -1)) if it and it["owner"] == owner]
        job.update(status="done", result={"count": len(items), "items": items})
        r.set(key, json.dumps(job), ex=JOB_TTL)
    except redis.RedisError:
        pass
    finally:
        running_jobs.release()


@app.post("/items/export")
def export():
    user, _ = current_user()
    if not running_jobs.acquire(blocking=False):
        raise ApiError(503, "job queue is full, retry later", {"Retry-After": "1"})
    job_id = uuid.uuid4().hex
    job = {"id": job_id, "kind": "export", "owner": user, "status": "queued"}
    try:
        db().set("legacy:job:" + job_id, json.dumps(job), ex=JOB_TTL)
    except redis.RedisError:
        running_jobs.release()
        raise
    threading.Thread(target=export_job, args=(job_id, user), daemon=True).start()
    return no_store({"job_id": job_id}, 202, headers={"Location": "/jobs/" + job_id})


@app.get("/jobs/<job_id>")
def job_status(job_id):
    user, _ = current_user()
    raw = db().get("legacy:job:" + job_id)
    job = json.loads(raw) if raw else None
    if not job or job.get("owner") != user:
        raise ApiError(404, "not found")
    return no_store(job, cc="private, no-store")
