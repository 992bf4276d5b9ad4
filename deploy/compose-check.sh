#!/usr/bin/env bash
# Validates docker-compose.yml the way Compose itself reads it, with no Docker daemon and no
# images: schema, interpolation, anchors, depends_on conditions and the GPU device reservation.
#
#   deploy/compose-check.sh [FILE]                  check FILE (default: docker-compose.yml), print its services
#   deploy/compose-check.sh --print-config [FILE]   check it and print the fully resolved config instead
#
# Uses `docker-compose` (Debian's 1.29, or a v2 standalone binary) or the `docker compose`
# plugin, whichever is installed; if neither is, installs Debian's docker-compose with apt
# (through sudo unless root). Relative paths in FILE resolve from the repository root, wherever
# FILE lives, so a modified copy can be checked from a temporary folder. Exits non-zero, with
# Compose's message, when the file is invalid.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[compose-check] %s\n' "$*" >&2; }
fail() {
  log "$*"
  exit 1
}

print_config=""
if [ "${1:-}" = --print-config ]; then
  print_config=1
  shift
fi
[ $# -le 1 ] || fail "usage: $0 [--print-config] [FILE]"
file=${1:-$REPO/docker-compose.yml}
[ -f "$file" ] || fail "no such file: $file"

# Sets COMPOSE to the command to run, or returns 1 if there is none.
find_compose() {
  if command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
  elif command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  else
    return 1
  fi
}

install_compose() {
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "docker-compose is not installed, and installing it needs root or sudo"
    sudo=(sudo)
  fi
  log "installing Debian's docker-compose with apt"
  local apt_log rc=0
  apt_log=$(mktemp /tmp/compose-check-apt.XXXXXX.log)
  # Without recommends: validating needs only Compose, not the docker.io daemon it recommends.
  {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose
  } >"$apt_log" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then
    tail -n 20 "$apt_log" >&2
    fail "apt-get install docker-compose failed (full output in $apt_log)"
  fi
  rm -f "$apt_log"
}

find_compose || { install_compose && find_compose; } || fail "no docker-compose after installing it"
version=$("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version 2>/dev/null | head -n 1)

compose() { "${COMPOSE[@]}" --project-directory "$REPO" -f "$file" "$@"; }

compose config -q || fail "$file is not a valid Compose file for ${COMPOSE[*]} $version"
if [ -n "$print_config" ]; then
  compose config
else
  compose config --services
fi
log "$file is valid for ${COMPOSE[*]} $version"
