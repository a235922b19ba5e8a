#!/usr/bin/env bash
# Cost of the access log on 1 KiB cache hits, on one core: two gateways with
# the same config but for `access_log` (one writes JSON lines to a file, one
# has the log off), both pinned to core 0 with one thread; wrk (-t1 -c64) and
# the origin (a tiny nginx) on core 1. The two are measured in alternating
# runs (on, off, on, off ...) and the median of each is reported, with the
# ratio on/off.
#
#   loadtests/accesslog.sh              # RUNS=5 DURATION=8s
#
# Installs wrk and nginx-light with apt-get when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RUNS=${RUNS:-5}
DURATION=${DURATION:-8s}
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing: ${need[*]} (apt-get install ${need[*]})"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ensure_system_deps
cargo build --release --locked -p gateway -p upstream-app >/dev/null  # one feature set for every script: no rebuild

pick() { local p; while :; do p=$((20000 + RANDOM % 20000)); port_free "$p" && { echo "$p"; return; }; done; }
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

declare -A PORT
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
  RUST_LOG=error taskset -c 0 target/release/gateway -c "$dir/$mode.yaml" 2>"$dir/$mode.log" & pids+=($!)
  wait_http "http://127.0.0.1:$admin/ready" 20 || die "gateway ($mode) did not come up"
  curl -fsS -o /dev/null "http://127.0.0.1:$port/1k"
  curl -fsS -D - -o /dev/null "http://127.0.0.1:$port/1k" | grep -qi '^x-cache: HIT' || die "gateway ($mode) does not hit"
done

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
