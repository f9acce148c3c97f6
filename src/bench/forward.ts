import { backendReport, type BackendReport } from '../base/backend.js';
import { parseConfig } from '../base/config.js';
import { generate } from '../base/generate.js';
import { readHost } from '../base/host.js';
import { baseConfigJson, RandomWeights } from '../base/init.js';
import { buildParts, planTraining, type TrainingRun } from '../base/load.js';
import { CausalLM } from '../base/model.js';
import { Rng } from '../base/rng.js';

/** The sizes of a random Llama-style model built for a benchmark. */
export interface ModelShape {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
  /** The head reuses the embedding matrix (SmolLM2, Llama-3.2); untied when absent. */
  tieWordEmbeddings?: boolean;
}

export interface BenchForwardOptions extends ModelShape {
  batch: number;
  seq: number;
  newTokens: number;
  /** Prefill repetitions timed after one warm-up. */
  repeats?: number;
}

export interface BenchForwardResult {
  prefill_tokens_per_s: number;
  prefill_ms: number;
  decode_cached_tokens_per_s: number;
  decode_recompute_tokens_per_s: number;
  cache_speedup: number;
}

/**
 * A random Llama-style model built in memory with the given sizes (benchmarks need no files).
 * For a training run, its memory is planned first, as loadBase does: refused before any weight
 * is made if it cannot fit the wasm heap, and its weights packed per product if only that fits.
 */
export function randomLlama(o: ModelShape & { maxPositions: number }, training?: TrainingRun): CausalLM {
  const cfg = parseConfig(baseConfigJson({ arch: 'llama', out: '', ...o }), 'bench options');
  const packing = training ? planTraining(cfg, training, `training this shape at batch ${training.batch} × seq ${training.seq}`) : 'cached';
  const model = new CausalLM(cfg, buildParts(cfg, new RandomWeights(new Rng(0), cfg.layers)));
  for (const l of model.linears()) l.packing = packing;
  return model;
}

/** Each run timed to the read of its result, so GPU work counts until it is done. */
export async function benchForward(o: BenchForwardOptions): Promise<BenchForwardResult & BackendReport> {
  const model = randomLlama({ ...o, maxPositions: Math.max(o.seq, o.newTokens + 8) });
  try {
    const rng = new Rng(1);
    const ids = Int32Array.from({ length: o.batch * o.seq }, () => rng.int(o.vocab));
    const prefill = async (): Promise<void> => void (await readHost(() => model.forward({ ids, batch: o.batch, seq: o.seq })));
    await prefill();
    const times: number[] = [];
    for (let i = 0; i < (o.repeats ?? 3); i++) times.push(await timed(prefill));
    const prefillMs = median(times);

    // Decoding: one row, a short prompt, greedy, never stopping early.
    const prompt = [Array.from({ length: 8 }, () => rng.int(o.vocab))];
    const decode = (useCache: boolean): Promise<number> =>
      timed(async () => void (await generate(model, prompt, { maxNewTokens: o.newTokens, useCache, stopIds: [] })));
    const cached = await decode(true);
    const recompute = await decode(false);
    return {
      prefill_tokens_per_s: (o.batch * o.seq) / (prefillMs / 1000),
      prefill_ms: prefillMs,
      decode_cached_tokens_per_s: o.newTokens / (cached / 1000),
      decode_recompute_tokens_per_s: o.newTokens / (recompute / 1000),
      cache_speedup: recompute / cached,
      ...backendReport(),
    };
  } finally {
    model.dispose();
  }
}

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}
