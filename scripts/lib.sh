# Shared helpers of scripts/stack and scripts/test. Sourced, not run.
# shellcheck shell=bash

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs missing system packages with apt-get (Debian/Ubuntu) or, where there
# is no apt-get, dnf (Amazon Linux 2023, Fedora) when we are root; otherwise
# says exactly what to install.
ensure_system_deps() {
  local missing=()
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)   # Pingora's zlib-ng build needs it
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing ${missing[*]} with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null || die "apt-get update failed"
      apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    elif [ "$(id -u)" = 0 ] && command -v dnf >/dev/null 2>&1; then
      # Amazon Linux 2023 names Redis redis6 (binary redis6-server): link the
      # name the scripts and tests use.
      local dnf_pkgs=("${missing[@]/#redis-server/redis6}")
      say "installing ${dnf_pkgs[*]} with dnf"
      dnf install -y -q "${dnf_pkgs[@]}" >/dev/null || die "dnf install ${dnf_pkgs[*]} failed"
      if ! command -v redis-server >/dev/null 2>&1 && command -v redis6-server >/dev/null 2>&1; then
        ln -s "$(command -v redis6-server)" /usr/local/bin/redis-server
      fi
    else
      die "missing: ${missing[*]}. Install them (Debian/Ubuntu: sudo apt-get install -y ${missing[*]}; Amazon Linux: sudo dnf install -y ${missing[*]/#redis-server/redis6}) and run again."
    fi
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install Rust with rustup (https://rustup.rs) and run again."
}

# port_free PORT: true when nothing listens on 127.0.0.1:PORT.
port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_http URL SECONDS: until URL answers 2xx, or fail.
wait_http() {
  local url=$1 deadline=$((SECONDS + $2))
  while [ $SECONDS -lt "$deadline" ]; do
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# apt_install_no_start PKG...: apt-get install that starts no service. While it
# runs, /usr/sbin/policy-rc.d answers 101 ("action forbidden") to invoke-rc.d
# and deb-systemd-invoke, so a package such as prometheus cannot start a server
# (that we would then have to find and stop); a policy that was there before
# is put back afterwards, also on Ctrl-C.
apt_install_no_start() {
  local policy=/usr/sbin/policy-rc.d saved="" rc=0
  if [ -e "$policy" ]; then
    saved=$(mktemp "$policy.saved.XXXXXX") && cp -p "$policy" "$saved" || return 1
  fi
  # shellcheck disable=SC2064  # expand now: the paths are fixed for this call
  trap "$(_restore_policy_cmd "$policy" "$saved"); exit 130" INT TERM
  printf '#!/bin/sh\n# written by scripts/test while it installs test tools\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  eval "$(_restore_policy_cmd "$policy" "$saved")"
  trap - INT TERM
  return "$rc"
}

_restore_policy_cmd() {
  if [ -n "$2" ]; then
    printf 'mv -f %q %q' "$2" "$1"
  else
    printf 'rm -f %q' "$1"
  fi
}

# The external tools that tests run, as TOOL:DEBIAN_PACKAGE. node, npm and
# chromium drive the status page test (gateway/tests/status_page.rs).
TEST_TOOLS=(promtool:prometheus systemd-analyze:systemd curl:curl openssl:openssl node:nodejs npm:npm chromium:chromium pebble:pebble pebble-challtestsrv:pebble)

# The browser test's npm packages (playwright-core, pinned by its lockfile;
# the browser is Debian's chromium, never one playwright downloads).
BROWSER_TEST_DIR=gateway/tests/browser

# ensure_test_tools: installs the missing TEST_TOOLS (root with apt-get, no
# service started). Under CI (CI non-empty) a tool still missing is an error,
# as it is for the tests themselves; elsewhere those tests say "skipped".
ensure_test_tools() {
  local entry tool missing_tools=() missing_pkgs=() still=()
  for entry in "${TEST_TOOLS[@]}"; do
    tool=${entry%%:*}
    if ! command -v "$tool" >/dev/null 2>&1; then
      missing_tools+=("$tool")
      missing_pkgs+=("${entry#*:}")
    fi
  done
  if [ ${#missing_tools[@]} -eq 0 ]; then
    ensure_browser_test_packages
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${missing_pkgs[*]} (for ${missing_tools[*]}) with apt-get; no service is started"
    apt-get update -qq >/dev/null || say "apt-get update failed; trying the install anyway"
    apt_install_no_start "${missing_pkgs[@]}" || say "apt-get install ${missing_pkgs[*]} failed"
  fi
  for tool in "${missing_tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || still+=("$tool")
  done
  ensure_browser_test_packages
  [ ${#still[@]} -eq 0 ] && return 0
  if [ -n "${CI:-}" ]; then
    die "CI is set and ${still[*]} not installed: the tests need them. Run as root on Debian/Ubuntu (scripts/test installs ${missing_pkgs[*]} with apt-get), or install them first."
  fi
  say "${still[*]} not installed: the tests that need them will say \"skipped\" (as root, scripts/test installs ${missing_pkgs[*]})"
}

# ensure_browser_test_packages: `npm ci` in BROWSER_TEST_DIR when its
# playwright-core is missing (needs npm; PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD so
# that nothing but the npm package is fetched). Under CI a failure is an error.
ensure_browser_test_packages() {
  [ -e "$BROWSER_TEST_DIR/node_modules/playwright-core/package.json" ] && return 0
  if command -v npm >/dev/null 2>&1; then
    say "installing the browser test's npm packages (npm ci in $BROWSER_TEST_DIR)"
    if (cd "$BROWSER_TEST_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
      return 0
    fi
    [ -n "${CI:-}" ] && die "npm ci in $BROWSER_TEST_DIR failed"
    say "npm ci in $BROWSER_TEST_DIR failed: the status page test will say \"skipped\""
  elif [ -n "${CI:-}" ]; then
    die "CI is set and npm is not installed: the status page test needs it"
  fi
}

# A small supervisor for scripts/stack. Each component NAME is started by a
# function `run_NAME` that the caller defines (it should `exec` the program, so
# that the job's pid is the program's). A component that exits is named and
# restarted after STACK_RESTART_DELAY seconds; one that exits
# STACK_MAX_EXITS times within STACK_RESTART_WINDOW seconds is given up on:
# sup_loop then returns 1 with its name in SUP_GAVE_UP. sup_stop stops them all.
STACK_RESTART_DELAY=${STACK_RESTART_DELAY:-1}
STACK_MAX_EXITS=${STACK_MAX_EXITS:-5}
STACK_RESTART_WINDOW=${STACK_RESTART_WINDOW:-30}
declare -A SUP_PID=() SUP_EXITS=()
SUP_GAVE_UP=""

# sup_start NAME...: starts each component in the background.
sup_start() {
  local name
  for name in "$@"; do
    "run_$name" &
    SUP_PID[$name]=$!
  done
}

# sup_loop: watches the components (every 0.2 s: `wait -n` misses a job that
# ended before it was called) and restarts one that exited; returns 1 when one
# exits too often (SUP_GAVE_UP names it).
sup_loop() {
  local name status now t recent
  while :; do
    for name in "${!SUP_PID[@]}"; do
      if kill -0 "${SUP_PID[$name]}" 2>/dev/null; then
        continue
      fi
      status=0
      wait "${SUP_PID[$name]}" 2>/dev/null || status=$?
      now=$SECONDS
      recent=()
      for t in ${SUP_EXITS[$name]:-} "$now"; do
        if (( now - t < STACK_RESTART_WINDOW )); then
          recent+=("$t")
        fi
      done
      SUP_EXITS[$name]="${recent[*]}"
      if (( ${#recent[@]} >= STACK_MAX_EXITS )); then
        say "$name exited (status $status), ${#recent[@]} times within ${STACK_RESTART_WINDOW}s: giving up"
        unset "SUP_PID[$name]"
        # shellcheck disable=SC2034  # read by the caller
        SUP_GAVE_UP=$name
        return 1
      fi
      say "$name exited (status $status); restarting it in ${STACK_RESTART_DELAY}s"
      sleep "$STACK_RESTART_DELAY"
      sup_start "$name"
      say "$name restarted (pid ${SUP_PID[$name]})"
    done
    sleep 0.2
  done
}

# sup_stop: asks every running component to stop (SIGTERM) and waits for them.
sup_stop() {
  local pid
  for pid in "${SUP_PID[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}

# ensure_bench_tools [command:package ...]: what the benchmarks in loadtests/
# run: wrk, nginx (nginx-light: the comparison and the fixed-body origin) and
# the extra commands given; installed with apt-get as root, else a clear
# error naming the packages. Sets NGINX to nginx's path.
ensure_bench_tools() {
  local need=() entry
  command -v wrk >/dev/null || need+=(wrk)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  for entry in "$@"; do
    command -v "${entry%%:*}" >/dev/null || need+=("${entry#*:}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; } \
      || die "missing: ${need[*]} (apt-get install ${need[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

# nginx_temp DIR: nginx's temporary-file paths under DIR (benchmarks' nginx configs).
nginx_temp() { echo "client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;"; }

# cache_bench_configs DIR ORIGIN NGINX_PORT GW_PORT GW_ADMIN: the cache
# benchmarks' three configs (loadtests/cache.sh, ab.sh, conn_memory.sh):
# DIR/origin/nginx.conf, a tiny nginx serving DIR/www with
# Cache-Control: max-age=3600 (an unknown path gets DIR/www/fill);
# DIR/proxy/nginx.conf, nginx proxy_cache in front of it (one worker); and
# DIR/gateway.yaml, the gateway caching everything (one thread, no access log).
cache_bench_configs() {
  local dir=$1 origin=$2 nginx_port=$3 gw_port=$4 gw_admin=$5
  local common="worker_rlimit_nofile 65536; events { worker_connections 8192; }"
  mkdir -p "$dir/origin" "$dir/proxy/cache"
  cat > "$dir/origin/nginx.conf" <<CONF
worker_processes 1; error_log $dir/origin/error.log warn; pid $dir/origin/pid; $common
http { access_log off; $(nginx_temp "$dir/origin") keepalive_requests 10000000;
  server { listen 127.0.0.1:$origin; root $dir/www; etag off;
    location / { add_header Cache-Control "max-age=3600"; try_files \$uri /fill; } } }
CONF
  cat > "$dir/proxy/nginx.conf" <<CONF
worker_processes 1; error_log $dir/proxy/error.log warn; pid $dir/proxy/pid; $common
http { access_log off; $(nginx_temp "$dir/proxy") keepalive_requests 10000000;
  proxy_cache_path $dir/proxy/cache levels=1:2 keys_zone=c:64m max_size=256m inactive=1h;
  upstream app { server 127.0.0.1:$origin; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache c; add_header X-Cache \$upstream_cache_status; } } }
CONF
  cat > "$dir/gateway.yaml" <<YAML
listen: "127.0.0.1:$gw_port"
threads: 1
pid_file: $dir/gateway.pid
upgrade_sock: $dir/upgrade.sock
admin: { listen: "127.0.0.1:$gw_admin" }
access_log: { enabled: false }
client: { max_connections: 20000 }
cache: { max_size: 256MiB, max_object_size: 8MiB }
upstreams: { origin: { servers: ["127.0.0.1:$origin"] } }
routes: [{ name: all, match: { path_prefix: / }, upstream: origin, cache: { enabled: true } }]
YAML
  chmod -R a+rwX "$dir/origin" "$dir/proxy"  # nginx workers run as an unprivileged user
}

# pick: a free loopback port in 20000-39999 (for the benchmarks' processes).
pick() { local p; while :; do p=$((20000 + RANDOM % 20000)); port_free "$p" && { echo "$p"; return; }; done; }

# cpu_ticks PID: "user system" CPU time of a process, all its threads, in clock
# ticks (/proc/PID/stat fields 14 and 15, read after the command name).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }

# cpu_per_request "U0 S0" "U1 S1" REQUESTS: user and system CPU microseconds per
# request between two cpu_ticks readings, e.g. "26.9 16.8". Tells a proxy's own
# work (user) from the kernel's (sockets, epoll: system) in a benchmark.
cpu_per_request() {
  local hz; hz=$(getconf CLK_TCK)
  awk -v a="$1" -v b="$2" -v n="$3" -v hz="$hz" 'BEGIN {
    split(a, x, " "); split(b, y, " ");
    printf "%.1f %.1f\n", (y[1] - x[1]) * 1e6 / hz / n, (y[2] - x[2]) * 1e6 / hz / n }'
}
