#!/usr/bin/env bash
# Label Studio for potstill's human review: install (own venv), start, stop, run in the foreground.
#
# Label Studio lives in its own virtual environment, never in the project's .venv: it pins older
# pyarrow, Django and friends and would break the Prefect/MLflow stack there.
#
#   infra/label-studio/server.sh install   # idempotent: skipped when the stamp for this version exists
#   infra/label-studio/server.sh start     # background, waits for /health, writes a PID file
#   infra/label-studio/server.sh stop      # stops the PID from the PID file (TERM, then KILL)
#   infra/label-studio/server.sh status    # exit 0 when /health answers
#   infra/label-studio/server.sh run       # foreground (make review-server)
#
# Environment (defaults in brackets):
#   POTSTILL_CACHE            [<repo>/.cache]      the venv goes to $POTSTILL_CACHE/label-studio/venv
#   LABEL_STUDIO_PORT         [8080]               bound to 127.0.0.1 only
#   LABEL_STUDIO_DATA_DIR     [$POTSTILL_CACHE/label-studio/data]   database, uploads, log, PID file
#   LABEL_STUDIO_USERNAME     [admin@potstill.local]   the admin user created on first start
#   LABEL_STUDIO_PASSWORD     (required for start/run)
#   LABEL_STUDIO_API_KEY      (required for start/run) the admin's API token, used by potstill's client
#   LABEL_STUDIO_START_TIMEOUT [240]               seconds to wait for /health (first start migrates, ~45 s)
#   LABEL_STUDIO_PYTHON       [python3.11, else python3]   the interpreter the server venv is made with
# Secrets are read from the environment only and never echoed.
set -euo pipefail

LABEL_STUDIO_VERSION="1.23.2"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${POTSTILL_CACHE:-$REPO/.cache}"
LS_HOME="$CACHE/label-studio"
VENV="$LS_HOME/venv"
STAMP="$VENV/.installed-$LABEL_STUDIO_VERSION"
PYTHON="${LABEL_STUDIO_PYTHON:-$(command -v python3.11 || command -v python3)}"
PORT="${LABEL_STUDIO_PORT:-8080}"
DATA_DIR="${LABEL_STUDIO_DATA_DIR:-$LS_HOME/data}"
USERNAME="${LABEL_STUDIO_USERNAME:-admin@potstill.local}"
TIMEOUT="${LABEL_STUDIO_START_TIMEOUT:-240}"
PIDFILE="$DATA_DIR/label-studio.pid"
LOGFILE="$DATA_DIR/label-studio.log"
URL="http://127.0.0.1:$PORT"

log() { echo "label-studio: $*" >&2; }

install() {
  if [[ -f "$STAMP" ]]; then
    return 0
  fi
  mkdir -p "$LS_HOME"
  # One installer at a time (parallel test sessions share the cache); re-check after taking the lock.
  exec 9>"$LS_HOME/install.lock"
  flock 9
  if [[ -f "$STAMP" ]]; then
    exec 9>&-
    return 0
  fi
  log "installing label-studio==$LABEL_STUDIO_VERSION into $VENV (takes a few minutes, once)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  # (pip's "Location ... is ignored" lines come from this machine's pip.conf and are noise.)
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip 2>&1 \
    | { grep -v "is ignored" || true; }
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "label-studio==$LABEL_STUDIO_VERSION" 2>&1 \
    | { grep -v "is ignored" || true; }
  # `label-studio --version` starts a server: check the installed version with pip show instead.
  installed="$("$VENV/bin/python" -m pip show label-studio | awk '/^Version:/ {print $2}')"
  if [[ "$installed" != "$LABEL_STUDIO_VERSION" ]]; then
    log "expected label-studio $LABEL_STUDIO_VERSION, pip show says '$installed'"
    exit 1
  fi
  touch "$STAMP"
  exec 9>&-
  log "installed label-studio $installed"
}

# HTTP checks use the server venv's Python (no curl needed on CI machines). Prints the status code.
http_status() {  # http_status PATH [send-token]
  "$VENV/bin/python" - "$URL$1" "${2:-}" <<'PY' 2>/dev/null || echo 000
import os, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1])
if sys.argv[2]:
    req.add_header("Authorization", "Token " + os.environ["LABEL_STUDIO_API_KEY"])
try:
    print(urllib.request.urlopen(req, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
}

is_label_studio() {  # is_label_studio PID: that process is a Label Studio server (ps works on Linux and macOS)
  ps -o command= -p "$1" 2>/dev/null | grep -q "label-studio start"
}

healthy() {
  [[ -x "$VENV/bin/python" && "$(http_status /health)" == "200" ]]
}

require_secrets() {
  if [[ -z "${LABEL_STUDIO_PASSWORD:-}" || -z "${LABEL_STUDIO_API_KEY:-}" ]]; then
    log "set LABEL_STUDIO_PASSWORD and LABEL_STUDIO_API_KEY (the admin password and API token) first"
    exit 2
  fi
}

server_env() {
  # Secrets go to Label Studio through its environment (LABEL_STUDIO_PASSWORD, LABEL_STUDIO_USER_TOKEN),
  # not its command line, so they never show in `ps`. Label Studio applies them only when it creates
  # the admin user, i.e. on the first start with a data dir.
  export LABEL_STUDIO_USER_TOKEN="$LABEL_STUDIO_API_KEY"
  # Offline, local-only, no telemetry; everything lives in the data dir.
  export LABEL_STUDIO_BASE_DATA_DIR="$DATA_DIR"
  export LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=false
  export LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK=true
  export COLLECT_ANALYTICS=false
  export SENTRY_DSN="" FRONTEND_SENTRY_DSN=""
  export DJANGO_DB=sqlite
}

server_args() {
  # Same as --username/--password/--user-token, with the two secrets passed in the environment
  # (server_env). The fixed user token is a legacy token: it needs --enable-legacy-api-token.
  ARGS=(start --no-browser --internal-host 127.0.0.1 --port "$PORT" --data-dir "$DATA_DIR"
        --username "$USERNAME" --enable-legacy-api-token)
}

check_token() {
  # The token is fixed when the data dir is first initialised; a later start with another
  # LABEL_STUDIO_API_KEY would come up fine and then answer 401 to every potstill call.
  local code
  code="$(http_status /api/current-user/whoami token)"
  if [[ "$code" != "200" ]]; then
    log "up, but it rejects LABEL_STUDIO_API_KEY (HTTP $code): $DATA_DIR was initialised with another"
    log "token; use that token, or a fresh LABEL_STUDIO_DATA_DIR"
    return 1
  fi
}

start() {
  require_secrets
  install
  mkdir -p "$DATA_DIR"
  if [[ -f "$PIDFILE" ]] && is_label_studio "$(cat "$PIDFILE")"; then
    log "already running (PID $(cat "$PIDFILE")) at $URL"
    check_token
    return
  fi
  if healthy; then
    log "port $PORT already serves something else that answers /health; pick LABEL_STUDIO_PORT"
    exit 1
  fi
  server_env
  server_args
  # Own session (setsid) so stop can signal the whole process group (Django runs child processes).
  setsid "$VENV/bin/label-studio" "${ARGS[@]}" >"$LOGFILE" 2>&1 < /dev/null &
  echo $! >"$PIDFILE"
  log "starting at $URL (PID $!, data $DATA_DIR, log $LOGFILE)"
  local waited=0
  while ! healthy; do
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      log "exited during start; last lines of $LOGFILE:"
      tail -n 30 "$LOGFILE" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    if (( waited >= TIMEOUT )); then
      log "no /health after ${TIMEOUT}s; stopping it. Last lines of $LOGFILE:"
      tail -n 30 "$LOGFILE" >&2
      stop
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "up at $URL after ${waited}s"
  check_token || { stop; exit 1; }
}

stop() {
  if [[ ! -f "$PIDFILE" ]]; then
    log "not running (no $PIDFILE)"
    return 0
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  # A stale PID file (after a reboot) may name an unrelated process by now: only signal Label Studio.
  if kill -0 "$pid" 2>/dev/null && ! is_label_studio "$pid"; then
    log "PID $pid from $PIDFILE is not Label Studio any more; removing the stale PID file"
    rm -f "$PIDFILE"
    return 0
  fi
  if kill -0 "$pid" 2>/dev/null; then
    # The PID leads its own process group (setsid): signal the group, then wait up to 20 s.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$PIDFILE"
  log "stopped (PID $pid)"
}

run() {
  require_secrets
  install
  mkdir -p "$DATA_DIR"
  server_env
  server_args
  log "serving at $URL (data $DATA_DIR); Ctrl-C stops it"
  exec "$VENV/bin/label-studio" "${ARGS[@]}"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if healthy; then log "up at $URL"; else log "not answering at $URL"; exit 1; fi ;;
  run) run ;;
  *) echo "usage: $0 install|start|stop|status|run" >&2; exit 2 ;;
esac
