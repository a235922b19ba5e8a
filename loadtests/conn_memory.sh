#!/usr/bin/env bash
# Memory per connection (issue #23): the gateway's resident memory with a full
# cache, idle, then while 2,000 keep-alive connections stream 64 KiB cache
# hits, and after they close.
#
# The gateway runs with `threads: 1` pinned to core 0; wrk and the origin (a
# tiny nginx serving fixed bodies with Cache-Control: max-age=3600) run on
# core 1. RSS is read from /proc every second while wrk runs; the figure that
# matters is the peak under load minus the idle figure, divided by the number
# of connections. RSS does not depend much on the machine's load (unlike the
# request rate, which is printed only as a check that the connections worked).
#
#   loadtests/conn_memory.sh                       # FILL=1 CONNS=2000 DURATION=20s
#   FILL=0 loadtests/conn_memory.sh                # skip filling the 256 MiB cache
#   BIN=/tmp/gateway-old BUILD=0 loadtests/conn_memory.sh   # another binary
#
# Heap profile of the same load (dhat sees what mimalloc hides from RSS):
#   cargo build --release -p gateway --features dhat-heap
#   DHAT=1 BUILD=0 loadtests/conn_memory.sh       # writes target/loadtests/conn-dhat.json
#   python3 loadtests/dhat_top.py target/loadtests/conn-dhat.json
# With DHAT=1 the cache is not filled (dhat slows the gateway ~100x) and the
# profile is written DHAT_SECS (default 30) seconds after start, while the
# connections are still open: its "at end" figures are the live heap under
# load.
#
# Only 127.0.0.1 is used; everything started is stopped by PID.
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
source scripts/lib.sh

CONNS=${CONNS:-2000}
DURATION=${DURATION:-20s}
FILL=${FILL:-1}
BIN=${BIN:-target/release/gateway}
DHAT=${DHAT:-}
DHAT_SECS=${DHAT_SECS:-30}
mkdir -p target/loadtests
if [ -n "$DHAT" ]; then
  FILL=0
  DURATION=$((DHAT_SECS + 15))s
fi

ensure_bench_tools
if [ "${BUILD:-1}" = 1 ]; then
  ensure_system_deps
  cargo build --release --locked -p gateway -p upstream-app >/dev/null
fi
[ -x "$BIN" ] || die "no gateway binary at $BIN"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ORIGIN=$(pick); GW_PORT=$(pick); GW_ADMIN=$(pick)
dir=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"; }
trap cleanup EXIT

mkdir -p "$dir/www" "$dir/origin"
head -c 65536 /dev/zero | tr '\0' 'b' > "$dir/www/64k"
head -c 65536 /dev/zero | tr '\0' 'c' > "$dir/www/fill"
chmod -R a+rwX "$dir"   # nginx workers run as an unprivileged user
cache_bench_configs "$dir" "$ORIGIN" "$(pick)" "$GW_PORT" "$GW_ADMIN"  # no nginx proxy here
taskset -c 1 "$NGINX" -p "$dir/origin" -c "$dir/origin/nginx.conf" -g 'daemon off;' & pids+=($!)
# Pingora logs every client that hangs up mid-body at ERROR: keep that out of the report.
DHAT_FILE="$PWD/target/loadtests/conn-dhat.json" DHAT_SECS=$DHAT_SECS \
  RUST_LOG=error taskset -c 0 "$BIN" -c "$dir/gateway.yaml" 2>"$dir/gateway.log" & pids+=($!)
GW_PID=$!
for url in "http://127.0.0.1:$ORIGIN/64k" "http://127.0.0.1:$GW_ADMIN/ready"; do
  wait_http "$url" 60 || die "$url did not come up"
done
curl -fsS -o /dev/null "http://127.0.0.1:$GW_PORT/64k"
curl -fsS -D - -o /dev/null "http://127.0.0.1:$GW_PORT/64k" | grep -qi '^x-cache: HIT' || die "gateway does not hit"

rss() { awk '/^VmRSS/ {print $2}' "/proc/$GW_PID/status"; }  # KiB
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
rss_start=$(rss)
if [ "$FILL" = 1 ]; then
  echo "filling the gateway cache (distinct 64 KiB objects past the 256 MiB bound)..."
  cat > "$dir/fill.lua" <<'LUA'
counter = 0
request = function() counter = counter + 1; return wrk.format("GET", "/fill/" .. counter .. "-" .. math.random(1e9)) end
LUA
  taskset -c 1 wrk -t1 -c16 -d20s -s "$dir/fill.lua" "http://127.0.0.1:$GW_PORT" >/dev/null
  curl -fsS -o /dev/null "http://127.0.0.1:$GW_PORT/64k"   # the hit object stays
  sleep 1   # mimalloc gives freed pages back after 100 ms
fi
rss_idle=$(rss)
metrics=$(curl -fsS "http://127.0.0.1:$GW_ADMIN/metrics")
bytes=$(awk '/^gateway_cache_bytes / {print $2}' <<<"$metrics")

stat() { awk '{print $10, $14 + $15}' "/proc/$GW_PID/stat"; }  # minor faults, CPU ticks
read -r flt0 cpu0 <<<"$(stat)"
taskset -c 1 wrk -t2 -c"$CONNS" -d"$DURATION" --timeout 10s --latency "http://127.0.0.1:$GW_PORT/64k" >"$dir/wrk.out" &
WRK=$!
peak=$rss_idle; samples=()
while kill -0 "$WRK" 2>/dev/null; do
  r=$(rss); samples+=("$(mib "$r")"); [ "$r" -gt "$peak" ] && peak=$r
  sleep 1
done
wait "$WRK" || true
read -r flt1 cpu1 <<<"$(stat)"
sleep 1
rss_after=$(rss)

echo
echo "gateway $(basename "$BIN"): $CONNS connections x 64 KiB cache hits, wrk -t2 -d$DURATION, threads: 1"
echo "cache: $bytes bytes accounted (max_size 256 MiB, filled: $FILL)"
echo "RSS samples (MiB, 1 s apart): ${samples[*]}"
echo "| RSS at start | idle, cache ready | peak under $CONNS connections | per connection | after they close |"
echo "|---|---|---|---|---|"
printf '| %s MiB | %s MiB | %s MiB (+%s MiB) | %s KiB | %s MiB |\n' \
  "$(mib "$rss_start")" "$(mib "$rss_idle")" "$(mib "$peak")" "$(mib $((peak - rss_idle)))" \
  "$(awk -v d=$((peak - rss_idle)) -v c="$CONNS" 'BEGIN { printf "%.1f", d / c }')" "$(mib "$rss_after")"
echo "wrk: $(awk '/Requests\/sec/ {print $2 " req/s"}' "$dir/wrk.out"), p99 $(awk '$1=="99%" {print $2}' "$dir/wrk.out"); $(awk '/Non-2xx|Socket errors/' "$dir/wrk.out" | tr '\n' ' ')"
requests=$(awk '/requests in/ {print $1}' "$dir/wrk.out")
echo "gateway during the run: $((flt1 - flt0)) minor page faults, $(( (cpu1 - cpu0) * 1000 / $(getconf CLK_TCK) )) ms CPU for $requests requests"
echo "(the rate is only a check that the connections worked: this script is about memory)"
if [ -n "$DHAT" ]; then
  echo "(with DHAT=1 the RSS above includes dhat's own bookkeeping: use the profile, not the RSS)"
  for _ in $(seq 60); do grep -q 'dhat: profile written' "$dir/gateway.log" && break; sleep 1; done
  grep -q 'dhat: profile written' "$dir/gateway.log" || die "no dhat profile written (is $BIN built with --features dhat-heap?)"
  echo "heap profile: target/loadtests/conn-dhat.json (python3 loadtests/dhat_top.py target/loadtests/conn-dhat.json)"
fi
