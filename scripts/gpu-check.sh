#!/usr/bin/env bash
# The real-GPU check of heterogeneous compute, for a machine with NVIDIA GPUs and nvidia-smi:
# a worker started with `--gpus auto` must report what nvidia-smi reports, and each one-GPU
# task must see only its own device. It prints what it saw and exits non-zero when either
# does not hold. The test suite simulates GPUs (tests/resources.rs); this is the check on the
# real thing.
#   scripts/gpu-check.sh            # builds the debug binary unless SUANLI_BIN is set
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

command -v nvidia-smi >/dev/null || { echo "gpu-check: no nvidia-smi on this machine" >&2; exit 2; }
scripts/install-tools.sh >/dev/null
nats_bin="$root/.tools/bin/nats-server"
bin="${SUANLI_BIN:-$root/target/debug/suanli}"
[ -n "${SUANLI_BIN:-}" ] || cargo build --locked --quiet --bin suanli

dir=$(mktemp -d /tmp/suanli-gpu.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SUANLI_NATS="nats://127.0.0.1:$port" SUANLI_STORE="file://$dir/store" NO_COLOR=1
mkdir -p "$dir/store" "$dir/logs"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

"$nats_bin" -js -a 127.0.0.1 -p "$port" -sd "$dir/nats" >"$dir/logs/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$bin" coordinator >"$dir/logs/coordinator.log" 2>&1 & pids+=($!)
echo "== nvidia-smi"
nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv,noheader | tee "$dir/smi.txt"
n_gpus=$(wc -l <"$dir/smi.txt")
"$bin" worker --region gpu --name gpu1 --gpus auto --slots "$n_gpus" --allow-any-command \
  --sandbox off --cache-dir "$dir/cache" >"$dir/logs/worker.log" 2>&1 & pids+=($!)
for _ in $(seq 300); do
  "$bin" workers --json >"$dir/workers.json" 2>/dev/null && \
    python3 -c "import json,sys; sys.exit(0 if json.load(open('$dir/workers.json')) else 1)" && break
  sleep 0.2
done
echo "== the worker's record (--gpus auto)"
python3 - "$dir/workers.json" "$dir/smi.txt" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))[0]
gpus = w["resources"]["gpus"]
for g in gpus:
    print(f'{g["index"]}, {g["name"]}, {g["memory_mib"]} MiB, {g["uuid"]}')
smi = [l.split(", ") for l in open(sys.argv[2]).read().splitlines() if l.strip()]
ok = len(smi) == len(gpus) and all(
    g["index"] == int(s[0]) and g["name"] == s[1] and g["uuid"] == s[3] for g, s in zip(gpus, smi))
print("gpu-check: --gpus auto matches nvidia-smi:", "yes" if ok else "NO")
sys.exit(0 if ok else 1)
PY

echo "== one task per GPU, all at once, each listing the devices it can see"
echo scene >"$dir/scene.txt"
mkdir -p "$dir/marks"
# What a CUDA program sees: the driver API honours CUDA_VISIBLE_DEVICES (nvidia-smi does not,
# so it is only the fallback where libcuda is missing, e.g. a stand-in nvidia-smi).
cat >"$dir/probe.py" <<'PY'
import ctypes, subprocess
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError:
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout, end="")
    raise SystemExit
assert cuda.cuInit(0) == 0, "cuInit failed"
n = ctypes.c_int()
cuda.cuDeviceGetCount(ctypes.byref(n))
for i in range(n.value):
    dev = ctypes.c_int()
    cuda.cuDeviceGet(ctypes.byref(dev), i)
    name = ctypes.create_string_buffer(128)
    cuda.cuDeviceGetName(name, 128, dev)
    raw = (ctypes.c_ubyte * 16)()
    cuda.cuDeviceGetUuid(raw, dev)
    h = bytes(raw).hex()
    uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    print(f"GPU {i}: {name.value.decode()} (UUID: {uuid})")
PY
# Each task waits (60 s at most) until every one has started, so they hold their GPUs together.
barrier="touch $dir/marks/{frame}; i=0; while [ \$(ls $dir/marks | wc -l) -lt $n_gpus ]; do i=\$((i+1)); [ \$i -gt 600 ] && exit 3; sleep 0.1; done"
job=$("$bin" submit --json --name gpu-check --renderer command --scene "$dir/scene.txt" \
  --frames "1-$n_gpus" --chunk 1 --gpus 1 --max-retries 0 --ext txt -- \
  sh -c "$barrier; "'f={output}/frame_{frame:04}.txt; echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >$f; '"python3 $dir/probe.py"' >>$f' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$bin" wait "$job" --timeout 300s >/dev/null
"$bin" fetch "$job" --out "$dir/out" >/dev/null
ok=1; seen=""
for f in "$dir"/out/*.txt; do
  echo "-- $(basename "$f")"; cat "$f"
  n=$(grep -c '^GPU ' "$f" || true)
  [ "$n" = 1 ] || { echo "gpu-check: this task saw $n devices, not 1" >&2; ok=0; }
  uuid=$(grep -o 'UUID: [^)]*' "$f" || true)
  case "$seen" in *"$uuid"*) echo "gpu-check: two tasks saw the same device" >&2; ok=0 ;; esac
  seen="$seen $uuid"
done
[ "$ok" = 1 ] && echo "gpu-check: each task saw only its own device" || { echo "gpu-check: FAILED" >&2; exit 1; }
