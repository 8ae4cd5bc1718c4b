#!/usr/bin/env bash
# End-to-end check of the operator terminal in a real terminal (tmux): starts a local farm
# (`suanli up`), submits a 48-frame builtin job, opens `suanli tui` in a detached tmux pane and
# reads the screen with capture-pane. Asserts that the job, its regions and a progress figure
# appear, that `?` shows the keys, that Enter opens the job view, and that `q` exits 0.
# Every wait polls the screen (or a file) against a deadline; every process is stopped on exit.
#
# Needs tmux (scripts/install-tools.sh --tmux) and a nats-server >= 2.11 (install-tools.sh).
# SUANLI_E2E_KEEP=1 keeps the work folder for a look afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export SUANLI_NATS_SERVER="${SUANLI_NATS_SERVER:-$root/.tools/bin/nats-server}"
# Deadlines are generous: a 2-core CI machine may be busy with other builds.
FARM_DEADLINE=${SUANLI_E2E_FARM_DEADLINE:-120}
SCREEN_DEADLINE=${SUANLI_E2E_SCREEN_DEADLINE:-60}

log() { echo "tui-e2e: $*" >&2; }

command -v tmux >/dev/null 2>&1 || { log "tmux not found: run scripts/install-tools.sh --tmux"; exit 1; }
log "building suanli"
cargo build --locked --quiet --bin suanli
bin="$root/target/debug/suanli"

work=$(mktemp -d "${TMPDIR:-/tmp}/suanli-tui-e2e.XXXXXX")
# A private tmux server: nothing of the user's tmux is touched, and killing it ends the pane.
tmux_sock="$work/tmux.sock"
tm() { tmux -S "$tmux_sock" -f /dev/null "$@"; }
up_pid=""
nats_pid=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  tm kill-server >/dev/null 2>&1 || true
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
  # `suanli up` stops its nats-server itself; this is for when it had to be killed.
  if [ -n "$nats_pid" ] && kill -0 "$nats_pid" 2>/dev/null; then
    kill -KILL "$nats_pid" 2>/dev/null || true
  fi
  if [ "$rc" -ne 0 ]; then
    log "FAILED (exit $rc); farm log:"
    sed 's/^/  | /' "$work/up.log" >&2 2>/dev/null || true
    if [ -f "$work/screen.txt" ]; then
      log "last screen:"
      sed 's/^/  | /' "$work/screen.txt" >&2
    fi
  fi
  if [ "${SUANLI_E2E_KEEP:-0}" = 1 ]; then
    log "work folder kept: $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() { log "$*"; exit 1; }

# wait_for DEADLINE_SECONDS DESCRIPTION COMMAND...: runs COMMAND until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
}

capture() { tm capture-pane -p -t e2e >"$work/screen.txt" 2>/dev/null; }
screen_has() { capture && grep -Eq -- "$1" "$work/screen.txt"; }
screen_lacks() { capture && ! grep -Eq -- "$1" "$work/screen.txt"; }
expect_screen() { wait_for "$SCREEN_DEADLINE" "'$1' on screen" screen_has "$1"; log "seen: $1"; }

farm_up() {
  kill -0 "$up_pid" 2>/dev/null || fail "suanli up exited early"
  grep -q '^farm up: NATS ' "$work/up.log"
}

log "starting a local farm (guian, ulanqab) in $work/farm"
"$bin" up --regions guian,ulanqab --dir "$work/farm" >"$work/up.log" 2>&1 &
up_pid=$!
wait_for "$FARM_DEADLINE" "the farm to start" farm_up
nats_pid=$(pgrep -P "$up_pid" nats-server || true)
nats_url=$(sed -n 's/^farm up: NATS \([^ ]*\) .*/\1/p' "$work/up.log")
store_url=$(sed -n 's/.* store \(file:[^ ]*\).*/\1/p' "$work/up.log" | head -n 1)
[ -n "$nats_url" ] && [ -n "$store_url" ] || fail "cannot read the farm's NATS and store from its log"
log "farm up: $nats_url, $store_url"

job=$("$bin" --nats "$nats_url" --store "$store_url" submit --renderer builtin --frames 1-48 \
  --name tui-e2e-film --width 160 --height 90 --samples 4 2>"$work/submit.log")
log "submitted job $job"

log "opening suanli tui in tmux (100x30)"
tm new-session -d -s e2e -x 100 -y 30 \
  "'$bin' --nats '$nats_url' --store '$store_url' tui; echo \$? >'$work/tui.rc'"

# The overview: the job, its regions, a progress figure.
expect_screen 'tui-e2e-film'
expect_screen '^guian '
expect_screen '^ulanqab '
expect_screen '[0-9]+/48'

# `?` shows the keys; `?` again hides them.
tm send-keys -t e2e '?'
expect_screen 'drain the selected worker'
tm send-keys -t e2e '?'
wait_for "$SCREEN_DEADLINE" "the help to close" screen_lacks 'drain the selected worker'
log "help closes"

# Enter opens the job view on task 0.
tm send-keys -t e2e Enter
expect_screen '48 tasks · task 0'
expect_screen 'Task 0 · frames 1'

# `q` quits, and the pane's command exits 0.
tm send-keys -t e2e q
wait_for 20 "suanli tui to exit" test -s "$work/tui.rc"
rc=$(cat "$work/tui.rc")
[ "$rc" = 0 ] || fail "suanli tui exited with status $rc"
log "q exits 0"
log "ok"
