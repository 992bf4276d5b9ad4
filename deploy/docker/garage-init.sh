#!/usr/bin/env bash
# Provisions the compose stack's Garage exactly as deploy/stack.sh's provision_garage does: the
# layout, the fixed dev key, bucket FLEET_S3_BUCKET and the key's grant, each only if missing
# (so it runs on every `up`), then waits for a signed S3 request to succeed and checks a PUT/GET.
#
# Reads FLEET_S3_ENDPOINT, FLEET_S3_REGION, FLEET_S3_BUCKET, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, GARAGE_KEY_NAME; the CLI reads /etc/garage.toml and the node id from
# the metadata volume.
set -euo pipefail

ENDPOINT=${FLEET_S3_ENDPOINT:?}
REGION=${FLEET_S3_REGION:?}
BUCKET=${FLEET_S3_BUCKET:?}
KEY_ID=${AWS_ACCESS_KEY_ID:?}
SECRET=${AWS_SECRET_ACCESS_KEY:?}
KEY_NAME=${GARAGE_KEY_NAME:-fleet-dev}
TIMEOUT=${GARAGE_INIT_TIMEOUT:-60}

log() { printf '[garage-init] %s\n' "$*" >&2; }
fail() { printf '[garage-init] %s\n' "$*" >&2; exit 1; }

# s3 METHOD PATH [BODY]: a SigV4-signed request with the dev key, as in stack.sh. curl 7.88
# signs but does not send the payload hash S3 wants.
s3() {
  local body=${3:-} sha
  sha=$(printf %s "$body" | sha256sum)
  local args=(-sS -f --max-time 5 -X "$1" --aws-sigv4 "aws:amz:$REGION:s3"
    --user "$KEY_ID:$SECRET" -H "x-amz-content-sha256: ${sha%% *}")
  [ -z "$body" ] || args+=(-H 'content-type: text/plain' --data-binary @-)
  printf %s "$body" | curl "${args[@]}" "$ENDPOINT/$2"
}

deadline=$((SECONDS + TIMEOUT))
until garage status >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || fail "garage: node not answering after ${TIMEOUT}s: $(garage status 2>&1 | tail -n 1)"
  sleep 0.5
done

version=$(garage layout show | sed -n 's/^Current cluster layout version: *//p')
[ -n "$version" ] || fail "cannot read the layout version from \`garage layout show\`"
if [ "$version" = 0 ]; then
  node=$(garage node id -q 2>/dev/null | cut -d@ -f1)
  [ -n "$node" ] || fail "could not read the node id from the metadata volume"
  log "assigning the layout to node ${node:0:16}"
  garage layout assign -z dc1 -c 1G "$node" >/dev/null
  garage layout apply --version 1 >/dev/null
fi
if ! garage key info "$KEY_ID" >/dev/null 2>&1; then
  log "importing key $KEY_NAME ($KEY_ID)"
  garage key import --yes -n "$KEY_NAME" "$KEY_ID" "$SECRET" >/dev/null
fi
if ! garage bucket info "$BUCKET" >/dev/null 2>&1; then
  log "creating bucket $BUCKET"
  garage bucket create "$BUCKET" >/dev/null
fi
garage bucket allow --read --write --owner "$BUCKET" --key "$KEY_NAME" >/dev/null

# Tables settle a moment after the layout is applied: wait for a real signed request.
until s3 GET "$BUCKET/?list-type=2&max-keys=1" >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || fail "S3 API not answering at $ENDPOINT after ${TIMEOUT}s"
  sleep 0.5
done
probe="_stack/probe"
body="written by garage-init at $(date -u +%FT%TZ)"
s3 PUT "$BUCKET/$probe" "$body" >/dev/null || fail "PUT s3://$BUCKET/$probe failed"
[ "$(s3 GET "$BUCKET/$probe")" = "$body" ] || fail "GET s3://$BUCKET/$probe did not return what was PUT"
log "bucket $BUCKET ready for key $KEY_NAME (S3 PUT/GET checked)"
