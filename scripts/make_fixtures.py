#!/usr/bin/env python3
"""Generate tiny Hugging Face-format model folders and float64 reference outputs.

Dev tool only: the TypeScript tests read the committed files under
test/fixtures/models/ and never need Python. Re-run with
    /usr/bin/python3 scripts/make_fixtures.py
(requires torch + numpy; no transformers / safetensors packages needed).

Every forward pass below is written from scratch in plain torch, from
shared/REFERENCE.md section 1, with details checked against Hugging Face
transformers' modeling_llama.py / modeling_qwen2.py / modeling_gpt2.py.
All reference math runs in float64 on the weights exactly as stored in the
.safetensors files (read back through our own reader, so F16/BF16 rounding is
included), never on the pre-rounding values.

The .safetensors writer reproduces the byte layout of the official
`safetensors` library (Rust `serialize`): u64 LE header length; compact JSON
header with "__metadata__" first, then tensors ordered by descending dtype
(BOOL < U8 < I8 < F8_E5M2 < F8_E4M3 < I16 < U16 < F16 < BF16 < I32 < U32 <
F32 < F64 < I64 < U64) and then by name, offsets contiguous from 0; header
padded with spaces to a multiple of 8 bytes; then the raw little-endian data.

Position convention for padded batches: position_ids = cumsum(mask) - 1 with
padded slots set to 1 -- what HF `generate()` feeds every model here (GPT-2
included, via prepare_inputs_for_generation). Note a bare HF `model(ids,
attention_mask=...)` call without position_ids uses arange(T) instead, which
shifts positions for left-padded rows. Each case stores its position_ids.
"""

import json
import math
import os
import shutil
import struct
import sys

import numpy as np
import torch

torch.set_num_threads(2)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "test", "fixtures", "models")
TRANSFORMERS_VERSION = "4.46.3"

# ----------------------------------------------------------------------------
# safetensors writer / reader
# ----------------------------------------------------------------------------

# dtype order of the Rust `Dtype` enum (ascending alignment); sort is descending.
ST_ORDER = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
            "I32", "U32", "F32", "F64", "I64", "U64"]
ST_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
           "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
TORCH_TO_ST = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
               torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
               torch.float32: "F32", torch.float64: "F64", torch.int64: "I64"}


def tensor_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if t.dtype == torch.bool:
        return t.to(torch.uint8).numpy().tobytes()
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def st_serialize(tensors, metadata={"format": "pt"}):
    """tensors: dict name -> torch tensor. Returns bytes, like safetensors.torch.save()."""
    items = sorted(tensors.items(), key=lambda kv: (-ST_ORDER.index(TORCH_TO_ST[kv[1].dtype]), kv[0]))
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blobs = []
    off = 0
    for name, t in items:
        b = tensor_bytes(t)
        dt = TORCH_TO_ST[t.dtype]
        assert len(b) == int(np.prod(t.shape, dtype=np.int64)) * ST_SIZE[dt]
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    return struct.pack("<Q", len(hjson)) + hjson + b"".join(blobs)


def st_write(path, tensors):
    with open(path, "wb") as f:
        f.write(st_serialize(tensors))


def st_read(path):
    """Independent reader with the validity checks from REFERENCE.md. Returns name -> torch tensor."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    assert 8 + n <= len(data) and n % 8 == 0
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = data[8 + n:]
    assert list(header.keys())[0] == "__metadata__" and header["__metadata__"] == {"format": "pt"}
    out = {}
    expect = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        assert b == expect, "non-contiguous"
        expect = e
        dt, shape = info["dtype"], info["shape"]
        assert e - b == int(np.prod(shape, dtype=np.int64)) * ST_SIZE[dt]
        raw = body[b:e]
        if dt == "F32":
            arr = torch.from_numpy(np.frombuffer(raw, "<f4").copy())
        elif dt == "F16":
            arr = torch.from_numpy(np.frombuffer(raw, "<f2").copy())
        elif dt == "BF16":
            u = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            arr = torch.from_numpy(u.view(np.float32).copy())
        elif dt == "BOOL":
            arr = torch.from_numpy(np.frombuffer(raw, np.uint8).copy()).bool()
        else:
            raise ValueError(dt)
        out[name] = arr.reshape(shape)
    assert expect == len(body), "trailing bytes"
    return out


def load_folder(folder):
    idx = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(idx):
        wm = json.load(open(idx))["weight_map"]
        w = {}
        for fn in sorted(set(wm.values())):
            part = st_read(os.path.join(folder, fn))
            for k in part:
                assert wm[k] == fn
            w.update(part)
        assert set(w) == set(wm)
        return w
    return st_read(os.path.join(folder, "model.safetensors"))


# ----------------------------------------------------------------------------
# random weights
# ----------------------------------------------------------------------------

class Rand:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape, std, mean=0.0):
        return (torch.randn(*shape, generator=self.g, dtype=torch.float64) * std + mean).to(torch.float32)

    def ints(self, lo, hi, n):
        return torch.randint(lo, hi, (n,), generator=self.g).tolist()


def llama_weights(cfg, seed, qkv_bias=False):
    r = Rand(seed)
    D, V, I = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    w = {"model.embed_tokens.weight": r.normal([V, D], 0.5)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = r.normal([D], 0.1, 1.0)
        w[p + "self_attn.q_proj.weight"] = r.normal([H * hd, D], 0.25)
        w[p + "self_attn.k_proj.weight"] = r.normal([KV * hd, D], 0.25)
        w[p + "self_attn.v_proj.weight"] = r.normal([KV * hd, D], 0.2)
        w[p + "self_attn.o_proj.weight"] = r.normal([D, H * hd], 0.2)
        if qkv_bias:
            w[p + "self_attn.q_proj.bias"] = r.normal([H * hd], 0.2)
            w[p + "self_attn.k_proj.bias"] = r.normal([KV * hd], 0.2)
            w[p + "self_attn.v_proj.bias"] = r.normal([KV * hd], 0.2)
        w[p + "post_attention_layernorm.weight"] = r.normal([D], 0.1, 1.0)
        w[p + "mlp.gate_proj.weight"] = r.normal([I, D], 0.2)
        w[p + "mlp.up_proj.weight"] = r.normal([I, D], 0.2)
        w[p + "mlp.down_proj.weight"] = r.normal([D, I], 0.2)
    w["model.norm.weight"] = r.normal([D], 0.1, 1.0)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = r.normal([V, D], 0.25)
    return w


def gpt2_weights(cfg, seed, buffers=False):
    r = Rand(seed)
    D, V, P = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    I = cfg["n_inner"] or 4 * D
    w = {"wte.weight": r.normal([V, D], 0.3), "wpe.weight": r.normal([P, D], 0.1)}
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        w[p + "ln_1.weight"] = r.normal([D], 0.1, 1.0)
        w[p + "ln_1.bias"] = r.normal([D], 0.1)
        w[p + "attn.c_attn.weight"] = r.normal([D, 3 * D], 0.2)  # Conv1D: [in, out]
        w[p + "attn.c_attn.bias"] = r.normal([3 * D], 0.1)
        w[p + "attn.c_proj.weight"] = r.normal([D, D], 0.2)
        w[p + "attn.c_proj.bias"] = r.normal([D], 0.1)
        w[p + "ln_2.weight"] = r.normal([D], 0.1, 1.0)
        w[p + "ln_2.bias"] = r.normal([D], 0.1)
        w[p + "mlp.c_fc.weight"] = r.normal([D, I], 0.2)
        w[p + "mlp.c_fc.bias"] = r.normal([I], 0.1)
        w[p + "mlp.c_proj.weight"] = r.normal([I, D], 0.2)
        w[p + "mlp.c_proj.bias"] = r.normal([D], 0.1)
        if buffers:
            # non-persistent-era buffers that old GPT2 checkpoints carry; loaders must ignore them
            w[p + "attn.bias"] = torch.tril(torch.ones(P, P, dtype=torch.bool)).view(1, 1, P, P)
            w[p + "attn.masked_bias"] = torch.tensor(-1e4, dtype=torch.float32)
    w["ln_f.weight"] = r.normal([D], 0.1, 1.0)
    w["ln_f.bias"] = r.normal([D], 0.1)
    return w


# ----------------------------------------------------------------------------
# float64 reference forward passes
# ----------------------------------------------------------------------------

NEG = torch.finfo(torch.float64).min  # like HF: min value, never -inf (no NaN on fully masked rows)


def positions_from_mask(mask):
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def allowed_keys(mask, window=None):
    """Key slot k is visible to query slot q when real, k <= q and, with a sliding window W,
    k > q - W (HF masking_utils sliding_window_overlay: kv_idx > q_idx - sliding_window, on
    slot indices, so a query sees itself and the W - 1 slots before it)."""
    T = mask.shape[1]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    if window is not None:
        q = torch.arange(T)[:, None]
        k = torch.arange(T)[None, :]
        causal = causal & (k > q - window)
    return causal[None] & mask.bool()[:, None, :]  # [B, Tq, Tk]


def sliding_window_of(cfg):
    """Mistral/Mixtral apply `sliding_window` on every layer when it is set. Qwen2's
    use_sliding_window depends on max_window_layers per layer and is not modelled here."""
    if cfg["model_type"] == "qwen2" and cfg.get("use_sliding_window"):
        raise NotImplementedError("qwen2 sliding window")
    if cfg["model_type"] in ("mistral", "mixtral"):
        return cfg.get("sliding_window")
    return None


def attend(q, k, v, allowed):
    """q [B,H,T,hd], k/v [B,H,T,hd] (already expanded), allowed [B,T,T]."""
    hd = q.shape[-1]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    s = s.masked_fill(~allowed[:, None], NEG)
    return torch.softmax(s, -1) @ v


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def llama_forward(W, cfg, ids, mask, pos):
    W = {k: v.to(torch.float64) for k, v in W.items()}
    B, T = ids.shape
    D = cfg["hidden_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    inv_freq = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)  # θ^(−2j/d)
    ang = pos.to(torch.float64)[..., None] * inv_freq  # [B,T,hd/2]
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]  # [B,1,T,hd]
    allowed = allowed_keys(mask, sliding_window_of(cfg))

    x = W["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, W[p + "input_layernorm.weight"], eps)

        def proj(name, nh):
            y = h @ W[p + f"self_attn.{name}.weight"].T
            if p + f"self_attn.{name}.bias" in W:
                y = y + W[p + f"self_attn.{name}.bias"]
            return y.view(B, T, nh, hd).transpose(1, 2)

        q, k, v = proj("q_proj", H), proj("k_proj", KV), proj("v_proj", KV)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = H // KV  # query head h uses kv head h // rep
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        o = attend(q, k, v, allowed).transpose(1, 2).reshape(B, T, H * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        g = h @ W[p + "mlp.gate_proj.weight"].T
        u = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ W[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return torch.log_softmax(x @ head.T, -1)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt2_forward(W, cfg, ids, mask, pos):
    W = {(k[len("transformer."):] if k.startswith("transformer.") else k): v.to(torch.float64)
         for k, v in W.items() if v.dtype != torch.bool}
    B, T = ids.shape
    D, H = cfg["n_embd"], cfg["n_head"]
    hd = D // H
    eps = cfg["layer_norm_epsilon"]
    allowed = allowed_keys(mask)
    x = W["wte.weight"][ids] + W["wpe.weight"][pos]
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        h = layer_norm(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        qkv = h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]  # Conv1D: x W + b
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in qkv.split(D, -1))
        o = attend(q, k, v, allowed).transpose(1, 2).reshape(B, T, D)
        x = x + o @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = layer_norm(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        m = gelu_new(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"])
        x = x + m @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    x = layer_norm(x, W["ln_f.weight"], W["ln_f.bias"], eps)
    return torch.log_softmax(x @ W["wte.weight"].T, -1)  # head tied to wte


# ----------------------------------------------------------------------------
# configs (keys sorted, indent 2, trailing newline: PretrainedConfig.to_json_file)
# ----------------------------------------------------------------------------

def llama_config(dtype="float32"):
    return {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "head_dim": 8, "hidden_act": "silu",
        "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
        "max_position_embeddings": 64, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "torch_dtype": dtype,
        "transformers_version": TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": 96,
    }


def mistral_config():
    return {
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "head_dim": 8, "hidden_act": "silu", "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 48, "max_position_embeddings": 64,
        "model_type": "mistral", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": 80,
    }


def qwen2_config():
    return {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02,
        "intermediate_size": 56, "max_position_embeddings": 64, "max_window_layers": 2,
        "model_type": "qwen2", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000.0, "sliding_window": 64, "tie_word_embeddings": False,
        "torch_dtype": "float32", "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True, "use_sliding_window": False, "vocab_size": 72,
    }


def gpt2_config(explicit_tie):
    c = {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1, "bos_token_id": 63, "embd_pdrop": 0.1, "eos_token_id": 63,
        "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
        "n_ctx": 64, "n_embd": 32, "n_head": 4, "n_inner": 64, "n_layer": 2, "n_positions": 64,
        "reorder_and_upcast_attn": False, "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights": True,
        "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels": True,
        "summary_type": "cls_index", "summary_use_proj": True, "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": 64,
    }
    if explicit_tie:
        c["tie_word_embeddings"] = True
    return c


def write_json(path, obj, compact=False):
    with open(path, "w") as f:
        if compact:
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        else:
            f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------
# reference cases
# ----------------------------------------------------------------------------

def make_inputs(vocab, seed, T=7, short_len=4):
    r = Rand(seed)
    a = [r.ints(1, vocab, T), r.ints(1, vocab, T)]  # real tokens never use pad id 0
    short = a[1][:short_len]
    pad = T - short_len
    left = [a[0], [0] * pad + short]
    right = [a[0], short + [0] * pad]
    return [
        (a, [[1] * T, [1] * T]),
        (left, [[1] * T, [0] * pad + [1] * short_len]),
        (right, [[1] * T, [1] * short_len + [0] * pad]),
    ]


def r6(x):
    v = round(float(x), 6)
    return 0.0 if v == 0 else v


def run_case(fwd, W, cfg, ids, mask):
    ids_t = torch.tensor(ids)
    mask_t = torch.tensor(mask)
    pos = positions_from_mask(mask_t)
    lp = fwd(W, cfg, ids_t, mask_t, pos)
    assert torch.isfinite(lp).all()
    out = []
    for b in range(len(ids)):
        row = []
        for t in range(len(ids[b])):
            row.append([r6(v) for v in lp[b, t].tolist()] if mask[b][t] else None)
        out.append(row)
    return {"ids": ids, "attention_mask": mask, "position_ids": pos.tolist(), "logprobs": out}, lp


def greedy(fwd, W, cfg, vocab, seed, n=8, want_margin=0.05):
    r = Rand(seed)
    best = None
    for attempt in range(50):
        prompt = r.ints(1, vocab, 5)
        seq = list(prompt)
        margin = float("inf")
        for _ in range(n):
            ids = torch.tensor([seq])
            mask = torch.ones_like(ids)
            lp = fwd(W, cfg, ids, mask, positions_from_mask(mask))[0, -1]
            top = torch.topk(lp, 2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
        cand = {"prompt": prompt, "tokens": seq[len(prompt):], "min_margin": r6(margin)}
        if best is None or cand["min_margin"] > best["min_margin"]:
            best = cand
        if margin >= want_margin:
            break
    return best


def check_and_summarise(name, cfg, fwd, W, lps, short_len=4):
    a, left, right = lps
    pad = a.shape[1] - short_len
    # Consistency of the mask/position handling: a padded row must equal the unpadded computation.
    assert torch.allclose(left[1, pad:], a[1, :short_len], atol=1e-10), name
    assert torch.allclose(right[1, :short_len], a[1, :short_len], atol=1e-10), name
    assert torch.allclose(left[0], a[0], atol=1e-10) and torch.allclose(right[0], a[0], atol=1e-10)
    p = a.exp()
    ent = -(p * a).sum(-1)
    spread = (a.max(-1).values - a.min(-1).values)
    V = a.shape[-1]
    print(f"  {name}: V={V} entropy mean {ent.mean():.3f} (uniform {math.log(V):.3f}), "
          f"max prob mean {p.max(-1).values.mean():.3f}, logprob spread mean {spread.mean():.2f}")
    assert ent.mean() < math.log(V) - 0.3, f"{name}: logits too flat"


def build(name, cfg, W_stored, fwd, seed, write_files, T=7, short_len=4):
    folder = os.path.join(OUT, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    write_json(os.path.join(folder, "config.json"), cfg)
    write_files(folder, W_stored)
    W = load_folder(folder)  # reference uses exactly what is on disk
    for k in W_stored:
        assert W[k].dtype == W_stored[k].dtype or W_stored[k].dtype == torch.bfloat16
        assert torch.equal(W[k].to(torch.float64), W_stored[k].to(torch.float64)), k
    vocab = cfg["vocab_size"]
    cases, lps = [], []
    for ids, mask in make_inputs(vocab, seed, T, short_len):
        c, lp = run_case(fwd, W, cfg, ids, mask)
        cases.append(c)
        lps.append(lp)
    check_and_summarise(name, cfg, fwd, W, lps, short_len)
    g = greedy(fwd, W, cfg, vocab, seed + 1)
    print(f"    greedy {g}")
    ref = {
        "description": "float64 reference from scripts/make_fixtures.py; logprobs[b][t] = "
                       "log_softmax over the vocab for the token after position t; null on padded "
                       "positions; position_ids = cumsum(mask)-1, pads 1",
        "cases": cases,
        "greedy": g,
    }
    write_json(os.path.join(folder, "reference.json"), ref, compact=True)


def single_file(folder, W):
    st_write(os.path.join(folder, "model.safetensors"), W)


def sharded(folder, W):
    # HF's shard splitter walks the state dict in module order; we cut after layer 0.
    first = {k: v for k, v in W.items() if k.startswith("model.embed_tokens.") or k.startswith("model.layers.0.")}
    second = {k: v for k, v in W.items() if k not in first}
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    total = 0
    for fn, part in zip(names, [first, second]):
        st_write(os.path.join(folder, fn), part)
        for k, v in part.items():
            weight_map[k] = fn
            total += len(tensor_bytes(v))
    write_json(os.path.join(folder, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map})


def main():
    os.makedirs(OUT, exist_ok=True)
    print("writing fixtures to", OUT)

    lcfg = llama_config()
    lw = llama_weights(lcfg, seed=1001)
    build("llama-gqa", lcfg, lw, llama_forward, 11, single_file)
    build("llama-f16", llama_config("float16"), {k: v.to(torch.float16) for k, v in lw.items()},
          llama_forward, 11, single_file)
    build("llama-bf16", llama_config("bfloat16"), {k: v.to(torch.bfloat16) for k, v in lw.items()},
          llama_forward, 11, single_file)
    build("llama-sharded", lcfg, lw, llama_forward, 11, sharded)

    mcfg = mistral_config()
    build("mistral", mcfg, llama_weights(mcfg, seed=2002), llama_forward, 22, single_file)

    qcfg = qwen2_config()
    build("qwen2", qcfg, llama_weights(qcfg, seed=3003, qkv_bias=True), llama_forward, 33, single_file)

    gcfg = gpt2_config(explicit_tie=True)
    gw = gpt2_weights(gcfg, seed=4004, buffers=True)
    build("gpt2", gcfg, gw, gpt2_forward, 44, single_file)

    pcfg = gpt2_config(explicit_tie=False)  # tie_word_embeddings omitted: HF default (true)
    pw = {"transformer." + k: v for k, v in gpt2_weights(pcfg, seed=5005).items()}
    build("gpt2-prefixed", pcfg, pw, gpt2_forward, 55, single_file)

    # Sliding window shorter than the sequences (added last, own seeds: no earlier draw changes).
    # Window 4 over rows of 10 tokens, the short row 6: every row, padded or not, outgrows it.
    scfg = dict(mcfg, sliding_window=4)
    sw = llama_weights(scfg, seed=6006)
    build("mistral-swa", scfg, sw, llama_forward, 66, single_file, T=10, short_len=6)
    # The window must matter: without it the reference moves well beyond the test tolerance.
    full = dict(scfg, sliding_window=None)
    W = load_folder(os.path.join(OUT, "mistral-swa"))
    for ids, mask in make_inputs(scfg["vocab_size"], 66, 10, 6):
        m = torch.tensor(mask)
        pos = positions_from_mask(m)
        with_w = llama_forward(W, scfg, torch.tensor(ids), m, pos)
        without = llama_forward(W, full, torch.tensor(ids), m, pos)
        gap = float((with_w - without).abs()[m.bool()].max())
        print(f"    mistral-swa: window changes the log-probs by up to {gap:.3f}")
        assert gap > 1e-2

    for d in sorted(os.listdir(OUT)):
        size = sum(os.path.getsize(os.path.join(OUT, d, f)) for f in os.listdir(os.path.join(OUT, d)))
        print(f"  {d}: {size} bytes")
        assert size < 200_000


if __name__ == "__main__":
    sys.exit(main())
