#!/usr/bin/env bash
# Provisions the dev overlay's Garage as deploy/stack.sh's provision_garage does: the layout,
# the operator's key, bucket and grant, then one key per service (the scheduler reads; workers
# and the API read and write). Every step runs only if it is missing, so the Job can run again.
# Runs in the gpu-fleet/garage-init image (deploy/docker/garage-init.Dockerfile).
#
# garage-init does the operator's part, but it reads the node's id from the metadata volume,
# which this pod does not share: the id comes from the admin API instead, and the layout is
# assigned here first (garage-init then finds it assigned and skips that step).
#
# Reads GARAGE_ADMIN_URL, GARAGE_ADMIN_TOKEN, GARAGE_RPC_ADDR, GARAGE_RPC_SECRET,
# FLEET_<SERVICE>_S3_KEY and FLEET_<SERVICE>_S3_SECRET, and what garage-init reads.
set -euo pipefail

ADMIN=${GARAGE_ADMIN_URL:?}
TOKEN=${GARAGE_ADMIN_TOKEN:?}
RPC_ADDR=${GARAGE_RPC_ADDR:?}
BUCKET=${FLEET_S3_BUCKET:?}
TIMEOUT=${GARAGE_INIT_TIMEOUT:-120}

log() { printf '[garage-provision] %s\n' "$*" >&2; }
fail() { printf '[garage-provision] %s\n' "$*" >&2; exit 1; }

deadline=$((SECONDS + TIMEOUT))
until status=$(curl -fsS --max-time 5 -H "Authorization: Bearer $TOKEN" "$ADMIN/v2/GetClusterStatus" 2>&1); do
  [ $SECONDS -lt $deadline ] || fail "admin API at $ADMIN not answering after ${TIMEOUT}s: $status"
  sleep 1
done
node=$(printf '%s' "$status" | grep -o '"id": *"[0-9a-f]\{64\}"' | head -n 1 | grep -o '[0-9a-f]\{64\}' || true)
[ -n "$node" ] || fail "no node id in the cluster status: $status"
# With the node's id, address and the RPC secret, the CLI needs no config file.
export GARAGE_RPC_HOST=$node@$RPC_ADDR

version=$(garage layout show | sed -n 's/^Current cluster layout version: *//p')
[ -n "$version" ] || fail "cannot read the layout version from \`garage layout show\`"
if [ "$version" = 0 ]; then
  log "assigning the layout to node ${node:0:16}"
  garage layout assign -z dc1 -c 1G "$node" >/dev/null
  garage layout apply --version 1 >/dev/null
fi

GARAGE_INIT_TIMEOUT=$((deadline - SECONDS > 10 ? deadline - SECONDS : 10)) garage-init

for service in scheduler worker api; do
  key_var=FLEET_${service^^}_S3_KEY secret_var=FLEET_${service^^}_S3_SECRET
  id=${!key_var:?$key_var is not set} secret=${!secret_var:?$secret_var is not set}
  if ! garage key info "$id" >/dev/null 2>&1; then
    log "importing key fleet-$service ($id)"
    garage key import --yes -n "fleet-$service" "$id" "$secret" >/dev/null
  fi
done
garage bucket allow --read "$BUCKET" --key fleet-scheduler >/dev/null
garage bucket allow --read --write "$BUCKET" --key fleet-worker >/dev/null
garage bucket allow --read --write "$BUCKET" --key fleet-api >/dev/null
log "keys fleet-scheduler (read), fleet-worker and fleet-api (read, write) granted on $BUCKET"
