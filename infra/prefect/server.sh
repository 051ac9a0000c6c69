#!/usr/bin/env bash
# A Prefect server for potstill's scheduled flows (`potstill deploy`), on 127.0.0.1 only.
#
#   infra/prefect/server.sh start    # background, waits for /api/health, writes a PID file
#   infra/prefect/server.sh stop     # stops the PID from the PID file (TERM to its group, then KILL)
#   infra/prefect/server.sh status   # exit 0 when /api/health answers
#   infra/prefect/server.sh run      # foreground
#   export PREFECT_API_URL=http://127.0.0.1:4200/api   # then: potstill deploy
#
# Environment (defaults in brackets):
#   PREFECT_SERVER_PORT        [4200]                        bound to 127.0.0.1 only
#   POTSTILL_PREFECT_HOME      [<repo>/.cache/prefect-server] the server's PREFECT_HOME: SQLite database,
#                                                              log and PID file live here
#   PREFECT_SERVER_START_TIMEOUT [120]                      seconds to wait for /api/health (the first
#                                                              start migrates the database: ~30 s on 2 cores)
#   PREFECT_BIN                [<repo>/.venv/bin/prefect]
# A separate PREFECT_HOME from the project's `.prefect/` (the ephemeral API of `potstill run`) keeps a
# long-running server and ad-hoc runs from writing one SQLite file at the same time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PORT="${PREFECT_SERVER_PORT:-4200}"
HOME_DIR="${POTSTILL_PREFECT_HOME:-${POTSTILL_CACHE:-$REPO/.cache}/prefect-server}"
TIMEOUT="${PREFECT_SERVER_START_TIMEOUT:-120}"
PREFECT="${PREFECT_BIN:-$REPO/.venv/bin/prefect}"
PYTHON="$(dirname "$PREFECT")/python"
PIDFILE="$HOME_DIR/prefect-server.pid"
LOGFILE="$HOME_DIR/prefect-server.log"
URL="http://127.0.0.1:$PORT"

log() { echo "prefect-server: $*" >&2; }

healthy() {  # /api/health answers 200 (Python's urllib: no curl needed)
  "$PYTHON" - "$URL/api/health" <<'PY' >/dev/null 2>&1
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=3).status == 200 else 1)
PY
}

is_prefect() {  # is_prefect PID: that process is a Prefect server
  ps -o command= -p "$1" 2>/dev/null | grep -q "prefect server start"
}

server_env() {
  export PREFECT_HOME="$HOME_DIR"
  export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
  export PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT="$PORT"
  # The server must not report to another API (a PREFECT_API_URL exported for clients).
  unset PREFECT_API_URL
}

start() {
  mkdir -p "$HOME_DIR"
  if [[ -f "$PIDFILE" ]] && is_prefect "$(cat "$PIDFILE")"; then
    log "already running (PID $(cat "$PIDFILE")) at $URL"
    return
  fi
  if healthy; then
    log "port $PORT already serves a Prefect API; pick PREFECT_SERVER_PORT"
    exit 1
  fi
  server_env
  # Own session (setsid) so stop can signal the whole group (uvicorn and the services it starts).
  setsid "$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$LOGFILE" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  log "starting at $URL (PID $!, PREFECT_HOME $HOME_DIR, log $LOGFILE)"
  local waited=0
  while ! healthy; do
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      log "exited during start; last lines of $LOGFILE:"
      tail -n 30 "$LOGFILE" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    if ((waited >= TIMEOUT)); then
      log "no /api/health after ${TIMEOUT}s; stopping it. Last lines of $LOGFILE:"
      tail -n 30 "$LOGFILE" >&2
      stop
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "up at $URL after ${waited}s: export PREFECT_API_URL=$URL/api"
}

stop() {
  if [[ ! -f "$PIDFILE" ]]; then
    log "not running (no $PIDFILE)"
    return 0
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  # A stale PID file may name an unrelated process by now: only signal a Prefect server.
  if kill -0 "$pid" 2>/dev/null && ! is_prefect "$pid"; then
    log "PID $pid from $PIDFILE is not a Prefect server any more; removing the stale PID file"
    rm -f "$PIDFILE"
    return 0
  fi
  if kill -0 "$pid" 2>/dev/null; then
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
  mkdir -p "$HOME_DIR"
  server_env
  log "serving at $URL (PREFECT_HOME $HOME_DIR); Ctrl-C stops it"
  exec "$PREFECT" server start --host 127.0.0.1 --port "$PORT"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if healthy; then log "up at $URL"; else log "not answering at $URL"; exit 1; fi ;;
  run) run ;;
  *) echo "usage: $0 start|stop|status|run" >&2; exit 2 ;;
esac
