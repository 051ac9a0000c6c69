#!/usr/bin/env bash
# potstill's shared services on one machine, every listener on 127.0.0.1:
#   PostgreSQL (one database and one non-superuser role per service), an S3-compatible object store
#   (moto's server, a stand-in for MinIO/S3), the MLflow tracking server (PostgreSQL backend store, S3
#   artifact destination, artifacts proxied through the server, MLflow's basic-auth app), the Prefect server
#   on PostgreSQL (API auth string) with a worker on a process work pool, and a Ray head (token auth). Then
#   it writes the client variables, credentials included, to infra/.env (mode 600).
#
#   Every credential is random, generated once and kept in <state>/secrets (mode 700): nothing listens
#   without a password, and there is no default password to forget to change.
#
#   infra/services/services.sh up       # start what is not running (idempotent), write infra/.env
#   infra/services/services.sh down     # stop every process it started, by PID (never a global kill)
#   infra/services/services.sh status   # one line per service; exit 1 when one is down
#   infra/services/services.sh env      # print the env file
#   set -a; . infra/.env; set +a; .venv/bin/potstill run
#
# Environment (defaults in brackets):
#   POTSTILL_SERVICES_DIR  [<repo>/.cache/services]  state: logs, PID files, Prefect home, generated secrets
#   POTSTILL_SERVICES_ENV_FILE [<repo>/infra/.env]   where `up` writes the client variables (mode 600)
#   POTSTILL_PG_PORT [5433]  POTSTILL_S3_PORT [9000]  POTSTILL_MLFLOW_PORT [5000]
#   POTSTILL_PREFECT_PORT [4200]  POTSTILL_RAY_PORT [6379]  POTSTILL_RAY_CLIENT_PORT [ray port + 1]
#   (Ray's other ports, worker ports included, are picked at random by the OS, on 127.0.0.1)
#   POTSTILL_PG_DATA       [<state>/postgres, or /tmp/potstill-pg-<hash> when the postgres user cannot
#                           reach the state dir]
#   POTSTILL_RAY_TMPDIR    [/tmp/potstill-ray-<hash>]  short: Ray's socket paths must stay < 108 chars
#   POTSTILL_RAY_NUM_CPUS  [all]  POTSTILL_SERVICES_SKIP  [""] e.g. "ray" or "ray prefect-worker"
#   PREFECT_WORKER_QUERY_SECONDS / PREFECT_WORKER_PREFETCH_SECONDS  passed to the worker (tests set them low)
#   POTSTILL_PYTHON        [<repo>/.venv/bin/python]   the venv holding mlflow, prefect, moto, ray
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${POTSTILL_SERVICES_DIR:-${POTSTILL_CACHE:-$REPO/.cache}/services}"
ENV_FILE="${POTSTILL_SERVICES_ENV_FILE:-$REPO/infra/.env}"
PY="${POTSTILL_PYTHON:-$REPO/.venv/bin/python}"
BIN="$(dirname "$PY")"
PG_PORT="${POTSTILL_PG_PORT:-5433}"
S3_PORT="${POTSTILL_S3_PORT:-9000}"
MLFLOW_PORT="${POTSTILL_MLFLOW_PORT:-5000}"
PREFECT_PORT="${POTSTILL_PREFECT_PORT:-4200}"
RAY_PORT="${POTSTILL_RAY_PORT:-6379}"
RAY_CLIENT_PORT="${POTSTILL_RAY_CLIENT_PORT:-$((RAY_PORT + 1))}"  # Ray's default 10001 may be taken
SKIP=" ${POTSTILL_SERVICES_SKIP:-} "
HOST=127.0.0.1
PG_USER=potstill
MLFLOW_USER=potstill  # the basic-auth app's admin, created on its first start
PG_BIN=""
WORK_POOL="${POTSTILL_WORK_POOL:-potstill-process}"
MLFLOW_BUCKET=potstill-mlflow
DVC_BUCKET=potstill-dvc
STATE_HASH="$(printf '%s' "$STATE" | md5sum | cut -c1-8)"
RAY_TMP="${POTSTILL_RAY_TMPDIR:-/tmp/potstill-ray-$STATE_HASH}"

log() { echo "services: $*" >&2; }
skipped() { [[ "$SKIP" == *" $1 "* ]]; }
pidfile() { echo "$STATE/$1.pid"; }

alive() {  # alive NAME: the PID in NAME's PID file runs and its command line still matches NAME's pattern
  local f pid
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$(cat "$STATE/$1.match" 2>/dev/null || echo "$1")"
}

wait_for() {  # wait_for NAME SECONDS CHECK...: poll CHECK until it succeeds, while NAME's process lives
  local name="$1" timeout="$2" waited=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [[ "$name" != postgres ]] && ! alive "$name"; then
      log "$name exited during start; last lines of $STATE/$name.log:"
      tail -n 40 "$STATE/$name.log" >&2 || true
      return 1
    fi
    if ((waited >= timeout * 4)); then
      log "$name not ready after ${timeout}s; last lines of $STATE/$name.log:"
      tail -n 40 "$STATE/$name.log" >&2 || true
      return 1
    fi
    sleep 0.25
    waited=$((waited + 1))
  done
  log "$name ready after $((waited / 4))s"
}

http_ok() {  # http_ok URL [USER:PASSWORD]: answers 2xx (with HTTP basic auth when given)
  "$PY" - "$@" <<'PY'
import base64, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", "Basic " + base64.b64encode(sys.argv[2].encode()).decode())
sys.exit(0 if urllib.request.urlopen(request, timeout=3).status < 300 else 1)
PY
}

tcp_open() {  # tcp_open PORT: something accepts connections on 127.0.0.1:PORT
  "$PY" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()' "$1"
}

spawn() {  # spawn NAME MATCH CMD...: start CMD in the background in its own process group, log + PID file.
  # `set -m` gives the job its own group (stop signals the group) and keeps SIGINT/SIGTERM at their
  # defaults: a plain `&` job of a non-interactive shell ignores SIGINT, which Prefect's worker relies on.
  local name="$1" match="$2"
  shift 2
  echo "$match" >"$STATE/$name.match"
  set -m
  "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$(pidfile "$name")"
  set +m
  log "$name started (PID $!, log $STATE/$name.log)"
}

stop_pid() {  # stop_pid NAME: TERM the process group of the PID it started, then KILL what is left
  local f pid
  f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if ! alive "$1"; then
    rm -f "$f"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f"
  log "$1 stopped (PID $pid)"
}

secret() {  # secret NAME: a random value generated once and kept in the state dir
  local f="$STATE/secrets/$1"
  if [[ ! -s "$f" ]]; then
    mkdir -p "$STATE/secrets" && chmod 700 "$STATE/secrets"
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_hex(16))' >"$f")
  fi
  cat "$f"
}

# ---- PostgreSQL

pg_bindir() {
  local d
  if command -v pg_ctl >/dev/null 2>&1; then
    d="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
  else
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  fi
  [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] && echo "$d"
}

install_postgres() {  # Debian's package (~16 s); no auto-created cluster: we run our own data dir
  if [[ $EUID -ne 0 ]]; then
    log "PostgreSQL is not installed and this is not root: install Debian's 'postgresql' package"
    return 1
  fi
  log "installing PostgreSQL (apt-get install postgresql)"
  mkdir -p /etc/postgresql-common
  [[ -f /etc/postgresql-common/createcluster.conf ]] ||
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends postgresql >"$STATE/apt.log" 2>&1 || {
    apt-get update -q >>"$STATE/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends postgresql >>"$STATE/apt.log" 2>&1
  } || { tail -n 20 "$STATE/apt.log" >&2; return 1; }
}

as_pg() {  # initdb and postgres refuse to run as root
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_root() {  # the folder holding the data dir, reachable by the user postgres runs as
  if [[ -n "${POTSTILL_PG_DATA:-}" ]]; then echo "$POTSTILL_PG_DATA"; return; fi
  if [[ $EUID -ne 0 ]] || runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
    echo "$STATE/postgres"
  else
    echo "/tmp/potstill-pg-$STATE_HASH"  # e.g. a pytest tmp dir (mode 700, root's)
  fi
}

pg_up() {
  local bin root data pw
  bin="$(pg_bindir || true)"
  if [[ -z "$bin" ]]; then install_postgres && bin="$(pg_bindir)"; fi
  root="$(pg_root)"
  data="$root/data"
  echo "$root" >"$STATE/postgres.root"
  pw="$(secret postgres)"
  mkdir -p "$root"
  [[ $EUID -eq 0 ]] && chown postgres: "$root" && chmod 700 "$root"
  if [[ ! -f "$data/PG_VERSION" ]]; then
    (umask 077 && echo "$pw" >"$root/pwfile")
    [[ $EUID -eq 0 ]] && chown postgres: "$root/pwfile"
    as_pg "$bin/initdb" -D "$data" -U "$PG_USER" --pwfile="$root/pwfile" --auth-host=scram-sha-256 \
      --auth-local=peer --encoding=UTF8 --no-locale >"$STATE/postgres-initdb.log" 2>&1 ||
      { rm -f "$root/pwfile"; tail -n 20 "$STATE/postgres-initdb.log" >&2; return 1; }
    rm -f "$root/pwfile"
  fi
  if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "postgres already running ($data)"
  else
    # TCP on loopback only, no Unix socket (its path could be too long, and nothing needs it).
    as_pg "$bin/pg_ctl" -D "$data" -l "$root/postgres.log" -w -t 60 \
      -o "-c listen_addresses=$HOST -p $PG_PORT -c unix_socket_directories=''" start >/dev/null
    log "postgres started on $HOST:$PG_PORT ($data)"
  fi
  head -n 1 "$data/postmaster.pid" >"$(pidfile postgres)"
  echo "postgres" >"$STATE/postgres.match"
  PG_BIN="$bin"
  # One role per service (LOGIN, no superuser, no CREATEDB/CREATEROLE) owning its databases, and CONNECT
  # revoked from PUBLIC: MLflow's credentials cannot open Prefect's database, nor the other way round. The
  # bootstrap superuser (potstill) only administers.
  local role db
  for role in mlflow prefect; do
    if [[ "$(pg_sql postgres "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" != 1 ]]; then
      pg_sql postgres "CREATE ROLE $role LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$(secret "$role-db")'" >/dev/null
      log "postgres: created role $role"
    fi
  done
  for db in mlflow:mlflow mlflow_auth:mlflow prefect:prefect; do
    role="${db#*:}" db="${db%%:*}"
    if [[ "$(pg_sql postgres "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]]; then
      PGPASSWORD="$pw" "$bin/createdb" -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -O "$role" "$db"
      log "postgres: created database $db (owner $role)"
    fi
    pg_sql postgres "REVOKE CONNECT, TEMPORARY ON DATABASE $db FROM PUBLIC" >/dev/null
    if [[ "$(db_owner "$db")" != "$role" ]]; then  # a data dir from before per-service roles
      log "postgres: database $db is owned by $(db_owner "$db"), not $role: its service keeps connecting as" \
        "that owner (run 'down', delete $root and 'up' again for per-service roles)"
    fi
  done
}

pg_sql() {  # pg_sql DB SQL: one statement as the bootstrap superuser, tuples only
  PGPASSWORD="$(secret postgres)" "$PG_BIN/psql" -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$1" \
    -v ON_ERROR_STOP=1 -tAc "$2"
}

db_owner() {  # db_owner DB: the role that owns DB
  pg_sql postgres "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$1'"
}

pg_down() {
  local bin root
  bin="$(pg_bindir || true)"
  root="$(cat "$STATE/postgres.root" 2>/dev/null || true)"
  if [[ -n "$bin" && -n "$root" && -f "$root/data/postmaster.pid" ]]; then
    as_pg "$bin/pg_ctl" -D "$root/data" -m fast -w -t 60 stop >/dev/null && log "postgres stopped"
  fi
  rm -f "$(pidfile postgres)"
}

pg_url() {  # pg_url DRIVER DB: connect as the database's owner (its service's role)
  local owner
  owner="$(db_owner "$2")"
  if [[ "$owner" == "$PG_USER" ]]; then
    echo "$1://$PG_USER:$(secret postgres)@$HOST:$PG_PORT/$2"
  else
    echo "$1://$owner:$(secret "$owner-db")@$HOST:$PG_PORT/$2"
  fi
}

# ---- S3-compatible store: moto's server (in memory: objects live as long as the process)

aws_env() {
  export AWS_ACCESS_KEY_ID="potstill" AWS_SECRET_ACCESS_KEY="$(secret s3)" AWS_DEFAULT_REGION=us-east-1
  export MLFLOW_S3_ENDPOINT_URL="http://$HOST:$S3_PORT" AWS_ENDPOINT_URL="http://$HOST:$S3_PORT"
}

s3_up() {
  if alive s3; then log "s3 already running"; else
    spawn s3 moto_server "$BIN/moto_server" -H "$HOST" -p "$S3_PORT"
    wait_for s3 30 http_ok "http://$HOST:$S3_PORT/moto-api/"
  fi
  (
    aws_env
    "$PY" - "$MLFLOW_BUCKET" "$DVC_BUCKET" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
for bucket in sys.argv[1:]:
    if bucket not in have:
        s3.create_bucket(Bucket=bucket)
PY
  )
}

# ---- MLflow tracking server

mlflow_up() {
  if alive mlflow; then log "mlflow already running"; return; fi
  (
    aws_env
    export MLFLOW_BACKEND_STORE_URI="$(pg_url postgresql+psycopg2 mlflow)"  # env, not argv: keeps it off ps
    export MLFLOW_ARTIFACTS_DESTINATION="s3://$MLFLOW_BUCKET/artifacts"
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false  # else 7 more processes (~1.5 GB) for UI jobs
    export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
    # MLflow's basic-auth app: users and permissions in their own database (mlflow_auth, role mlflow). Its
    # database_uri is read only from the ini file, which therefore holds a password: mode 600, state dir.
    export MLFLOW_AUTH_CONFIG_PATH="$STATE/mlflow-auth.ini"
    local auth_db
    auth_db="$(pg_url postgresql+psycopg2 mlflow_auth)"
    (umask 077 && printf '%s\n' "[mlflow]" "default_permission = READ" "database_uri = $auth_db" \
      "admin_username = $MLFLOW_USER" \
      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" >"$MLFLOW_AUTH_CONFIG_PATH")
    export MLFLOW_AUTH_ADMIN_USERNAME="$MLFLOW_USER" MLFLOW_AUTH_ADMIN_PASSWORD="$(secret mlflow-admin)"
    export MLFLOW_FLASK_SERVER_SECRET_KEY="$(secret mlflow-flask)"
    unset MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
    spawn mlflow "mlflow server" "$BIN/mlflow" server --app-name basic-auth --serve-artifacts --host "$HOST" \
      --port "$MLFLOW_PORT" --workers 1
  )
  wait_for mlflow 120 http_ok "http://$HOST:$MLFLOW_PORT/health"
}

# ---- Prefect server and worker

prefect_up() {
  if alive prefect-server; then log "prefect-server already running"; else
    (
      export PREFECT_HOME="$STATE/prefect-server"
      export PREFECT_SERVER_DATABASE_CONNECTION_URL="$(pg_url postgresql+asyncpg prefect)"
      export PREFECT_SERVER_API_HOST="$HOST" PREFECT_SERVER_API_PORT="$PREFECT_PORT"
      export PREFECT_SERVER_API_AUTH_STRING="$(prefect_auth)"  # every API call but /api/health needs it
      export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
      unset PREFECT_API_URL  # the server must not report to another API
      mkdir -p "$PREFECT_HOME"
      spawn prefect-server "prefect server start" "$BIN/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
    )
    wait_for prefect-server 120 http_ok "http://$HOST:$PREFECT_PORT/api/health"
  fi
  skipped prefect-worker && { log "prefect-worker skipped (POTSTILL_SERVICES_SKIP)"; return; }
  if alive prefect-worker; then log "prefect-worker already running"; return; fi
  (
    export PREFECT_HOME="$STATE/prefect-worker" PREFECT_API_URL="http://$HOST:$PREFECT_PORT/api"
    export PREFECT_API_AUTH_STRING="$(prefect_auth)"  # the flow runs it starts inherit it
    mlflow_client_env
    export PREFECT_WORKER_QUERY_SECONDS="${PREFECT_WORKER_QUERY_SECONDS:-10}"
    export PREFECT_WORKER_PREFETCH_SECONDS="${PREFECT_WORKER_PREFETCH_SECONDS:-10}"
    export PREFECT_WORKER_WEBSERVER_HOST="$HOST"  # only used when the webserver is turned on
    aws_env  # flow runs it starts read the DVC remote and MLflow the same way as `potstill run`
    mkdir -p "$PREFECT_HOME"
    spawn prefect-worker "prefect worker start" "$BIN/prefect" worker start --pool "$WORK_POOL" --type process \
      --name "potstill-$STATE_HASH"
  )
  wait_for prefect-worker 60 http_ok "http://$HOST:$PREFECT_PORT/api/work_pools/$WORK_POOL" "$(prefect_auth)"
}

prefect_auth() { echo "$PG_USER:$(secret prefect-auth)"; }

mlflow_client_env() {
  export MLFLOW_TRACKING_USERNAME="$MLFLOW_USER" MLFLOW_TRACKING_PASSWORD="$(secret mlflow-admin)"
}

# ---- Ray head

ray_up() {
  if skipped ray; then log "ray skipped (POTSTILL_SERVICES_SKIP)"; return; fi
  if [[ ! -x "$BIN/ray" ]]; then
    log "ray is not installed in $(dirname "$BIN"): no Ray head (pip install the project to get it)"
    rm -f "$STATE/ray.address"
    return
  fi
  if alive ray; then log "ray already running"; return; fi
  mkdir -p "$RAY_TMP"
  (
    # Without this Ray binds its ports on every address even with --node-ip-address 127.0.0.1.
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
    # Token auth with this head's own token (in the env file for clients). Left to Ray, the mode would
    # depend on whether a ~/.ray/auth_token happens to exist, a file shared by every Ray on the machine.
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(secret ray)"
    unset RAY_ADDRESS
    local cpus=()
    [[ -n "${POTSTILL_RAY_NUM_CPUS:-}" ]] && cpus=(--num-cpus "$POTSTILL_RAY_NUM_CPUS")
    # --block: `ray start` stays the parent of the head's processes, so stopping its group stops them.
    spawn ray "ray start --head" "$BIN/ray" start --head --block --node-ip-address "$HOST" --port "$RAY_PORT" \
      --include-dashboard false --dashboard-host "$HOST" --temp-dir "$RAY_TMP" --disable-usage-stats \
      --ray-client-server-port "$RAY_CLIENT_PORT" --dashboard-agent-listen-port 0 \
      --min-worker-port 0 --max-worker-port 0 "${cpus[@]}"
  )
  wait_for ray 90 grep -q "Ray runtime started" "$STATE/ray.log"
  wait_for ray 60 tcp_open "$RAY_CLIENT_PORT"  # the client server (ray://) comes up a moment later
  echo "$HOST:$RAY_PORT" >"$STATE/ray.address"
  echo "$RAY_TMP" >"$STATE/ray.tmpdir"
}

ray_down() {
  stop_pid ray
  # Leftovers of this head only (workers re-parented away from the group): their command lines name
  # this head's private temp dir. Matched by that path, signalled by PID; never `ray stop` (all of Ray).
  local pid
  for pid in $(grep -l -s -- "$RAY_TMP" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    [[ "$pid" == "$$" ]] || kill -KILL "$pid" 2>/dev/null || true
  done
}

# ---- env file

write_env() {
  local ray_line="# RAY_ADDRESS: no Ray head (ray not installed or skipped)"
  [[ -f "$STATE/ray.address" ]] &&
    ray_line="RAY_ADDRESS=$(cat "$STATE/ray.address")"$'\n'"RAY_AUTH_MODE=token"$'\n'"RAY_AUTH_TOKEN=$(secret ray)"
  mkdir -p "$(dirname "$ENV_FILE")"
  (
    umask 077
    cat >"$ENV_FILE" <<EOF
# Written by infra/services/services.sh up ($(date -u +%FT%TZ)). Load with: set -a; . $ENV_FILE; set +a
MLFLOW_TRACKING_URI=http://$HOST:$MLFLOW_PORT
MLFLOW_TRACKING_USERNAME=$MLFLOW_USER
MLFLOW_TRACKING_PASSWORD=$(secret mlflow-admin)
PREFECT_API_URL=http://$HOST:$PREFECT_PORT/api
PREFECT_API_AUTH_STRING=$(prefect_auth)
$ray_line
POTSTILL_WORK_POOL=$WORK_POOL
# S3-compatible store (moto's server standing in for MinIO/S3; dummy credentials)
AWS_ACCESS_KEY_ID=potstill
AWS_SECRET_ACCESS_KEY=$(secret s3)
AWS_DEFAULT_REGION=us-east-1
AWS_ENDPOINT_URL=http://$HOST:$S3_PORT
MLFLOW_S3_ENDPOINT_URL=http://$HOST:$S3_PORT
# The catalog's DVC remote (potstill/data/versioning.py reads these)
POTSTILL_DVC_REMOTE_URL=s3://$DVC_BUCKET/storage
POTSTILL_DVC_REMOTE_ENDPOINT_URL=http://$HOST:$S3_PORT
EOF
  )
  log "wrote $ENV_FILE"
}

up() {
  mkdir -p "$STATE"
  [[ -x "$PY" ]] || { log "no Python at $PY (run make setup)"; exit 1; }
  local t0=$SECONDS
  pg_up
  s3_up
  mlflow_up &  # MLflow and Prefect start in parallel (~15 s each)
  local mlflow_job=$!
  prefect_up
  wait "$mlflow_job"
  ray_up
  write_env
  log "all up in $((SECONDS - t0))s"
}

down() {
  ray_down
  stop_pid prefect-worker
  stop_pid prefect-server
  stop_pid mlflow
  stop_pid s3
  pg_down
}

status() {
  local name rc=0
  for name in postgres s3 mlflow prefect-server prefect-worker ray; do
    if alive "$name"; then
      echo "$name: up (PID $(cat "$(pidfile "$name")"))"
    elif { [[ $name == ray ]] && { skipped ray || [[ ! -x "$BIN/ray" ]]; }; } ||
      { [[ $name == prefect-worker ]] && skipped prefect-worker; }; then
      echo "$name: skipped"
    else
      echo "$name: down"
      rc=1
    fi
  done
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) cat "$ENV_FILE" ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
