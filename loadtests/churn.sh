#!/usr/bin/env bash
# Cache churn benchmark: does the gateway's resident memory respect
# cache.max_size under a key space far larger than the cache, and does it come
# back after a purge of everything? (issue #17)
#
# A loopback nginx origin serves 2 KiB bodies with Cache-Control: max-age=5.
# The gateway runs with `threads: 1` and a CACHE-sized cache; wrk -c200 sends
#   70 % to /c/k<random 1..KEYS>   (cached route, mostly misses: churn)
#   20 % to /p/<n>                 (pass-through route, no cache)
#   10 % to /c/hot<1..50>          (cached route, hot keys)
# The gateway's VmRSS (and the cache's entries and bytes) is sampled every
# INTERVAL into the report; at the end everything is purged and VmRSS is
# sampled every second for 10 s.
#
#   loadtests/churn.sh                                # DURATION=300s KEYS=5000000 CACHE=64MiB
#   DURATION=120s KEYS=200000 loadtests/churn.sh
#   SOAK=1 loadtests/churn.sh                         # 2 h, a sample a minute
#   BIN=/path/to/gateway BUILD=0 loadtests/churn.sh  # another binary (not GATEWAY_*:
#                                                   # the gateway reads those)
#
# The report goes to $REPORT (default target/loadtests/churn-<time>.txt) and
# stdout. Only 127.0.0.1 is used; everything started is stopped by PID.
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
source scripts/lib.sh

if [ -n "${SOAK:-}" ]; then
  DURATION=${DURATION:-2h}; INTERVAL=${INTERVAL:-60}
fi
DURATION=${DURATION:-300s}
INTERVAL=${INTERVAL:-10}
KEYS=${KEYS:-5000000}
CACHE=${CACHE:-64MiB}
CONNS=${CONNS:-200}
BIN=${BIN:-target/release/gateway}
mkdir -p target/loadtests
REPORT=${REPORT:-target/loadtests/churn-$(date +%Y%m%d-%H%M%S).txt}

ensure_bench_tools
if [ "${BUILD:-1}" = 1 ]; then
  ensure_system_deps
  cargo build --release --locked -p gateway -p upstream-app >/dev/null
fi
[ -x "$BIN" ] || die "no gateway binary at $BIN"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ORIGIN=$(pick); GW_PORT=$(pick); GW_ADMIN=$(pick)
dir=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

mkdir -p "$dir/www" "$dir/origin"
head -c 2048 /dev/zero | tr '\0' 'a' > "$dir/www/body"
chmod -R a+rwX "$dir"   # nginx workers run as an unprivileged user
cat > "$dir/origin/nginx.conf" <<CONF
worker_processes 1; error_log $dir/origin/error.log warn; pid $dir/origin/pid;
worker_rlimit_nofile 65536; events { worker_connections 8192; }
http { access_log off; $(nginx_temp "$dir/origin") keepalive_requests 1000000;
  server { listen 127.0.0.1:$ORIGIN; root $dir/www; etag off;
    location / { add_header Cache-Control "max-age=5"; try_files /body =404; } } }
CONF
taskset -c 1 "$NGINX" -p "$dir/origin" -c "$dir/origin/nginx.conf" -g 'daemon off;' & pids+=($!)

TOKEN=churn-bench-token
cat > "$dir/gateway.yaml" <<YAML
listen: "127.0.0.1:$GW_PORT"
threads: 1
pid_file: $dir/gateway.pid
upgrade_sock: $dir/upgrade.sock
admin: { listen: "127.0.0.1:$GW_ADMIN", token: "$TOKEN" }
access_log: { enabled: false }
client: { max_connections: 20000 }
cache: { max_size: $CACHE, max_object_size: 1MiB }
upstreams: { origin: { servers: ["127.0.0.1:$ORIGIN"] } }
routes:
  - { name: cached, match: { path_prefix: /c }, upstream: origin, cache: { enabled: true } }
  - { name: pass, match: { path_prefix: / }, upstream: origin }
YAML
# Pingora logs every client that hangs up mid-body at ERROR: keep that out of the report.
RUST_LOG=error taskset -c 0 "$BIN" -c "$dir/gateway.yaml" 2>"$dir/gateway.log" & pids+=($!)
GW_PID=$!
wait_http "http://127.0.0.1:$ORIGIN/x" 20 || die "origin did not come up"
wait_http "http://127.0.0.1:$GW_ADMIN/ready" 30 || die "gateway did not come up"
curl -fsS -o /dev/null "http://127.0.0.1:$GW_PORT/c/hot1"
curl -fsS -D - -o /dev/null "http://127.0.0.1:$GW_PORT/c/hot1" | grep -qi '^x-cache: HIT' \
  || die "gateway does not hit"

cat > "$dir/churn.lua" <<LUA
local keys = $KEYS
local n = 0
setup = function(thread) n = n + 1; thread:set("id", n) end
init = function() math.randomseed(os.time() * 1000 + (id or 0)) end
request = function()
  local r = math.random(100)
  local path
  if r <= 70 then path = "/c/k" .. math.random(keys)
  elseif r <= 90 then path = "/p/" .. math.random(1000)
  else path = "/c/hot" .. math.random(50) end
  return wrk.format("GET", path)
end
LUA

rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$GW_PID/status"; }
metric() { curl -fsS "http://127.0.0.1:$GW_ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
sample() { # label
  printf '| %8s | %8s | %9s | %11s |\n' "$1" "$(rss_mib)" \
    "$(metric gateway_cache_entries)" \
    "$(awk '{printf "%.1f", $1 / 1048576}' <<<"$(metric gateway_cache_bytes)")"
}
secs() { # 300s, 5m, 2h -> seconds
  local v=$1
  case $v in *h) echo $(( ${v%h} * 3600 ));; *m) echo $(( ${v%m} * 60 ));; *s) echo "${v%s}";; *) echo "$v";; esac
}
total=$(secs "$DURATION")

{
  echo "churn: $(date -u +%FT%TZ), gateway $BIN (work tree at $(git rev-parse --short HEAD 2>/dev/null || echo ?))"
  echo "cache.max_size $CACHE, threads 1, wrk -c$CONNS -d$DURATION, key space $KEYS, 2 KiB bodies, max-age=5"
  echo "gateway on core 0, wrk + nginx origin on core 1 (2 shared cores: CPU figures are noisy)"
  echo
  echo "|     time | RSS MiB  | entries   | cache MiB   |"
  echo "|----------|----------|-----------|-------------|"
  sample "start"
} | tee "$REPORT"

taskset -c 1 wrk -t2 -c"$CONNS" -d"$DURATION" --timeout 5s -s "$dir/churn.lua" \
  "http://127.0.0.1:$GW_PORT" > "$dir/wrk.out" 2>&1 & WRK_PID=$!
pids+=("$WRK_PID")
start=$SECONDS
next=$INTERVAL
while [ $((SECONDS - start)) -lt "$total" ] && kill -0 "$WRK_PID" 2>/dev/null; do
  if [ $((SECONDS - start)) -ge "$next" ]; then
    sample "${next}s" | tee -a "$REPORT"
    next=$((next + INTERVAL))
  fi
  sleep 1
done
wait "$WRK_PID" || true
{
  sample "end"
  echo
  grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' "$dir/wrk.out" || true
  echo
  echo "purge of everything (POST /cache/purge {\"all\": true}), then one sample a second:"
  curl -fsS -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"all": true}' "http://127.0.0.1:$GW_ADMIN/cache/purge"
  echo
  echo "|     time | RSS MiB  | entries   | cache MiB   |"
  echo "|----------|----------|-----------|-------------|"
  for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1; sample "purge+${i}s"; done
} | tee -a "$REPORT"
echo "report: $REPORT"
