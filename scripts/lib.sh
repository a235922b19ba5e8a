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
