#!/usr/bin/env bash
# Renders every kustomization of deploy/k8s (base and each overlays/*) with `kubectl kustomize`
# and validates every rendered document, offline once its tools are installed:
#
#   deploy/k8s/check.sh
#
# 1. kubectl: $KUBECTL, else the one on PATH, else Debian's kubernetes-client (kubectl 1.20,
#    kustomize 2.0.3), installed with apt. When the one used is newer, Debian's is also fetched
#    (apt-get download, unpacked into the cache, not installed) and every overlay is rendered
#    by both: the two renders must hold the same objects. K8S_CHECK_COMPARE=0 skips that.
# 2. validate.mjs (node): each document against the Kubernetes OpenAPI schema or KEDA's CRD
#    schema, unknown fields refused, then the fleet's own rules (rules.mjs); then its
#    self-test breaks copies of the renders and expects each break to be reported.
#
# The npm packages (package.json, pinned by package-lock.json) go to
# ${GPU_FLEET_CACHE:-$HOME/.cache/gpu-fleet}/k8s-validate, never into the repository.
# K8S_CHECK_OUT=DIR keeps the renders there. Exits non-zero naming the overlay, the document
# and the reason of each finding.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${GPU_FLEET_CACHE:-$HOME/.cache/gpu-fleet}/k8s-validate
DEBIAN_KUBECTL=$CACHE/kubernetes-client/usr/bin/kubectl

log() { printf '[k8s-check] %s\n' "$*" >&2; }
fail() { printf '[k8s-check] FAIL %s\n' "$*" >&2; exit 1; }

# version KUBECTL: its client version, e.g. v1.20.2.
version() { "$1" version --client 2>/dev/null | grep -o 'v[0-9]\+\.[0-9]\+\.[0-9]\+' | head -n 1; }

apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  log "installing $* with apt"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

# Debian's kubectl unpacked into the cache; installing it would replace another kubectl.
fetch_debian_kubectl() {
  [ -x "$DEBIAN_KUBECTL" ] && return 0
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || return 1
  local dir
  dir=$(mktemp -d)
  if ! (cd "$dir" && apt-get download kubernetes-client >/dev/null 2>&1); then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; fi
    (cd "$dir" && apt-get download kubernetes-client >/dev/null 2>&1) || { rm -rf "$dir"; return 1; }
  fi
  mkdir -p "$CACHE" && rm -rf "$CACHE/kubernetes-client"
  dpkg-deb -x "$dir"/kubernetes-client_*.deb "$CACHE/kubernetes-client"
  rm -rf "$dir"
  [ -x "$DEBIAN_KUBECTL" ]
}

KUBECTL=${KUBECTL:-$(command -v kubectl || true)}
if [ -z "$KUBECTL" ]; then
  apt_install kubernetes-client || fail "no kubectl on PATH and cannot install kubernetes-client (run as root on Debian, or set KUBECTL)"
  KUBECTL=$(command -v kubectl)
fi
KUBECTLS=("$KUBECTL")
if [ "${K8S_CHECK_COMPARE:-1}" != 0 ] && [[ $(version "$KUBECTL") != v1.20.* ]]; then
  if fetch_debian_kubectl; then
    KUBECTLS+=("$DEBIAN_KUBECTL")
  else
    log "note: cannot fetch Debian's kubernetes-client; rendering with $KUBECTL alone"
  fi
fi

command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm ||
  fail "node and npm are needed (apt-get install nodejs npm)"
mkdir -p "$CACHE"
if ! cmp -s "$HERE/package-lock.json" "$CACHE/package-lock.json" || [ ! -d "$CACHE/node_modules" ]; then
  log "installing the validator's packages into $CACHE"
  cp "$HERE/package.json" "$HERE/package-lock.json" "$CACHE/"
  (cd "$CACHE" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || fail "npm ci in $CACHE failed"
fi
# Imports made from a module in the cache resolve against the cache's node_modules.
echo 'export const load = (specifier) => import(specifier);' >"$CACHE/loader.mjs"

OUT=${K8S_CHECK_OUT:-$(mktemp -d)}
[ -n "${K8S_CHECK_OUT:-}" ] || trap 'rm -rf "$OUT"' EXIT
mkdir -p "$OUT"

overlays=(base)
for dir in "$HERE"/overlays/*/; do
  [ -f "$dir/kustomization.yaml" ] && overlays+=("overlays/$(basename "$dir")")
done

renders=() same=()
for i in "${!KUBECTLS[@]}"; do
  kubectl=${KUBECTLS[$i]}
  log "rendering ${overlays[*]} with kubectl $(version "$kubectl") ($kubectl)"
  for overlay in "${overlays[@]}"; do
    file=$OUT/${overlay//\//_}.$i.yaml
    "$kubectl" kustomize "$HERE/$overlay" >"$file" 2>"$file.err" ||
      fail "$overlay: kubectl $(version "$kubectl") kustomize failed: $(grep -v '^# Warning' "$file.err" | tail -n 5)"
    if [ "$i" = 0 ]; then renders+=("$overlay=$file"); else same+=(--same-as "$overlay=$file"); fi
  done
done

status=0
node "$HERE/validate.mjs" --loader "$CACHE/loader.mjs" --repo "$REPO" "${renders[@]}" "${same[@]}" || status=1
node "$HERE/validate.mjs" --loader "$CACHE/loader.mjs" --repo "$REPO" --self-test "${renders[@]}" || status=1
if [ $status = 0 ]; then log "all renders valid"; else log "FAIL: see the lines above"; fi
exit $status
