#!/usr/bin/env bash
# Issue 10's checks on a real GPU, in one call of the device tool (scripts/device/README.md):
#   run(command="bash scripts/device/run.sh", carry=[".device", ".gl"], timeout_s=600)
# It runs from the repository root on the GPU machine, which has no Node and no network:
# everything comes from .device (scripts/device/build.sh) and the Vulkan loaders from .gl.
#
#   1. bench parity on $DEVICE_BACKEND (webgpu): every fixture against its float64 reference
#   2. bench train --preset smollm2-135m, batch 8 × seq 256, r 8 on q/v, on $DEVICE_BACKEND;
#      the same preset at its own batch 2 × seq 128 on $DEVICE_BACKEND and on wasm (wasm-ref: the
#      wasm heap cannot hold batch 8 × 256 at this size), for the GPU-over-WASM ratio; the wasm
#      run goes on the CPU in the background meanwhile
#   3. the PyTorch peer and PEFT, float32 and bfloat16, on the GPU, same shapes
#   4. scripts/check_tiny_llama.py (numpy float64 and transformers) against molora's forward
#   5. the 1B Llama shape, molora last, if the time left allows
# Each step runs under `timeout`, and a step that would not finish inside DEVICE_BUDGET_S
# (default 500 s, under the tool's 600 s per command) is skipped and says so in the table.
#
# Results, in $OUT (at most 8 files come back): env.txt (nvidia-smi, node, the Dawn adapter),
# parity.json, results.jsonl (one line per run), gpumem.csv (nvidia-smi samples per run),
# check_tiny_llama.txt, log.txt (every step's stderr), summary.md (the table, also printed last).
#
# Rehearsal here: DEVICE_REHEARSAL=1 DEVICE_BACKEND=wasm DEVICE_PYTHON=/usr/bin/python3 bash scripts/device/run.sh
# uses the carried Node, SwiftShader for the adapter probe, tiny shapes through the same presets
# (flags override their fields), PyTorch on the CPU, and never writes outside the repository
# and /tmp (no .gl unpacking into /).
set -uo pipefail
D=.device
[ -f $D/manifest.json ] || { echo "run.sh: no $D/manifest.json: run scripts/device/build.sh first, and carry .device" >&2; exit 2; }

REHEARSAL=${DEVICE_REHEARSAL:-0}
BACKEND=${DEVICE_BACKEND:-webgpu}
BUDGET=${DEVICE_BUDGET_S:-500}
PY=${DEVICE_PYTHON:-python3}
RESERVE=20
START=$(date +%s)
OUT=${OUT:-$PWD/.scratch/device-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d)
LOG=$OUT/log.txt RESULTS=$OUT/results.jsonl ENV=$OUT/env.txt GPUMEM=$OUT/gpumem.csv
: >"$LOG"; : >"$RESULTS"; : >"$ENV"
left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# --- shapes: the presets on the device; in rehearsal the same presets with tiny overrides ------
LORA="--rank 8 --alpha 16 --targets q_proj,v_proj"
if [ "$REHEARSAL" = 1 ]; then
  SHAPE_A="--layers 2 --hidden 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 512"
  SHAPE_B="--layers 2 --hidden 128 --heads 4 --kv-heads 2 --ffn 256 --vocab 1024"
  MOLORA_A="--preset smollm2-135m $SHAPE_A" MOLORA_B="--preset llama-1b $SHAPE_B"
  GPU_BT="--batch 4 --seq 32" CPU_BT="--batch 2 --seq 16"
  TORCH_DEVICE=cpu
  export VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-/usr/lib/chromium/vk_swiftshader_icd.json}
else
  SHAPE_A="--layers 30 --hidden 576 --heads 9 --kv-heads 3 --ffn 1536 --vocab 49152"
  SHAPE_B="--layers 16 --hidden 2048 --heads 32 --kv-heads 8 --ffn 8192 --vocab 128256"
  MOLORA_A="--preset smollm2-135m" MOLORA_B="--preset llama-1b"
  GPU_BT="--batch 8 --seq 256" CPU_BT="--batch 2 --seq 128"
  TORCH_DEVICE=cuda
fi

# --- Node and the bundle, unpacked to /tmp so .device stays as it travels -----------------------
RUN=${TMPDIR:-/tmp}/molora-device
rm -rf "$RUN" && mkdir -p "$RUN" && cp -r $D/molora "$RUN/"
unxz() { if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi; }
unxz $D/node.xz "$RUN/node" && chmod +x "$RUN/node"
DAWN=molora/dist/cli/dist/linux-x64/dawn.node
[ -f "$D/$DAWN.xz" ] && unxz "$D/$DAWN.xz" "$RUN/$DAWN"
NODE=$RUN/node
CLI="$NODE $RUN/molora/dist/cli/main.js"
# The bundle carries tfjs' single-threaded wasm build only, and the wasm reference shares the
# machine's cores with the GPU runs: one thread, never the 'auto' pool (src/base/threads.ts).
export MOLORA_THREADS=1
say "node $($NODE --version), molora $($CLI --version), built $(cat $D/manifest.json)"

# --- Vulkan: the loaders from .gl (device README), then the NVIDIA ICD if Dawn finds no GPU -----
if [ "$REHEARSAL" != 1 ]; then
  if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; else say "no .gl carried: relying on the image's Vulkan loader"; fi
  ldconfig -p | grep -q libvulkan.so.1 || say "WARNING: no libvulkan.so.1: webgpu will find no adapter"
fi
SMI=$(command -v nvidia-smi || true)
{
  echo "== nvidia-smi"; if [ -n "$SMI" ]; then nvidia-smi; else echo "(no nvidia-smi on this machine)"; fi
  echo "== node"; $NODE -p 'JSON.stringify({ node: process.version, platform: process.platform, arch: process.arch, cpus: require("os").cpus().length })'
  echo "== build"; cat $D/manifest.json
} >>"$ENV" 2>&1
probe() { [ -f "$RUN/$DAWN" ] || { echo '{"adapter":null,"error":"no dawn.node in .device (webgpu was not installed at build time)"}'; return 1; }; timeout 60 $NODE "$RUN/molora/dist/cli/adapter.js"; }
ADAPTER=$(probe 2>>"$LOG")
NV_ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ "$REHEARSAL" != 1 ] && ! grep -qi nvidia <<<"$ADAPTER" && [ -f $NV_ICD ]; then
  say "Dawn saw no NVIDIA adapter ($ADAPTER); trying the driver's ICD directly"
  export VK_DRIVER_FILES=$NV_ICD __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  ADAPTER=$(probe 2>>"$LOG")
fi
echo "== Dawn adapter"$'\n'"$ADAPTER" >>"$ENV"
say "adapter: $ADAPTER"
[ "$REHEARSAL" != 1 ] && ! grep -qi nvidia <<<"$ADAPTER" && say "WARNING: the adapter is not NVIDIA's: webgpu figures below are not the GPU's"
if [ -n "$SMI" ]; then GPU_BASE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); else GPU_BASE=; fi

# --- one timed step: NAME CAP_S MIN_S POLL(0/1) -- command ... -----------------------------------
# Runs the command under timeout min(CAP, time left), or skips it when less than MIN is left;
# samples nvidia-smi while it runs (POLL=1); appends one JSON line to results.jsonl.
step() {
  local name=$1 cap=$2 min=$3 poll=$4; shift 5
  local avail=$(($(left) - RESERVE)) rc=0 pid=
  if ((avail < min)); then
    say "skip $name: ${avail}s left, it needs ${min}s"
    echo "{\"run\":\"$name\",\"skipped\":\"out of time (${avail}s left, needs ${min}s)\"}" >>"$RESULTS"
    return
  fi
  local limit=$((cap < avail ? cap : avail))
  say "run $name (limit ${limit}s): $*"
  if [ "$poll" = 1 ] && [ -n "$SMI" ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$TMP/$name.gpu" 2>/dev/null &
    pid=$!
  fi
  timeout -k 10 "$limit" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" || rc=$?
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; sed "s/^/$name,/" "$TMP/$name.gpu" >>"$GPUMEM"; }
  { echo "--- $name (rc $rc)"; cat "$TMP/$name.err"; } >>"$LOG"
  "$PY" $D/summarize.py record --name "$name" --rc "$rc" --limit "$limit" --stdout "$TMP/$name.out" --stderr "$TMP/$name.err" \
    --gpu-samples "$TMP/$name.gpu" --gpu-base "$GPU_BASE" --args "$*" >>"$RESULTS"
  say "done $name: rc $rc"
}

# 1. parity on the backend under test
say "parity on $BACKEND"
timeout -k 10 $(($(left) > 150 ? 120 : $(left) - RESERVE)) $CLI bench parity --backend "$BACKEND" --fixtures $D/fixtures/models --json \
  >"$OUT/parity.json" 2>>"$LOG"
say "parity: rc $?"

# 2. molora; the wasm run in the background (CPU only, nothing polled)
TRAIN="bench train $LORA --json"
step wasm-ref-A-small 300 60 0 -- $CLI $TRAIN $MOLORA_A $CPU_BT --steps 2 --warmup 1 --backend wasm &
WASM_PID=$!
step molora-$BACKEND-A 150 60 1 -- $CLI $TRAIN $MOLORA_A $GPU_BT --steps 3 --warmup 2 --backend "$BACKEND"
step molora-$BACKEND-A-small 90 40 1 -- $CLI $TRAIN $MOLORA_A $CPU_BT --steps 3 --warmup 2 --backend "$BACKEND"

# 3. PyTorch peer and PEFT on the same shapes (the peer's head is untied; PEFT's is tied like the presets)
peers() {
  local tag=$1 shape=$2 tie=$3
  for dt in float32 bfloat16; do
    step peer-$dt-$tag 75 30 1 -- "$PY" $D/py/torch_lora_step.py $shape $GPU_BT $LORA --steps 5 --warmup 2 --device $TORCH_DEVICE --dtype $dt
    step peft-$dt-$tag 90 40 1 -- "$PY" $D/py/peft_lora_step.py $shape $GPU_BT $LORA $tie --steps 5 --warmup 2 --device $TORCH_DEVICE --dtype $dt
  done
}
peers A "$SHAPE_A" --tie

# 4. the shipped base through transformers and a float64 numpy Llama
say "check_tiny_llama.py on $BACKEND"
MOLORA_CLI="$CLI" MOLORA_BACKEND=$BACKEND timeout -k 10 90 "$PY" $D/py/check_tiny_llama.py $D/molora/models/tiny-llama \
  >"$OUT/check_tiny_llama.txt" 2>&1
echo "exit status $?" >>"$OUT/check_tiny_llama.txt"

# 5. the 1B shape
peers B "$SHAPE_B" --tie
step molora-$BACKEND-B 400 120 1 -- $CLI $TRAIN $MOLORA_B $GPU_BT --steps 2 --warmup 1 --backend "$BACKEND"

wait $WASM_PID
"$PY" $D/summarize.py table --results "$RESULTS" --parity "$OUT/parity.json" --env "$ENV" --check "$OUT/check_tiny_llama.txt" \
  --backend "$BACKEND" | tee "$OUT/summary.md"
rm -rf "$TMP"
say "finished in $(($(date +%s) - START))s"
