#!/usr/bin/env bash
# Cache-hit benchmark: requests/s and latency of the gateway's cache, nginx
# proxy_cache and the origin directly, for 1 KiB and 64 KiB bodies at 64 and
# 2,000 keep-alive connections; then the gateway's resident memory with a full
# cache.max_size (256 MiB) under 2,000 connections.
#
# Each proxy is pinned to core 0 (one worker / one thread); wrk and the origin
# (a tiny nginx serving fixed bodies with Cache-Control: max-age=3600) run on
# core 1.
#
#   loadtests/cache.sh                 # DURATION=10s
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
source scripts/lib.sh

DURATION=${DURATION:-10s}
ensure_bench_tools
ensure_system_deps
BIN=${BIN:-target/release/gateway}  # BIN=<binary> BUILD=0: another build, same harness
[ "${BUILD:-1}" = 0 ] || cargo build --release --locked -p gateway -p upstream-app >/dev/null  # one feature set for every script: no rebuild
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ORIGIN=$(pick); NGINX_PORT=$(pick); GW_PORT=$(pick); GW_ADMIN=$(pick)
dir=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"; }
trap cleanup EXIT

mkdir -p "$dir/www" "$dir/origin" "$dir/proxy/cache"
head -c 1024 /dev/zero | tr '\0' 'a' > "$dir/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' > "$dir/www/64k"
head -c 65536 /dev/zero | tr '\0' 'c' > "$dir/www/fill"
chmod -R a+rwX "$dir"   # nginx workers run as an unprivileged user
cache_bench_configs "$dir" "$ORIGIN" "$NGINX_PORT" "$GW_PORT" "$GW_ADMIN"
taskset -c 1 "$NGINX" -p "$dir/origin" -c "$dir/origin/nginx.conf" -g 'daemon off;' & pids+=($!)
taskset -c 0 "$NGINX" -p "$dir/proxy" -c "$dir/proxy/nginx.conf" -g 'daemon off;' & pids+=($!)
# Pingora logs every client that hangs up mid-body at ERROR: keep that out of the report.
RUST_LOG=error taskset -c 0 "$BIN" -c "$dir/gateway.yaml" 2>"$dir/gateway.log" & pids+=($!)
GW_PID=$!
for url in "http://127.0.0.1:$ORIGIN/1k" "http://127.0.0.1:$NGINX_PORT/1k" "http://127.0.0.1:$GW_ADMIN/ready"; do
  wait_http "$url" 20 || die "$url did not come up"
done
for port in "$NGINX_PORT" "$GW_PORT"; do  # warm both caches
  for f in 1k 64k; do curl -fsS -o /dev/null "http://127.0.0.1:$port/$f"; curl -fsS -o /dev/null "http://127.0.0.1:$port/$f"; done
done
curl -fsS -D - -o /dev/null "http://127.0.0.1:$GW_PORT/1k" | grep -qi '^x-cache: HIT' || die "gateway does not hit"
curl -fsS -D - -o /dev/null "http://127.0.0.1:$NGINX_PORT/1k" | grep -qi '^x-cache: HIT' || die "nginx does not hit"

run() { # label url connections
  local threads=1; [ "$3" -gt 1000 ] && threads=2
  local out; out=$(taskset -c 1 wrk -t"$threads" -c"$3" -d"$DURATION" --latency "$2")
  printf '| %-24s | %5s | %10s | %8s | %8s | %s\n' "$1" "$3" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")" \
    "$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr '\n' ' ')"
}
if [ -z "${MEMORY_ONLY:-}" ]; then
echo
echo "cache hits: wrk -d$DURATION, proxies on core 0, wrk + origin on core 1"
echo "| target                   | conns | requests/s |      p50 |      p99 | errors"
echo "|--------------------------|-------|------------|----------|----------|-------"
for size in 1k 64k; do
  for c in 64 2000; do
    run "origin $size" "http://127.0.0.1:$ORIGIN/$size" "$c"
    run "nginx proxy_cache $size" "http://127.0.0.1:$NGINX_PORT/$size" "$c"
    run "gateway $size" "http://127.0.0.1:$GW_PORT/$size" "$c"
  done
done
fi

# Fill the cache past its bound with distinct 64 KiB objects, then hold 2,000 connections.
echo
echo "filling the gateway cache (6,000 x 64 KiB distinct objects, bound 256 MiB)..."
cat > "$dir/fill.lua" <<'LUA'
counter = 0
request = function() counter = counter + 1; return wrk.format("GET", "/fill/" .. counter .. "-" .. math.random(1e9)) end
LUA
rss() { echo $(( $(awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status") / 1024 )); }
rss_start=$(rss)
taskset -c 1 wrk -t1 -c16 -d15s -s "$dir/fill.lua" "http://127.0.0.1:$GW_PORT" >/dev/null
rss_full=$(rss)
metrics=$(curl -fsS "http://127.0.0.1:$GW_ADMIN/metrics")
bytes=$(awk '/^gateway_cache_bytes / {print $2}' <<<"$metrics")
entries=$(awk '/^gateway_cache_entries / {print $2}' <<<"$metrics")
evictions=$(awk '/^gateway_cache_evictions_total / {print $2}' <<<"$metrics")
taskset -c 1 wrk -t2 -c2000 -d"$DURATION" "http://127.0.0.1:$GW_PORT/64k" >/dev/null &
sleep 3
rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status")
wait $! || true
echo "cache: $entries entries, $bytes bytes accounted, $evictions evictions"
echo "gateway RSS: $rss_start MiB at start, $rss_full MiB with the cache full, $((rss_kib / 1024)) MiB under 2,000 connections"
