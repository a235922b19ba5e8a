#!/usr/bin/env bash
# HTTPS benchmark: the gateway against nginx, with the same certificate (EC
# P-256, made here), each pinned to core 0 with one worker / one thread per
# listener; wrk and the origin (a tiny nginx serving fixed bodies with
# Cache-Control: max-age=3600) run on core 1.
#
#   1. TLS handshakes/s: a new connection (full handshake) for every request
#      (wrk with Connection: close, 64 connections).
#   2. HTTPS cache hits/s for a 1 KiB body on keep-alive connections (64).
#   3. Compressed cache hits/s for a 16 KiB text body (64 keep-alive
#      connections): gzip for both (nginx gzip_comp_level 5, the gateway's
#      level), br and zstd for the gateway only (nginx-light has neither).
#
# On a shared machine throughput swings with the neighbours' load, so each
# row also gives requests per CPU-second of the server (utime + stime of its
# processes from /proc over the run): what one core would serve if the server
# had it to itself.
#
#   loadtests/tls.sh                 # DURATION=10s
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
source scripts/lib.sh

DURATION=${DURATION:-10s}
ensure_bench_tools openssl:openssl
ensure_system_deps
BIN=${BIN:-target/release/gateway}  # BIN=<binary> BUILD=0: another build, same harness
[ "${BUILD:-1}" = 0 ] || cargo build --release --locked -p gateway -p upstream-app >/dev/null
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ORIGIN=$(pick); NGINX_PORT=$(pick); GW_PORT=$(pick); GW_TLS=$(pick); GW_ADMIN=$(pick)
dir=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"; }
trap cleanup EXIT

# One certificate for both servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$dir/site.key" -out "$dir/site.pem" -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -addext basicConstraints=CA:FALSE 2>/dev/null

mkdir -p "$dir/www" "$dir/origin" "$dir/proxy/cache"
head -c 1024 /dev/zero | tr '\0' 'a' > "$dir/www/1k"
# 16 KiB of JSON-like text: compresses about 6:1, like a typical API answer.
python3 - "$dir/www/16k" <<'PY'
import json, sys
rows = [{"id": i, "name": f"item {i}", "price": round(i * 1.37, 2), "tags": ["a", "b", str(i % 7)]} for i in range(400)]
text = json.dumps(rows)
open(sys.argv[1], "w").write(text[:16384])
PY
chmod -R a+rwX "$dir"   # nginx workers run as an unprivileged user
common="worker_rlimit_nofile 65536; events { worker_connections 8192; }"
cat > "$dir/origin/nginx.conf" <<CONF
worker_processes 1; error_log $dir/origin/error.log warn; pid $dir/origin/pid; $common
http { access_log off; default_type text/plain; $(nginx_temp "$dir/origin")
  server { listen 127.0.0.1:$ORIGIN; root $dir/www; etag off;
    location / { add_header Cache-Control "max-age=3600"; } } }
CONF
cat > "$dir/proxy/nginx.conf" <<CONF
worker_processes 1; error_log $dir/proxy/error.log warn; pid $dir/proxy/pid; $common
http { access_log off; $(nginx_temp "$dir/proxy")
  proxy_cache_path $dir/proxy/cache levels=1:2 keys_zone=c:64m max_size=256m inactive=1h;
  upstream app { server 127.0.0.1:$ORIGIN; keepalive 64; }
  gzip on; gzip_comp_level 5; gzip_min_length 1024; gzip_proxied any; gzip_vary on;
  gzip_types text/plain application/json;
  server { listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $dir/site.pem; ssl_certificate_key $dir/site.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache c; add_header X-Cache \$upstream_cache_status; } } }
CONF
taskset -c 1 "$NGINX" -p "$dir/origin" -c "$dir/origin/nginx.conf" -g 'daemon off;' & pids+=($!)
taskset -c 0 "$NGINX" -p "$dir/proxy" -c "$dir/proxy/nginx.conf" -g 'daemon off;' & pids+=($!)
NGINX_MASTER=$!
cat > "$dir/gateway.yaml" <<YAML
listen: "127.0.0.1:$GW_PORT"
threads: 1
pid_file: $dir/gateway.pid
upgrade_sock: $dir/upgrade.sock
admin: { listen: "127.0.0.1:$GW_ADMIN" }
access_log: { enabled: false }
client: { max_connections: 20000 }
tls:
  listen: ["127.0.0.1:$GW_TLS"]
  certificates: [{ cert: $dir/site.pem, key: $dir/site.key }]
compression: { enabled: true, algorithms: [br, gzip, zstd], min_size: 1KiB }
cache: { max_size: 256MiB, max_object_size: 8MiB }
upstreams: { origin: { servers: ["127.0.0.1:$ORIGIN"] } }
routes: [{ name: all, match: { path_prefix: / }, upstream: origin, cache: { enabled: true } }]
YAML
RUST_LOG=error taskset -c 0 "$BIN" -c "$dir/gateway.yaml" 2>"$dir/gateway.log" & pids+=($!)
GW_PID=$!
for url in "http://127.0.0.1:$ORIGIN/1k" "https://127.0.0.1:$NGINX_PORT/1k" "http://127.0.0.1:$GW_ADMIN/ready"; do
  curl_ok() { curl -kfsS -o /dev/null --max-time 1 "$1" 2>/dev/null; }
  deadline=$((SECONDS + 20))
  until curl_ok "$url"; do [ $SECONDS -lt $deadline ] || die "$url did not come up"; sleep 0.1; done
done
for port in "$NGINX_PORT" "$GW_TLS"; do  # warm both caches
  for f in 1k 16k; do for _ in 1 2; do curl -kfsS -o /dev/null "https://127.0.0.1:$port/$f"; done; done
done
curl -kfsS -D - -o /dev/null "https://127.0.0.1:$GW_TLS/1k" | grep -qi '^x-cache: HIT' || die "gateway does not hit"
curl -kfsS -D - -o /dev/null "https://127.0.0.1:$NGINX_PORT/1k" | grep -qi '^x-cache: HIT' || die "nginx does not hit"
for port in "$NGINX_PORT" "$GW_TLS"; do
  curl -kfsS -D - -o /dev/null -H 'Accept-Encoding: gzip' "https://127.0.0.1:$port/16k" \
    | grep -qi '^content-encoding: gzip' || die "port $port does not gzip"
done

TCK=$(getconf CLK_TCK)
# CPU ticks (user + system) of the nginx proxy (master and workers) or the gateway.
ticks() {
  local p total=0 list
  if [ "$1" = nginx ]; then list="$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')"; else list=$GW_PID; fi
  for p in $list; do total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$total"
}
run() { # who label url [wrk options...]
  local who=$1 label="$1: $2" url=$3; shift 3
  local before; before=$(ticks "$who")
  local out; out=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" --latency "$@" "$url")
  local used=$(( $(ticks "$who") - before ))
  local total; total=$(awk '/requests in/ {print $1}' <<<"$out")
  printf '| %-34s | %10s | %10s | %8s | %8s | %s\n' "$label" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(( used > 0 ? total * TCK / used : 0 ))" \
    "$(awk '$1=="50%" {print $2}' <<<"$out")" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")" \
    "$(awk '/Non-2xx|Socket errors/' <<<"$out" | tr '\n' ' ')"
}
echo
echo "HTTPS: wrk -c64 -d$DURATION, proxies on core 0, wrk + origin on core 1"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| test                               | requests/s | req/CPU-s |      p50 |      p99 | errors"
echo "|------------------------------------|------------|------------|----------|----------|-------"
for who in nginx gateway; do
  port=$NGINX_PORT; [ $who = gateway ] && port=$GW_TLS
  run $who "handshake + 1 KiB hit" "https://127.0.0.1:$port/1k" -H 'Connection: close'
done
for who in nginx gateway; do
  port=$NGINX_PORT; [ $who = gateway ] && port=$GW_TLS
  run $who "1 KiB hit, keep-alive" "https://127.0.0.1:$port/1k"
done
run nginx "16 KiB hit, identity" "https://127.0.0.1:$NGINX_PORT/16k"
run gateway "16 KiB hit, identity" "https://127.0.0.1:$GW_TLS/16k"
run nginx "16 KiB hit, gzip" "https://127.0.0.1:$NGINX_PORT/16k" -H 'Accept-Encoding: gzip'
for enc in gzip br zstd; do
  run gateway "16 KiB hit, $enc" "https://127.0.0.1:$GW_TLS/16k" -H "Accept-Encoding: $enc"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
for enc in gzip br zstd; do
  size=$(curl -kfsS -H "Accept-Encoding: $enc" "https://127.0.0.1:$GW_TLS/16k" | wc -c)
  echo "gateway $enc: 16384 -> $size bytes"
done
echo "nginx gzip: 16384 -> $(curl -kfsS -H 'Accept-Encoding: gzip' "https://127.0.0.1:$NGINX_PORT/16k" | wc -c) bytes"
