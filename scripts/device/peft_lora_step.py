#!/usr/bin/env python3
"""PEFT's LoRA training step, for `molora bench train` to be measured against on a GPU.

A randomly initialised transformers LlamaForCausalLM built from a config (nothing downloaded),
wrapped by peft (LoraConfig r on q_proj,v_proj, no dropout), AdamW over the LoRA weights, random
token ids and targets, mean cross-entropy over every position. The flags are
../shared/peers/torch_lora_step.py's, plus --tie for a head tied to the embedding.
  --dtype float32:   everything float32 (TF32 stays off, PyTorch's default: true float32 matmuls)
  --dtype bfloat16:  the frozen base stored in bfloat16, LoRA weights float32 (peft's default
                     upcast), forward under autocast to bfloat16: the usual PEFT bf16 recipe
Prints one JSON line: tokens_per_s, step_ms (median of --steps after --warmup), peak_gpu_mib
(torch.cuda.max_memory_allocated), the versions, and the shape it ran.
"""
import argparse
import contextlib
import json
import time

import torch
import torch.nn.functional as F

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
for name, default in [("layers", 4), ("hidden", 256), ("heads", 4), ("kv-heads", 4), ("ffn", 688),
                      ("vocab", 2048), ("rank", 8), ("alpha", 16), ("batch", 4), ("seq", 128),
                      ("steps", 8), ("warmup", 2)]:
    p.add_argument("--" + name, type=int, default=default)
p.add_argument("--targets", default="q_proj,v_proj")
p.add_argument("--tie", action="store_true", help="tie the head to the embedding (SmolLM2, Llama-3.2)")
p.add_argument("--device", default="cuda", help="cuda or cpu")
p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
a = p.parse_args()

try:
    import peft
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as e:  # a clear line for run.sh's table rather than a traceback
    print(json.dumps({"peer": "peft", "error": f"transformers/peft not importable: {e}"}))
    raise SystemExit(1)

dev = torch.device(a.device)
cuda = dev.type == "cuda"
bf16 = a.dtype == "bfloat16"
torch.manual_seed(0)


def on_device():
    """Build the model's tensors on the device directly where torch allows (2.0+): a 1B model's
    CPU init and copy would take longer than the steps."""
    return dev if hasattr(dev, "__enter__") else contextlib.nullcontext()


cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn,
                  num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                  max_position_embeddings=max(2048, a.seq), rms_norm_eps=1e-6, tie_word_embeddings=a.tie,
                  use_cache=False)
with on_device():
    base = LlamaForCausalLM(cfg)
base.to(dev, dtype=torch.bfloat16 if bf16 else torch.float32)
lora = peft.LoraConfig(r=a.rank, lora_alpha=a.alpha, target_modules=a.targets.split(","), lora_dropout=0.0,
                       bias="none", task_type="CAUSAL_LM")
model = peft.get_peft_model(base, lora)
params = [q for q in model.parameters() if q.requires_grad]
# peft keeps adapters float32 over a bf16 base by default; make sure, so AdamW's state is float32.
for q in params:
    q.data = q.data.float()
opt = torch.optim.AdamW(params, lr=1e-3)
ids = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
tgt = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)

if cuda:
    torch.cuda.reset_peak_memory_stats()
times = []
for i in range(a.warmup + a.steps):
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits.float().view(-1, a.vocab), tgt.view(-1))
    loss.backward()
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    if i >= a.warmup:
        times.append(time.perf_counter() - t0)
times.sort()
med = times[len(times) // 2]
out = {"peer": f"peft-{peft.__version__}", "transformers": transformers.__version__, "torch": torch.__version__,
       "device": a.device, "dtype": a.dtype, "attn": getattr(base.config, "_attn_implementation", None),
       "tf32": bool(cuda and torch.backends.cuda.matmul.allow_tf32),
       "layers": a.layers, "hidden": a.hidden, "heads": a.heads, "kvHeads": a.kv_heads, "ffn": a.ffn,
       "vocab": a.vocab, "tieWordEmbeddings": a.tie, "batch": a.batch, "seq": a.seq, "rank": a.rank,
       "tokens_per_s": a.batch * a.seq / med, "step_ms": med * 1000,
       "trainable_params": sum(q.numel() for q in params), "lora_dtype": str(params[0].dtype).replace("torch.", ""),
       "base_dtype": str(base.get_input_embeddings().weight.dtype).replace("torch.", ""), "loss": loss.item()}
if cuda:
    out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["gpu"] = torch.cuda.get_device_name()
print(json.dumps(out))
