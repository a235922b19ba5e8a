#!/usr/bin/env bash
# Cost of the access log on 1 KiB cache hits, on one core: two gateways with
# the same config but for `access_log` (one writes JSON lines to a file, one
# has the log off), both pinned to core 0 with one thread; wrk (-t1 -c64) and
# the origin (a tiny nginx) on core 1. The two are measured in alternating
# runs (on, off, on, off ...) and the median of each is reported, with the
# ratio on/off.
#
#   loadtests/accesslog.sh              # RUNS=5 DURATION=8s
#   MODE=callgrind loadtests/accesslog.sh   # instructions per request instead
#
# MODE=callgrind counts the instructions each gateway spends per cache hit
# (valgrind's callgrind, REQUESTS=5000 sequential keep-alive requests after a
# warm-up, writer thread included): unlike requests/s it does not depend on
# what else the machine is doing. It leaves out the kernel's share (the
# writer's write(2) calls).
#
# Installs wrk and nginx-light with apt-get when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RUNS=${RUNS:-5}
MODE=${MODE:-wrk}
REQUESTS=${REQUESTS:-5000}
DURATION=${DURATION:-8s}
ensure_bench_tools
ensure_system_deps
cargo build --release --locked -p gateway -p upstream-app >/dev/null  # one feature set for every script: no rebuild

ORIGIN=$(pick)
dir=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

mkdir -p "$dir/www" "$dir/origin"
head -c 1024 /dev/zero | tr '\0' 'a' > "$dir/www/1k"
chmod -R a+rwX "$dir"
cat > "$dir/origin/nginx.conf" <<CONF
worker_processes 1; error_log $dir/origin/error.log warn; pid $dir/origin/pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $dir/origin; proxy_temp_path $dir/origin;
  fastcgi_temp_path $dir/origin; uwsgi_temp_path $dir/origin; scgi_temp_path $dir/origin;
  server { listen 127.0.0.1:$ORIGIN; root $dir/www; etag off;
    location / { add_header Cache-Control "max-age=3600"; } } }
CONF
taskset -c 1 "$NGINX" -p "$dir/origin" -c "$dir/origin/nginx.conf" -g 'daemon off;' & pids+=($!)

declare -A PORT CG
for mode in on off; do
  port=$(pick); admin=$(pick); PORT[$mode]=$port
  if [ "$mode" = on ]; then log="{ enabled: true, path: $dir/access.log }"; else log="{ enabled: false }"; fi
  cat > "$dir/$mode.yaml" <<YAML
listen: "127.0.0.1:$port"
threads: 1
pid_file: $dir/$mode.pid
upgrade_sock: $dir/$mode.sock
admin: { listen: "127.0.0.1:$admin" }
access_log: $log
upstreams: { origin: { servers: ["127.0.0.1:$ORIGIN"] } }
routes: [{ name: all, match: { path_prefix: / }, upstream: origin, cache: { enabled: true } }]
YAML
  if [ "$MODE" = callgrind ]; then
    command -v valgrind >/dev/null || die "missing: valgrind (apt-get install valgrind)"
    RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$dir/cg-$mode.out" \
      target/release/gateway -c "$dir/$mode.yaml" 2>"$dir/$mode.log" & pids+=($!)
    CG[$mode]=$!
  else
    RUST_LOG=error taskset -c 0 target/release/gateway -c "$dir/$mode.yaml" 2>"$dir/$mode.log" & pids+=($!)
  fi
  wait_http "http://127.0.0.1:$admin/ready" 60 || die "gateway ($mode) did not come up"
  curl -fsS -o /dev/null "http://127.0.0.1:$port/1k"
  curl -fsS -D - -o /dev/null "http://127.0.0.1:$port/1k" | grep -qi '^x-cache: HIT' || die "gateway ($mode) does not hit"
done

if [ "$MODE" = callgrind ]; then
  # One keep-alive connection, one request at a time, every answer read whole.
  client() {
    python3 - "$1" "$REQUESTS" <<'PY'
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
buf = b""
for _ in range(n):
    s.sendall(b"GET /1k HTTP/1.1\r\nHost: x\r\n\r\n")
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, buf = buf.split(b"\r\n\r\n", 1)
    length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(buf) < length:
        buf += s.recv(65536)
    buf = buf[length:]
PY
  }
  declare -A IR
  for mode in on off; do
    client "${PORT[$mode]}"                      # warm-up
    callgrind_control -z "${CG[$mode]}" >/dev/null 2>&1
    client "${PORT[$mode]}"
    callgrind_control -d "${CG[$mode]}" >/dev/null 2>&1
    IR[$mode]=$(awk '/^summary:/ {print $2}' "$dir/cg-$mode.out.1")
  done
  echo
  echo "1 KiB cache hits, instructions per request (callgrind, $REQUESTS requests, writer thread included)"
  echo "| access log | instructions/request |"
  echo "|------------|----------------------|"
  echo "| to a file  | $((IR[on] / REQUESTS)) |"
  echo "| off        | $((IR[off] / REQUESTS)) |"
  awk -v on="${IR[on]}" -v off="${IR[off]}" 'BEGIN { printf "log on / log off = %.3f (cost %.1f %%)\n", on / off, 100 * (on / off - 1) }'
  exit 0
fi

declare -A RATES=([on]="" [off]="")
for i in $(seq "$RUNS"); do
  for mode in on off; do
    r=$(taskset -c 1 wrk -t1 -c64 -d"$DURATION" "http://127.0.0.1:${PORT[$mode]}/1k" | awk '/Requests\/sec/ {print $2}')
    RATES[$mode]+="$r "
    echo "run $i, log $mode: $r requests/s"
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
on=$(median <<<"${RATES[on]}"); off=$(median <<<"${RATES[off]}")
lines=$(wc -l < "$dir/access.log")
echo
echo "1 KiB cache hits, one core, wrk -t1 -c64 -d$DURATION, median of $RUNS alternating runs"
echo "| access log | requests/s |"
echo "|------------|------------|"
echo "| to a file  | $on |"
echo "| off        | $off |"
awk -v on="$on" -v off="$off" 'BEGIN { printf "log on / log off = %.3f (cost %.1f %%)\n", on / off, 100 * (1 - on / off) }'
echo "($lines lines written)"
