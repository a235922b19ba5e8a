#!/usr/bin/env bash
# Pass-through benchmark: requests/s and latency percentiles of
#   1. the origin directly,
#   2. nginx proxy_pass with upstream keepalive (no cache),
#   3. the gateway (no cache route),
# in one run on this machine. Each proxy is pinned to core 0 with one worker
# (nginx worker_processes 1, gateway threads: 1); wrk and the origin share
# core 1. The origin is a tiny nginx `return 200` so that the proxy under test
# is the bottleneck.
#
#   loadtests/passthrough.sh            # DURATION=10s CONNECTIONS=50 by default
#
# Installs wrk and nginx-light with apt-get when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORE=${LOAD_CORE:-1}

ensure_bench_tools
ensure_system_deps
BIN=${BIN:-target/release/gateway}  # BIN=<binary> BUILD=0: another build, same harness
[ "${BUILD:-1}" = 0 ] || cargo build --release --locked -p gateway -p upstream-app >/dev/null  # one feature set for every script: no rebuild

ORIGIN=$(pick); NGINX_PORT=$(pick); GW_PORT=$(pick); GW_ADMIN=$(pick)
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

nginx_conf() { # name port body
  mkdir -p "$dir/$1"
  cat > "$dir/$1/nginx.conf" <<CONF
worker_processes 1;
error_log $dir/$1/error.log warn;
pid $dir/$1/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/$1; proxy_temp_path $dir/$1;
  fastcgi_temp_path $dir/$1; uwsgi_temp_path $dir/$1; scgi_temp_path $dir/$1;
  $3
}
CONF
}

nginx_conf origin "$ORIGIN" "server { listen 127.0.0.1:$ORIGIN; location / { return 200 '{\"ok\":true}'; } }"
nginx_conf proxy "$NGINX_PORT" "upstream app { server 127.0.0.1:$ORIGIN; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PORT; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

taskset -c "$LOAD_CORE" "$NGINX" -p "$dir/origin" -c "$dir/origin/nginx.conf" -g 'daemon off;' & pids+=($!)
taskset -c "$PROXY_CORE" "$NGINX" -p "$dir/proxy" -c "$dir/proxy/nginx.conf" -g 'daemon off;' & pids+=($!)

cat > "$dir/gateway.yaml" <<YAML
listen: "127.0.0.1:$GW_PORT"
threads: 1
admin: { listen: "127.0.0.1:$GW_ADMIN" }
access_log: { enabled: false }
upstreams:
  origin: { servers: ["127.0.0.1:$ORIGIN"] }
routes:
  - { name: all, match: { path_prefix: / }, upstream: origin }
YAML
RUST_LOG=warn taskset -c "$PROXY_CORE" "$BIN" -c "$dir/gateway.yaml" & pids+=($!)

for url in "http://127.0.0.1:$ORIGIN/" "http://127.0.0.1:$NGINX_PORT/" "http://127.0.0.1:$GW_ADMIN/ready"; do
  wait_http "$url" 20 || die "$url did not come up"
done

run() { # label url pid (the proxy: its CPU per request, user + system)
  taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d1s "$2" >/dev/null  # warm-up
  local before after out; before=$(cpu_ticks "$3")
  out=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency "$2")
  after=$(cpu_ticks "$3")
  local rps p50 p99 errors cpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  cpu=$(cpu_per_request "$before" "$after" "$(awk '/requests in/ {print $1}' <<<"$out")")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  printf '| %-26s | %10s | %8s | %8s | %13s | %s\n' "$1" "$rps" "$p50" "$p99" "${cpu/ / + }" "${errors:-}"
}

echo
echo "wrk -t1 -c$CONNECTIONS -d$DURATION, proxy on core $PROXY_CORE, wrk + origin on core $LOAD_CORE"
echo "CPU: microseconds per request of the process serving, user + system"
echo "| target                     |   requests/s |      p50 |      p99 | CPU µs/request |"
echo "|----------------------------|------------|----------|----------|---------------|"
run "origin directly" "http://127.0.0.1:$ORIGIN/" "$(pgrep -P "${pids[0]}" | head -1)"
run "nginx proxy_pass keepalive" "http://127.0.0.1:$NGINX_PORT/" "$(pgrep -P "${pids[1]}" | head -1)"
run "gateway" "http://127.0.0.1:$GW_PORT/" "${pids[2]}"
