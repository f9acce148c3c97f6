import * as tf from '@tensorflow/tfjs';
import type { LoraLayer } from '../adapters/lora.js';
import { matMul } from '../base/ops.js';

/** LayerNorm's ε in the gate's Norm (mole.ts), here and in its stacked form. */
export const NORM_EPS = 1e-5;

/**
 * The N frozen LoRA experts of a composition at one linear, as one low-rank product:
 * A = [s₀A₀ | … | s_{N−1}A_{N−1}] ([in, R], R = Σ rᵢ, each scale folded in) and
 * B = [B₀; …; B_{N−1}] ([R, out]). With u = x·A, expert i's output is Eᵢ = u_i·Bᵢ (u_i its rᵢ
 * columns), so a weighted sum is Σ wᵢEᵢ = (u ⊙ w·expand)·B: two products for every expert at
 * once, where one per expert took three kernels (and three gradients) each. An expert that does
 * not adapt the linear has rᵢ = 0: its output is zero.
 *
 * The MoLE gate reads Norm(E₀ ⊕ … ⊕ E_{N−1})·e (mole.ts), a LayerNorm over the [tokens, N·out]
 * concatenation, which is never built: its mean is u·rowSums/(N·out), its mean square
 * rowsum(u ⊙ u·gram)/(N·out) with gram = blockdiag(BᵢBᵢᵀ), and its projection
 * (cat − mean)·e = u·(blocks·e) − mean·colsum(e), for blocks = blockdiag(B₀, …) [R, N·out].
 *
 * Rebuilt (by StackCache) when an expert's tensors or scale change, e.g. on a hot swap.
 */
export class StackedExperts {
  private constructor(
    /** [in, R]: the scaled A's side by side. */
    readonly a: tf.Tensor2D,
    /** [R, out]: the B's stacked. */
    readonly b: tf.Tensor2D,
    /** [N, R]: row i is 1 at expert i's columns of u. */
    readonly expand: tf.Tensor2D,
    /** [R, N·out]: Bᵢ at rows of expert i and its block of columns of the concatenation. */
    readonly blocks: tf.Tensor2D,
    /** [R, 1]: row sums of B. */
    readonly rowSums: tf.Tensor2D,
    /** [R, R]: blockdiag(BᵢBᵢᵀ). */
    readonly gram: tf.Tensor2D,
    /** What it was built from: each expert's A and B data and scale (null where it does not adapt the linear). */
    private readonly source: ({ a: object; b: object; scale: number } | null)[],
  ) {}

  static build(layers: (LoraLayer | null)[], inF: number, outF: number): StackedExperts {
    const present = layers.filter((l): l is LoraLayer => l !== null);
    if (present.length === 0) throw new Error('stacked experts: no expert adapts this linear');
    const N = layers.length;
    const R = present.reduce((r, l) => r + l.rank, 0);
    const expand = new Float32Array(N * R);
    let col = 0;
    layers.forEach((l, i) => {
      for (let j = 0; j < (l?.rank ?? 0); j++) expand[i * R + col++] = 1;
    });
    const tensors = tf.tidy(() => {
      const a = tf.concat(present.map((l) => tf.mul(l.aT, l.scale)), 1) as tf.Tensor2D;
      const b = tf.concat(present.map((l) => l.bT), 0) as tf.Tensor2D;
      const blocks = tf.concat(layers.flatMap((l, i) => (l ? [tf.pad(l.bT, [[0, 0], [i * outF, (N - 1 - i) * outF]])] : [])), 0) as tf.Tensor2D;
      return [a, b, tf.tensor2d(expand, [N, R]), blocks, tf.sum(b, 1, true), tf.matMul(blocks, blocks, false, true)] as tf.Tensor2D[];
    });
    for (const t of tensors) tf.keep(t);
    const [a, b, ex, blocks, rowSums, gram] = tensors as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D, tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
    if (a.shape[0] !== inF) throw new Error(`stacked experts: A has ${a.shape[0]} rows for a linear of ${inF} inputs`);
    return new StackedExperts(a, b, ex, blocks, rowSums, gram, layers.map(sourceOf));
  }

  /** Built from exactly these layers' current tensors and scales. */
  matches(layers: (LoraLayer | null)[]): boolean {
    return layers.length === this.source.length && layers.every((l, i) => {
      const s = this.source[i];
      return l === null ? s === null : s !== null && s.a === l.aT.dataId && s.b === l.bT.dataId && s.scale === l.scale;
    });
  }

  /** Width of the concatenation E₀ ⊕ … ⊕ E_{N−1}: N·out. */
  get catWidth(): number {
    return this.blocks.shape[1];
  }

  /** u = x·A, [rows, R]: every expert's rank-space input. */
  project(x: tf.Tensor2D): tf.Tensor2D {
    return matMul(x, this.a);
  }

  /** Σᵢ wᵢEᵢ from u, for weights w [rows or 1, N]. */
  mix(u: tf.Tensor2D, w: tf.Tensor2D): tf.Tensor2D {
    return matMul(u.mul(matMul(w, this.expand)) as tf.Tensor2D, this.b);
  }

  /** Norm(E₀ ⊕ … ⊕ E_{N−1})·e from u, [rows, k] for e [N·out, k] (LayerNorm without affine). */
  normProject(u: tf.Tensor2D, e: tf.Tensor2D): tf.Tensor2D {
    const width = this.catWidth;
    const mean = matMul(u, this.rowSums).div(width);
    const meanSquare = u.mul(matMul(u, this.gram)).sum(1, true).div(width);
    // E[c²] − E[c]² can round below 0 when every output is (nearly) constant; the true variance is ≥ 0.
    const rstd = meanSquare.sub(mean.square()).maximum(0).add(NORM_EPS).rsqrt();
    const projected = matMul(u, matMul(this.blocks, e)).sub(mean.mul(e.sum(0, true)));
    return projected.mul(rstd) as tf.Tensor2D;
  }

  dispose(): void {
    tf.dispose([this.a, this.b, this.expand, this.blocks, this.rowSums, this.gram]);
  }
}

function sourceOf(l: LoraLayer | null): { a: object; b: object; scale: number } | null {
  return l && { a: l.aT.dataId, b: l.bT.dataId, scale: l.scale };
}

/** StackedExperts per linear, rebuilt when the experts there change. */
export class StackCache {
  private readonly byModule = new Map<string, StackedExperts>();

  get(module: string, layers: (LoraLayer | null)[], inF: number, outF: number): StackedExperts {
    const cached = this.byModule.get(module);
    if (cached?.matches(layers)) return cached;
    cached?.dispose();
    const fresh = StackedExperts.build(layers, inF, outF);
    this.byModule.set(module, fresh);
    return fresh;
  }

  clear(): void {
    for (const s of this.byModule.values()) s.dispose();
    this.byModule.clear();
  }
}
