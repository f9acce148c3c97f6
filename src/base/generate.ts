import { readHost } from './host.js';
import type { CausalLM, TokenBatch } from './model.js';
import { Rng } from './rng.js';
import { GREEDY, sampleToken, type SamplingOptions } from './sampling.js';

export interface GenerateOptions extends Partial<SamplingOptions> {
  maxNewTokens?: number;
  seed?: number;
  /** Token ids that end a row; defaults to the config's eos ids. */
  stopIds?: number[];
  /** Reuse K/V across steps (default). false recomputes the whole prefix each step (for checks and benchmarks). */
  useCache?: boolean;
  /** Called with each row's new token as soon as it is chosen (streaming). */
  onToken?: (row: number, id: number) => void;
}

export interface GenerateResult {
  /** New tokens per row, without the prompt, stop token included when it was produced. */
  tokens: number[][];
  /** The logits that chose each new token, per row (for invariant checks); only when keepLogits. */
  logits?: Float32Array[][];
}

/**
 * Autoregressive decoding for a batch of prompts. Rows are left-padded to a common length, so
 * every row's next token sits in the last column; positions come from the mask, so padding does
 * not shift them.
 */
export async function generate(model: CausalLM, prompts: number[][], opts: GenerateOptions & { keepLogits?: boolean } = {}): Promise<GenerateResult> {
  const B = prompts.length;
  if (B === 0 || prompts.some((p) => p.length === 0)) throw new Error('generate needs at least one non-empty prompt');
  const sampling: SamplingOptions = {
    temperature: opts.temperature ?? GREEDY.temperature,
    topK: opts.topK ?? GREEDY.topK,
    topP: opts.topP ?? GREEDY.topP,
  };
  const maxNew = opts.maxNewTokens ?? 64;
  const stop = new Set(opts.stopIds ?? model.config.eosIds);
  const rng = new Rng(opts.seed ?? 0);
  const useCache = opts.useCache ?? true;
  const pad = model.config.padId ?? 0;

  const T0 = Math.max(...prompts.map((p) => p.length));
  if (T0 + maxNew > model.config.maxPositions) {
    throw new Error(`prompt (${T0}) + max new tokens (${maxNew}) exceeds the model's ${model.config.maxPositions} positions`);
  }
  const rows = prompts.map((p) => [...Array(T0 - p.length).fill(pad), ...p] as number[]);
  const masks = prompts.map((p) => [...Array(T0 - p.length).fill(0), ...Array(p.length).fill(1)] as number[]);
  const tokens: number[][] = prompts.map(() => []);
  const kept: Float32Array[][] = prompts.map(() => []);
  const done = new Array<boolean>(B).fill(false);
  const cache = useCache ? model.newCache(B) : undefined;
  // Every step routes on the prompt alone, as the cached steps do (their router read the prefill).
  const promptLens = Int32Array.from(prompts, (p) => p.length);
  try {
    let step: TokenBatch = batchOf(rows, masks, promptLens);
    for (let n = 0; n < maxNew && !done.every(Boolean); n++) {
      const last = await lastLogits(model, step, cache);
      for (let b = 0; b < B; b++) {
        const row = last.subarray(b * model.config.vocabSize, (b + 1) * model.config.vocabSize);
        const id = done[b] ? pad : sampleToken(row, sampling, rng);
        rows[b]!.push(id);
        masks[b]!.push(done[b] ? 0 : 1);
        if (done[b]) continue;
        tokens[b]!.push(id);
        if (opts.keepLogits) kept[b]!.push(row.slice());
        opts.onToken?.(b, id);
        if (stop.has(id)) done[b] = true;
      }
      step = cache ? batchOf(rows.map((r) => [r[r.length - 1]!]), masks.map((m) => [m[m.length - 1]!]), promptLens) : batchOf(rows, masks, promptLens);
    }
  } finally {
    cache?.dispose();
  }
  return opts.keepLogits ? { tokens, logits: kept } : { tokens };
}

function batchOf(rows: number[][], masks: number[][], promptLens: Int32Array): TokenBatch {
  const T = rows[0]!.length;
  return { ids: Int32Array.from(rows.flat()), attentionMask: Uint8Array.from(masks.flat()), batch: rows.length, seq: T, promptLens };
}

/**
 * Logits of the last column of every row, [B·V] on the host. lm_head runs on every column of
 * the step, not just the last: a hook on it (a prefix or sequence gate) may pool over the row.
 */
function lastLogits(model: CausalLM, batch: TokenBatch, cache?: ReturnType<CausalLM['newCache']>): Promise<Float32Array> {
  const { batch: B, seq: T } = batch;
  return readHost(() => {
    const all = model.forward(batch, { cache });
    const V = all.shape[1];
    return all.reshape([B, T, V]).slice([0, T - 1, 0], [B, 1, V]).reshape([B, V]);
  });
}
