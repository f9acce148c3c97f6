#!/usr/bin/env bash
# Build .device/: everything scripts/device/run.sh needs on the GPU machine, which has no Node,
# no npm and no network. Run here, from any folder; it works in the repository holding it.
#
#   .device/node.xz                       this machine's Node binary (process.execPath), xz -6
#   .device/molora/package.json           name and version (the CLI reads ../../package.json)
#   .device/molora/dist/cli/main.js       the CLI bundled by esbuild (ESM, node), every package inlined
#   .device/molora/dist/cli/adapter.js    the Dawn adapter probe, bundled the same way
#   .device/molora/dist/cli/*.wasm        tfjs-backend-wasm's binaries (emscripten looks in __dirname)
#   .device/molora/dist/cli/dist/linux-x64/dawn.node.xz
#                                         webgpu's Dawn addon, where webgpu's index.js looks for it
#                                         (beside the importing file: dist/<platform>-<arch>/), xz -6
#   .device/molora/models/tiny-llama      the shipped base (the CLI's SHIPPED_BASE), for check_tiny_llama.py
#   .device/fixtures/models               the parity fixtures and their float64 references
#   .device/py/                           the PyTorch peer, the PEFT script, check_tiny_llama.py
#   .device/run.sh, summarize.py          copies, so `bash .device/run.sh` also works from a checkout
#                                         that lacks scripts/device
#   .device/manifest.json                 what was built, from which commit, sizes
#
# Fails if .device and the rest of what travels (tracked and untracked files git does not
# ignore, .gl) pass the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEV=.device
PEER=${PEER_SCRIPT:-$ROOT/../shared/peers/torch_lora_step.py}
MiB=$((1024 * 1024))

[ -f "$PEER" ] || { echo "build.sh: the PyTorch peer $PEER is missing (set PEER_SCRIPT)" >&2; exit 1; }

# Ignored by git, so it never lands in a commit, and travels only when `carry` names it.
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/$DEV/" "$exclude" 2>/dev/null || echo "/$DEV/" >>"$exclude"
git check-ignore -q "$DEV/manifest.json" || { echo "build.sh: git does not ignore $DEV" >&2; exit 1; }

echo "== tsc"
npx tsc -p tsconfig.json

rm -rf "$DEV"
CLI_DIR=$DEV/molora/dist/cli
mkdir -p "$CLI_DIR" "$DEV/fixtures" "$DEV/py" "$DEV/molora/models"

echo "== esbuild"
# CommonJS packages inlined into an ESM bundle still call require (node builtins) and read
# __dirname (emscripten finds its .wasm there): give them the bundle's own. esbuild renames a
# bundled module's own `require` but not its own `__dirname` (webgpu's index.js declares one), so
# free __dirname/__filename are redirected by --define to names no module declares.
BANNER="import { createRequire as __molora_cr } from 'node:module'; import { fileURLToPath as __molora_fu } from 'node:url'; import { dirname as __molora_dn } from 'node:path'; const require = __molora_cr(import.meta.url); const __molora_filename = __molora_fu(import.meta.url); const __molora_dirname = __molora_dn(__molora_filename);"
bundle() {
  # tfjs-node(-gpu) stay outside: optional peers, imported by name at run time when present.
  npx esbuild "$1" --bundle --platform=node --format=esm --target=node20 --outfile="$2" \
    --external:@tensorflow/tfjs-node --external:@tensorflow/tfjs-node-gpu \
    --define:__dirname=__molora_dirname --define:__filename=__molora_filename \
    --banner:js="$BANNER" --log-level=warning
}
bundle dist/cli/main.js "$CLI_DIR/main.js"
bundle scripts/device/adapter.mjs "$CLI_DIR/adapter.js"
node -e 'const p = require("./package.json"); process.stdout.write(JSON.stringify({ name: p.name, version: p.version, type: "module" }) + "\n")' >"$DEV/molora/package.json"

echo "== binaries"
pkgdir() { node -e "console.log(require('path').dirname(require.resolve('$1/package.json')))"; }
cp "$(pkgdir @tensorflow/tfjs-backend-wasm)"/dist/*.wasm "$CLI_DIR/"
# webgpu is an optional dependency: without it the bundle has no webgpu backend to load.
if WEBGPU=$(pkgdir webgpu 2>/dev/null); then
  mkdir -p "$CLI_DIR/dist/linux-x64"
  xz -T0 -6 -c "$WEBGPU/dist/linux-x64/dawn.node" >"$CLI_DIR/dist/linux-x64/dawn.node.xz"
else
  echo "build.sh: webgpu is not installed: the bundle will have no webgpu backend" >&2
fi
NODE_BIN=$(node -p process.execPath)
echo "   node $(node --version) from $NODE_BIN"
xz -T0 -6 -c "$NODE_BIN" >"$DEV/node.xz"

echo "== data and scripts"
cp -r test/fixtures/models "$DEV/fixtures/models"
cp -r models/tiny-llama "$DEV/molora/models/tiny-llama"
cp "$PEER" scripts/device/peft_lora_step.py scripts/check_tiny_llama.py "$DEV/py/"
cp scripts/device/run.sh scripts/device/summarize.py "$DEV/"

echo "== smoke test (from an empty folder, so nothing resolves through node_modules)"
SMOKE=$(mktemp -d)
trap 'rm -rf "$SMOKE"' EXIT
cp -r "$DEV/molora" "$SMOKE/"
[ -f "$CLI_DIR/dist/linux-x64/dawn.node.xz" ] && xz -dc "$CLI_DIR/dist/linux-x64/dawn.node.xz" >"$SMOKE/molora/dist/cli/dist/linux-x64/dawn.node"
(cd "$SMOKE" && node molora/dist/cli/main.js --version >/dev/null)
(cd "$SMOKE" && node molora/dist/cli/main.js bench parity --backend wasm --fixtures "$ROOT/$DEV/fixtures/models" | tail -1)
if [ -f "$SMOKE/molora/dist/cli/dist/linux-x64/dawn.node" ]; then
  (cd "$SMOKE" && node molora/dist/cli/adapter.js --load-only)
fi

size=$(du -sb "$DEV" | cut -f1)
travels=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
gl=$( [ -d .gl ] && du -sb .gl | cut -f1 || echo 0)
total=$((size + travels + gl))
node -e '
  const [commit, size, travels, gl, total] = process.argv.slice(1);
  const mib = (n) => +(n / 2 ** 20).toFixed(1);
  console.log(JSON.stringify({ commit, built: new Date().toISOString(), node: process.version,
    device_mib: mib(size), tree_mib: mib(travels), gl_mib: mib(gl), total_mib: mib(total) }));
' "$(git rev-parse HEAD)$(git diff --quiet HEAD && echo '' || echo '+dirty')" "$size" "$travels" "$gl" "$total" >"$DEV/manifest.json"
du -sh "$DEV"/* "$CLI_DIR"/* 2>/dev/null | sort -h | tail -6
awk -v d="$size" -v t="$travels" -v g="$gl" -v m="$MiB" 'BEGIN {
  printf ".device: %.1f MiB; with the working tree (%.1f MiB) and .gl (%.1f MiB): %.1f MiB of the 64 MiB that may travel\n", d / m, t / m, g / m, (d + t + g) / m }'
((total <= 64 * MiB)) || { echo "build.sh: .device plus what else travels is over the device tool's 64 MiB" >&2; exit 1; }
[ -d .gl ] || echo "note: no .gl folder here yet: scripts/device/README.md says how to fetch the Vulkan loaders the GPU machine needs"
