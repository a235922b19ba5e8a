#!/usr/bin/env bash
# 10x overload of a backend that serves at most K requests at a time
# (loadtests/slow_origin.py: K workers, 20 ms each, 503 after 500 ms without a
# worker), through the gateway without limits and with them
# (max_inflight K, a short queue). Prints what the client saw (wrk) and what
# the origin saw (its own latency and 503 rate).
#
#   loadtests/overload.sh              # K=8, 10x = 80 connections, 10 s each
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

K=${K:-8}
CONNECTIONS=${CONNECTIONS:-$((K * 10))}
DURATION=${DURATION:-10s}
command -v wrk >/dev/null || { [ "$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || die "install wrk"
ensure_system_deps
cargo build --release --locked -p gateway -p upstream-app >/dev/null  # one feature set for every script: no rebuild

dir=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

scenario() { # label limits-yaml
  local origin gw admin; origin=$(pick); gw=$(pick); admin=$(pick)
  python3 loadtests/slow_origin.py "$origin" "$K" 20 500 > "$dir/origin.txt" &
  local opid=$!
  cat > "$dir/gw.yaml" <<YAML
listen: "127.0.0.1:$gw"
threads: 1
pid_file: $dir/gw.pid
upgrade_sock: $dir/up.sock
admin: { listen: "127.0.0.1:$admin" }
upstreams: { app: { servers: ["127.0.0.1:$origin"], read_timeout: 30s } }
routes: [{ name: api, match: { path_prefix: / }, upstream: app $2 }]
YAML
  RUST_LOG=error target/release/gateway -c "$dir/gw.yaml" 2>/dev/null &
  local gpid=$!
  wait_http "http://127.0.0.1:$admin/ready" 20 || die "gateway did not start"
  sleep 0.5
  local out; out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$gw/")
  kill -TERM "$opid"; wait "$opid" 2>/dev/null || true
  kill -INT "$gpid"; wait "$gpid" 2>/dev/null || true
  echo "## $1"
  echo "client: $(awk '/Requests\/sec/ {print $2}' <<<"$out") req/s, p50 $(awk '$1=="50%" {print $2}' <<<"$out"), p99 $(awk '$1=="99%" {print $2}' <<<"$out"), $(awk '/Non-2xx/ {n=$5} END {print n+0}' <<<"$out") non-2xx of $(awk '/requests in/ {print $1}' <<<"$out")"
  cat "$dir/origin.txt"
  echo
}

echo "backend capacity K=$K (20 ms per request), load: wrk -t2 -c$CONNECTIONS -d$DURATION"
echo
scenario "without limits" ""
scenario "with limits (max_inflight $K, queue $((K * 2)) for 100 ms)" ", limits: { max_inflight: $K, queue: { max_len: $((K * 2)), timeout: 100ms } }"
