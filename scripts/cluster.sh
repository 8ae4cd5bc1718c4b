#!/usr/bin/env bash
# A farm on the topology real deployments use, on this machine: a hub nats-server with
# JetStream (deploy/nats/hub.conf) and one leaf-node nats-server per region
# (deploy/nats/leaf.conf), each on its own free 127.0.0.1 port (with --secure, the TLS configs
# `suanli auth init` writes, every process with its own identity). The coordinator and the CLI talk
# to the hub; each region's workers connect only to their region's leaf, so every JetStream,
# KV and request/reply call a worker makes crosses a leaf-node link. It renders a builtin job
# to completion, checks every region rendered frames through its leaf, fetches and verifies
# the frames, and cleans up (all processes it started, by pid; the folder unless --keep).
#
#   scripts/cluster.sh                       # guian and ulanqab, 2 workers each, frames 1-48
#   scripts/cluster.sh --frames 1-24         # the short form, for CI
#   scripts/cluster.sh --secure --frames 1-24   # the same over TLS, every role with an identity
#   scripts/cluster.sh --regions guian,ulanqab,zhongwei --workers 1 --keep
#   scripts/cluster.sh --netns --rate guian=40,ulanqab=10 --frames 1-24   # as root
#
# Options: --regions A,B,...  --workers N (per region)  --slots N  --frames SPEC
#          --timeout SECS (the whole job)  --dir DIR  --keep  --catalog FILE (for the coordinator)
# --secure: the farm `suanli auth init` writes into DIR/auth instead of deploy/nats: the hub
#   from hub.conf, each leaf from leaf-<region>.conf with its link's NKey seed in
#   SUANLI_LEAF_SEED, TLS everywhere (tls:// URLs, --ca DIR/auth/ca.pem) and every process with
#   its own identity (--identity coordinator.nk, worker-<region>.nk, operator.nk for the CLI),
#   so each role and each leaf link is held to the permissions that config grants. Before the
#   job it checks the links are encrypted and authorized: the hub's leaf-node port demands
#   TLS and an identity, /leafz lists each region's leaf, and the hub refuses a leaf linking
#   with a worker's identity and a leaf refuses another region's worker. After the job, no
#   server logged a permissions violation.
# --netns (root; Linux network namespaces): each region's leaf and workers run in a network
#   namespace of their own (suanli-<region>-<pid>), joined to this one by a veth pair on a
#   private /30 (10.213.<n>.0/30: .1 on this side, .2 inside) that a tc token bucket caps in
#   both directions. The hub, the coordinator, the CLI and an S3 store (moto_server, from
#   scripts/install-tools.sh) stay here, listening on the first region's .1 address, so every
#   NATS and store byte a region moves crosses its capped link. The job carries a random input
#   file that each worker fetches once; per region the script prints the frames, the input
#   bytes the ledger counts and the bytes and rate measured on the link, and fails when the
#   inputs did not cross the link or the link ran faster than its cap.
#     --rate R=MBIT,...  link caps in Mbit/s; a region it does not name takes the catalog's
#                        bandwidth_mbps, else guian 40, ulanqab 10, any other 20
#     --input-mb N       size of the job's input file (default 8)
#     --first-task SECS  instead of the usual job, measure pre-staging (docs/BENCHMARKS.md):
#                        twice, with pre-staging and with the coordinator's --no-prestage
#                        (a fresh random input each time), a blocker job holds every slot
#                        for SECS seconds while a one-frame job with the input waits; its
#                        render writes the time it began. Prints when the first task began
#                        rendering after its slot freed and after submit, how much of the
#                        input the region held when the slot freed, and the link's rate
#                        against its cap. Workers run with --allow-any-command, and the
#                        workers of a region share one cache folder (DIR/cache-<region>):
#                        one worker stages for all of them.
# Environment: SUANLI_BIN (default target/debug/suanli, built when missing),
#              SUANLI_NATS_SERVER (default .tools/bin/nats-server, then PATH),
#              SUANLI_MOTO_SERVER (--netns; default .tools/bin/moto_server, then PATH).
# Exits 0 only when the job is done, every region rendered (with --catalog placement may leave
# a region out: it is reported), and every frame verified; with --secure, also only when the
# hub and the leaves turned the wrong identities away and no server logged a permissions violation.
set -euo pipefail
here=$PWD
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

regions="guian,ulanqab"
workers=2
slots=1
frames="1-48"
limit_s=300
dir=""
keep=0
catalog=""
netns=0
rates=""
input_mb=8
secure=0
first_task=""
while [ $# -gt 0 ]; do
  case "$1" in
    --regions) regions=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    --timeout) limit_s=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --catalog) catalog=$2; shift 2 ;;
    --netns) netns=1; shift ;;
    --rate) rates=$2; shift 2 ;;
    --input-mb) input_mb=$2; shift 2 ;;
    --secure) secure=1; shift ;;
    --first-task) first_task=$2; shift 2 ;;
    -h|--help) sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
IFS=',' read -r -a region_list <<<"$regions"
if [ "${#region_list[@]}" -eq 0 ]; then
  echo "cluster: --regions needs at least one region" >&2
  exit 2
fi
if [ -n "$first_task" ]; then
  if [ "$netns" != 1 ] || ! [[ "$first_task" =~ ^[1-9][0-9]*$ ]]; then
    echo "cluster: --first-task wants --netns and a whole number of seconds, not '$first_task'" >&2
    exit 2
  fi
fi
if [ -n "$catalog" ]; then
  case "$catalog" in /*) ;; *) catalog="$here/$catalog" ;; esac
  if [ ! -f "$catalog" ]; then
    echo "cluster: no catalog file $catalog" >&2
    exit 2
  fi
fi

nats_bin="${SUANLI_NATS_SERVER:-$root/.tools/bin/nats-server}"
if [ ! -x "$nats_bin" ]; then
  nats_bin=$(command -v nats-server || true)
fi
if [ -z "$nats_bin" ]; then
  echo "cluster: no nats-server (run scripts/install-tools.sh or set SUANLI_NATS_SERVER)" >&2
  exit 1
fi

# --netns: root, iproute2 and moto_server; link caps per region (Mbit/s).
declare -A rate_of=()
if [ "$netns" = 1 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "cluster: --netns needs root (it creates network namespaces, veth pairs and tc qdiscs)" >&2
    exit 1
  fi
  if ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1; then
    echo "cluster: installing Debian's iproute2 (ip, tc) for --netns" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends iproute2 >/dev/null; }; then
      echo "cluster: cannot install iproute2; --netns needs 'ip' and 'tc'" >&2
      exit 1
    fi
  fi
  moto_bin="${SUANLI_MOTO_SERVER:-$root/.tools/bin/moto_server}"
  if [ ! -x "$moto_bin" ]; then
    moto_bin=$(command -v moto_server || true)
  fi
  if [ -z "$moto_bin" ]; then
    echo "cluster: --netns needs moto_server (run scripts/install-tools.sh or set SUANLI_MOTO_SERVER)" >&2
    exit 1
  fi
  if ! [[ "$input_mb" =~ ^[1-9][0-9]*$ ]]; then
    echo "cluster: --input-mb wants a whole number of MiB, not '$input_mb'" >&2
    exit 2
  fi
  declare -A rate_given=() rate_default=([guian]=40 [ulanqab]=10)
  rate_items=()
  [ -z "$rates" ] || IFS=',' read -r -a rate_items <<<"$rates"
  for item in "${rate_items[@]}"; do
    r=${item%%=*} v=${item#*=}
    if [ "$r" = "$item" ] || ! [[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]] || [[ "$v" =~ ^0+(\.0+)?$ ]]; then
      echo "cluster: --rate wants REGION=MBIT,... with positive numbers, not '$item'" >&2
      exit 2
    fi
    rate_given[$r]=$v
  done
  for region in "${region_list[@]}"; do
    from_catalog=""
    if [ -n "$catalog" ]; then
      from_catalog=$(python3 - "$catalog" "$region" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    d = tomllib.load(f)
for r in d.get("region", []):
    if r.get("name") == sys.argv[2] and "bandwidth_mbps" in r:
        print(f"{float(r['bandwidth_mbps']):g}")
PY
)
    fi
    if [ -n "${rate_given[$region]:-}" ]; then
      rate_of[$region]=${rate_given[$region]}
    elif [ -n "$from_catalog" ]; then
      rate_of[$region]=$from_catalog
    else
      rate_of[$region]=${rate_default[$region]:-20}
    fi
  done
fi

bin="${SUANLI_BIN:-$root/target/debug/suanli}"
if [ -z "${SUANLI_BIN:-}" ] && [ ! -x "$bin" ]; then
  cargo build --quiet --bin suanli
fi
# Roles run from other folders (and namespaces): a relative SUANLI_BIN must not break them.
bin=$(realpath -e "$bin") || { echo "cluster: SUANLI_BIN '$SUANLI_BIN' does not exist" >&2; exit 2; }

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
netns_names=()  # namespaces this run created
host_links=()   # the root-side ends of their veth pairs
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
  # --netns: anything still inside our namespaces (a renderer a worker left behind), then the
  # namespaces (which takes their veth ends, and so the pairs, with them).
  for ns in "${netns_names[@]}"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || echo "cluster: could not delete network namespace $ns" >&2
  done
  for l in "${host_links[@]}"; do
    if ip link show "$l" >/dev/null 2>&1; then
      ip link del "$l" 2>/dev/null || echo "cluster: could not delete link $l" >&2
    fi
  done
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

# free_port [ADDR]: a TCP port nothing listens on at ADDR (default 127.0.0.1).
free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"
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

# --netns: one namespace per region, a veth pair on the first free 10.213.<n>.0/30 (under a
# lock, so that two runs do not pick the same block), token buckets on both ends. The services
# listen on the first region's root-side address; the other namespaces get one host route to
# it through their own link, and no other route out.
hub_host=127.0.0.1
declare -A ns_of=() addr_of=() link_of=()
if [ "$netns" = 1 ]; then
  exec 9>/tmp/suanli-cluster-netns.lock
  if ! flock -w 30 9; then
    echo "cluster: another cluster.sh --netns held /tmp/suanli-cluster-netns.lock for 30s" >&2
    exit 1
  fi
  used=$(ip -4 -o addr show | awk '{print $4}')
  n=0 i=0
  for region in "${region_list[@]}"; do
    n=$((n + 1))
    while grep -q "^10\.213\.$n\." <<<"$used"; do n=$((n + 1)); done
    if [ "$n" -gt 254 ]; then
      echo "cluster: no free 10.213.<n>.0/30 block left for region $region" >&2
      exit 1
    fi
    ns="suanli-$region-$$"
    if ! err=$(ip netns add "$ns" 2>&1); then
      echo "cluster: cannot create network namespace $ns here ($err); run without --netns" >&2
      exit 1
    fi
    netns_names+=("$ns")
    host_link="sl$$h$i" peer_link="sl$$n$i"
    ip link add "$host_link" type veth peer name "$peer_link"
    host_links+=("$host_link")
    ip link set "$peer_link" netns "$ns"
    ip addr add "10.213.$n.1/30" dev "$host_link"
    ip link set "$host_link" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "10.213.$n.2/30" dev "$peer_link"
    ip -n "$ns" link set "$peer_link" up
    tc qdisc add dev "$host_link" root tbf rate "${rate_of[$region]}mbit" burst 32kbit latency 400ms
    tc -n "$ns" qdisc add dev "$peer_link" root tbf rate "${rate_of[$region]}mbit" burst 32kbit latency 400ms
    if [ "$i" -eq 0 ]; then
      hub_host="10.213.$n.1"
    else
      ip -n "$ns" route add "$hub_host/32" via "10.213.$n.1" dev "$peer_link"
    fi
    ns_of[$region]=$ns addr_of[$region]="10.213.$n.2" link_of[$region]=$host_link
    i=$((i + 1))
  done
  flock -u 9
  exec 9>&-
fi

hub_port=$(free_port "$hub_host")
hub_http=$(free_port "$hub_host")
leaf_port=$(free_port "$hub_host")

# --secure: the farm's CA, certificates, identities and configs, for these addresses.
auth="$dir/auth"
# as_role ROLE: sets role_flags to what makes a process ROLE on a --secure farm (its identity
# and the farm's CA); to nothing on a plain one.
as_role() {
  role_flags=()
  if [ "$secure" = 1 ]; then
    role_flags=(--identity "$auth/$1.nk" --ca "$auth/ca.pem")
  fi
}
as_role operator
operator=("${role_flags[@]}")  # every CLI call
if [ "$secure" = 1 ]; then
  rm -rf "$auth"
  "$bin" auth init --out "$auth" --regions "$regions" --listen "$hub_host:$hub_port" \
    --leaf-listen "$hub_host:$leaf_port" >"$dir/logs/auth-init.log"
  hub_url="tls://$hub_host:$hub_port"
  # The config fixes the addresses; -m adds the monitoring port this script polls.
  "$nats_bin" -c "$auth/hub.conf" -m "$hub_http" >>"$dir/logs/hub.log" 2>&1 &
else
  hub_url="nats://$hub_host:$hub_port"
  SUANLI_HUB_NAME=hub SUANLI_HUB_HOST=$hub_host SUANLI_HUB_PORT=$hub_port \
    SUANLI_HUB_HTTP=$hub_http SUANLI_LEAF_PORT=$leaf_port SUANLI_HUB_STORE="$dir/hub-js" \
    "$nats_bin" -c deploy/nats/hub.conf >>"$dir/logs/hub.log" 2>&1 &
fi
pids+=($!)
wait_for "the hub's JetStream" 20 http "http://$hub_host:$hub_http/healthz?js-enabled-only=true"
echo "cluster: hub $hub_url (JetStream), leaf-node port $leaf_port, monitoring http://$hub_host:$hub_http" >&2

# --netns: the store is S3 on moto_server beside the hub, so that inputs and frames cross the
# regions' links (a file:// store would be read through the shared file system instead).
if [ "$netns" = 1 ]; then
  moto_port=$(free_port "$hub_host")
  bucket=suanli-cluster
  "$moto_bin" -H "$hub_host" -p "$moto_port" >>"$dir/logs/moto.log" 2>&1 &
  pids+=($!)
  make_bucket() {
    python3 - "http://$hub_host:$moto_port/$bucket" <<'PY'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], data=b"", method="PUT")
with urllib.request.urlopen(req, timeout=5) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
  }
  wait_for "moto_server to create bucket $bucket" 60 make_bucket
  unset AWS_ENDPOINT_URL AWS_SESSION_TOKEN AWS_PROFILE http_proxy https_proxy all_proxy \
    HTTP_PROXY HTTPS_PROXY ALL_PROXY
  export AWS_ENDPOINT="http://$hub_host:$moto_port" AWS_ALLOW_HTTP=true \
    AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
  echo "cluster: store s3://$bucket on moto_server $AWS_ENDPOINT" >&2
fi

declare -A leaf_url=()
run_in=()
for region in "${region_list[@]}"; do
  if [ "$netns" = 1 ]; then
    # A namespace of its own: the leaf takes the usual client port on its loopback.
    run_in=(ip netns exec "${ns_of[$region]}")
    port=4222
  else
    port=$(free_port)
  fi
  if [ "$secure" = 1 ]; then
    # The link's secret travels in the environment only; the config names it.
    SUANLI_LEAF_LISTEN="127.0.0.1:$port" SUANLI_LEAF_SEED=$(grep '^SU' "$auth/leaf-$region.nk") \
      "${run_in[@]}" "$nats_bin" -c "$auth/leaf-$region.conf" >>"$dir/logs/leaf-$region.log" 2>&1 &
    leaf_url[$region]="tls://127.0.0.1:$port"
  else
    SUANLI_LEAF_NAME="leaf-$region" SUANLI_LEAF_HOST=127.0.0.1 SUANLI_LEAF_CLIENT=$port \
      SUANLI_HUB_LEAF_URL="nats-leaf://$hub_host:$leaf_port" \
      "${run_in[@]}" "$nats_bin" -c deploy/nats/leaf.conf >>"$dir/logs/leaf-$region.log" 2>&1 &
    leaf_url[$region]="nats://127.0.0.1:$port"
  fi
  pids+=($!)
done
leaves_connected() {
  [ "$(http "http://$hub_host:$hub_http/leafz" | json "d['leafnodes']")" -eq "${#region_list[@]}" ]
}
wait_for "${#region_list[@]} leaf nodes to connect to the hub" 30 leaves_connected

# --secure: the links are encrypted and authorized, and an identity works only where it belongs.
if [ "$secure" = 1 ]; then
  # The hub's leaf-node port demands TLS (a leaf without the farm's CA, or without TLS, cannot
  # link; the identity check follows below).
  if [ "$(http "http://$hub_host:$hub_http/varz" | json "d['leaf'].get('tls_required', False)")" != True ]; then
    echo "cluster: the hub's leaf-node port does not demand TLS (/varz leaf.tls_required)" >&2
    exit 1
  fi
  # Each region's leaf linked as itself.
  leaf_names() { http "http://$hub_host:$hub_http/leafz" | json "' '.join(sorted(l['name'] for l in d['leafs']))"; }
  want_names=$(printf 'leaf-%s\n' "${region_list[@]}" | sort | paste -sd' ')
  if [ "$(leaf_names)" != "$want_names" ]; then
    echo "cluster: the hub's /leafz lists '$(leaf_names)', not '$want_names'" >&2
    exit 1
  fi
  # A leaf linking with a worker's identity is refused by the hub (the hub lets only leaf
  # link identities in on its leaf-node port), and a worker with one region's identity is
  # refused by another region's leaf. Both are turned away at connect: wait for the refusal.
  r0=${region_list[0]}
  worker_key=$(sed -n 's/.*Public key: //p' "$auth/worker-$r0.nk")
  refused_by() { grep -qF "authentication error - Nkey \"$worker_key\"" "$1"; }
  SUANLI_LEAF_LISTEN="127.0.0.1:$(free_port)" SUANLI_LEAF_SEED=$(grep '^SU' "$auth/worker-$r0.nk") \
    "$nats_bin" -c "$auth/leaf-$r0.conf" >>"$dir/logs/rogue-leaf.log" 2>&1 &
  rogue=($!)
  pids+=($!)
  if [ "${#region_list[@]}" -gt 1 ]; then
    r1=${region_list[1]}
    run_in=()
    if [ "$netns" = 1 ]; then
      run_in=(ip netns exec "${ns_of[$r1]}")
    fi
    as_role "worker-$r0"
    RUST_LOG=$role_log "${run_in[@]}" "$bin" "${role_flags[@]}" worker --nats "${leaf_url[$r1]}" \
      --region "$r0" --name rogue --slots 1 --cache-dir "$dir/cache-rogue" \
      >>"$dir/logs/rogue-worker.log" 2>&1 &
    rogue+=($!)
    pids+=($!)
    wait_for "leaf-$r1 to refuse a worker of $r0" 20 refused_by "$dir/logs/leaf-$r1.log"
  fi
  wait_for "the hub to refuse a leaf linking as worker-$r0" 20 refused_by "$dir/logs/hub.log"
  for p in "${rogue[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  if [ "$(leaf_names)" != "$want_names" ]; then
    echo "cluster: after the refusals the hub's /leafz lists '$(leaf_names)', not '$want_names'" >&2
    exit 1
  fi
  echo "cluster: leaf links over TLS as $want_names; worker-$r0's identity refused as a link" \
    "by the hub${r1:+ and as a worker by leaf-$r1}" >&2
fi
for region in "${region_list[@]}"; do
  if [ "$netns" = 1 ]; then
    echo "cluster: region $region: leaf ${leaf_url[$region]} in namespace ${ns_of[$region]}" \
      "(${addr_of[$region]}, link ${link_of[$region]} capped at ${rate_of[$region]} Mbit/s)" >&2
  else
    echo "cluster: region $region: leaf ${leaf_url[$region]}" >&2
  fi
done

if [ "$netns" = 1 ]; then
  export SUANLI_STORE="s3://$bucket"
else
  export SUANLI_STORE="file://$dir/store"
fi
coordinator_args=()
if [ -n "$catalog" ]; then
  coordinator_args=(--catalog "$catalog")
fi
as_role coordinator
RUST_LOG=$role_log "$bin" "${role_flags[@]}" coordinator --nats "$hub_url" "${coordinator_args[@]}" \
  >>"$dir/logs/coordinator.log" 2>&1 &
coordinator_pid=$!
pids+=($!)
wait_for "the coordinator" 30 "$bin" "${operator[@]}" workers --nats "$hub_url"
for region in "${region_list[@]}"; do
  run_in=()
  if [ "$netns" = 1 ]; then
    run_in=(ip netns exec "${ns_of[$region]}")
  fi
  as_role "worker-$region"
  for n in $(seq "$workers"); do
    name="$region-w$n"
    cache="$dir/cache-$name"
    [ -z "$first_task" ] || cache="$dir/cache-$region"
    RUST_LOG=$role_log "${run_in[@]}" "$bin" "${role_flags[@]}" worker --nats "${leaf_url[$region]}" --region "$region" --name "$name" \
      --slots "$slots" --cache-dir "$cache" \
      ${first_task:+--allow-any-command} \
      >>"$dir/logs/worker-$name.log" 2>&1 &
    pids+=($!)
  done
done
want_workers=$((${#region_list[@]} * workers))
workers_up() {
  [ "$("$bin" "${operator[@]}" workers --nats "$hub_url" --json | json "len([w for w in d if w['state'] != 'lost'])")" -eq "$want_workers" ]
}
wait_for "$want_workers workers to register through their leaves" 60 workers_up
echo "cluster: coordinator and $want_workers workers up" >&2

# --first-task: pre-staging measured against fetch-on-demand, then done.
# --netns: each link's byte counters (root side: tx is into the region, rx out of it) every
# 0.1 s while "$dir/sampling" exists, to measure what crossed it and how fast.
sample_links() {
  local end=$((SECONDS + limit_s + 60)) line l tx rx
  while [ -e "$dir/sampling" ] && [ "$SECONDS" -lt "$end" ]; do
    line=$EPOCHREALTIME
    for l in "${host_links[@]}"; do
      read -r tx <"/sys/class/net/$l/statistics/tx_bytes"
      read -r rx <"/sys/class/net/$l/statistics/rx_bytes"
      line+=" $tx $rx"
    done
    echo "$line"
    sleep 0.1
  done
}

if [ -n "$first_task" ]; then
  n_slots=$((want_workers * slots))
  link_args=()
  for region in "${region_list[@]}"; do
    link_args+=("$region" "${rate_of[$region]}")
  done
  # first_task_round LABEL [COORDINATOR FLAGS]: restarts the coordinator with the flags, then
  # blocker, waiting job, figures.
  first_task_round() {
    local label=$1 jobdir="$dir/job-$1" main t_submit t_free began
    shift
    kill "$coordinator_pid" 2>/dev/null || true
    wait "$coordinator_pid" 2>/dev/null || true
    as_role coordinator
    RUST_LOG=$role_log "$bin" "${role_flags[@]}" coordinator --nats "$hub_url" "${coordinator_args[@]}" "$@" \
      >>"$dir/logs/coordinator-$label.log" 2>&1 &
    coordinator_pid=$!
    pids+=($!)
    wait_for "the coordinator ($label)" 60 workers_up
    mkdir -p "$jobdir"
    head -c $((input_mb * 1024 * 1024)) /dev/urandom >"$jobdir/plate.bin"
    echo "$label" >"$jobdir/scene.txt"
    # One blocker per region, holding each of its slots (placement alone might stack them in
    # one region's queue).
    blockers=()
    for region in "${region_list[@]}"; do
      blockers+=("$(cd "$jobdir" && "$bin" "${operator[@]}" submit --nats "$hub_url" \
        --frames "1-$((workers * slots))" --regions "$region" --renderer command \
        --scene scene.txt --ext txt --name "blocker-$label-$region" --json \
        -- sh -c "sleep $first_task; printf x > {output}/frame_{frame:04}.txt" | json "d['id']")")
    done
    blockers_running() {
      local b n=0
      for b in "${blockers[@]}"; do
        n=$((n + $("$bin" "${operator[@]}" status "$b" --nats "$hub_url" --json | json "d['tasks']['running']")))
      done
      [ "$n" -eq "$n_slots" ]
    }
    wait_for "the blockers to hold all $n_slots slots" 60 blockers_running
    touch "$dir/sampling"
    LC_ALL=C sample_links >"$dir/link-samples-$label.txt" &
    local sampler=$!
    pids+=($sampler)
    t_submit=$EPOCHREALTIME
    main=$(cd "$jobdir" && "$bin" "${operator[@]}" submit --nats "$hub_url" --frames 1 \
      --renderer command --scene scene.txt --ext txt --input plate.bin --name "first-task-$label" --json \
      -- sh -c 'date +%s.%N > {output}/frame_{frame:04}.txt' | json "d['id']")
    # What the regions hold until the first blocker ends and frees a slot.
    blocker_done() {
      local b
      for b in "${blockers[@]}"; do
        [ "$("$bin" "${operator[@]}" status "$b" --nats "$hub_url" --json | json "d['state']")" != done ] || return 0
      done
      return 1
    }
    until blocker_done; do
      "$bin" "${operator[@]}" status "$main" --nats "$hub_url" --json >"$dir/main-$label.json"
      sleep 0.2
    done
    "$bin" "${operator[@]}" wait "$main" --nats "$hub_url" --timeout "${limit_s}s" >/dev/null
    t_done=$EPOCHREALTIME
    rm -f "$dir/sampling"
    wait "$sampler" 2>/dev/null || true
    # The slot it took: its region's blocker's end.
    local i where
    where=$("$bin" "${operator[@]}" status "$main" --nats "$hub_url" --json \
      | json "[r for r, f in d['regions'].items() if f['frames_done'] > 0][0]")
    for i in "${!region_list[@]}"; do
      if [ "${region_list[$i]}" = "$where" ]; then
        t_free=$("$bin" "${operator[@]}" status "${blockers[$i]}" --nats "$hub_url" --json | json "d['finished_ms'] / 1000")
      fi
    done
    "$bin" "${operator[@]}" fetch "$main" --nats "$hub_url" --out "$dir/frames-$label" --json >/dev/null
    began=$(cat "$(find "$dir/frames-$label" -name '*.txt' | head -n 1)")
    "$bin" "${operator[@]}" status "$main" --nats "$hub_url" --json >"$dir/main-done-$label.json"
    python3 - "$label" "$t_submit" "$t_free" "$began" "$t_done" "$dir/main-$label.json" \
      "$dir/main-done-$label.json" "$dir/link-samples-$label.txt" "${link_args[@]}" <<'PY'
import json, sys

label, t_submit, t_free, began, t_done = sys.argv[1], *map(float, sys.argv[2:6])
at_free = json.load(open(sys.argv[6]))
done = json.load(open(sys.argv[7]))
pairs = sys.argv[9:]
links = [(pairs[k], float(pairs[k + 1])) for k in range(0, len(pairs), 2)]
held = ", ".join(
    f"{r} {p['present_bytes'] / 1e6:.1f} of {p['total_bytes'] / 1e6:.1f} MB"
    for r, p in sorted(at_free.get("inputs_in", {}).items())
) or "none staged"
where = [r for r, f in done.get("regions", {}).items() if f.get("frames_done", 0) > 0]
print(f"cluster: first task ({label}): in {', '.join(where)}, began rendering "
      f"{began - t_free:.2f} s after its slot freed, {began - t_submit:.2f} s after submit; "
      f"inputs there when a slot first freed: {held}", file=sys.stderr)
rows = []
for line in open(sys.argv[8]):
    f = line.split()
    if len(f) == 1 + 2 * len(links):
        rows.append((float(f[0]), [int(x) for x in f[1:]]))
for k, (region, cap) in enumerate(links):
    ledger = done.get("regions", {}).get(region, {}).get("bytes_in", 0)
    busy_s = busy_b = 0.0
    for a, b in zip(rows, rows[1:]):
        dt, db = b[0] - a[0], b[1][2 * k] - a[1][2 * k]
        if dt > 0 and db * 8 / dt / 1e6 > cap / 2:
            busy_s += dt
            busy_b += db
    rate = busy_b * 8 / busy_s / 1e6 if busy_s > 0 else 0.0
    print(f"cluster: first task ({label}): region {region}: {ledger / 1e6:.1f} MB in by the "
          f"ledger; link busy {busy_s:.1f} s at {rate:.1f} Mbit/s = {100 * rate / cap:.0f} % "
          f"of its {cap:g} Mbit/s cap", file=sys.stderr)
PY
  }
  echo "cluster: first task: $input_mb MiB input, blocker of ${first_task}s on $n_slots slot(s)" >&2
  first_task_round prestage
  first_task_round on-demand --no-prestage
  echo "cluster: ok: first-task figures above" >&2
  exit 0
fi

# --netns: sample each link's byte counters (root side: tx is into the region, rx out of it)
# every 0.1 s while the job runs, to measure what crossed it and how fast.
job_args=()
submit_dir=$root
if [ "$netns" = 1 ]; then
  # Inputs must sit below the folder submit runs in (there is no scene to sit beside).
  submit_dir="$dir/job"
  mkdir -p "$dir/job"
  head -c $((input_mb * 1024 * 1024)) /dev/urandom >"$dir/job/plate.bin"
  job_args=(--input plate.bin)
  touch "$dir/sampling"
  LC_ALL=C sample_links >"$dir/link-samples.txt" &
  sampler=$!
  pids+=($sampler)
  echo "cluster: job input: plate.bin, $input_mb MiB of random bytes" >&2
fi

started=$SECONDS
t_submit=$EPOCHREALTIME
echo "cluster: submitting frames $frames and waiting (at most ${limit_s}s)" >&2
rc=0
# In the background, so that a TERM or INT sent to this script alone runs the cleanup now
# (bash runs traps only between foreground commands; `wait` is interrupted by them).
(cd "$submit_dir" && exec timeout "$limit_s" "$bin" "${operator[@]}" submit --nats "$hub_url" --frames "$frames" \
  --renderer builtin --width 96 --height 54 --samples 2 --name cluster-check "${job_args[@]}" \
  --wait --json) >"$dir/status.json" &
submitter=$!
pids+=($submitter)
wait "$submitter" || rc=$?
status=$(cat "$dir/status.json")
t_done=$EPOCHREALTIME
if [ "$netns" = 1 ]; then
  rm -f "$dir/sampling"
  wait "$sampler" 2>/dev/null || true
fi
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
    if [ -n "$catalog" ]; then
      echo "cluster: region $region rendered no frames (placement under the catalog chose the others)" >&2
      continue
    fi
    echo "cluster: region $region rendered no frames through its leaf node" >&2
    exit 1
  fi
  echo "cluster: region $region rendered $done_here of $n_frames frames" >&2
done
if [ "$netns" = 1 ]; then
  # Per region: the input bytes the ledger counts (workers' cache misses), what the link carried
  # during the job, and its rate over the samples where it ran at more than half its cap.
  link_args=()
  for region in "${region_list[@]}"; do
    link_args+=("$region" "${rate_of[$region]}")
  done
  python3 - "$dir/status.json" "$dir/link-samples.txt" "$t_submit" "$t_done" "${link_args[@]}" <<'PY' || exit 1
import json, sys

status = json.load(open(sys.argv[1]))
t0, t1 = float(sys.argv[3]), float(sys.argv[4])
pairs = sys.argv[5:]
links = [(pairs[k], float(pairs[k + 1])) for k in range(0, len(pairs), 2)]
rows = []
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) != 1 + 2 * len(links):
        continue  # a line cut short when the sampler stopped
    t = float(f[0])
    if t0 - 0.2 <= t <= t1 + 0.2:
        rows.append((t, [int(x) for x in f[1:]]))
if len(rows) < 2:
    print("cluster: too few link samples to measure", file=sys.stderr)
    sys.exit(1)
ok = True
mb = lambda b: b / 1e6
for k, (region, cap) in enumerate(links):
    tx = lambda r: r[1][2 * k]
    rx = lambda r: r[1][2 * k + 1]
    down, up = tx(rows[-1]) - tx(rows[0]), rx(rows[-1]) - rx(rows[0])
    busy_s = busy_b = 0.0
    for a, b in zip(rows, rows[1:]):
        dt, db = b[0] - a[0], tx(b) - tx(a)
        if dt > 0 and db * 8 / dt / 1e6 > cap / 2:
            busy_s += dt
            busy_b += db
    ledger = status.get("regions", {}).get(region, {}).get("bytes_in", 0)
    line = (f"cluster: region {region} (cap {cap:g} Mbit/s): inputs {mb(ledger):.1f} MB by the "
            f"ledger (at the cap: {ledger * 8 / (cap * 1e6):.1f} s); link carried "
            f"{mb(down):.1f} MB in, {mb(up):.1f} MB out")
    if busy_s > 0:
        rate = busy_b * 8 / busy_s / 1e6
        line += f"; busy {busy_s:.1f} s at {rate:.1f} Mbit/s"
    else:
        rate = 0.0
        line += "; too fast to time with 0.1 s samples"
    print(line, file=sys.stderr)
    if ledger > 0 and down < ledger:
        print(f"cluster: region {region}'s inputs ({ledger} bytes) did not cross its link "
              f"({down} bytes)", file=sys.stderr)
        ok = False
    if busy_s >= 1.0 and rate > 1.2 * cap:
        print(f"cluster: region {region}'s link ran at {rate:.1f} Mbit/s, above its "
              f"{cap:g} Mbit/s cap", file=sys.stderr)
        ok = False
sys.exit(0 if ok else 1)
PY
fi
"$bin" "${operator[@]}" fetch "$job" --nats "$hub_url" --out "$dir/frames" --json >"$dir/fetch.json"
fetched=$(find "$dir/frames" -name '*.png' | wc -l)
if [ "$fetched" -ne "$n_frames" ]; then
  echo "cluster: fetched $fetched frames, expected $n_frames" >&2
  exit 1
fi
# --secure: every role did its work within its permissions, and so did every leaf link (a
# violation on a link would also have cut it for 30 s).
if [ "$secure" = 1 ]; then
  if grep -H "Violation" "$dir/logs/hub.log" "$dir"/logs/leaf-*.log >"$dir/violations.txt"; then
    echo "cluster: the servers refused subjects a role or link used (permissions in src/auth):" >&2
    head -n 20 "$dir/violations.txt" >&2
    exit 1
  fi
fi
how=""
if [ "$secure" = 1 ]; then
  how=" (TLS, every role with its identity, no permission violations)"
fi
echo "cluster: ok: $n_frames frames rendered through ${#region_list[@]} leaf nodes$how and verified in $((SECONDS - started))s" >&2
