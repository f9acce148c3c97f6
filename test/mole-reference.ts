import * as tf from '@tensorflow/tfjs';
import { createLora, linearsByName, type LoraAdapter } from '../src/adapters/adapter.js';
import { DEFAULT_LORA } from '../src/adapters/config.js';
import type { ForwardContext } from '../src/base/context.js';
import type { LinearHook } from '../src/base/linear.js';
import type { CausalLM, TokenBatch } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import type { MoleGates } from '../src/gating/mole.js';

/**
 * MoLE written out from REFERENCE.md §3 in float64 on the host, as plain linear hooks, to check
 * the composition against: E_Ω = LN(⊕ Eᵢ), ε = E_Ω e (per token, or averaged over the row's real
 * tokens: all of them per sequence, those so far per prefix), G = softmax(ε/τ),
 * G' = mG / Σ mG, top-k kept and renormalised, Σ G'ᵢ Eᵢ.
 */
export interface Reference {
  experts: LoraAdapter[];
  /** null: static weights. */
  gates: MoleGates | null;
  weights?: number[];
  /** 0/1 per batch row and expert; one row applies to every row. */
  mask?: number[][];
}

/** An expert on `targets` with random A and a random non-zero B (createLora's B is 0). */
export function randomExpert(model: CausalLM, name: string, targets: string[], seed: number, r = 4): LoraAdapter {
  const rng = new Rng(seed);
  const a = createLora(model, { ...DEFAULT_LORA, rank: r, alpha: 2 * r, targets }, name, rng);
  for (const l of a.layers.values()) {
    const b = tf.tensor2d(rng.normalArray(l.bT.size, 0.5), l.bT.shape);
    l.bT.assign(b);
    b.dispose();
  }
  return a;
}

export function logits(model: CausalLM, batch: TokenBatch): Float32Array {
  const t = tf.tidy(() => model.forward(batch));
  const out = t.dataSync() as Float32Array;
  t.dispose();
  return out;
}

/** Hook the reference onto the base's linears; returns the function that removes it. */
export function installReference(model: CausalLM, ref: Reference): () => void {
  const N = ref.experts.length;
  const linears = linearsByName(model);
  const modules = model.linears().map((l) => l.name).filter((m) => ref.experts.some((e) => e.layers.has(m)));
  const blockG = new WeakMap<ForwardContext, Map<string, Float64Array>>();
  const unhooks: (() => void)[] = [];
  for (const module of modules) {
    const out = linears.get(module)!.outFeatures;
    const parts = ref.experts.map((e) => {
      const l = e.layers.get(module);
      return l ? { a: host(l.aT), b: host(l.bT), r: l.rank, scale: l.scale } : null;
    });
    const gate = ref.gates?.gateFor(module) ?? null;
    const eHost = gate ? host(gate.e) : null;
    const tau = gate ? tf.tidy(() => gate.temperature().dataSync()[0]!) : 1;
    const hook: LinearHook = {
      delta: (x, ctx) => {
        const [R, inF] = x.shape;
        const T = ctx.seq;
        const xs = host(x);
        const E = parts.map((p) => (p ? expertOut(xs, R, inF, p, out) : null));
        const maskOf = (row: number): number[] => (ref.mask ? ref.mask[ref.mask.length === 1 ? 0 : row]! : Array<number>(N).fill(1));
        const w = new Float64Array(R * N);
        if (!gate) {
          for (let t = 0; t < R; t++) for (let i = 0; i < N; i++) w[t * N + i] = (ref.weights?.[i] ?? 1) * maskOf(Math.floor(t / T))[i]!;
        } else if (module === gate.input) {
          const layout = { batch: ctx.batch, seq: T, real: ctx.tokenMask.dataSync() };
          w.set(gateWeights(E, R, out, N, eHost!, tau, layout, ref.gates!.options, maskOf));
          if (gate.modules.length > 1) {
            if (!blockG.has(ctx)) blockG.set(ctx, new Map());
            blockG.get(ctx)!.set(gate.name, w);
          }
        } else {
          w.set(blockG.get(ctx)!.get(gate.name)!);
        }
        const y = new Float64Array(R * out);
        E.forEach((e, i) => {
          if (e) for (let t = 0; t < R; t++) for (let o = 0; o < out; o++) y[t * out + o] += w[t * N + i]! * e[t * out + o]!;
        });
        return tf.tensor2d(Float32Array.from(y), [R, out]);
      },
    };
    unhooks.push(linears.get(module)!.addHook(hook));
  }
  return () => {
    for (const unhook of unhooks) unhook();
  };
}

export function host(t: tf.Tensor): Float64Array {
  return Float64Array.from(t.dataSync());
}

/** scale · x A B with A [in, r], B [r, out] (the transposed layout molora keeps). */
export function expertOut(x: Float64Array, R: number, inF: number, p: { a: Float64Array; b: Float64Array; r: number; scale: number }, out: number): Float64Array {
  const xa = new Float64Array(R * p.r);
  for (let t = 0; t < R; t++) for (let k = 0; k < p.r; k++) {
    let s = 0;
    for (let i = 0; i < inF; i++) s += x[t * inF + i]! * p.a[i * p.r + k]!;
    xa[t * p.r + k] = s * p.scale;
  }
  const y = new Float64Array(R * out);
  for (let t = 0; t < R; t++) for (let o = 0; o < out; o++) {
    let s = 0;
    for (let k = 0; k < p.r; k++) s += xa[t * p.r + k]! * p.b[k * out + o]!;
    y[t * out + o] = s;
  }
  return y;
}

/** Batch layout for the host gate: rows of `seq` tokens, real[t] 1 for a real token, 0 for padding. */
export interface Layout {
  batch: number;
  seq: number;
  real: ArrayLike<number>;
}

/** G' per token [R, N]. */
export function gateWeights(
  E: (Float64Array | null)[],
  R: number,
  out: number,
  N: number,
  e: Float64Array,
  tau: number,
  layout: Layout,
  opts: Pick<MoleGates['options'], 'granularity' | 'topK'>,
  maskOf: (row: number) => number[] = () => Array<number>(N).fill(1),
): Float64Array {
  const z = gateLogits(E, R, out, N, e);
  const T = layout.seq;
  const perSeq = opts.granularity === 'sequence';
  const units = perSeq ? layout.batch : R;
  const zu = perSeq ? sequenceMeans(z, N, layout) : opts.granularity === 'prefix' ? prefixMeans(z, N, layout) : z;
  const g = new Float64Array(units * N);
  for (let u = 0; u < units; u++) {
    const row = Array.from(zu.subarray(u * N, (u + 1) * N), (v) => v / tau);
    const mx = Math.max(...row);
    const ex = row.map((v) => Math.exp(v - mx));
    const sum = ex.reduce((a, b) => a + b, 0);
    const mask = maskOf(perSeq ? u : Math.floor(u / T));
    let p = ex.map((v, i) => (mask[i]! * v) / sum);
    p = renormalise(p);
    if (opts.topK !== null && opts.topK < N) {
      const order = p.map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
      const keep = new Set(order.slice(0, opts.topK).map(([, i]) => i));
      p = renormalise(p.map((v, i) => (keep.has(i) ? v : 0)));
    }
    g.set(p, u * N);
  }
  if (!perSeq) return g;
  const w = new Float64Array(R * N);
  for (let t = 0; t < R; t++) w.set(g.subarray(Math.floor(t / T) * N, (Math.floor(t / T) + 1) * N), t * N);
  return w;
}

/** ε = LN(⊕ Eᵢ) · e per token, [R, N]. */
function gateLogits(E: (Float64Array | null)[], R: number, out: number, N: number, e: Float64Array): Float64Array {
  const W = N * out;
  const z = new Float64Array(R * N);
  for (let t = 0; t < R; t++) {
    const cat = new Float64Array(W);
    E.forEach((x, i) => x && cat.set(x.subarray(t * out, (t + 1) * out), i * out));
    const mean = cat.reduce((a, v) => a + v, 0) / W;
    const v = cat.reduce((a, c) => a + (c - mean) ** 2, 0) / W;
    for (let k = 0; k < W; k++) cat[k] = (cat[k]! - mean) / Math.sqrt(v + 1e-5);
    for (let j = 0; j < N; j++) {
      let s = 0;
      for (let k = 0; k < W; k++) s += cat[k]! * e[k * N + j]!;
      z[t * N + j] = s;
    }
  }
  return z;
}

/** [B, N]: each row's mean logits over its real tokens (0 for a row without any). */
function sequenceMeans(z: Float64Array, N: number, { batch, seq: T, real }: Layout): Float64Array {
  const zu = new Float64Array(batch * N);
  for (let b = 0; b < batch; b++) {
    let n = 0;
    for (let t = b * T; t < (b + 1) * T; t++) {
      n += real[t]!;
      for (let j = 0; j < N; j++) zu[b * N + j] += real[t]! * z[t * N + j]!;
    }
    for (let j = 0; j < N; j++) zu[b * N + j] /= Math.max(n, 1);
  }
  return zu;
}

/**
 * [R, N]: at each position, the mean logits over the row's real tokens up to and including it;
 * 0 before the row's first real token. Padding after the last real token keeps the full mean.
 */
function prefixMeans(z: Float64Array, N: number, { batch, seq: T, real }: Layout): Float64Array {
  const out = new Float64Array(batch * T * N);
  for (let b = 0; b < batch; b++) {
    const sum = new Float64Array(N);
    let n = 0;
    for (let t = b * T; t < (b + 1) * T; t++) {
      if (real[t]) {
        n++;
        for (let j = 0; j < N; j++) sum[j] += z[t * N + j]!;
      }
      if (n > 0) for (let j = 0; j < N; j++) out[t * N + j] = sum[j]! / n;
    }
  }
  return out;
}

function renormalise(p: number[]): number[] {
  const s = p.reduce((a, b) => a + b, 0);
  return p.map((v) => (s > 0 ? v / s : 0));
}
