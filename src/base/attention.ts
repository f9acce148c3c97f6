import * as tf from '@tensorflow/tfjs';
import type { ForwardContext } from './context.js';
import type { Linear } from './linear.js';
import { bmm, bmmT, mergeHeads, splitHeads, type RopeTables } from './ops.js';
import type { Rope } from './rope.js';

/** Per-layer K/V history for incremental decoding: [B·KV, S, d] each. */
export interface LayerCache {
  k: tf.Tensor3D | null;
  v: tf.Tensor3D | null;
}

/** What every layer of one forward pass shares: RoPE tables and the additive mask. */
export interface AttentionInputs {
  rope: RopeTables | null;
  /** [B, 1, T·G, S]: 0 where query (t, g) may attend key s, a large negative elsewhere. */
  mask: tf.Tensor4D;
}

export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
}

/** q, k, v projections: three linears (Llama) or one fused c_attn split in three (GPT-2). */
export type QkvProjection = { q: Linear; k: Linear; v: Linear } | { qkv: Linear };

/**
 * Causal multi-head attention with grouped K/V heads. The G = H/KV query heads that share a K/V
 * head are stacked along the row axis, so K and V are never repeated and every product is a
 * [B·KV]-batched 2-D matMul (see ops.bmm for why that layout is the fast one on WASM).
 */
export class Attention {
  constructor(
    readonly shape: AttentionShape,
    readonly proj: QkvProjection,
    readonly o: Linear,
    readonly rope: Rope | null,
  ) {}

  linears(): Linear[] {
    return 'qkv' in this.proj ? [this.proj.qkv, this.o] : [this.proj.q, this.proj.k, this.proj.v, this.o];
  }

  forward(x: tf.Tensor2D, ctx: ForwardContext, inputs: AttentionInputs, cache?: LayerCache): tf.Tensor2D {
    const { heads: H, kvHeads: KV, headDim: d } = this.shape;
    const { batch: B, seq: T } = ctx;
    const G = H / KV;
    const [q, k, v] = this.project(x, ctx);
    const rope = this.rope ? inputs.rope : null;
    // The 1/√d score scale rides along with q's rotation.
    const qs = splitHeads(q, { batch: B, kvHeads: KV, groups: G }, rope, 1 / Math.sqrt(d));
    let ks = splitHeads(k, { batch: B, kvHeads: KV, groups: 1 }, rope);
    let vs = splitHeads(v, { batch: B, kvHeads: KV, groups: 1 }, null);
    if (cache) [ks, vs] = appendToCache(cache, ks, vs);
    const S = ks.shape[1];
    const scores = bmmT(qs, ks).reshape([B, KV, T * G, S]).add(inputs.mask);
    const probs = tf.softmax(scores).reshape([B * KV, T * G, S]) as tf.Tensor3D;
    const out = mergeHeads(bmm(probs, vs), { batch: B, kvHeads: KV, groups: G }, null);
    return this.o.forward(out, ctx);
  }

  private project(x: tf.Tensor2D, ctx: ForwardContext): tf.Tensor2D[] {
    if ('qkv' in this.proj) return tf.split(this.proj.qkv.forward(x, ctx), 3, 1);
    return [this.proj.q.forward(x, ctx), this.proj.k.forward(x, ctx), this.proj.v.forward(x, ctx)];
  }
}

/** Concatenate new K/V onto the cache; the cache keeps its tensors alive across tf.tidy scopes. */
function appendToCache(cache: LayerCache, k: tf.Tensor3D, v: tf.Tensor3D): [tf.Tensor3D, tf.Tensor3D] {
  const nk = cache.k ? tf.concat([cache.k, k], 1) : k;
  const nv = cache.v ? tf.concat([cache.v, v], 1) : v;
  cache.k?.dispose();
  cache.v?.dispose();
  cache.k = tf.keep(nk);
  cache.v = tf.keep(nv);
  return [nk, nv];
}

/**
 * The additive mask for T new queries over S keys (the last T keys are the new tokens), laid out
 * [B, 1, T·G, S] to match Attention's row order. A key is visible when it is a real token, not in
 * the future, and inside the sliding window if there is one. A fully masked row (a padding query)
 * gets a finite uniform softmax rather than NaN, and its output is never used.
 */
export function buildMask(keyMask: Uint8Array, B: number, T: number, S: number, G: number, window: number | null): tf.Tensor4D {
  const NEG = -1e9;
  const m = new Float32Array(B * T * G * S).fill(NEG);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const qi = S - T + t;
      const lo = window === null ? 0 : Math.max(0, qi - window + 1);
      for (let g = 0; g < G; g++) {
        const row = ((b * T + t) * G + g) * S;
        for (let s = lo; s <= qi; s++) if (keyMask[b * S + s]) m[row + s] = 0;
      }
    }
  }
  return tf.tensor4d(m, [B, 1, T * G, S]);
}
