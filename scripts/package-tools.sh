# Tools for the packaging tests (gateway/tests/packages.rs): sourced by
# scripts/test after lib.sh. Sourced, not run.
# shellcheck shell=bash
#
# - Debian packages: lintian, rpmlint, rpm, debootstrap, cloud-init (only its
#   `cloud-init schema` validator is used: installed with no service started),
#   binutils (objdump, strip), dpkg-dev.
# - PyPI: cfn-lint.
# - crates.io: cargo-deb and cargo-generate-rpm, at versions known to work.
# Under CI (CI non-empty) a tool still missing afterwards is an error; elsewhere
# the tests that need it say "skipped".

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

# The tools, as COMMAND:DEBIAN_PACKAGE.
PACKAGE_TEST_TOOLS=(
  lintian:lintian rpmlint:rpmlint rpm:rpm debootstrap:debootstrap
  cloud-init:cloud-init objdump:binutils strip:binutils dpkg-deb:dpkg
)

# apt_get_install_quiet PKG...: apt-get install that starts no service. While
# it runs, /usr/sbin/policy-rc.d answers 101 ("action forbidden") to
# invoke-rc.d and deb-systemd-invoke; a policy file that was there before is
# put back byte for byte afterwards.
apt_get_install_quiet() {
  local policy=/usr/sbin/policy-rc.d saved="" rc=0
  if [ -e "$policy" ]; then
    saved=$(mktemp) && cp -p "$policy" "$saved" || return 1
  fi
  printf '#!/bin/sh\n# scripts/test: no service starts while test tools install\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || rc=$?
  if [ -n "$saved" ]; then
    mv -f "$saved" "$policy"
  else
    rm -f "$policy"
  fi
  return "$rc"
}

ensure_package_tools() {
  local entry tool pkgs=() still=()
  for entry in "${PACKAGE_TEST_TOOLS[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || pkgs+=("${entry#*:}")
  done
  if [ ${#pkgs[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    say "installing ${pkgs[*]} with apt-get (packaging tests; no service is started)"
    apt-get update -qq >/dev/null || say "apt-get update failed; trying the install anyway"
    apt_get_install_quiet "${pkgs[@]}" || say "apt-get install ${pkgs[*]} failed"
  fi
  if ! command -v cfn-lint >/dev/null 2>&1; then
    say "installing cfn-lint with pip"
    python3 -m pip install -q 'cfn-lint>=1,<2' >/dev/null 2>&1 || say "pip install cfn-lint failed"
    hash -r
  fi
  if ! command -v cargo-deb >/dev/null 2>&1; then
    say "installing cargo-deb $CARGO_DEB_VERSION (cargo install)"
    cargo install -q --locked "cargo-deb@$CARGO_DEB_VERSION" || say "cargo install cargo-deb failed"
  fi
  if ! command -v cargo-generate-rpm >/dev/null 2>&1; then
    say "installing cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION (cargo install)"
    cargo install -q --locked "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION" \
      || say "cargo install cargo-generate-rpm failed"
  fi
  for tool in "${PACKAGE_TEST_TOOLS[@]%%:*}" cfn-lint cargo-deb cargo-generate-rpm; do
    command -v "$tool" >/dev/null 2>&1 || still+=("$tool")
  done
  [ ${#still[@]} -eq 0 ] && return 0
  if [ -n "${CI:-}" ]; then
    die "CI is set and ${still[*]} not installed: the packaging tests need them (run as root on Debian/Ubuntu)"
  fi
  say "${still[*]} not installed: the packaging tests that need them will say \"skipped\""
}

# build_release_once: the release binaries that deploy/package packages, built
# here (once, before cargo test) rather than inside a test.
build_release_once() {
  say "building the release binaries for the packaging tests"
  cargo build --release --locked -p gateway -p upstream-app
}
