#!/usr/bin/env bash
# Load figures of the upstream app alone (no gateway): requests/s and latency
# percentiles for GET /items/{id} (one Redis HGETALL) and POST /auth/login
# (argon2id verification with the default parameters, 2 hashing slots), with
# its own redis-server. The app is pinned to core 0, wrk and Redis to core 1.
#
#   loadtests/app.sh                 # DURATION=10s CONNECTIONS=50
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
command -v wrk >/dev/null || { [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || die "install wrk"
ensure_system_deps
cargo build --release --locked -p gateway -p upstream-app >/dev/null  # one feature set for every script: no rebuild

REDIS_PORT=$(pick); APP_PORT=$(pick)
dir=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

taskset -c 1 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null & pids+=($!)
RUST_LOG=warn APP_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" PORT="$APP_PORT" \
  taskset -c 0 target/release/upstream-app -c conf/upstream-app.yaml & pids+=($!)
wait_http "http://127.0.0.1:$APP_PORT/performance/health" 20 || die "app did not come up"

base="http://127.0.0.1:$APP_PORT"
curl -fsS -o /dev/null -H 'content-type: application/json' \
  -d '{"username":"loaduser","email":"load@example.com","password":"load-password"}' "$base/auth/register"
token=$(curl -fsS -H 'content-type: application/json' -d '{"username":"loaduser","password":"load-password"}' \
  "$base/auth/login" | sed 's/.*"token":"\([0-9a-f]*\)".*/\1/')
curl -fsS -o /dev/null -H 'content-type: application/json' -H "authorization: Bearer $token" \
  -d '{"name":"benchmark item","description":"read by wrk"}' "$base/items"

cat > "$dir/login.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"username":"loaduser","password":"load-password"}'
wrk.headers["Content-Type"] = "application/json"
LUA

run() { # label url [script]
  local out; out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency ${3:+-s "$3"} "$2")
  printf '| %-30s | %10s | %8s | %8s | %s\n' "$1" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")" \
    "$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr '\n' ' ')"
}
echo
echo "wrk -t1 -c$CONNECTIONS -d$DURATION; app on core 0, wrk + redis on core 1"
echo "| route                          | requests/s |      p50 |      p99 |"
echo "|--------------------------------|------------|----------|----------|"
run "GET /items/{id}" "$base/items/1"
run "POST /auth/login" "$base/auth/login" "$dir/login.lua"
# Hashing runs on blocking threads behind a semaphore: reads keep flowing.
taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$dir/login.lua" "$base/auth/login" >/dev/null &
storm=$!
sleep 1
run "GET /items/{id} + login storm" "$base/items/1"
wait "$storm" || true
