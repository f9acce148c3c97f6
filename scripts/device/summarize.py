#!/usr/bin/env python3
"""run.sh's bookkeeping, in the standard library only (it runs on the GPU machine's Python).

  summarize.py record --name N --rc RC --limit S --stdout F --stderr F --gpu-samples F --gpu-base MIB --args "..."
      one JSON line for results.jsonl: the run's own JSON line (its last line that parses), its
      exit status, and its peak GPU memory from nvidia-smi samples above the idle baseline
  summarize.py table --results results.jsonl --parity parity.json --env env.txt --check check.txt --backend B
      the markdown summary: parity, then one row per run with tokens/s, the ratio to PEFT float32
      on the same shape, and peak GPU memory; then the goals of issue 10
"""
import argparse
import json
import os
import re
import sys

SHAPE_KEYS = ["layers", "hidden", "heads", "kvHeads", "ffn", "vocab", "batch", "seq"]
FLAG_KEYS = {"--layers": "layers", "--hidden": "hidden", "--heads": "heads", "--kv-heads": "kvHeads",
             "--ffn": "ffn", "--vocab": "vocab", "--batch": "batch", "--seq": "seq"}


def last_json(path):
    """The last line of a file that is a JSON object, or None."""
    if not os.path.exists(path):
        return None
    for line in reversed(open(path, errors="replace").read().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def shape_from_args(args):
    """The peer prints no shapes: read them from its flags (the last of a repeated flag wins)."""
    words = args.split()
    return {FLAG_KEYS[w]: int(v) for w, v in zip(words, words[1:]) if w in FLAG_KEYS and v.isdigit()}


def record(a):
    out = last_json(a.stdout) or {}
    rec = {"run": a.name, "rc": a.rc, **out}
    for k, v in shape_from_args(a.args).items():
        rec.setdefault(k, v)
    if a.rc == 124 or a.rc == 137:
        rec["timed_out"] = f"killed at its {a.limit} s limit" + (" after printing its result" if out else "")
    if not out:
        err = open(a.stderr, errors="replace").read().strip() if os.path.exists(a.stderr) else ""
        rec["error"] = err[-600:] or "no output"
    if a.gpu_base and os.path.exists(a.gpu_samples):
        samples = [float(s) for s in open(a.gpu_samples).read().split() if re.fullmatch(r"[0-9.]+", s)]
        if samples:
            rec["peak_gpu_smi_mib"] = max(samples) - float(a.gpu_base)
    rec["args"] = a.args
    print(json.dumps(rec))


def shape_label(r):
    if not all(k in r for k in SHAPE_KEYS):
        return "?"
    return f"{r['layers']}L d{r['hidden']} {r['heads']}/{r['kvHeads']}h F{r['ffn']} V{r['vocab']}, {r['batch']}×{r['seq']}"


def framework_peak(r):
    """The framework's own peak: PyTorch's max_memory_allocated, molora's GPU buffer pool, or the wasm heap."""
    for key, what in [("peak_gpu_mib", ""), ("peak_gpu_buffers_mib", " (buffers)"), ("peak_heap_mib", " (wasm heap)")]:
        if r.get(key) is not None:
            return f"{r[key]:.0f}{what}"
    return "–"


def what_ran(r, adapter):
    if "peer" in r:
        gpu = r.get("gpu") or r.get("device", "?")
        return f"{r['peer'].split('-')[0].replace('pytorch', 'PyTorch peer').replace('peft', 'PEFT')}", gpu, r.get("dtype", "?")
    backend = r.get("backend") or r["run"].split("-")[1]
    device = "CPU" if backend in ("wasm", "cpu") else adapter
    return f"molora {backend}", device, "float32"


def fmt(x, spec):
    return "–" if x is None else format(x, spec)


def table(a):
    runs = [json.loads(l) for l in open(a.results) if l.strip()]
    env = open(a.env, errors="replace").read() if os.path.exists(a.env) else ""
    m = re.search(r"== Dawn adapter\n(.*)", env)
    probe = json.loads(m.group(1)) if m and m.group(1).startswith("{") else {}
    ad = probe.get("adapter") or {}
    adapter = f"{ad.get('vendor')} {ad.get('architecture')} ({ad.get('description')}{', software' if ad.get('software') else ''})" if ad else "no adapter"
    lines = [f"# molora on the device: backend {a.backend}", "", f"Dawn adapter: {adapter}"]

    parity = last_json(a.parity)
    if parity is None:
        lines.append("parity: no result (see log.txt)")
    else:
        cases = [c for f in parity["fixtures"] for c in f["cases"]]
        failed = [f["name"] + (f" ({f['error']})" if f.get("error") else "") for f in parity["fixtures"] if not f["pass"]]
        worst = max((c["max_abs_diff"] for c in cases if c["max_abs_diff"] is not None), default=None)
        lines.append(f"parity on {parity['backend']}: {len(cases)} cases of {len(parity['fixtures'])} fixtures, worst max |Δ| {fmt(worst, '.2e')} "
                     f"against {parity['tolerance']}: " + ("PASS" if parity["pass"] else "FAIL: " + "; ".join(failed)))
    check = open(a.check, errors="replace").read().splitlines() if os.path.exists(a.check) else []
    said = [l.strip() for l in check if re.search(r"Δ|match|skipped|failed|error|^OK$|^MISMATCH$|^exit status", l)]
    lines.append("check_tiny_llama.py: " + (" | ".join(said) if said else "no result"))

    peft32 = {shape_label(r): r["tokens_per_s"] for r in runs if r.get("peer", "").startswith("peft") and r.get("dtype") == "float32" and "tokens_per_s" in r}
    lines += ["", "| run | what | device | dtype | shape | tokens/s | step ms | × PEFT fp32 | peak GPU MiB (nvidia-smi) | peak MiB (framework) | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "skipped" in r or "tokens_per_s" not in r:
            note = r.get("skipped") or r.get("error", "").replace("\n", " ")[-200:] or r.get("timed_out", "")
            lines.append(f"| {r['run']} | | | | {shape_label(r)} | – | – | – | – | – | {note} |")
            continue
        label, device, dtype = what_ran(r, adapter)
        base = peft32.get(shape_label(r))
        ratio = r["tokens_per_s"] / base if base else None
        lines.append(f"| {r['run']} | {label} | {device} | {dtype} | {shape_label(r)} | {r['tokens_per_s']:.0f} | {r['step_ms']:.1f} | "
                     f"{fmt(ratio, '.2f')} | {fmt(r.get('peak_gpu_smi_mib'), '.0f')} | {framework_peak(r)} | {r.get('timed_out', '')} |")

    lines += ["", "Goals (issue 10):"]
    by = {r["run"]: r for r in runs if "tokens_per_s" in r}
    gpu_a, gpu_small, wasm_small = by.get(f"molora-{a.backend}-A"), by.get(f"molora-{a.backend}-A-small"), by.get("wasm-ref-A-small")
    pa = peft32.get(shape_label(gpu_a)) if gpu_a else None
    lines.append(f"- molora {a.backend} ÷ PEFT float32 ({shape_label(gpu_a) if gpu_a else 'SmolLM2-135M shape'}): " +
                 (f"{gpu_a['tokens_per_s'] / pa:.2f}× (goal ≥ 0.25×)" if gpu_a and pa else "not measured"))
    lines.append(f"- molora {a.backend} ÷ molora wasm, same shape and batch ({shape_label(wasm_small) if wasm_small else '?'}): " +
                 (f"{gpu_small['tokens_per_s'] / wasm_small['tokens_per_s']:.1f}× (goal ≥ 20×)" if gpu_small and wasm_small else "not measured"))
    print("\n".join(lines))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    for k in ["name", "limit", "stdout", "stderr", "gpu-samples", "gpu-base", "args"]:
        r.add_argument("--" + k, default="")
    r.add_argument("--rc", type=int, required=True)
    t = sub.add_parser("table")
    for k in ["results", "parity", "env", "check", "backend"]:
        t.add_argument("--" + k, required=True)
    a = p.parse_args()
    record(a) if a.cmd == "record" else table(a)


if __name__ == "__main__":
    sys.exit(main())
