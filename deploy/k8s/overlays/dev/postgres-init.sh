#!/usr/bin/env bash
# The royalty ledger in the official postgres image, as deploy/stack.sh's provision_postgres
# makes it: the four roles with their passwords, database `fleet` owned by fleet_ledger_owner,
# then deploy/templates/ledger.sql applied as that owner (the tables are the owner's, and its
# grants to the other roles hold).
#
# Mounted into /docker-entrypoint-initdb.d/ (docker-compose.yml; a copy in the Kubernetes dev
# overlay, deploy/k8s/overlays/dev/postgres-init.sh, which check.sh holds to this file), so the
# image runs it once, on an empty data folder, against the server it starts on its socket for
# initialisation. Every step is idempotent: to apply a changed ledger.sql to a kept volume, run
# it again in the running container, e.g.
#
#   docker compose exec -u postgres postgres bash /docker-entrypoint-initdb.d/10-fleet-ledger.sh
#
# Reads FLEET_LEDGER_OWNER_PASSWORD, FLEET_LEDGER_WRITER_PASSWORD, FLEET_LEDGER_READER_PASSWORD,
# FLEET_LEDGER_ADMIN_PASSWORD, and FLEET_LEDGER_SCHEMA (ledger.sql's path, default
# /etc/fleet/ledger.sql). Run in a subshell: the image sources a script that is not executable.

fleet_ledger_init() (
  set -euo pipefail
  local db=fleet schema=${FLEET_LEDGER_SCHEMA:-/etc/fleet/ledger.sql}
  [ -r "$schema" ] || { echo "postgres-init: cannot read the ledger schema $schema" >&2; exit 1; }
  # Over the image's socket (/var/run/postgresql): the superuser for roles and database.
  psql -X -q -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v owner_pass="$FLEET_LEDGER_OWNER_PASSWORD" -v writer_pass="$FLEET_LEDGER_WRITER_PASSWORD" \
    -v reader_pass="$FLEET_LEDGER_READER_PASSWORD" -v admin_pass="$FLEET_LEDGER_ADMIN_PASSWORD" \
    -v db="$db" >/dev/null <<'SQL'
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
  # As the owner, with its password: the tables are the owner's.
  PGPASSWORD=$FLEET_LEDGER_OWNER_PASSWORD PGOPTIONS='-c client_min_messages=warning' \
    psql -X -q -v ON_ERROR_STOP=1 --username fleet_ledger_owner --dbname "$db" -f "$schema" >/dev/null
  echo "postgres-init: roles, database $db and the ledger schema ($schema) in place"
)

fleet_ledger_init
