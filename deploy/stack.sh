#!/usr/bin/env bash
# The fleet's backing services for local development and CI, each a plain background daemon
# on 127.0.0.1 with all its data under one folder (no systemd, no containers; PostgreSQL's goes
# to /var/tmp when the postgres user cannot reach that folder, see pg_place):
#
#   RabbitMQ 3.10  jobs in, events out      amqp://127.0.0.1:5672/fleet
#   Redis 7.0      job state                redis://127.0.0.1:6379
#   Garage 2.x     S3 for images            http://127.0.0.1:3900, bucket "fleet"
#   PostgreSQL 15  the royalty ledger       postgres://127.0.0.1:5432/fleet
#
#   deploy/stack.sh up [--reuse]    install what is missing, start, provision; safe to repeat. A
#                                   stack in this folder that another checkout started is refused
#                                   unless --reuse (or FLEET_STACK_REUSE=1) says to use it
#   deploy/stack.sh down [--purge]  stop them all, data kept (--purge deletes the stack folder,
#                                   and PostgreSQL's folder outside it if it has one: see pg_place)
#   deploy/stack.sh status          one line per service; exits non-zero if any is down
#   deploy/stack.sh restart SERVICE stop and start rabbitmq, redis, garage or postgres, data kept
#   deploy/stack.sh env             export lines for clients: eval "$(deploy/stack.sh env)"
#
# Settings: FLEET_STACK_DIR (default .fleet/stack in the repo), FLEET_AMQP_PORT, FLEET_REDIS_PORT,
# FLEET_S3_PORT, FLEET_GARAGE_RPC_PORT, FLEET_GARAGE_ADMIN_PORT, FLEET_RABBIT_DIST_PORT (Erlang
# distribution, default AMQP port + 20000), FLEET_PG_PORT. Config files are rendered from
# deploy/templates/ on every `up` (PostgreSQL's are written by this script; the ledger's schema
# is templates/ledger.sql). Every credential here is a dev credential: see README.md.
# shellcheck disable=SC2034  # some settings are only read by render(), through ${!key}
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEPLOY")
STACK=$(realpath -m "${FLEET_STACK_DIR:-$REPO/.fleet/stack}")
RABBIT_DIR=$STACK/rabbitmq
REDIS_DIR=$STACK/redis
GARAGE_DIR=$STACK/garage
PG_DIR=$STACK/postgres
# PostgreSQL's own folder (data/, run/, its logs): $PG_DIR, or one here when the postgres user
# cannot reach the stack (see pg_place).
PG_OUTSIDE=/var/tmp/gpu-fleet-postgres

AMQP_PORT=${FLEET_AMQP_PORT:-5672}
REDIS_PORT=${FLEET_REDIS_PORT:-6379}
S3_PORT=${FLEET_S3_PORT:-3900}
GARAGE_RPC_PORT=${FLEET_GARAGE_RPC_PORT:-3901}
GARAGE_ADMIN_PORT=${FLEET_GARAGE_ADMIN_PORT:-3903}
PG_PORT=${FLEET_PG_PORT:-5432}

# Installed with cargo when no garage binary is found; the config targets 2.x.
GARAGE_VERSION=2.5.0

# One node name per AMQP port, so stacks on other ports (./fleet test's) run beside this one.
if [ "$AMQP_PORT" = 5672 ]; then RABBIT_NODE=fleet@localhost; else RABBIT_NODE=fleet-$AMQP_PORT@localhost; fi
RABBIT_DIST_PORT=${FLEET_RABBIT_DIST_PORT:-$((AMQP_PORT + 20000))}
RABBIT_BIN=/usr/lib/rabbitmq/bin
AMQP_USER=fleet
AMQP_PASS=fleet-dev-password
AMQP_VHOST=fleet

S3_REGION=garage
S3_BUCKET=fleet
S3_KEY_NAME=fleet-dev
# Least privilege: one object-store key per service (Garage grants per bucket: read, write,
# owner), one Redis user (templates/redis.conf) and one broker user (templates/definitions.json)
# per service; the dev secrets are fixed, like the tenants' broker passwords. The key above
# (owner) and the `fleet` broker user are the operator's.
SCHEDULER_S3_KEY=GK5c4e0a1d2b3c4d5e6f708192
SCHEDULER_S3_SECRET=5c4e0a1d2b3c4d5e6f70819203a4b5c6d7e8f90112233445566778899aabbccd
WORKER_S3_KEY=GK7a1b2c3d4e5f60718293a4b5
WORKER_S3_SECRET=7a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9
API_S3_KEY=GK9f8e7d6c5b4a39281706f5e4
API_S3_SECRET=9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0
S3_KEY_ID=GK2d7541c90c4a8d290d8ad650
S3_SECRET=060c4fc49a9cbc16a7d4d5f34a98f0594d261756f49a183e136f383eb578a40a
GARAGE_RPC_SECRET=f6ae36f92639b88a1ce3b42cab60f8b2cfec5d9fa573d475c8c655929d40ce9a
GARAGE_ADMIN_TOKEN=3cc13defa7a7547228af84b33ced7651b60b3f488e72a3b974cfc3e09a5a64db

# The royalty ledger: database `fleet`, owned by fleet_ledger_owner (only this script logs in
# as it, to apply templates/ledger.sql); workers write, the API reads, the operator revokes.
PG_DB=fleet
LEDGER_OWNER_PASS=fleet-ledger-owner-dev
LEDGER_WRITER_PASS=fleet-ledger-writer-dev
LEDGER_READER_PASS=fleet-ledger-reader-dev
LEDGER_ADMIN_PASS=fleet-ledger-admin-dev

# Start-up budgets, in seconds.
RABBIT_TIMEOUT=30
REDIS_TIMEOUT=10
GARAGE_TIMEOUT=20
PG_TIMEOUT=20

log() { printf '\033[1m[stack]\033[0m %s\n' "$*" >&2; }

# fail MESSAGE [LOG_FILE...]: print the message and the tail of each log, then exit 1.
fail() {
  local message=$1
  shift
  printf '\033[1;31m[stack]\033[0m %s\n' "$message" >&2
  local file
  for file in "$@"; do
    [ -f "$file" ] || continue
    printf -- '--- last lines of %s ---\n' "$file" >&2
    tail -n 25 "$file" >&2
  done
  exit 1
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# running PID [NAME]: the process exists, is not a zombie (PID 1 may not reap the daemons
# we detach) and, if NAME is given, is called NAME.
running() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
  [ -z "${2:-}" ] || [[ $stat == *"($2) "* ]] || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# alive PIDFILE NAME: prints the pid if the file names a running process called NAME.
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && running "$pid" "$2" || return 1
  echo "$pid"
}

# pids_of NAME [USER]: pids of the processes called NAME (owned by USER). Reads /proc, as
# procps is not on every fresh Debian.
pids_of() {
  local dir uid=""
  if [ -n "${2:-}" ]; then uid=$(id -u "$2" 2>/dev/null) || return 0; fi
  for dir in /proc/[0-9]*; do
    running "${dir#/proc/}" "$1" || continue
    [ -z "$uid" ] || [ "$(stat -c %u "$dir")" = "$uid" ] || continue
    echo "${dir#/proc/}"
  done
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stack_of DIR: the stack folder (marked .fleet-stack) that DIR is in or under, if any. A
# PostgreSQL folder kept outside its stack (marked .fleet-postgres) names the stack it is of.
stack_of() {
  local dir=$1 link
  while [ -n "$dir" ] && [ "$dir" != / ]; do
    [ -f "$dir/.fleet-stack" ] && { echo "$dir"; return; }
    if link=$(sed -n 's/^stack=//p' "$dir/.fleet-postgres" 2>/dev/null | grep .); then
      dir=$link
      continue
    fi
    dir=$(dirname "$dir")
  done
  return 1
}

# port_holder PORT: who listens on PORT, in words: pid, program and, for one of our daemons,
# the stack folder it belongs to and the checkout that started it.
port_holder() {
  local hex inode fd pid="" cmd where stack
  hex=$(printf '%04X' "$1")
  inode=$(awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10; exit }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  if [ -n "$inode" ]; then
    for fd in /proc/[0-9]*/fd/*; do
      if [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ]; then
        pid=${fd#/proc/}
        pid=${pid%%/*}
        break
      fi
    done
  fi
  [ -n "$pid" ] || { echo "a process this shell cannot see"; return; }
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-200)
  # Our daemons name their folder: rabbitmq by -home, garage by -c, redis and postgres (its
  # data folder) by their working dir.
  where=$(sed -n 's/.*-home \([^ ]*\) .*/\1/p; s/.* -c \([^ ]*\)\/garage.toml.*/\1/p' <<<"$cmd" | head -n 1)
  [ -n "$where" ] || where=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
  if stack=$(stack_of "$where"); then
    echo "pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null)) of the stack in $stack, started by $(owner_of "$stack");" \
      "stop it with: FLEET_STACK_DIR=$stack $0 down (with that stack's FLEET_*_PORT settings)"
  else
    echo "pid $pid: $cmd"
  fi
}

# owner_of STACK: the checkout that last brought the stack in STACK up.
owner_of() { sed -n 's/^checkout=//p' "$1/.fleet-stack" 2>/dev/null | head -n 1 | grep . || echo "an unknown checkout"; }

# taken SERVICE PORT: fail, naming who holds the port.
taken() { fail "$1: 127.0.0.1:$2 is taken by $(port_holder "$2")"; }

# render TEMPLATE DEST [MODE]: fill @KEY@ placeholders. Returns 0 when DEST changed.
render() {
  local tmp=$2.tmp key value script=""
  for key in STACK RABBIT_DIR REDIS_DIR GARAGE_DIR AMQP_PORT REDIS_PORT S3_PORT S3_REGION \
    GARAGE_RPC_PORT GARAGE_ADMIN_PORT GARAGE_RPC_SECRET GARAGE_ADMIN_TOKEN AMQP_PASS; do
    value=${!key}
    value=${value//\\/\\\\}
    value=${value//|/\\|}
    value=${value//&/\\&}
    script+="s|@$key@|$value|g;"
  done
  (umask 077 && sed "$script" "$DEPLOY/templates/$1" >"$tmp") || fail "cannot render $2"
  chmod "${3:-644}" "$tmp"
  if cmp -s "$tmp" "$2"; then
    rm -f "$tmp"
    return 1
  fi
  mv "$tmp" "$2"
}

# ---- installation -------------------------------------------------------------------------

ensure_packages() {
  local missing=()
  [ -x "$RABBIT_BIN/rabbitmq-server" ] || missing+=(rabbitmq-server)
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || missing+=(redis-server)
  command -v curl >/dev/null || missing+=(curl)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  # libfaketime: the tests and the chaos suite run a worker whose clock is off.
  command -v faketime >/dev/null || missing+=(faketime)
  [ ${#missing[@]} -eq 0 ] && return

  log "installing ${missing[*]} with apt (their system services stay off)"
  # Package scripts start services through invoke-rc.d; a policy-rc.d that exits 101
  # forbids it. Containers often ship one already, which we leave as it is.
  local policy=/usr/sbin/policy-rc.d ours=""
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\n# written by deploy/stack.sh for the length of one apt-get install\nexit 101\n' >$policy
    chmod 755 $policy
    ours=1
  fi
  local rc=0 apt_log
  apt_log=$(mktemp /tmp/fleet-stack-apt.XXXXXX.log)
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  } >"$apt_log" 2>&1 || rc=$?
  [ -z "$ours" ] || rm -f $policy
  [ $rc -eq 0 ] || fail "apt-get install ${missing[*]} failed (full output in $apt_log)" "$apt_log"
  rm -f "$apt_log"
  stop_package_daemons
}

# If a pre-existing policy-rc.d let the packages start their own services, those hold our
# ports (and an epmd on every interface): stop them. Ours run as root, theirs do not.
stop_package_daemons() {
  if [ -n "$(pids_of beam.smp rabbitmq)" ] && [ -x /etc/init.d/rabbitmq-server ]; then
    log "stopping the rabbitmq-server system service the package started"
    /etc/init.d/rabbitmq-server stop >&2 || true
  fi
  if [ -n "$(pids_of redis-server redis)" ] && [ -x /etc/init.d/redis-server ]; then
    log "stopping the redis-server system service the package started"
    /etc/init.d/redis-server stop >&2 || true
  fi
  # Debian's own cluster (pg_ctlcluster keeps its pid file in /run/postgresql) holds 5432;
  # ours runs as the same user, so it is told apart by that file.
  if compgen -G '/run/postgresql/*.pid' >/dev/null && [ -x /etc/init.d/postgresql ]; then
    log "stopping the postgresql system service the package started"
    /etc/init.d/postgresql stop >&2 || true
  fi
  local pid
  for pid in $(pids_of epmd rabbitmq); do
    log "stopping the epmd the rabbitmq package started"
    kill "$pid" 2>/dev/null || true
  done
}

# Prints the path of a garage binary, building one with cargo if there is none.
ensure_garage() {
  local bin
  bin=$(type -P garage || true)
  [ -n "$bin" ] || bin=${CARGO_HOME:-$HOME/.cargo}/bin/garage
  if [ ! -x "$bin" ]; then
    command -v cargo >/dev/null || fail "garage is not installed and cargo is not on PATH"
    log "installing garage $GARAGE_VERSION with cargo (about 9 minutes on 2 cores, once)"
    cargo install garage --locked --version "$GARAGE_VERSION" >&2 ||
      fail "cargo install garage failed"
  fi
  case $("$bin" --version 2>/dev/null) in
    *" v2."* | *" 2."* | *":2."*) ;;
    *) log "warning: $("$bin" --version 2>&1 | head -n 1) found; the config targets garage 2.x" ;;
  esac
  echo "$bin"
}

# ---- RabbitMQ -----------------------------------------------------------------------------

# The stack's RabbitMQ environment, not the system one; call it in a subshell.
rabbit_env() {
  export RABBITMQ_NODENAME=$RABBIT_NODE
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$AMQP_PORT
  export RABBITMQ_DIST_PORT=$RABBIT_DIST_PORT
  export RABBITMQ_CONFIG_FILE=$RABBIT_DIR/rabbitmq.conf
  # Both absent on purpose: no advanced.config, and /etc/rabbitmq/rabbitmq-env.conf is not read.
  export RABBITMQ_ADVANCED_CONFIG_FILE=$RABBIT_DIR/advanced.config
  export RABBITMQ_CONF_ENV_FILE=$RABBIT_DIR/rabbitmq-env.conf
  export RABBITMQ_ENABLED_PLUGINS_FILE=$RABBIT_DIR/enabled_plugins
  export RABBITMQ_MNESIA_BASE=$RABBIT_DIR/mnesia
  export RABBITMQ_LOG_BASE=$RABBIT_DIR/log
  export RABBITMQ_PID_FILE=$RABBIT_DIR/rabbitmq.pid
  # Erlang distribution (node <-> rabbitmqctl) and epmd on loopback only.
  export ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  # The Erlang cookie is read from $HOME.
  export HOME=$RABBIT_DIR
  cd "$RABBIT_DIR"
}

rabbitmqctl_() (
  rabbit_env
  exec "$RABBIT_BIN/rabbitmqctl" -q -n "$RABBIT_NODE" "$@"
)

# The packaged `rabbitmqctl` wrapper runs as the rabbitmq user, whose cookie is
# /var/lib/rabbitmq/.erlang.cookie. Our node uses the same cookie, so a plain
# `rabbitmqctl -n fleet@localhost ...` from a root shell reaches it too.
ensure_rabbit_cookie() {
  local system=/var/lib/rabbitmq/.erlang.cookie
  if [ ! -s $system ]; then
    mkdir -p /var/lib/rabbitmq
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >$system
    chown rabbitmq:rabbitmq $system 2>/dev/null || true
    chmod 400 $system
  fi
  if ! cmp -s $system "$RABBIT_DIR/.erlang.cookie"; then
    rm -f "$RABBIT_DIR/.erlang.cookie"
    cp $system "$RABBIT_DIR/.erlang.cookie"
    chmod 400 "$RABBIT_DIR/.erlang.cookie"
  fi
}

rabbit_pid() {
  alive "$RABBIT_DIR/rabbitmq.pid" beam.smp && return
  # A node still booting has not written its pid file yet: find it by its home folder.
  local pid
  for pid in $(pids_of beam.smp); do
    if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "-home $RABBIT_DIR "; then
      echo "$pid"
      return
    fi
  done
  return 1
}

# An epmd listening on every interface (started by the package, or by a bare `rabbitmqctl`
# while the stack was down) would expose our node's name and port: replace it with ours,
# unless other Erlang nodes use it.
replace_wide_epmd() {
  awk '$4 == "0A" && $2 ~ /^0+:1111$/ { found = 1 } END { exit !found }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null || return 0
  if epmd -names 2>/dev/null | grep -q '^name '; then
    log "rabbitmq: warning: an epmd on all interfaces serves other Erlang nodes; using it"
    return
  fi
  log "rabbitmq: stopping an idle epmd that listens on all interfaces"
  local pid
  for pid in $(pids_of epmd); do
    kill "$pid" 2>/dev/null || true
    wait_exit "$pid" 5 || true
  done
}

start_rabbit() {
  mkdir -p "$RABBIT_DIR/log" "$RABBIT_DIR/mnesia"
  local changed=""
  render rabbitmq.conf "$RABBIT_DIR/rabbitmq.conf" && changed=1
  render definitions.json "$RABBIT_DIR/definitions.json" && changed=1
  [ -f "$RABBIT_DIR/enabled_plugins" ] || echo '[].' >"$RABBIT_DIR/enabled_plugins"
  ensure_rabbit_cookie

  local pid
  if pid=$(rabbit_pid); then
    log "rabbitmq: already running (pid $pid, data in $STACK, started by $(owner_of "$STACK"))"
    if [ -n "$changed" ]; then
      log "rabbitmq: config changed; definitions re-imported, restart (down, up) for the rest"
      rabbitmqctl_ import_definitions "$RABBIT_DIR/definitions.json" >/dev/null
    fi
    return
  fi
  port_open "$AMQP_PORT" && taken rabbitmq "$AMQP_PORT"
  rm -f "$RABBIT_DIR/rabbitmq.pid"
  replace_wide_epmd
  # Note whether the node will start epmd, so that `down` stops only an epmd of ours.
  local epmd_before
  epmd_before=$(pids_of epmd)
  log "rabbitmq: starting $RABBIT_NODE on 127.0.0.1:$AMQP_PORT"
  RABBIT_STARTED=$(now)
  # In its own session rather than with -detached: -detached closes stdout before the
  # boot has logged anything, so a node that dies early would leave no trace.
  (rabbit_env && exec setsid nohup "$RABBIT_BIN/rabbitmq-server") >>"$RABBIT_DIR/log/startup.log" 2>&1 &
  RABBIT_LAUNCHER=$!
  [ -n "$epmd_before" ] || touch "$RABBIT_DIR/epmd.ours"
}

await_rabbit() {
  [ -n "${RABBIT_STARTED:-}" ] || return 0
  local logs=("$RABBIT_DIR/log/startup.log" "$RABBIT_DIR/log/$RABBIT_NODE.log")
  local deadline=$((SECONDS + RABBIT_TIMEOUT - 1))
  # The node writes its pid file early in the boot; until then, watch for an early exit.
  until alive "$RABBIT_DIR/rabbitmq.pid" beam.smp >/dev/null; do
    running "$RABBIT_LAUNCHER" || fail "rabbitmq: exited during start-up" "${logs[@]}"
    [ $SECONDS -lt $deadline ] || fail "rabbitmq: not up after ${RABBIT_TIMEOUT}s" "${logs[@]}"
    sleep 0.2
  done
  # `wait` polls from one CLI process, cheaper than a loop of rabbitmqctl calls while the
  # broker boots on the same cores, and returns early if the node dies.
  if ! rabbitmqctl_ wait "$RABBIT_DIR/rabbitmq.pid" --timeout $((deadline - SECONDS + 1)) >/dev/null 2>&1 ||
    ! rabbitmqctl_ await_startup >/dev/null 2>&1; then
    fail "rabbitmq: not up after ${RABBIT_TIMEOUT}s" "${logs[@]}"
  fi
  log "rabbitmq: up in $(since "$RABBIT_STARTED")s"
}

# Users, vhost and permissions come from definitions.json at boot; this checks they are
# there and removes a guest user left by a node first booted without definitions.
check_rabbit_users() {
  local users
  users=$(rabbitmqctl_ list_users) || fail "rabbitmq: list_users failed"
  if grep -q '^guest[[:space:]]' <<<"$users"; then
    log "rabbitmq: deleting the default guest user"
    rabbitmqctl_ delete_user guest >/dev/null
  fi
  local user missing=()
  for user in "$AMQP_USER" fleet-scheduler fleet-worker fleet-api tenant-a tenant-b; do
    grep -q "^${user}[[:space:]]" <<<"$users" || missing+=("$user")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # A node first booted with older definitions (a user added since): import them again.
  log "rabbitmq: users ${missing[*]} missing; importing $RABBIT_DIR/definitions.json"
  rabbitmqctl_ import_definitions "$RABBIT_DIR/definitions.json" >/dev/null ||
    fail "rabbitmq: importing definitions failed" "$RABBIT_DIR/log/$RABBIT_NODE.log"
  users=$(rabbitmqctl_ list_users) || fail "rabbitmq: list_users failed"
  for user in "${missing[@]}"; do
    grep -q "^${user}[[:space:]]" <<<"$users" ||
      fail "rabbitmq: user $user missing after importing definitions" "$RABBIT_DIR/log/$RABBIT_NODE.log"
  done
}

stop_rabbit() {
  local pid
  if pid=$(rabbit_pid); then
    log "rabbitmq: stopping"
    # A node that is not up yet does not answer rabbitmqctl; SIGTERM also stops it cleanly.
    if ! rabbitmqctl_ shutdown >/dev/null 2>&1; then
      kill "$pid" 2>/dev/null || true
      if ! wait_exit "$pid" 20; then
        log "rabbitmq: pid $pid ignored SIGTERM for 20s; killing it"
        kill -9 "$pid" 2>/dev/null || true
      fi
    fi
  fi
  rm -f "$RABBIT_DIR/rabbitmq.pid"
  # Stop the epmd our node started, unless another Erlang node has registered with it since.
  [ -f "$RABBIT_DIR/epmd.ours" ] || return 0
  if epmd -names 2>/dev/null | grep -q '^name '; then
    log "rabbitmq: epmd still has nodes registered; leaving it running"
    return
  fi
  for pid in $(pids_of epmd); do kill "$pid" 2>/dev/null || true; done
  rm -f "$RABBIT_DIR/epmd.ours"
}

# The broker loads exchanges, queues and bindings from definitions.json at boot, before any
# client connects: check the queues are there, so nothing that publishes races a scheduler.
check_rabbit_topology() {
  local want have missing=()
  want=$(python3 -c 'import json, sys; print("\n".join(q["name"] for q in json.load(open(sys.argv[1]))["queues"]))' \
    "$RABBIT_DIR/definitions.json") || fail "rabbitmq: cannot read the queues of $RABBIT_DIR/definitions.json"
  have=$(rabbitmqctl_ list_queues -p "$AMQP_VHOST" --no-table-headers name) || fail "rabbitmq: list_queues failed"
  local queue
  for queue in $want; do
    grep -qx "$queue" <<<"$have" || missing+=("$queue")
  done
  local policies
  policies=$(rabbitmqctl_ list_policies -p "$AMQP_VHOST" --no-table-headers) || fail "rabbitmq: list_policies failed"
  for policy in fleet-intake-limit fleet-tasks-limit fleet-dead-limit; do
    grep -q "$policy" <<<"$policies" || missing+=("policy $policy")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    # A node first booted with older definitions (a queue or limit added since).
    log "rabbitmq: ${missing[*]} missing; importing $RABBIT_DIR/definitions.json"
    rabbitmqctl_ import_definitions "$RABBIT_DIR/definitions.json" >/dev/null ||
      fail "rabbitmq: importing definitions failed" "$RABBIT_DIR/log/$RABBIT_NODE.log"
    have=$(rabbitmqctl_ list_queues -p "$AMQP_VHOST" --no-table-headers name) || fail "rabbitmq: list_queues failed"
    missing=()
    for queue in $want; do
      grep -qx "$queue" <<<"$have" || missing+=("$queue")
    done
  fi
  [ ${#missing[@]} -eq 0 ] ||
    fail "rabbitmq: queues missing after loading definitions: ${missing[*]}" "$RABBIT_DIR/log/$RABBIT_NODE.log"
  # Per-user limits: a tenant's client cannot open connections or channels without end.
  local tenant
  for tenant in tenant-a tenant-b; do
    rabbitmqctl_ set_user_limits "$tenant" '{"max-connections": 64, "max-channels": 512}' >/dev/null ||
      fail "rabbitmq: set_user_limits $tenant failed"
  done
}

# ---- Redis --------------------------------------------------------------------------------

redis_pid() { alive "$REDIS_DIR/redis.pid" redis-server; }
redis() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --user fleet-admin --pass fleet-admin-dev --no-auth-warning "$@"; }

start_redis() {
  mkdir -p "$REDIS_DIR"
  local changed=""
  render redis.conf "$REDIS_DIR/redis.conf" && changed=1
  local pid
  if pid=$(redis_pid); then
    if [ -z "$changed" ]; then
      log "redis: already running (pid $pid, data in $STACK, started by $(owner_of "$STACK"))"
      return
    fi
    # A new config (users, limits) takes a restart; the AOF keeps the data.
    log "redis: config changed; restarting it to apply it (data kept in the append-only file)"
    stop_redis
  fi
  port_open "$REDIS_PORT" && taken redis "$REDIS_PORT"
  log "redis: starting on 127.0.0.1:$REDIS_PORT"
  REDIS_STARTED=$(now)
  redis-server "$REDIS_DIR/redis.conf" || fail "redis: redis-server failed" "$REDIS_DIR/redis.log"
}

await_redis() {
  [ -n "${REDIS_STARTED:-}" ] || return 0
  local deadline=$((SECONDS + REDIS_TIMEOUT))
  until [ "$(redis ping 2>/dev/null)" = PONG ]; do
    [ $SECONDS -lt $deadline ] || fail "redis: not up after ${REDIS_TIMEOUT}s" "$REDIS_DIR/redis.log"
    sleep 0.1
  done
  log "redis: up in $(since "$REDIS_STARTED")s"
}

stop_redis() {
  local pid
  pid=$(redis_pid) || return 0
  log "redis: stopping"
  # A Redis started before the fleet's users existed refuses the admin's shutdown: SIGTERM
  # (it writes its data and exits the same way).
  redis shutdown >/dev/null 2>&1 || true
  if ! wait_exit "$pid" 5; then
    kill "$pid" 2>/dev/null || true
    wait_exit "$pid" 10 || log "redis: pid $pid still running after 15s"
  fi
}

# ---- Garage -------------------------------------------------------------------------------

garage_pid() { alive "$GARAGE_DIR/garage.pid" garage; }
garage_cli() { "$GARAGE" -c "$GARAGE_DIR/garage.toml" "$@"; }

# s3 METHOD PATH [BODY]: a SigV4-signed request to the S3 API with the dev key; the
# response body goes to stdout. curl 7.88 signs but does not send the payload hash S3 wants.
s3() {
  local body=${3:-} sha
  sha=$(printf %s "$body" | sha256sum)
  local args=(-sS -f --max-time 5 -X "$1" --aws-sigv4 "aws:amz:$S3_REGION:s3"
    --user "$S3_KEY_ID:$S3_SECRET" -H "x-amz-content-sha256: ${sha%% *}")
  [ -z "$body" ] || args+=(-H 'content-type: text/plain' --data-binary @-)
  printf %s "$body" | curl "${args[@]}" "http://127.0.0.1:$S3_PORT/$2"
}

start_garage() {
  GARAGE=$(ensure_garage)
  mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
  local changed=""
  # Holds the rpc secret and admin token: owner-only.
  render garage.toml "$GARAGE_DIR/garage.toml" 600 && changed=1
  local pid
  if pid=$(garage_pid); then
    log "garage: already running (pid $pid, data in $STACK, started by $(owner_of "$STACK"))"
    [ -z "$changed" ] || log "garage: config changed; restart (down, up) to apply it"
    return
  fi
  port_open "$S3_PORT" && taken garage "$S3_PORT"
  log "garage: starting on 127.0.0.1:$S3_PORT"
  # Own session, like the other two daemons: a Ctrl-C on `up` must not take it down.
  GARAGE_STARTED=$(now)
  NO_COLOR=1 setsid nohup "$GARAGE" -c "$GARAGE_DIR/garage.toml" server >>"$GARAGE_DIR/garage.log" 2>&1 &
  echo $! >"$GARAGE_DIR/garage.pid"
}

# Layout, key, bucket and grant are each created only if missing, so this runs on every `up`.
provision_garage() {
  local started=${GARAGE_STARTED:-$(now)}
  local deadline=$((SECONDS + GARAGE_TIMEOUT))
  until garage_cli status >/dev/null 2>&1; do
    garage_pid >/dev/null || fail "garage: exited during start-up" "$GARAGE_DIR/garage.log"
    [ $SECONDS -lt $deadline ] || fail "garage: not up after ${GARAGE_TIMEOUT}s" "$GARAGE_DIR/garage.log"
    sleep 0.2
  done

  local version node
  version=$(garage_cli layout show | sed -n 's/^Current cluster layout version: *//p')
  [ -n "$version" ] || fail "garage: cannot read the layout version from \`garage layout show\`"
  if [ "$version" = 0 ]; then
    node=$(garage_cli node id -q 2>/dev/null | cut -d@ -f1)
    [ -n "$node" ] || fail "garage: could not read the node id" "$GARAGE_DIR/garage.log"
    log "garage: assigning the layout to node ${node:0:16}"
    garage_cli layout assign -z dc1 -c 1G "$node" >/dev/null
    garage_cli layout apply --version 1 >/dev/null
  fi
  if ! garage_cli key info "$S3_KEY_ID" >/dev/null 2>&1; then
    log "garage: importing key $S3_KEY_NAME ($S3_KEY_ID)"
    garage_cli key import --yes -n "$S3_KEY_NAME" "$S3_KEY_ID" "$S3_SECRET" >/dev/null
  fi
  if ! garage_cli bucket info "$S3_BUCKET" >/dev/null 2>&1; then
    log "garage: creating bucket $S3_BUCKET"
    garage_cli bucket create "$S3_BUCKET" >/dev/null
  fi
  garage_cli bucket allow --read --write --owner "$S3_BUCKET" --key "$S3_KEY_NAME" >/dev/null
  # The services' keys: the scheduler reads (listings, manifests, the registry); workers and
  # the API read and write (the API signs presigned URLs with its key); none owns the bucket.
  local service id secret
  for service in scheduler:$SCHEDULER_S3_KEY:$SCHEDULER_S3_SECRET worker:$WORKER_S3_KEY:$WORKER_S3_SECRET \
    api:$API_S3_KEY:$API_S3_SECRET; do
    IFS=: read -r service id secret <<<"$service"
    if ! garage_cli key info "$id" >/dev/null 2>&1; then
      garage_cli key import --yes -n "fleet-$service" "$id" "$secret" >/dev/null
    fi
  done
  garage_cli bucket allow --read "$S3_BUCKET" --key "fleet-scheduler" >/dev/null
  garage_cli bucket allow --read --write "$S3_BUCKET" --key "fleet-worker" >/dev/null
  garage_cli bucket allow --read --write "$S3_BUCKET" --key "fleet-api" >/dev/null

  # Tables settle a moment after the layout is applied: wait for a real signed request.
  until s3 GET "$S3_BUCKET/?list-type=2&max-keys=1" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "garage: S3 API not answering after ${GARAGE_TIMEOUT}s" "$GARAGE_DIR/garage.log"
    sleep 0.2
  done
  local probe="_stack/probe" body
  body="written by deploy/stack.sh up at $(date -u +%FT%TZ)"
  s3 PUT "$S3_BUCKET/$probe" "$body" >/dev/null ||
    fail "garage: PUT s3://$S3_BUCKET/$probe failed" "$GARAGE_DIR/garage.log"
  [ "$(s3 GET "$S3_BUCKET/$probe")" = "$body" ] ||
    fail "garage: GET s3://$S3_BUCKET/$probe did not return what was PUT" "$GARAGE_DIR/garage.log"
  log "garage: up in $(since "$started")s (S3 PUT/GET checked)"
}

stop_garage() {
  local pid
  pid=$(garage_pid) || { rm -f "$GARAGE_DIR/garage.pid"; return 0; }
  log "garage: stopping"
  kill "$pid" 2>/dev/null || true
  if ! wait_exit "$pid" 10; then
    log "garage: pid $pid ignored SIGTERM for 10s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$GARAGE_DIR/garage.pid"
}

# ---- PostgreSQL ---------------------------------------------------------------------------

# Our own cluster, not Debian's: initdb and pg_ctl on a data folder of the stack's. The server
# refuses to run as root, so it and every superuser call run as the package's postgres user,
# which must reach the folder holding the cluster, its socket and its log (PG_HOME). That is
# $PG_DIR when it can; when a folder above the stack is closed to it (a CI checkout under
# /root, say), it is $PG_OUTSIDE/<hash of the stack's path>, and $PG_DIR/location names it
# (with postgres.log and initdb.log linked beside it), so every command finds it again and
# `down --purge` deletes it too.
#
#   $PG_HOME/  data/ (the cluster), run/ (socket), postgres.log, initdb.log
#              and, outside the stack only, .fleet-postgres (stack=$STACK)

# pg_locate: PG_HOME from $PG_DIR/location, if the stack has one; else $PG_DIR.
pg_locate() {
  PG_HOME=$PG_DIR
  [ -f "$PG_DIR/location" ] || return 0
  PG_HOME=$(head -n 1 "$PG_DIR/location")
  case $PG_HOME in
    "$PG_OUTSIDE"/?*) ;;
    *) fail "postgres: $PG_DIR/location names $PG_HOME, which is not under $PG_OUTSIDE" ;;
  esac
}

# The server's binaries: those of the version that made the data folder, else the newest.
pg_bin() {
  local version
  if [ -f "$PG_HOME/data/PG_VERSION" ]; then
    version=$(cat "$PG_HOME/data/PG_VERSION")
    [ -x "/usr/lib/postgresql/$version/bin/postgres" ] ||
      fail "postgres: $PG_HOME/data was made by PostgreSQL $version, which is not installed"
  else
    version=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
      cut -d/ -f5 | sort -V | tail -n 1)
    [ -n "$version" ] || fail "postgres: no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)"
  fi
  echo "/usr/lib/postgresql/$version/bin"
}

# pg_as COMMAND...: COMMAND as the postgres user, in its folder (root's may be closed to it).
pg_as() (cd "$PG_HOME" && exec runuser -u postgres -- "$@")

# pg_super: psql as the superuser over the stack's socket (peer auth), the script on stdin.
pg_super() { pg_as "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOME/run" -p "$PG_PORT" -d postgres "$@"; }

pg_pid() {
  local pid
  pid=$(head -n 1 "$PG_HOME/data/postmaster.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && running "$pid" postgres || return 1
  echo "$pid"
}

# pg_reachable: whether the postgres user can reach $PG_DIR. The stack's own folders under the
# repo's .fleet (made closed by a umask of 077, say) are opened for traversal if that is all
# that stands in the way; nothing else is ever opened (never /root, never a FLEET_STACK_DIR
# elsewhere).
pg_reachable() {
  runuser -u postgres -- test -x "$PG_DIR" && return
  local dot_fleet dir
  dot_fleet=$(realpath -m "$REPO/.fleet")
  # The first folder above the stack's own: if the postgres user cannot get that far, give up.
  dir=$STACK
  while in_dir "$dir" "$dot_fleet"; do dir=$(dirname "$dir"); done
  [ "$dir" != "$STACK" ] || return 1
  runuser -u postgres -- test -x "$dir" || return 1
  dir=$STACK
  while in_dir "$dir" "$dot_fleet"; do
    [ -L "$dir" ] || chmod o+x "$dir"
    dir=$(dirname "$dir")
  done
  runuser -u postgres -- test -x "$PG_DIR"
}

# in_dir PATH DIR: PATH is DIR or under it.
in_dir() { case $1 in "$2" | "$2"/*) return 0 ;; esac; return 1; }

# pg_place: settles PG_HOME on `up` and makes it, the postgres user's. A stack keeps the place
# it was first given: $PG_DIR/location if it has one, else a cluster in $PG_DIR.
pg_place() {
  mkdir -p "$PG_DIR"
  chown postgres:postgres "$PG_DIR"
  chmod 700 "$PG_DIR"
  local outside
  outside=$PG_OUTSIDE/$(printf '%s' "$STACK" | sha256sum | cut -c1-12)
  if [ ! -f "$PG_DIR/location" ]; then
    if [ -f "$PG_DIR/data/PG_VERSION" ]; then
      pg_reachable || fail "postgres: the postgres user cannot reach the cluster in $PG_DIR/data (a folder \
above it is closed to other users): open that folder to others for traversal (o+x), or move the stack"
      PG_HOME=$PG_DIR
    # A folder outside that names this stack (its location file lost) keeps its cluster.
    elif [ "$(sed -n 's/^stack=//p' "$outside/.fleet-postgres" 2>/dev/null)" != "$STACK" ] && pg_reachable; then
      PG_HOME=$PG_DIR
    else
      PG_HOME=$outside
    fi
  fi
  if [ "$PG_HOME" = "$PG_DIR" ]; then
    mkdir -p "$PG_HOME/run"
    chown postgres:postgres "$PG_HOME/run"
    chmod 700 "$PG_HOME/run"
    return
  fi
  # Outside the stack: $PG_OUTSIDE is root's and only traversable (711), so nobody else lists
  # or plants anything there; PG_HOME in it is the postgres user's, mode 700.
  [ -d "$PG_OUTSIDE" ] || mkdir -m 711 "$PG_OUTSIDE"
  if [ -L "$PG_OUTSIDE" ] || [ "$(stat -c %u "$PG_OUTSIDE")" != 0 ]; then
    fail "postgres: $PG_OUTSIDE is not a folder of root's: remove it, and \`up\` makes it again"
  fi
  chmod 711 "$PG_OUTSIDE"
  if [ ! -d "$PG_HOME" ]; then
    log "postgres: the postgres user cannot reach $STACK; keeping PostgreSQL's files in $PG_HOME"
    mkdir -m 700 "$PG_HOME"
  fi
  mkdir -p "$PG_HOME/run"
  chown postgres:postgres "$PG_HOME" "$PG_HOME/run"
  chmod 700 "$PG_HOME" "$PG_HOME/run"
  printf 'stack=%s\n' "$STACK" >"$PG_HOME/.fleet-postgres"
  printf '%s\n' "$PG_HOME" >"$PG_DIR/location"
  # The logs are written as postgres, so they live in PG_HOME; links show them in the stack.
  ln -sfn "$PG_HOME/postgres.log" "$PG_DIR/postgres.log"
  ln -sfn "$PG_HOME/initdb.log" "$PG_DIR/initdb.log"
}

# pg_put DEST: stdin into DEST, the postgres user's, mode 600. Returns 0 when DEST changed.
pg_put() {
  (umask 077 && cat >"$1.tmp") || fail "cannot write $1"
  chown postgres:postgres "$1.tmp"
  if cmp -s "$1.tmp" "$1"; then
    rm -f "$1.tmp"
    return 1
  fi
  mv "$1.tmp" "$1"
}

# Writes the server's settings and client rules over initdb's on every `up`. Returns 0 when
# either changed.
pg_config() {
  local changed=1
  pg_put "$PG_HOME/data/postgresql.conf" <<CONF && changed=0
# Written by deploy/stack.sh on every \`up\`: edit the script, not this copy.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_HOME/run'
max_connections = 100
shared_buffers = 64MB
password_encryption = scram-sha-256
# The ledger must survive a crash: every commit is on disk before it is acknowledged.
fsync = on
synchronous_commit = on
full_page_writes = on
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
CONF
  pg_put "$PG_HOME/data/pg_hba.conf" <<HBA && changed=0
# Written by deploy/stack.sh on every \`up\`: edit the script, not this copy.
# The superuser only over the socket, as the postgres OS user; every role else by password.
local   all   postgres                 peer
host    all   all        127.0.0.1/32  scram-sha-256
HBA
  return $changed
}

start_postgres() {
  id postgres >/dev/null 2>&1 || fail "postgres: no postgres user (the postgresql package creates it)"
  pg_place
  PG_BIN=$(pg_bin)
  local socket=$PG_HOME/run/.s.PGSQL.$PG_PORT
  [ ${#socket} -le 107 ] ||
    fail "postgres: the socket path $socket is longer than 107 bytes: give the stack a shorter FLEET_STACK_DIR"
  if [ ! -f "$PG_HOME/data/PG_VERSION" ]; then
    log "postgres: creating a cluster in $PG_HOME/data"
    pg_as "$PG_BIN/initdb" -D "$PG_HOME/data" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
      --no-locale -E UTF8 >>"$PG_HOME/initdb.log" 2>&1 || fail "postgres: initdb failed" "$PG_HOME/initdb.log"
  fi
  local changed=""
  pg_config && changed=1
  local pid
  if pid=$(pg_pid); then
    if [ -z "$changed" ]; then
      log "postgres: already running (pid $pid, data in $PG_HOME, started by $(owner_of "$STACK"))"
      return
    fi
    # Port and memory settings take a restart; every commit is already on disk.
    log "postgres: config changed; restarting it to apply it (data kept)"
    stop_postgres
  fi
  port_open "$PG_PORT" && taken postgres "$PG_PORT"
  log "postgres: starting on 127.0.0.1:$PG_PORT"
  PG_STARTED=$(now)
  # -W: returns at once (the others start meanwhile); pg_ctl puts the server in its own session.
  pg_as "$PG_BIN/pg_ctl" start -W -s -D "$PG_HOME/data" -l "$PG_HOME/postgres.log" ||
    fail "postgres: pg_ctl start failed" "$PG_HOME/postgres.log"
}

# Roles, database and schema are each created only if missing, so this runs on every `up`.
provision_postgres() {
  local started=${PG_STARTED:-$(now)}
  local deadline=$((SECONDS + PG_TIMEOUT)) grace=$((SECONDS + 3))
  until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; do
    # The server writes its pid file before it listens; none a moment after the start means it exited.
    pg_pid >/dev/null || [ $SECONDS -lt $grace ] || fail "postgres: exited during start-up" "$PG_HOME/postgres.log"
    [ $SECONDS -lt $deadline ] || fail "postgres: not up after ${PG_TIMEOUT}s" "$PG_HOME/postgres.log"
    sleep 0.1
  done
  # The roles first: templates/ledger.sql grants to them.
  pg_super -v owner_pass="$LEDGER_OWNER_PASS" -v writer_pass="$LEDGER_WRITER_PASS" \
    -v reader_pass="$LEDGER_READER_PASS" -v admin_pass="$LEDGER_ADMIN_PASS" -v db="$PG_DB" >/dev/null <<'SQL' ||
SELECT format('CREATE ROLE %I', wanted)
  FROM unnest(ARRAY['fleet_ledger_owner', 'fleet_ledger_writer', 'fleet_ledger_reader', 'fleet_ledger_admin']) AS wanted
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted) \gexec
ALTER ROLE fleet_ledger_owner LOGIN PASSWORD :'owner_pass';
ALTER ROLE fleet_ledger_writer LOGIN PASSWORD :'writer_pass';
ALTER ROLE fleet_ledger_reader LOGIN PASSWORD :'reader_pass';
ALTER ROLE fleet_ledger_admin LOGIN PASSWORD :'admin_pass';
SELECT format('CREATE DATABASE %I OWNER fleet_ledger_owner', :'db')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO fleet_ledger_owner;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO fleet_ledger_writer, fleet_ledger_reader, fleet_ledger_admin;
SQL
    fail "postgres: creating the ledger's roles and database failed" "$PG_HOME/postgres.log"
  # As the owner, over TCP with its password: the tables are the owner's, and its grants hold.
  PGPASSWORD=$LEDGER_OWNER_PASS PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q \
    -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$PG_PORT dbname=$PG_DB user=fleet_ledger_owner connect_timeout=5" \
    -f "$DEPLOY/templates/ledger.sql" >/dev/null ||
    fail "postgres: applying templates/ledger.sql failed" "$PG_HOME/postgres.log"
  log "postgres: up in $(since "$started")s (ledger schema applied)"
}

stop_postgres() {
  local pid
  pid=$(pg_pid) || return 0
  PG_BIN=$(pg_bin)
  log "postgres: stopping"
  if ! pg_as "$PG_BIN/pg_ctl" stop -s -D "$PG_HOME/data" -m fast -t 20; then
    # Immediate is a crash to the server: the next start replays the WAL, no commit is lost.
    log "postgres: pid $pid not stopped after 20s; stopping it with -m immediate"
    pg_as "$PG_BIN/pg_ctl" stop -s -D "$PG_HOME/data" -m immediate -t 10 || log "postgres: pid $pid still running"
  fi
}

# wait_exit PID SECONDS: wait for a process (not our child) to exit.
wait_exit() {
  local deadline=$((SECONDS + $2))
  while running "$1"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
}

# ---- commands -----------------------------------------------------------------------------

# A stack in this folder already running that another checkout started is not ours to use
# (its data, config and version may be another tree's): refuse unless asked.
check_foreign() {
  [ -n "${FLEET_STACK_REUSE:-}" ] && return
  local owner pid
  owner=$(owner_of "$STACK")
  [ "$owner" = "an unknown checkout" ] && [ ! -f "$STACK/.fleet-stack" ] && return
  [ "$owner" = "$REPO" ] && return
  if pid=$(rabbit_pid) || pid=$(redis_pid) || pid=$(garage_pid) || pid=$(pg_pid); then
    fail "a stack is already running from $STACK (pid $pid), started by $owner, not this checkout ($REPO): \
use it with \`$0 up --reuse\` (or FLEET_STACK_REUSE=1), stop it with \`FLEET_STACK_DIR=$STACK $0 down\`, \
or give this one its own FLEET_STACK_DIR and ports"
  fi
}

cmd_up() {
  [ "$(id -u)" = 0 ] || fail "run as root: up installs packages with apt"
  case ${1:-} in
    "") ;;
    --reuse) FLEET_STACK_REUSE=1 ;;
    *) fail "usage: $0 up [--reuse]" ;;
  esac
  local started
  started=$(now)
  ensure_packages
  check_foreign
  mkdir -p "$STACK"
  # Marks the folder as ours, so `down --purge` never deletes a folder it did not create, and
  # records which checkout brought it up.
  printf 'checkout=%s\nports=amqp:%s redis:%s s3:%s pg:%s\n' "$REPO" "$AMQP_PORT" "$REDIS_PORT" "$S3_PORT" "$PG_PORT" \
    >"$STACK/.fleet-stack"
  # RabbitMQ boots slowest: start it first and let the others start and settle meanwhile.
  start_rabbit
  start_redis
  start_garage
  start_postgres
  await_redis
  provision_garage
  provision_postgres
  await_rabbit
  check_rabbit_users
  check_rabbit_topology
  log "stack up in $(since "$started")s; data in $STACK"
}

cmd_down() {
  local purge=""
  case ${1:-} in
    "") ;;
    --purge) purge=1 ;;
    *) fail "usage: $0 down [--purge]" ;;
  esac
  stop_postgres
  stop_garage
  stop_redis
  stop_rabbit
  if [ -n "$purge" ] && [ -d "$STACK" ]; then
    [ -f "$STACK/.fleet-stack" ] || fail "not purging $STACK: it has no .fleet-stack marker"
    # PostgreSQL's folder outside the stack goes too, if it says it is this stack's.
    if [ "$PG_HOME" != "$PG_DIR" ] && [ -d "$PG_HOME" ]; then
      [ "$(sed -n 's/^stack=//p' "$PG_HOME/.fleet-postgres" 2>/dev/null)" = "$STACK" ] ||
        fail "not purging $STACK: $PG_HOME, where its PostgreSQL files are, does not say it is this stack's"
      log "deleting $PG_HOME"
      rm -rf "$PG_HOME"
      rmdir "$PG_OUTSIDE" 2>/dev/null || true
    fi
    log "deleting $STACK"
    rm -rf "$STACK"
  fi
  log "stack down"
}

# Stops and starts one service, keeping its data: how the tests simulate a broker restart.
cmd_restart() {
  local started
  started=$(now)
  case ${1:-} in
    rabbitmq) stop_rabbit; start_rabbit; await_rabbit; check_rabbit_topology ;;
    redis) stop_redis; start_redis; await_redis ;;
    garage) stop_garage; start_garage; provision_garage ;;
    postgres) stop_postgres; start_postgres; provision_postgres ;;
    *) fail "usage: $0 restart rabbitmq|redis|garage|postgres" ;;
  esac
  log "$1 restarted in $(since "$started")s"
}

cmd_status() {
  local down=0 pid bin
  if pid=$(rabbit_pid) && rabbitmqctl_ ping >/dev/null 2>&1; then
    printf '%-9s up    127.0.0.1:%-5s pid %s\n' rabbitmq "$AMQP_PORT" "$pid"
  else
    printf '%-9s down  127.0.0.1:%-5s -\n' rabbitmq "$AMQP_PORT"
    down=1
  fi
  if pid=$(redis_pid) && [ "$(redis ping 2>/dev/null)" = PONG ]; then
    printf '%-9s up    127.0.0.1:%-5s pid %s\n' redis "$REDIS_PORT" "$pid"
  else
    printf '%-9s down  127.0.0.1:%-5s -\n' redis "$REDIS_PORT"
    down=1
  fi
  if pid=$(garage_pid) && s3 GET "$S3_BUCKET/?list-type=2&max-keys=1" >/dev/null 2>&1; then
    printf '%-9s up    127.0.0.1:%-5s pid %s\n' garage "$S3_PORT" "$pid"
  else
    printf '%-9s down  127.0.0.1:%-5s -\n' garage "$S3_PORT"
    down=1
  fi
  if pid=$(pg_pid) && bin=$(pg_bin) && "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    printf '%-9s up    127.0.0.1:%-5s pid %s\n' postgres "$PG_PORT" "$pid"
  else
    printf '%-9s down  127.0.0.1:%-5s -\n' postgres "$PG_PORT"
    down=1
  fi
  return $down
}

cmd_env() {
  cat <<EOF
export FLEET_AMQP_URL=amqp://$AMQP_USER:$AMQP_PASS@127.0.0.1:$AMQP_PORT/$AMQP_VHOST
export FLEET_REDIS_URL=redis://fleet-admin:fleet-admin-dev@127.0.0.1:$REDIS_PORT
export FLEET_SCHEDULER_AMQP_URL=amqp://fleet-scheduler:fleet-scheduler-dev@127.0.0.1:$AMQP_PORT/$AMQP_VHOST
export FLEET_SCHEDULER_REDIS_URL=redis://fleet-scheduler:fleet-scheduler-dev@127.0.0.1:$REDIS_PORT
export FLEET_SCHEDULER_S3_KEY=$SCHEDULER_S3_KEY FLEET_SCHEDULER_S3_SECRET=$SCHEDULER_S3_SECRET
export FLEET_WORKER_AMQP_URL=amqp://fleet-worker:fleet-worker-dev@127.0.0.1:$AMQP_PORT/$AMQP_VHOST
export FLEET_WORKER_REDIS_URL=redis://fleet-worker:fleet-worker-dev@127.0.0.1:$REDIS_PORT
export FLEET_WORKER_S3_KEY=$WORKER_S3_KEY FLEET_WORKER_S3_SECRET=$WORKER_S3_SECRET
export FLEET_API_AMQP_URL=amqp://fleet-api:fleet-api-dev@127.0.0.1:$AMQP_PORT/$AMQP_VHOST
export FLEET_API_REDIS_URL=redis://fleet-api:fleet-api-dev@127.0.0.1:$REDIS_PORT
export FLEET_API_S3_KEY=$API_S3_KEY FLEET_API_S3_SECRET=$API_S3_SECRET
export FLEET_LEDGER_URL=postgres://fleet_ledger_admin:$LEDGER_ADMIN_PASS@127.0.0.1:$PG_PORT/$PG_DB
export FLEET_WORKER_LEDGER_URL=postgres://fleet_ledger_writer:$LEDGER_WRITER_PASS@127.0.0.1:$PG_PORT/$PG_DB
export FLEET_API_LEDGER_URL=postgres://fleet_ledger_reader:$LEDGER_READER_PASS@127.0.0.1:$PG_PORT/$PG_DB
export FLEET_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export FLEET_S3_REGION=$S3_REGION
export FLEET_S3_BUCKET=$S3_BUCKET
export AWS_ACCESS_KEY_ID=$S3_KEY_ID
export AWS_SECRET_ACCESS_KEY=$S3_SECRET
export FLEET_STACK_DIR=$STACK
export FLEET_AMQP_PORT=$AMQP_PORT
export FLEET_REDIS_PORT=$REDIS_PORT
export FLEET_S3_PORT=$S3_PORT
export FLEET_GARAGE_RPC_PORT=$GARAGE_RPC_PORT
export FLEET_GARAGE_ADMIN_PORT=$GARAGE_ADMIN_PORT
export FLEET_RABBIT_DIST_PORT=$RABBIT_DIST_PORT
export FLEET_PG_PORT=$PG_PORT
EOF
}

pg_locate
case ${1:-} in
  up) cmd_up "${@:2}" ;;
  down) cmd_down "${@:2}" ;;
  status) cmd_status ;;
  restart) cmd_restart "${@:2}" ;;
  env) cmd_env ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '/^# shellcheck/d; $d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
