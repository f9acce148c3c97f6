#!/usr/bin/env python3
"""Generate tiny Hugging Face-format sparse MoE model folders and float64 references.

Dev tool only: the TypeScript tests read the committed files under
test/fixtures/models/{mixtral,mixtral-packed,qwen2-moe,olmoe} and never need Python.
Re-run with
    /usr/bin/python3 scripts/make_moe_fixtures.py
(requires torch + numpy; no transformers / safetensors packages needed).

Shares the safetensors writer/reader, the random-weight generator, the padded input cases,
the position convention and the reference.json schema with scripts/make_fixtures.py (read its
docstring). The MoE forward below is written from scratch in plain torch from
shared/REFERENCE.md section 4, with details checked against Hugging Face transformers'
modeling_mixtral.py, modeling_qwen2_moe.py, modeling_olmoe.py and conversion_mapping.py:

- router: logits = x W_g^T (no bias), p = softmax(logits) over all experts, top-k of p;
  Mixtral always renormalises the k chosen probabilities, Qwen2-MoE / OLMoE only when
  norm_topk_prob; y = sum_j w_j * w2(silu(w1 x) * w3 x).
- Qwen2-MoE adds sigmoid(shared_expert_gate(x)) * shared_expert(x); a layer is sparse when
  it is not in mlp_only_layers and (layer + 1) % decoder_sparse_step == 0, else a dense MLP
  of intermediate_size.
- OLMoE: q = q_norm(q_proj(x)) over all heads at once (RMSNorm of width H*d), k likewise
  (KV*d), before RoPE; with clip_qkv, q, k and v are clamped to [-c, c] after that.
- packed Mixtral (transformers >= 5 layout): model.layers.i.mlp.gate.weight [E, D],
  mlp.experts.gate_up_proj [E, 2I, D] (w1 rows, then w3 rows), mlp.experts.down_proj [E, D, I].

Each case in reference.json also carries "router": the HF load-balancing aux loss
(load_balancing_loss_func with the attention mask: all MoE layers' tokens concatenated,
padding excluded, E * sum(f * P), equal to k at perfect balance) and the ST-MoE z-loss
(mean over real tokens of all MoE layers of logsumexp(logits)^2). Weights are drawn until
every real token's k-th and (k+1)-th router probabilities differ by at least MIN_MARGIN, so
float32 routing cannot pick different experts than this float64 reference.
"""

import math
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

MIN_MARGIN = 1e-3


# ----------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------

def mixtral_config():
    return {
        "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "eos_token_id": 2, "head_dim": 8, "hidden_act": "silu", "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 24, "max_position_embeddings": 64,
        "model_type": "mixtral", "num_attention_heads": 4, "num_experts_per_tok": 2,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "num_local_experts": 4,
        "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": mf.TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": 64,
    }


def qwen2_moe_config():
    return {
        "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "decoder_sparse_step": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 48, "max_position_embeddings": 64,
        "max_window_layers": 2, "mlp_only_layers": [0], "model_type": "qwen2_moe",
        "moe_intermediate_size": 16, "norm_topk_prob": False, "num_attention_heads": 4,
        "num_experts": 6, "num_experts_per_tok": 2, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "output_router_logits": False, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 40, "sliding_window": 64, "tie_word_embeddings": False,
        "torch_dtype": "float32", "transformers_version": mf.TRANSFORMERS_VERSION,
        "use_cache": True, "use_sliding_window": False, "vocab_size": 72,
    }


def olmoe_config():
    return {
        "architectures": ["OlmoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "clip_qkv": 2.0, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 16,
        "max_position_embeddings": 64, "model_type": "olmoe", "norm_topk_prob": False,
        "num_attention_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
        "num_hidden_layers": 2, "num_key_value_heads": 4, "output_router_logits": False,
        "pad_token_id": 0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": mf.TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": 80,
    }


def family(cfg):
    return cfg["model_type"]


def moe_shape(cfg):
    """(E, k, expert intermediate size, renormalise the top-k, shared expert size)."""
    if family(cfg) == "mixtral":
        return cfg["num_local_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"], True, 0
    if family(cfg) == "qwen2_moe":
        return (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"],
                cfg["norm_topk_prob"], cfg["shared_expert_intermediate_size"])
    return cfg["num_experts"], cfg["num_experts_per_tok"], cfg["intermediate_size"], cfg["norm_topk_prob"], 0


def is_sparse(cfg, i):
    if family(cfg) != "qwen2_moe":
        return True
    return i not in cfg["mlp_only_layers"] and (i + 1) % cfg["decoder_sparse_step"] == 0


# ----------------------------------------------------------------------------
# weights (per-expert keys; the packed layout is derived from these)
# ----------------------------------------------------------------------------

def moe_weights(cfg, seed):
    r = mf.Rand(seed)
    D, V = cfg["hidden_size"], cfg["vocab_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    E, _, I, _, S = moe_shape(cfg)
    qkv_bias = family(cfg) == "qwen2_moe"
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
        if family(cfg) == "olmoe":
            w[p + "self_attn.q_norm.weight"] = r.normal([H * hd], 0.1, 1.0)
            w[p + "self_attn.k_norm.weight"] = r.normal([KV * hd], 0.1, 1.0)
        w[p + "post_attention_layernorm.weight"] = r.normal([D], 0.1, 1.0)
        if not is_sparse(cfg, i):
            Id = cfg["intermediate_size"]
            w[p + "mlp.gate_proj.weight"] = r.normal([Id, D], 0.2)
            w[p + "mlp.up_proj.weight"] = r.normal([Id, D], 0.2)
            w[p + "mlp.down_proj.weight"] = r.normal([D, Id], 0.2)
            continue
        if family(cfg) == "mixtral":
            m = p + "block_sparse_moe."
            w[m + "gate.weight"] = r.normal([E, D], 0.3)
            for e in range(E):
                w[m + f"experts.{e}.w1.weight"] = r.normal([I, D], 0.2)
                w[m + f"experts.{e}.w2.weight"] = r.normal([D, I], 0.2)
                w[m + f"experts.{e}.w3.weight"] = r.normal([I, D], 0.2)
        else:
            m = p + "mlp."
            w[m + "gate.weight"] = r.normal([E, D], 0.3)
            for e in range(E):
                w[m + f"experts.{e}.gate_proj.weight"] = r.normal([I, D], 0.2)
                w[m + f"experts.{e}.up_proj.weight"] = r.normal([I, D], 0.2)
                w[m + f"experts.{e}.down_proj.weight"] = r.normal([D, I], 0.2)
            if S:
                w[m + "shared_expert.gate_proj.weight"] = r.normal([S, D], 0.2)
                w[m + "shared_expert.up_proj.weight"] = r.normal([S, D], 0.2)
                w[m + "shared_expert.down_proj.weight"] = r.normal([D, S], 0.2)
                w[m + "shared_expert_gate.weight"] = r.normal([1, D], 0.3)
    w["model.norm.weight"] = r.normal([D], 0.1, 1.0)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = r.normal([V, D], 0.25)
    return w


def pack_mixtral(W, cfg):
    """Classic Mixtral keys -> transformers 5 packed keys (conversion_mapping.py's 'mixtral')."""
    E = cfg["num_local_experts"]
    out = {}
    for k, v in W.items():
        if ".block_sparse_moe." not in k:
            out[k] = v
    for i in range(cfg["num_hidden_layers"]):
        m = f"model.layers.{i}.block_sparse_moe."
        n = f"model.layers.{i}.mlp."
        out[n + "gate.weight"] = W[m + "gate.weight"]
        out[n + "experts.gate_up_proj"] = torch.stack(
            [torch.cat([W[m + f"experts.{e}.w1.weight"], W[m + f"experts.{e}.w3.weight"]], 0) for e in range(E)])
        out[n + "experts.down_proj"] = torch.stack([W[m + f"experts.{e}.w2.weight"] for e in range(E)])
    return out


# ----------------------------------------------------------------------------
# float64 reference forward
# ----------------------------------------------------------------------------

def swiglu(x, gate, up, down):
    return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T


def experts_of(W, cfg, i):
    """Per-expert (gate, up, down) weights of layer i, read from whichever layout is stored."""
    E, _, I, _, _ = moe_shape(cfg)
    p = f"model.layers.{i}."
    if p + "mlp.experts.gate_up_proj" in W:
        gu, dn = W[p + "mlp.experts.gate_up_proj"], W[p + "mlp.experts.down_proj"]
        return W[p + "mlp.gate.weight"], [(gu[e, :I], gu[e, I:], dn[e]) for e in range(E)]
    if family(cfg) == "mixtral":
        m = p + "block_sparse_moe."
        return W[m + "gate.weight"], [
            (W[m + f"experts.{e}.w1.weight"], W[m + f"experts.{e}.w3.weight"], W[m + f"experts.{e}.w2.weight"])
            for e in range(E)]
    m = p + "mlp."
    return W[m + "gate.weight"], [
        (W[m + f"experts.{e}.gate_proj.weight"], W[m + f"experts.{e}.up_proj.weight"],
         W[m + f"experts.{e}.down_proj.weight"]) for e in range(E)]


def sparse_moe(W, cfg, i, x, trace):
    """x [N, D] -> [N, D]; appends this layer's router logits to trace."""
    E, k, _, renorm, S = moe_shape(cfg)
    gate, experts = experts_of(W, cfg, i)
    logits = x @ gate.T
    trace.append(logits)
    probs = torch.softmax(logits, -1)
    topv, topi = torch.topk(probs, k, -1)
    if renorm:
        topv = topv / topv.sum(-1, keepdim=True)
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for j in range(k):
            g, u, d = experts[int(topi[n, j])]
            out[n] += topv[n, j] * swiglu(x[n:n + 1], g, u, d)[0]
    if S:
        m = f"model.layers.{i}.mlp."
        shared = swiglu(x, W[m + "shared_expert.gate_proj.weight"], W[m + "shared_expert.up_proj.weight"],
                        W[m + "shared_expert.down_proj.weight"])
        out = out + torch.sigmoid(x @ W[m + "shared_expert_gate.weight"].T) * shared
    return out


def moe_forward(W, cfg, ids, mask, pos, trace=None):
    trace = [] if trace is None else trace
    W = {k: v.to(torch.float64) for k, v in W.items()}
    B, T = ids.shape
    D = cfg["hidden_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    clip = cfg.get("clip_qkv")
    inv_freq = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos.to(torch.float64)[..., None] * inv_freq
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    allowed = mf.allowed_keys(mask)

    x = W["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = mf.rms_norm(x, W[p + "input_layernorm.weight"], eps)

        def proj(name):
            y = h @ W[p + f"self_attn.{name}_proj.weight"].T
            if p + f"self_attn.{name}_proj.bias" in W:
                y = y + W[p + f"self_attn.{name}_proj.bias"]
            if p + f"self_attn.{name}_norm.weight" in W:
                y = mf.rms_norm(y, W[p + f"self_attn.{name}_norm.weight"], eps)
            if clip is not None:
                y = y.clamp(-clip, clip)
            return y

        q = proj("q").view(B, T, H, hd).transpose(1, 2)
        k = proj("k").view(B, T, KV, hd).transpose(1, 2)
        v = proj("v").view(B, T, KV, hd).transpose(1, 2)
        q = q * cos + mf.rotate_half(q) * sin
        k = k * cos + mf.rotate_half(k) * sin
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        o = mf.attend(q, k, v, allowed).transpose(1, 2).reshape(B, T, H * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = mf.rms_norm(x, W[p + "post_attention_layernorm.weight"], eps)
        if is_sparse(cfg, i):
            x = x + sparse_moe(W, cfg, i, h.reshape(B * T, D), trace).view(B, T, D)
        else:
            x = x + swiglu(h, W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"],
                           W[p + "mlp.down_proj.weight"])
    x = mf.rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else W["lm_head.weight"]
    return torch.log_softmax(x @ head.T, -1)


def load_balancing_loss(trace, mask, E, k):
    """HF load_balancing_loss_func with an attention mask: every MoE layer's tokens concatenated."""
    logits = torch.cat(trace, 0)  # [L*N, E]
    probs = torch.softmax(logits, -1)
    _, sel = torch.topk(probs, k, -1)
    onehot = torch.nn.functional.one_hot(sel, E).to(torch.float64)  # [L*N, k, E]
    m = mask.reshape(-1).to(torch.float64).repeat(len(trace))  # [L*N]
    f = (onehot * m[:, None, None]).sum(0) / m.sum()  # [k, E]
    P = (probs * m[:, None]).sum(0) / m.sum()  # [E]
    return float((f * P[None]).sum() * E)


def z_loss(trace, mask):
    lse = torch.logsumexp(torch.cat(trace, 0), -1)
    m = mask.reshape(-1).to(torch.float64).repeat(len(trace))
    return float((lse * lse * m).sum() / m.sum())


def routing_margin(trace, mask, k):
    m = mask.reshape(-1).bool()
    worst = float("inf")
    for logits in trace:
        top = torch.topk(torch.softmax(logits, -1), k + 1, -1).values
        gap = (top[:, k - 1] - top[:, k])[m]
        worst = min(worst, float(gap.min()))
    return worst


# ----------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------

def margin_ok(W, cfg, seed):
    _, k, _, _, _ = moe_shape(cfg)
    for ids, mask in mf.make_inputs(cfg["vocab_size"], seed):
        trace = []
        ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
        moe_forward(W, cfg, ids_t, mask_t, mf.positions_from_mask(mask_t), trace)
        if routing_margin(trace, mask_t, k) < MIN_MARGIN:
            return False
    return True


def pick_weights(cfg, seed, inputs_seed):
    """The first weight seed from `seed` on whose routing has a safe margin on every case."""
    for s in range(seed, seed + 200):
        W = moe_weights(cfg, s)
        if margin_ok(W, cfg, inputs_seed):
            return W, s
    raise RuntimeError(f"{family(cfg)}: no weight seed with routing margin >= {MIN_MARGIN}")


def build(name, cfg, W_stored, seed):
    folder = os.path.join(mf.OUT, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    mf.write_json(os.path.join(folder, "config.json"), cfg)
    mf.single_file(folder, W_stored)
    W = mf.load_folder(folder)  # the reference uses exactly what is on disk
    for key in W_stored:
        assert torch.equal(W[key], W_stored[key]), key
    E, k, _, _, _ = moe_shape(cfg)
    cases, lps = [], []
    for ids, mask in mf.make_inputs(cfg["vocab_size"], seed):
        ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
        trace = []
        fwd = lambda W_, cfg_, i_, m_, p_: moe_forward(W_, cfg_, i_, m_, p_, trace)  # noqa: E731
        case, lp = mf.run_case(fwd, W, cfg, ids, mask)
        assert routing_margin(trace, mask_t, k) >= MIN_MARGIN, name
        case["router"] = {"aux_loss": mf.r6(load_balancing_loss(trace, mask_t, E, k)),
                          "z_loss": mf.r6(z_loss(trace, mask_t))}
        cases.append(case)
        lps.append(lp)
    mf.check_and_summarise(name, cfg, moe_forward, W, lps)
    print(f"    router {[c['router'] for c in cases]}")
    g = mf.greedy(moe_forward, W, cfg, cfg["vocab_size"], seed + 1)
    print(f"    greedy {g}")
    ref = {
        "description": "float64 reference from scripts/make_moe_fixtures.py; logprobs[b][t] = "
                       "log_softmax over the vocab for the token after position t; null on padded "
                       "positions; position_ids = cumsum(mask)-1, pads 1; router = HF load-balancing "
                       "aux loss and ST-MoE z-loss over the real tokens of all MoE layers",
        "cases": cases,
        "greedy": g,
    }
    mf.write_json(os.path.join(folder, "reference.json"), ref, compact=True)
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"    {name}: {size} bytes")
    assert size < 200_000


def main():
    os.makedirs(mf.OUT, exist_ok=True)
    print("writing MoE fixtures to", mf.OUT)
    mcfg = mixtral_config()
    mw, s = pick_weights(mcfg, 6006, 66)
    print(f"  mixtral weights seed {s}")
    build("mixtral", mcfg, mw, 66)
    build("mixtral-packed", mcfg, pack_mixtral(mw, mcfg), 66)

    qcfg = qwen2_moe_config()
    qw, s = pick_weights(qcfg, 7007, 77)
    print(f"  qwen2-moe weights seed {s}")
    build("qwen2-moe", qcfg, qw, 77)

    ocfg = olmoe_config()
    ow, s = pick_weights(ocfg, 8008, 88)
    print(f"  olmoe weights seed {s}")
    build("olmoe", ocfg, ow, 88)


if __name__ == "__main__":
    sys.exit(main())
