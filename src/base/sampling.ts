import type { Rng } from './rng.js';

export interface SamplingOptions {
  /** 0 means greedy. */
  temperature: number;
  /** Keep the k most likely tokens; 0 keeps all. */
  topK: number;
  /** Nucleus: keep the smallest set whose probability reaches p; 1 keeps all. */
  topP: number;
}

export const GREEDY: SamplingOptions = { temperature: 0, topK: 0, topP: 1 };

export function argmax(xs: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i]! > xs[best]!) best = i;
  return best;
}

/** Draw the next token from one row of logits, in float64 on the host. */
export function sampleToken(logits: ArrayLike<number>, o: SamplingOptions, rng: Rng): number {
  if (o.temperature <= 0) return argmax(logits);
  let idx = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]!);
  if (o.topK > 0) idx = idx.slice(0, o.topK);
  const top = logits[idx[0]!]! / o.temperature;
  let probs = idx.map((i) => Math.exp(logits[i]! / o.temperature - top));
  let total = probs.reduce((a, b) => a + b, 0);
  if (o.topP < 1) {
    let acc = 0;
    let keep = 0;
    while (keep < probs.length && acc < o.topP * total) acc += probs[keep++]!;
    idx = idx.slice(0, keep);
    probs = probs.slice(0, keep);
    total = acc;
  }
  let r = rng.next() * total;
  for (let i = 0; i < idx.length; i++) {
    r -= probs[i]!;
    if (r <= 0) return idx[i]!;
  }
  return idx[idx.length - 1]!;
}
