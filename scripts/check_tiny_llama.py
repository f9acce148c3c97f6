#!/usr/bin/env python3
"""Check the shipped base, models/tiny-llama, against molora's forward pass.

Dev tool, not a test. Runs `node dist/cli/main.js forward --json` on a prompt and compares its
log-probs with
  1. a float64 numpy Llama written from ../shared/REFERENCE.md section 1 (always), and
  2. Hugging Face transformers, when it is installed: AutoModelForCausalLM and AutoTokenizer must
     load the folder unchanged, the token ids must match, and the log-probs agree within 1e-3.
Usage: /usr/bin/python3 scripts/check_tiny_llama.py [MODEL_DIR]
MOLORA_CLI sets the command that runs molora (default "node dist/cli/main.js"; the GPU machine
runs a bundle with a carried Node: scripts/device/run.sh), MOLORA_BACKEND its backend.
"""

import json
import os
import shlex
import struct
import subprocess
import sys

import numpy as np

MODEL = sys.argv[1] if len(sys.argv) > 1 else "models/tiny-llama"
TEXT = "color: sky = blue\nThe old cat sees the tall tree."
TOL = 1e-3
CLI = shlex.split(os.environ.get("MOLORA_CLI", "node dist/cli/main.js"))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", f"{k}: {v['dtype']}"
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(data[b:e], dtype="<f4").reshape(v["shape"]).astype(np.float64)
    return out


def numpy_llama(cfg, w, ids):
    D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    T = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # [heads, T, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    x = w["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(T, H, hd).transpose(1, 0, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(T, KV, hd).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(T, KV, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, H // KV, 0), np.repeat(v, H // KV, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + causal
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(1, 0, 2).reshape(T, H * hd)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g, u = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    z = x @ head.T
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def main():
    out = subprocess.run(CLI + ["forward", "--model", MODEL, "--text", TEXT, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(CLI)} forward failed ({out.returncode}): {out.stderr.strip()}")
    got = json.loads(out.stdout)
    ids, lp = got["ids"], np.array(got["logprobs"])
    cfg = json.load(open(f"{MODEL}/config.json"))
    ref = numpy_llama(cfg, read_safetensors(f"{MODEL}/model.safetensors"), ids)
    print(f"numpy float64 reference: max |Δ logprob| = {np.abs(ref - lp).max():.2e} over {len(ids)} tokens")
    ok = np.abs(ref - lp).max() < TOL
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        print(f"transformers check skipped: {e}")
    else:
        tok = AutoTokenizer.from_pretrained(MODEL)
        hf_ids = tok(TEXT)["input_ids"]
        print(f"tokenizer ids match: {hf_ids == ids}")
        model = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            hf = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()
        d = np.abs(hf - lp).max()
        print(f"transformers: max |Δ logprob| = {d:.2e}")
        ok = ok and hf_ids == ids and d < TOL
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
