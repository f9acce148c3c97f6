import type * as tf from '@tensorflow/tfjs';
import type { LayerCache } from './attention.js';

/**
 * The decoding state of a batch: per-layer K/V tensors plus, on the JS side, which cached keys
 * are real tokens and the next position of each row (rows may hold prompts of different lengths).
 */
export class KVCache {
  readonly layers: LayerCache[];
  length = 0;
  /** Tensors that live as long as the decoding does (a router's choice made at the prefill); freed by dispose. */
  readonly owned: tf.Tensor[] = [];
  private keyMask = new Uint8Array(0);
  private readonly nextPos: Int32Array;

  constructor(readonly batch: number, layers: number) {
    this.layers = Array.from({ length: layers }, () => ({ k: null, v: null }));
    this.nextPos = new Int32Array(batch);
  }

  /** Record T new tokens (mask [B·T], 1 = real) and return the mask over all keys and the new positions. */
  extend(mask: Uint8Array, T: number): { keyMask: Uint8Array; positions: Int32Array } {
    const B = this.batch;
    const S = this.length + T;
    const keyMask = new Uint8Array(B * S);
    for (let b = 0; b < B; b++) {
      keyMask.set(this.keyMask.subarray(b * this.length, (b + 1) * this.length), b * S);
      keyMask.set(mask.subarray(b * T, (b + 1) * T), b * S + this.length);
    }
    const positions = positionsFromMask(mask, B, T, this.nextPos);
    this.keyMask = keyMask;
    this.length = S;
    return { keyMask, positions };
  }

  dispose(): void {
    for (const l of this.layers) {
      l.k?.dispose();
      l.v?.dispose();
      l.k = l.v = null;
    }
    for (const t of this.owned.splice(0)) t.dispose();
  }
}

/**
 * Positions count real tokens only, as Hugging Face derives position_ids from the attention
 * mask, so a left-padded row sees the same positions as the row alone. Padding gets the
 * position of the last real token (any in-range value works: padding is never attended to).
 * `next` holds each row's next position and is advanced in place.
 */
export function positionsFromMask(mask: Uint8Array, B: number, T: number, next: Int32Array): Int32Array {
  const pos = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    let p = next[b];
    for (let t = 0; t < T; t++) {
      const real = mask[b * T + t] !== 0;
      pos[b * T + t] = real ? p : Math.max(p - 1, 0);
      if (real) p++;
    }
    next[b] = p;
  }
  return pos;
}
