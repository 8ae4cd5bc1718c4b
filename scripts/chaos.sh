#!/usr/bin/env bash
# Chaos run: a farm of 4 workers in 2 regions renders a job of builtin frames while this script
# SIGKILLs a random worker every few seconds (and restarts it), SIGKILLs and restarts the
# coordinator 3 times and restarts nats-server once. Every role is its own `suanli` process;
# each frame is rendered by a child process (`suanli render-frame` through the command
# renderer), so renderer processes left behind by killed workers would show.
#
# It ends with one line of figures and passes only with 0 frames missing, 0 outputs that do not
# verify, 0 duplicate commits and 0 renderer processes left running. The figures include the
# tail: the time from the last-but-one frame's commit to the last one's, which is what a killed
# worker's task costs when it is the last to finish.
#
#   scripts/chaos.sh                   # 200 tasks
#   scripts/chaos.sh --short           # 80 tasks, for CI
#   scripts/chaos.sh --slow-recovery   # the coordinator waits out the ack wait for a killed
#                                      # worker's tasks (the behaviour before fast recovery)
#   scripts/chaos.sh --ack-wait=60s    # the region queue's ack wait (default 4s; a farm's is 60s)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

n_tasks=200
limit_s=600
coordinator_flags=()
ack_wait=4s
for arg in "$@"; do
  case "$arg" in
    --ack-wait=*) ack_wait=${arg#--ack-wait=} ;;
    --short) n_tasks=80; limit_s=400 ;;
    --slow-recovery) coordinator_flags+=(--no-fast-recovery) ;;
    *) echo "chaos: unknown argument '$arg' (known: --short, --slow-recovery, --ack-wait=DUR)" >&2; exit 2 ;;
  esac
done

scripts/install-tools.sh >/dev/null
nats_bin="$root/.tools/bin/nats-server"
bin="${SUANLI_BIN:-$root/target/debug/suanli}"
if [ -z "${SUANLI_BIN:-}" ]; then
  cargo build --locked --quiet --bin suanli
fi

dir=$(mktemp -d /tmp/suanli-chaos.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SUANLI_NATS="nats://127.0.0.1:$port"
export SUANLI_STORE="file://$dir/store"
role_log="${RUST_LOG:-info}"
export NO_COLOR=1
mkdir -p "$dir/store" "$dir/logs"

declare -A pids=()
nats_pid=""

start_nats() {
  "$nats_bin" -js -a 127.0.0.1 -p "$port" -sd "$dir/nats" >>"$dir/logs/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "chaos: nats-server did not start" >&2
  return 1
}

start_coordinator() {
  RUST_LOG=$role_log "$bin" coordinator --worker-lost-after 5s "${coordinator_flags[@]}" >>"$dir/logs/coordinator.log" 2>&1 &
  pids[coordinator]=$!
}

workers=(guian.g1 guian.g2 ulanqab.u1 ulanqab.u2)
start_worker() {
  local region=${1%%.*} name=${1#*.}
  RUST_LOG=$role_log "$bin" worker --region "$region" --name "$name" --ack-wait "$ack_wait" --drain-grace 2s --allow-any-command --sandbox off \
    --cache-dir "$dir/cache-$name" >>"$dir/logs/worker-$name.log" 2>&1 &
  pids[$name]=$!
}

cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "$nats_pid" ] && kill -9 "$nats_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${CHAOS_KEEP:-0}" = 1 ]; then echo "chaos: kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

start_nats
start_coordinator
for w in "${workers[@]}"; do start_worker "$w"; done

# Wait until the four workers are registered.
for _ in $(seq 300); do
  live=$("$bin" workers --json 2>/dev/null | json_field "sum(1 for w in d if w['state'] != 'lost')" 2>/dev/null || echo 0)
  [ "$live" -ge 4 ] && break
  sleep 0.2
done
[ "${live:-0}" -ge 4 ] || { echo "chaos: workers did not register" >&2; exit 1; }

echo "scene" >"$dir/scene.txt"
job=$("$bin" submit --json --name chaos --renderer command --scene "$dir/scene.txt" \
  --frames "1-$n_tasks" --chunk 1 --max-retries 5 --ext png -- \
  "$bin" render-frame --frame '{frame}' --width 240 --height 135 --samples 12 \
  --out '{output}/frame_{frame:04}.png' | json_field "d['id']")
echo "chaos: job $job, $n_tasks tasks, 4 workers in guian and ulanqab" >&2

worker_kills=0; coordinator_kills=0; nats_restarts=0
coordinator_at=(20 45 70)
start=$(date +%s)
next_worker_kill=$((start + 3))
state=queued
while :; do
  now=$(date +%s)
  if [ $((now - start)) -gt "$limit_s" ]; then
    echo "chaos: the job did not finish within ${limit_s}s" >&2; exit 1
  fi
  status=$("$bin" status "$job" --json 2>/dev/null || true)
  if [ -n "$status" ]; then
    state=$(echo "$status" | json_field "d['state']")
    done_tasks=$(echo "$status" | json_field "d['tasks']['done']")
    case "$state" in done|failed|canceled) break ;; esac
    # Coordinator kills at 20%, 45% and 70% of the tasks; the nats-server restart at 55%.
    if [ "$coordinator_kills" -lt 3 ] \
      && [ $((done_tasks * 100)) -ge $((coordinator_at[coordinator_kills] * n_tasks)) ]; then
      kill -9 "${pids[coordinator]}"; wait "${pids[coordinator]}" 2>/dev/null || true
      coordinator_kills=$((coordinator_kills + 1))
      echo "chaos: killed the coordinator at $done_tasks/$n_tasks tasks" >&2
      start_coordinator
    fi
    if [ "$nats_restarts" -eq 0 ] && [ $((done_tasks * 100)) -ge $((55 * n_tasks)) ]; then
      kill -9 "$nats_pid"; wait "$nats_pid" 2>/dev/null || true
      nats_restarts=1
      echo "chaos: restarted nats-server at $done_tasks/$n_tasks tasks" >&2
      start_nats
    fi
  fi
  if [ "$now" -ge "$next_worker_kill" ]; then
    victim=${workers[$((RANDOM % ${#workers[@]}))]}
    name=${victim#*.}
    kill -9 "${pids[$name]}" 2>/dev/null || true; wait "${pids[$name]}" 2>/dev/null || true
    worker_kills=$((worker_kills + 1))
    start_worker "$victim"
    next_worker_kill=$((now + 2 + RANDOM % 3))
  fi
  sleep 0.5
done
wall=$(( $(date +%s) - start ))

fetched=0; missing=$n_tasks; unverified=0
if report=$("$bin" fetch "$job" --out "$dir/frames" --json 2>>"$dir/logs/fetch.log"); then :; fi
if [ -n "${report:-}" ]; then
  fetched=$(echo "$report" | json_field "d['frames'] - len(d['unverified'])")
  missing=$(echo "$report" | json_field "len(d['missing'])")
  unverified=$(echo "$report" | json_field "len(d['unverified'])")
fi
# Each task key may be committed once, ever: count keys with more than one successful commit.
duplicates=$(grep -h "output committed" "$dir"/logs/worker-*.log | sed -n 's/.*key=\([0-9a-f]*\).*/\1/p' \
  | sort | uniq -d | wc -l)
# The tail: from the last-but-one commit to the last, and the longest gap between two commits
# (a task waiting for recovery while the rest are done), by the workers' log timestamps.
tail_s=$(grep -h "output committed" "$dir"/logs/worker-*.log | python3 -c '
import re, sys
from datetime import datetime
times = sorted(datetime.fromisoformat(m.group(1)[:26]).timestamp()
               for m in (re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)", l) for l in sys.stdin) if m)
gaps = [b - a for a, b in zip(times, times[1:])]
print(f"{gaps[-1]:.1f}s longest_gap={max(gaps):.1f}" if gaps else "n/a")
')
recovery=fast; [ "${#coordinator_flags[@]}" -gt 0 ] && recovery=slow
# Stop the farm, then look for renderers that outlived their workers.
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
wait "${pids[@]}" 2>/dev/null || true
left=0
for _ in $(seq 50); do
  left=$(pgrep -f "render-frame .*$dir" | wc -l || true)
  [ "$left" -eq 0 ] && break
  sleep 0.1
done

echo "chaos: state=$state tasks=$n_tasks worker_kills=$worker_kills coordinator_kills=$coordinator_kills nats_restarts=$nats_restarts frames_fetched=$fetched frames_missing=$missing unverified=$unverified duplicate_commits=$duplicates renderers_left=$left wall=${wall}s ack_wait=$ack_wait recovery=$recovery tail=${tail_s}s"
[ "$state" = done ] && [ "$missing" -eq 0 ] && [ "$unverified" -eq 0 ] && [ "$duplicates" -eq 0 ] \
  && [ "$left" -eq 0 ] && [ "$fetched" -eq "$n_tasks" ] && [ "$coordinator_kills" -ge 3 ] \
  && [ "$nats_restarts" -ge 1 ] || { echo "chaos: FAILED" >&2; exit 1; }
echo "chaos: passed" >&2
