#!/usr/bin/env bash
# A farm on the topology real deployments use, on this machine: a hub nats-server with
# JetStream (deploy/nats/hub.conf) and one leaf-node nats-server per region
# (deploy/nats/leaf.conf), each on its own free 127.0.0.1 port. The coordinator and the CLI talk
# to the hub; each region's workers connect only to their region's leaf, so every JetStream,
# KV and request/reply call a worker makes crosses a leaf-node link. It renders a builtin job
# to completion, checks every region rendered frames through its leaf, fetches and verifies
# the frames, and cleans up (all processes it started, by pid; the folder unless --keep).
#
#   scripts/cluster.sh                       # guian and ulanqab, 2 workers each, frames 1-48
#   scripts/cluster.sh --frames 1-24         # the short form, for CI
#   scripts/cluster.sh --regions guian,ulanqab,zhongwei --workers 1 --keep
#
# Options: --regions A,B,...  --workers N (per region)  --slots N  --frames SPEC
#          --timeout SECS (the whole job)  --dir DIR  --keep
# Environment: SUANLI_BIN (default target/debug/suanli, built when missing),
#              SUANLI_NATS_SERVER (default .tools/bin/nats-server, then PATH).
# Exits 0 only when the job is done, every region rendered, and every frame verified.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

regions="guian,ulanqab"
workers=2
slots=1
frames="1-48"
limit_s=300
dir=""
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --regions) regions=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    --timeout) limit_s=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
IFS=',' read -r -a region_list <<<"$regions"
if [ "${#region_list[@]}" -eq 0 ]; then
  echo "cluster: --regions needs at least one region" >&2
  exit 2
fi

nats_bin="${SUANLI_NATS_SERVER:-$root/.tools/bin/nats-server}"
if [ ! -x "$nats_bin" ]; then
  nats_bin=$(command -v nats-server || true)
fi
if [ -z "$nats_bin" ]; then
  echo "cluster: no nats-server (run scripts/install-tools.sh or set SUANLI_NATS_SERVER)" >&2
  exit 1
fi
bin="${SUANLI_BIN:-$root/target/debug/suanli}"
if [ -z "${SUANLI_BIN:-}" ] && [ ! -x "$bin" ]; then
  cargo build --quiet --bin suanli
fi

if [ -z "$dir" ]; then
  dir=$(mktemp -d /tmp/suanli-cluster.XXXXXX)
else
  mkdir -p "$dir"
fi
mkdir -p "$dir/logs" "$dir/store"
export NO_COLOR=1
# Roles log at info into their files; CLI calls stay quiet.
role_log="${RUST_LOG:-info}"
export RUST_LOG=warn

pids=()
cleanup() {
  local code=$?
  # Roles first (they hold NATS connections), then the leaves, then the hub.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "$code" -ne 0 ]; then
    echo "cluster: FAILED (exit $code); last log lines:" >&2
    for f in "$dir"/logs/*.log; do
      [ -f "$f" ] || continue
      echo "--- $(basename "$f")" >&2
      tail -n 8 "$f" >&2
    done
  fi
  if [ "$keep" = 1 ] || [ "$code" -ne 0 ]; then
    echo "cluster: logs and data kept in $dir" >&2
  else
    rm -rf "$dir"
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# json EXPR: reads JSON on stdin and prints the Python expression EXPR of it (`d` is the data).
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# http URL: the body of a 2xx answer (fails otherwise).
http() { python3 -c "import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
  local what=$1 secs=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "cluster: timed out after ${secs}s waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

hub_port=$(free_port)
hub_http=$(free_port)
leaf_port=$(free_port)
hub_url="nats://127.0.0.1:$hub_port"

SUANLI_HUB_NAME=hub SUANLI_HUB_HOST=127.0.0.1 SUANLI_HUB_PORT=$hub_port \
  SUANLI_HUB_HTTP=$hub_http SUANLI_LEAF_PORT=$leaf_port SUANLI_HUB_STORE="$dir/hub-js" \
  "$nats_bin" -c deploy/nats/hub.conf >>"$dir/logs/hub.log" 2>&1 &
pids+=($!)
wait_for "the hub's JetStream" 20 http "http://127.0.0.1:$hub_http/healthz?js-enabled-only=true"
echo "cluster: hub $hub_url (JetStream), leaf-node port $leaf_port, monitoring http://127.0.0.1:$hub_http" >&2

declare -A leaf_url=()
for region in "${region_list[@]}"; do
  port=$(free_port)
  SUANLI_LEAF_NAME="leaf-$region" SUANLI_LEAF_HOST=127.0.0.1 SUANLI_LEAF_CLIENT=$port \
    SUANLI_HUB_LEAF_URL="nats-leaf://127.0.0.1:$leaf_port" \
    "$nats_bin" -c deploy/nats/leaf.conf >>"$dir/logs/leaf-$region.log" 2>&1 &
  pids+=($!)
  leaf_url[$region]="nats://127.0.0.1:$port"
done
leaves_connected() {
  [ "$(http "http://127.0.0.1:$hub_http/leafz" | json "d['leafnodes']")" -eq "${#region_list[@]}" ]
}
wait_for "${#region_list[@]} leaf nodes to connect to the hub" 30 leaves_connected
for region in "${region_list[@]}"; do
  echo "cluster: region $region: leaf ${leaf_url[$region]}" >&2
done

export SUANLI_STORE="file://$dir/store"
RUST_LOG=$role_log "$bin" coordinator --nats "$hub_url" >>"$dir/logs/coordinator.log" 2>&1 &
pids+=($!)
wait_for "the coordinator" 30 "$bin" workers --nats "$hub_url"
for region in "${region_list[@]}"; do
  for n in $(seq "$workers"); do
    name="$region-w$n"
    RUST_LOG=$role_log "$bin" worker --nats "${leaf_url[$region]}" --region "$region" --name "$name" \
      --slots "$slots" --cache-dir "$dir/cache-$name" >>"$dir/logs/worker-$name.log" 2>&1 &
    pids+=($!)
  done
done
want_workers=$((${#region_list[@]} * workers))
workers_up() {
  [ "$("$bin" workers --nats "$hub_url" --json | json "len([w for w in d if w['state'] != 'lost'])")" -eq "$want_workers" ]
}
wait_for "$want_workers workers to register through their leaves" 60 workers_up
echo "cluster: coordinator and $want_workers workers up" >&2

started=$SECONDS
echo "cluster: submitting frames $frames and waiting (at most ${limit_s}s)" >&2
rc=0
status=$(timeout "$limit_s" "$bin" submit --nats "$hub_url" --frames "$frames" --renderer builtin \
  --width 96 --height 54 --samples 2 --name cluster-check --wait --json) || rc=$?
if [ "$rc" -ne 0 ]; then
  [ "$rc" -eq 124 ] && echo "cluster: the job did not finish within ${limit_s}s" >&2
  echo "cluster: submit --wait exited $rc" >&2
  exit 1
fi
job=$(json "d['id']" <<<"$status")
state=$(json "d['state']" <<<"$status")
echo "cluster: job $job ended $state" >&2
if [ "$state" != "done" ]; then
  exit 1
fi
n_frames=$(json "d['frames']['total']" <<<"$status")
for region in "${region_list[@]}"; do
  done_here=$(json "d['regions'].get('$region', {}).get('frames_done', 0)" <<<"$status")
  if [ "$done_here" -eq 0 ]; then
    echo "cluster: region $region rendered no frames through its leaf node" >&2
    exit 1
  fi
  echo "cluster: region $region rendered $done_here of $n_frames frames" >&2
done
"$bin" fetch "$job" --nats "$hub_url" --out "$dir/frames" --json >"$dir/fetch.json"
fetched=$(find "$dir/frames" -name '*.png' | wc -l)
if [ "$fetched" -ne "$n_frames" ]; then
  echo "cluster: fetched $fetched frames, expected $n_frames" >&2
  exit 1
fi
echo "cluster: ok: $n_frames frames rendered through ${#region_list[@]} leaf nodes and verified in $((SECONDS - started))s" >&2
