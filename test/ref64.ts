import { openSafetensors } from '../src/base/safetensors.js';

/**
 * A float64 forward of a Llama-family model (llama, mistral, qwen2, mixtral) written on the host
 * from REFERENCE.md §1 and §4, independent of molora's tfjs code: it reads the tensors straight
 * from .safetensors files and knows nothing of molora's modules. Checked against the PyTorch
 * float64 references in test/fixtures/models (ref64.test.ts), then used where no PyTorch
 * reference can exist: folders molora writes itself (upcycled MoE, MixLoRA adapters).
 */
export interface Tensor64 {
  shape: number[];
  data: Float64Array;
}
export type Weights64 = Map<string, Tensor64>;

export function readTensors64(path: string): Weights64 {
  const f = openSafetensors(path);
  const out: Weights64 = new Map();
  for (const name of f.tensors.keys()) {
    const t = f.read(name);
    out.set(name, { shape: t.shape, data: Float64Array.from(t.data) });
  }
  return out;
}

/** x [n, in] times Wᵀ for W [out, in] (nn.Linear's y = x Wᵀ). */
export function linear(x: Float64Array, n: number, w: Tensor64): Float64Array {
  const [outF, inF] = w.shape as [number, number];
  if (x.length !== n * inF) throw new Error(`linear: x has ${x.length} values, expected ${n}×${inF}`);
  const y = new Float64Array(n * outF);
  for (let r = 0; r < n; r++) {
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let k = 0; k < inF; k++) s += x[r * inF + k]! * w.data[o * inF + k]!;
      y[r * outF + o] = s;
    }
  }
  return y;
}

export const silu = (v: number): number => v / (1 + Math.exp(-v));

/** p = softmax(z); the top k by p (ties to the lower index), their weights renormalised; margin = z_k − z_{k+1} (logits). */
export function topK(z: ArrayLike<number>, k: number): { experts: number[]; weights: number[]; margin: number } {
  const m = Math.max(...Array.from(z));
  const e = Array.from(z, (v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  const p = e.map((v) => v / s);
  const order = p.map((_, i) => i).sort((a, b) => p[b]! - p[a]! || a - b);
  const experts = order.slice(0, k);
  const norm = experts.reduce((a, i) => a + p[i]!, 0);
  const margin = k < p.length ? z[order[k - 1]!]! - z[order[k]!]! : Infinity;
  return { experts, weights: experts.map((i) => p[i]! / norm), margin };
}

export interface Ref64Options {
  /** Replace the FFN of `layer` on its normed input h [n, D]; default: dense SwiGLU or Mixtral MoE from the weights. */
  ffn?: (layer: number, h: Float64Array, n: number) => Float64Array;
  /** An extra term added to the linear `name` (e.g. a LoRA delta), or null. */
  delta?: (name: string, x: Float64Array, n: number) => Float64Array | null;
  /** Collects the smallest top-k logit margin z_k − z_{k+1} of any routed real token (Mixtral MoE layers). */
  stats?: { minMargin: number };
}

/**
 * log_softmax over the vocab per real token, null on padding, for rows `ids` with `mask`.
 * Positions are cumsum(mask) − 1; keys are visible when real, not in the future and, with a
 * sliding window W (mistral/mixtral `sliding_window`), when key slot > query slot − W.
 */
export function logprobs64(W: Weights64, cfg: Record<string, unknown>, ids: number[][], mask: number[][], o: Ref64Options = {}): (Float64Array | null)[][] {
  const get = (k: string): Tensor64 => {
    const t = W.get(k);
    if (!t) throw new Error(`ref64: missing tensor ${k}`);
    return t;
  };
  const num = (k: string, d?: number): number => {
    const v = cfg[k] ?? d;
    if (typeof v !== 'number') throw new Error(`ref64: config ${k} missing`);
    return v;
  };
  const type = cfg.model_type as string;
  if (!['llama', 'mistral', 'qwen2', 'mixtral'].includes(type)) throw new Error(`ref64: model_type ${type}`);
  if (type === 'qwen2' && cfg.use_sliding_window === true) throw new Error('ref64: qwen2 sliding window (max_window_layers) not modelled');
  const D = num('hidden_size');
  const H = num('num_attention_heads');
  const KV = num('num_key_value_heads', H);
  const hd = num('head_dim', D / H);
  const L = num('num_hidden_layers');
  const eps = num('rms_norm_eps');
  const theta = num('rope_theta', 10000);
  const window = (type === 'mistral' || type === 'mixtral') && typeof cfg.sliding_window === 'number' ? cfg.sliding_window : null;
  const V = num('vocab_size');
  const B = ids.length;
  const T = ids[0]!.length;
  const n = B * T;
  const lin = (name: string, x: Float64Array, rows: number): Float64Array => {
    const y = linear(x, rows, get(`${name}.weight`));
    const b = W.get(`${name}.bias`);
    const outF = get(`${name}.weight`).shape[0]!;
    if (b) for (let r = 0; r < rows; r++) for (let c = 0; c < outF; c++) y[r * outF + c]! += b.data[c]!;
    const d = o.delta?.(name, x, rows);
    if (d) for (let i = 0; i < y.length; i++) y[i]! += d[i]!;
    return y;
  };
  const rms = (x: Float64Array, w: Tensor64): Float64Array => {
    const y = new Float64Array(x.length);
    for (let r = 0; r < n; r++) {
      let ss = 0;
      for (let c = 0; c < D; c++) ss += x[r * D + c]! ** 2;
      const inv = 1 / Math.sqrt(ss / D + eps);
      for (let c = 0; c < D; c++) y[r * D + c] = x[r * D + c]! * inv * w.data[c]!;
    }
    return y;
  };
  const pos = mask.map((row) => {
    let c = -1;
    return row.map((m) => (m ? ++c : 1));
  });
  const rope = (x: Float64Array, heads: number): void => {
    const half = hd / 2;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < T; t++) {
        const p = pos[b]![t]!;
        for (let h = 0; h < heads; h++) {
          const at = (b * T + t) * heads * hd + h * hd;
          for (let j = 0; j < half; j++) {
            const a = p * theta ** (-(2 * j) / hd);
            const [c, s] = [Math.cos(a), Math.sin(a)];
            const x1 = x[at + j]!;
            const x2 = x[at + j + half]!;
            x[at + j] = x1 * c - x2 * s;
            x[at + j + half] = x2 * c + x1 * s;
          }
        }
      }
    }
  };
  const x = new Float64Array(n * D);
  const emb = get('model.embed_tokens.weight');
  ids.flat().forEach((id, r) => x.set(emb.data.subarray(id * D, id * D + D), r * D));
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}.`;
    let h = rms(x, get(`${p}input_layernorm.weight`));
    const q = lin(`${p}self_attn.q_proj`, h, n);
    const k = lin(`${p}self_attn.k_proj`, h, n);
    const v = lin(`${p}self_attn.v_proj`, h, n);
    rope(q, H);
    rope(k, KV);
    const att = new Float64Array(n * H * hd);
    for (let b = 0; b < B; b++) {
      for (let hh = 0; hh < H; hh++) {
        const kh = Math.floor(hh / (H / KV));
        for (let tq = 0; tq < T; tq++) {
          const s: number[] = [];
          for (let tk = 0; tk < T; tk++) {
            const ok = tk <= tq && mask[b]![tk] === 1 && (window === null || tk > tq - window);
            if (!ok) {
              s.push(-Infinity);
              continue;
            }
            let d = 0;
            for (let j = 0; j < hd; j++) d += q[((b * T + tq) * H + hh) * hd + j]! * k[((b * T + tk) * KV + kh) * hd + j]!;
            s.push(d / Math.sqrt(hd));
          }
          const m = Math.max(...s);
          if (m === -Infinity) continue; // a padding query: never read
          const e = s.map((z) => Math.exp(z - m));
          const sum = e.reduce((a, c) => a + c, 0);
          for (let tk = 0; tk < T; tk++) {
            if (e[tk] === 0) continue;
            for (let j = 0; j < hd; j++) att[((b * T + tq) * H + hh) * hd + j]! += (e[tk]! / sum) * v[((b * T + tk) * KV + kh) * hd + j]!;
          }
        }
      }
    }
    const ao = lin(`${p}self_attn.o_proj`, att, n);
    for (let j = 0; j < x.length; j++) x[j]! += ao[j]!;
    h = rms(x, get(`${p}post_attention_layernorm.weight`));
    const f = o.ffn ? o.ffn(i, h, n) : W.has(`${p}block_sparse_moe.gate.weight`) ? mixtralMoe(i, h, n) : swiglu(`${p}mlp.gate_proj`, `${p}mlp.up_proj`, `${p}mlp.down_proj`, h, n);
    for (let j = 0; j < x.length; j++) x[j]! += f[j]!;
  }
  function swiglu(g: string, u: string, d: string, h: Float64Array, rows: number): Float64Array {
    const gv = lin(g, h, rows);
    const uv = lin(u, h, rows);
    return lin(d, gv.map((a, j) => silu(a) * uv[j]!), rows);
  }
  function mixtralMoe(i: number, h: Float64Array, rows: number): Float64Array {
    const p = `model.layers.${i}.block_sparse_moe.`;
    const E = num('num_local_experts');
    const k = num('num_experts_per_tok');
    const z = linear(h, rows, get(`${p}gate.weight`));
    const out = new Float64Array(rows * D);
    for (let r = 0; r < rows; r++) {
      const t = topK(z.subarray(r * E, r * E + E), k);
      if (o.stats && mask.flat()[r]) o.stats.minMargin = Math.min(o.stats.minMargin, t.margin);
      const hr = h.subarray(r * D, r * D + D);
      t.experts.forEach((e, j) => {
        const y = swiglu(`${p}experts.${e}.w1`, `${p}experts.${e}.w3`, `${p}experts.${e}.w2`, hr, 1);
        for (let c = 0; c < D; c++) out[r * D + c]! += t.weights[j]! * y[c]!;
      });
    }
    return out;
  }
  const xf = rms(x, get('model.norm.weight'));
  const head = cfg.tie_word_embeddings === true ? emb : get('lm_head.weight');
  const logits = linear(xf, n, head);
  return ids.map((row, b) => row.map((_, t) => {
    if (!mask[b]![t]) return null;
    const z = logits.subarray((b * T + t) * V, (b * T + t + 1) * V);
    let m = -Infinity;
    for (const v of z) m = Math.max(m, v);
    let s = 0;
    for (const v of z) s += Math.exp(v - m);
    const lse = m + Math.log(s);
    return z.map((v) => v - lse);
  }));
}
