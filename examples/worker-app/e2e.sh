#!/usr/bin/env bash
# End-to-end test of the worker-app on the real workerd runtime:
#
#   1. build the Worker to wasm with worker-build (profile wasm-release, local tools only);
#   2. serve it with workerd on 127.0.0.1 (a free port), Durable Objects on SQLite files
#      under target/worker-app-e2e/do-storage;
#   3. run the conformance suite over HTTP (the same scenarios `cargo test` runs natively);
#   4. restart workerd (SIGTERM), check the data and the change log survived; write more,
#      SIGKILL it while a writer streams inserts, restart, check again (every acknowledged
#      write there with its change-log event, the one in flight stored and logged or neither,
#      a consumer resuming after its acknowledgement);
#   5. split a shard object under four writers; split another and SIGKILL workerd mid-split,
#      restart, check the split resumes and ends with every acknowledged write there once;
#   6. serve the same build with miniflare (R2, Cache API, Durable Objects locally): the tier
#      scenarios over HTTP (compaction to R2 from the object's alarm, reads falling through
#      to it, a damaged and a missing segment, the warm tier's bound), then compaction staged
#      and miniflare SIGKILLed before the upload, restarted (the alarm uploads), SIGTERMed,
#      restarted (everything read back from R2);
#   7. with --bench, after a restart: the sharded routes through DurableRouter against the
#      same work sent straight to one shard object (and the cold first requests), then db4
#      routes against hand-written SqlStorage routes.
#
# workerd is always stopped by its own PID (SIGTERM, then SIGKILL), whatever happens.
#
# Tools (.ci/run installs the pinned versions): $TOOLS/bin/worker-build,
# $TOOLS/bin/wasm-bindgen, and under $TOOLS/node the npm packages binaryen (wasm-opt) and
# workerd and miniflare. TOOLS defaults to ~/.cache/db4-tools.
set -euo pipefail

APP_DIR="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$APP_DIR/../.." && pwd)"
TOOLS="${TOOLS:-$HOME/.cache/db4-tools}"
WORKER_BUILD="${WORKER_BUILD_BIN:-$TOOLS/bin/worker-build}"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$TOOLS/bin/wasm-bindgen}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$TOOLS/node/node_modules/.bin/wasm-opt}"
WORKERD="${WORKERD_BIN:-$TOOLS/node/node_modules/@cloudflare/workerd-linux-64/bin/workerd}"

BENCH=0
for arg in "$@"; do
  case "$arg" in
    --bench) BENCH=1 ;;
    *) echo "usage: $0 [--bench]" >&2; exit 2 ;;
  esac
done

for tool in "$WORKER_BUILD" "$WASM_BINDGEN_BIN" "$WASM_OPT_BIN" "$WORKERD"; do
  if [ ! -x "$tool" ]; then
    echo "e2e: $tool is missing; .ci/run installs it (or set TOOLS)" >&2
    exit 1
  fi
done
command -v curl >/dev/null || { echo "e2e: curl is required" >&2; exit 1; }
MINIFLARE_PKG="$TOOLS/node/node_modules/miniflare/package.json"
[ -f "$MINIFLARE_PKG" ] || { echo "e2e: $MINIFLARE_PKG is missing; .ci/run installs it (or set TOOLS)" >&2; exit 1; }
command -v node >/dev/null || { echo "e2e: node is required (miniflare)" >&2; exit 1; }
command -v pgrep >/dev/null || { echo "e2e: pgrep is required" >&2; exit 1; }

RUN_DIR="$ROOT/target/worker-app-e2e"
STORAGE="$RUN_DIR/do-storage"
CONFIG="$RUN_DIR/workerd.capnp"
LOG="$RUN_DIR/workerd.log"
export DB4_E2E_RUN_ID="run$(date +%s)"
WORKERD_PID=""
URL=""

say() { printf '== e2e: %s\n' "$*"; }

now() { date +%s.%N; }

since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# Sends `$2` to `$1` (pid `$3`) and waits up to 10 s for it to exit: 0 if it did, 1 if not.
signal_and_wait() {
  local name="$1" signal="$2" pid="$3"
  kill -0 "$pid" 2>/dev/null || return 0
  kill "-$signal" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  say "$name ($pid) ignored SIG$signal for 10 s: SIGKILL"
  return 1
}

stop_workerd() {
  local signal="${1:-TERM}" pid="$WORKERD_PID"
  [ -n "$pid" ] || return 0
  WORKERD_PID=""
  signal_and_wait workerd "$signal" "$pid" || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
MF_PID=""
MF_LOG="$RUN_DIR/miniflare.log"
MF_DIR="$RUN_DIR/miniflare"

# SIGKILLs the children of `$1` (miniflare's workerd).
kill_children() {
  local child
  for child in $(pgrep -P "$1" || true); do
    kill -KILL "$child" 2>/dev/null || true
  done
}

# Stops miniflare: SIGTERM lets it dispose of its workerd; SIGKILL kills its workerd child
# first (as a crash would), then the node process.
stop_miniflare() {
  local signal="${1:-TERM}" pid="$MF_PID"
  [ -n "$pid" ] || return 0
  MF_PID=""
  if [ "$signal" = KILL ]; then
    kill_children "$pid"
  fi
  if ! signal_and_wait miniflare "$signal" "$pid"; then
    kill_children "$pid"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
trap 'stop_workerd TERM; stop_miniflare TERM' EXIT
trap 'exit 130' INT TERM

free_port() {
  local port
  for _ in $(seq 1 100); do
    # Below Linux's ephemeral range (32768 and up by default): a port some client connection
    # still holds (TIME_WAIT) cannot be bound, and nothing tells it apart from a free one.
    port=$((15000 + RANDOM % 15000))
    # Connection refused: nobody listens there.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "e2e: no free port found" >&2
  return 1
}

start_workerd() {
  local port
  port="$(free_port)"
  sed -e "s|@STORAGE_DIR@|$STORAGE|" -e "s|@ADDRESS@|127.0.0.1:$port|" -e "s|@BUILD_DIR@|build|" \
    "$APP_DIR/workerd.capnp.in" >"$CONFIG"
  # A simple command in the background: $! is workerd's own PID, not a wrapper shell's.
  "$WORKERD" serve "$CONFIG" >>"$LOG" 2>&1 &
  WORKERD_PID=$!
  URL="http://127.0.0.1:$port"
  export DB4_WORKERD_URL="$URL"
  if ! wait_ready workerd "$WORKERD_PID" "$URL"; then
    say "workerd exited during start-up; its log:"
    tail -n 40 "$LOG" >&2
    exit 1
  fi
}

# Waits for `$1` (pid `$2`) to answer `$3/health`: 0 when it does, 1 if the process exited
# first; after 30 s the run fails.
wait_ready() {
  local name="$1" pid="$2" url="$3" started
  started="$(now)"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || return 1
    if curl -sf --max-time 2 "$url/health" >/dev/null 2>&1; then
      say "$name (pid $pid) ready at $url after $(since "$started") s"
      return 0
    fi
    sleep 0.1
  done
  say "$name not ready after 30 s"
  exit 1
}

start_miniflare() {
  local port attempt
  mkdir -p "$MF_DIR"
  for attempt in 1 2 3; do
    port="$(free_port)"
    # A simple command in the background: $! is node's own PID.
    MF_NODE="$TOOLS/node" MF_BUILD="$RUN_DIR/build" MF_DIR="$MF_DIR" MF_PORT="$port" \
      node "$APP_DIR/miniflare.mjs" >>"$MF_LOG" 2>&1 &
    MF_PID=$!
    export DB4_MINIFLARE_URL="http://127.0.0.1:$port"
    wait_ready miniflare "$MF_PID" "$DB4_MINIFLARE_URL" && return 0
    wait "$MF_PID" 2>/dev/null || true
    MF_PID=""
    # A port taken between the check and the bind: another one.
    if tail -n 40 "$MF_LOG" | grep -q 'ADDRESS_IN_USE\|Address already in use'; then
      say "miniflare could not bind (attempt $attempt): another port"
      continue
    fi
    break
  done
  say "miniflare exited during start-up; its log:"
  tail -n 40 "$MF_LOG" >&2
  exit 1
}

suite() {
  # The workerd tests are #[ignore]d in a plain `cargo test`: they need the server started here.
  (cd "$ROOT" && cargo test -q -p worker-app --test conformance -- --ignored "$@")
}

persist() {
  say "persistence phase: $1"
  DB4_E2E_PERSIST="$1" suite --exact workerd_only::persistence --nocapture
}

say "building the worker (worker-build --profile wasm-release)"
started="$(now)"
(cd "$APP_DIR" && "$WORKER_BUILD" --profile wasm-release)
WASM="$APP_DIR/build/index_bg.wasm"
say "built in $(since "$started") s: $(wc -c <"$WASM") bytes of wasm, $(gzip -9 -c "$WASM" | wc -c) gzipped"
# worker-build keeps the name section (it passes --debuginfo to wasm-opt), which only names
# functions in stack traces and is about a tenth of the gzipped module: drop it. (The same
# features as worker-build enables, so nothing workerd cannot load is emitted.)
"$WASM_OPT_BIN" "$WASM" -o "$WASM" --strip-debug --strip-producers --enable-mutable-globals --enable-sign-ext \
  --enable-nontrapping-float-to-int --enable-bulk-memory --enable-multivalue --enable-reference-types \
  --enable-exception-handling
say "without the name section: $(wc -c <"$WASM") bytes of wasm, $(gzip -9 -c "$WASM" | wc -c) gzipped"

say "compiling the conformance suite"
(cd "$ROOT" && cargo test -q -p worker-app --test conformance --no-run)

rm -rf "$STORAGE" "$RUN_DIR/build"
mkdir -p "$STORAGE" "$RUN_DIR/build"
# The config embeds the modules by paths relative to itself (capnp reads a leading `/` as
# relative to its import path, not the file system root).
cp "$APP_DIR/build/index.js" "$WASM" "$RUN_DIR/build/"
: >"$LOG"
start_workerd

say "conformance suite over HTTP"
suite workerd::
say "live change stream (server-sent events, a reconnect with Last-Event-ID)"
suite --exact stream::stream_live --nocapture
persist write

say "restart (SIGTERM)"
stop_workerd TERM
start_workerd
persist verify
persist write_more

# SIGKILL with a write in flight: a writer inserts one article at a time, recording each
# acknowledged id, until workerd dies under it. After the restart every acknowledged insert
# (and the write_more phase's) must be there with its change-log event, the one in flight
# either both stored and logged or neither.
ACKED="$RUN_DIR/acked.txt"
: >"$ACKED"
export DB4_E2E_ACKED="$ACKED"
say "persistence phase: write_stream (in the background, until the SIGKILL)"
DB4_E2E_PERSIST=write_stream suite --exact workerd_only::persistence &
WRITER_PID=$!
for _ in $(seq 1 600); do
  [ "$(wc -l <"$ACKED")" -ge 50 ] && break
  kill -0 "$WRITER_PID" 2>/dev/null || break
  sleep 0.05
done
say "restart (SIGKILL under the writer, $(wc -l <"$ACKED") inserts acknowledged so far)"
stop_workerd KILL
wait "$WRITER_PID" || { say "the writer failed"; exit 1; }
[ "$(wc -l <"$ACKED")" -gt 0 ] || { say "no insert was acknowledged before the SIGKILL"; exit 1; }
start_workerd
persist verify_more

# Splits on 8 shard objects: under four writers to the end, then across a SIGKILL of workerd
# while the coordinator's alarm is copying; after the restart the split resumes and ends, and
# every acknowledged write is there exactly once.
split_phase() {
  say "split phase: $1"
  DB4_E2E_SPLIT="$1" suite --exact split::split --nocapture
}
split_phase load
SPLIT_ACKED="$RUN_DIR/split-acked.txt"
SPLIT_MARK="$RUN_DIR/split-mark.json"
: >"$SPLIT_ACKED"
rm -f "$SPLIT_MARK"
export DB4_E2E_ACKED="$SPLIT_ACKED" DB4_E2E_SPLIT_MARK="$SPLIT_MARK"
say "split phase: write (in the background, until the SIGKILL)"
DB4_E2E_SPLIT=write suite --exact split::split --nocapture &
WRITER_PID=$!
for _ in $(seq 1 900); do
  [ -s "$SPLIT_MARK" ] && break
  kill -0 "$WRITER_PID" 2>/dev/null || break
  sleep 0.1
done
[ -s "$SPLIT_MARK" ] || { say "the split never reached its copy"; wait "$WRITER_PID" || true; exit 1; }
say "restart (SIGKILL mid-split: $(cat "$SPLIT_MARK"))"
stop_workerd KILL
wait "$WRITER_PID" || { say "the split writers failed"; exit 1; }
start_workerd
split_phase resume

# The tiers on miniflare: R2 as the cold tier, compaction from the tier object's alarm.
tiers_phase() {
  say "tiers phase: $1"
  DB4_E2E_TIERS="$1" suite --exact tiers::tiers_persist --nocapture
}
rm -rf "$MF_DIR"
: >"$MF_LOG"
start_miniflare
say "tier scenarios over HTTP on miniflare"
suite miniflare:: --nocapture
tiers_phase stage
say "restart miniflare (SIGKILL of its workerd, compaction staged, not uploaded)"
stop_miniflare KILL
start_miniflare
tiers_phase after_kill
say "restart miniflare (SIGTERM)"
stop_miniflare TERM
start_miniflare
tiers_phase after_term
if [ "$BENCH" = 1 ]; then
  say "benchmark: the tiers on miniflare (DB4_BENCH_N=${DB4_BENCH_N:-2000})"
  suite --exact tiers::tiers_bench --nocapture | tee "$RUN_DIR/bench-tiers.md"
fi
stop_miniflare TERM

files="$(find "$STORAGE" -name '*.sqlite' | wc -l)"
say "$files Durable Object databases on disk under $STORAGE"
[ "$files" -gt 0 ] || { say "no SQLite files: storage was not persisted to disk"; exit 1; }

if [ "$BENCH" = 1 ]; then
  # A fresh start first: the sharded benchmark's first requests measure cold shard objects.
  say "restart (SIGTERM) for the benchmarks"
  stop_workerd TERM
  start_workerd
  say "benchmark: routed through DurableRouter against one shard object (DB4_BENCH_N=${DB4_BENCH_N:-2000})"
  suite --exact workerd_only::bench_sharded --nocapture | tee "$RUN_DIR/bench-sharded.md"
  say "benchmark: db4 routes against raw SqlStorage routes (DB4_BENCH_N=${DB4_BENCH_N:-2000})"
  suite --exact workerd_only::bench --nocapture | tee "$RUN_DIR/bench.md"
fi

stop_workerd TERM
say "passed"
