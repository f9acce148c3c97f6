import * as tf from '@tensorflow/tfjs';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { generate } from '../src/base/generate.js';
import { loadBase } from '../src/base/load.js';
import type { CausalLM, TokenBatch } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import { MoleComposition } from '../src/gating/composition.js';
import { createRouter, promptFeatures, routeWeights, type PromptRouter } from '../src/gating/prompt-router.js';
import { loadRouting, saveRouting } from '../src/gating/router-io.js';
import { ExpertLossCache, expertLosses, routerLoss, taskExperts } from '../src/gating/router-train.js';
import type { Batch } from '../src/data/index.js';
import { toLmBatch } from '../src/train/lm.js';
import { MODEL_FIXTURES, maxAbsDiff, tempDir } from './helpers.js';
import { logits, randomExpert } from './mole-reference.js';

let model: CausalLM;
const tmp = tempDir();
beforeAll(async () => {
  await initBackend();
  model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'));
});
afterAll(() => tmp.cleanup());

const NAMES = ['math', 'code', 'law'];
const TARGETS = [['q_proj', 'v_proj'], ['v_proj', 'down_proj'], ['q_proj', 'up_proj', 'down_proj']];
const live: MoleComposition[] = [];
afterEach(() => {
  while (live.length) live.pop()!.dispose();
});

/** Three random experts and a router with large random weights (so rows route differently). */
function routed(seed = 1): { comp: MoleComposition; router: PromptRouter } {
  const comp = new MoleComposition(model);
  NAMES.forEach((name, i) => comp.addExpert(name, randomExpert(model, name, TARGETS[i]!, seed * 10 + i)));
  const router = createRouter(NAMES, model.config.hidden, {}, new Rng(seed));
  router.weight.assign(tf.randomNormal(router.weight.shape, 0, 1, 'float32', seed));
  comp.useRouter(router);
  live.push(comp);
  return { comp, router };
}

// Row 0 is left-padded by two tokens, row 1 right-padded by one; row 2 is full.
const BATCH: TokenBatch = {
  ids: Int32Array.from([0, 0, 5, 17, 33, 8, 12, 40, 3, 77, 61, 0, 9, 22, 31, 4, 55, 70]),
  attentionMask: Uint8Array.from([0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1]),
  batch: 3,
  seq: 6,
};

function row(batch: TokenBatch, b: number): TokenBatch {
  const T = batch.seq;
  const r: TokenBatch = { ids: batch.ids.slice(b * T, (b + 1) * T), attentionMask: batch.attentionMask!.slice(b * T, (b + 1) * T), batch: 1, seq: T };
  return batch.promptLens ? { ...r, promptLens: batch.promptLens.slice(b, b + 1) } : r;
}

/** The router's feature and logits written out in float64 from the embeddings and the base's final hidden states. */
function referenceLogits(router: PromptRouter, batch: TokenBatch): number[][] {
  const { batch: B, seq: T } = batch;
  const D = model.config.hidden;
  const h = tf.tidy(() => model.hidden(batch, { plain: true }).h.dataSync());
  // Every row of the table [V, D] as the model looks it up (a tied table is held as the head's [D, V]).
  const emb = tf.tidy(() => model.parts.embed.gather(tf.range(0, model.parts.embed.rows, 1, 'int32') as tf.Tensor1D).dataSync());
  const W = router.weight.dataSync();
  const bias = router.bias.dataSync();
  const N = NAMES.length;
  const ln = (v: number[]): number[] => {
    const m = v.reduce((a, x) => a + x, 0) / v.length;
    const s = v.reduce((a, x) => a + (x - m) ** 2, 0) / v.length;
    return v.map((x) => (x - m) / Math.sqrt(s + 1e-5));
  };
  const mean = (rows: number[][]): number[] => rows[0]!.map((_, d) => rows.reduce((a, r) => a + r[d]!, 0) / rows.length);
  return Array.from({ length: B }, (_, b) => {
    const real = Array.from({ length: T }, (_, t) => t).filter((t) => batch.attentionMask![b * T + t]);
    const prompt = real.slice(0, batch.promptLens?.[b] ?? real.length);
    const hidden = (t: number): number[] => Array.from(h.subarray((b * T + t) * D, (b * T + t + 1) * D));
    const embedding = (t: number): number[] => {
      const id = batch.ids[b * T + t]!;
      return Array.from(emb.subarray(id * D, (id + 1) * D));
    };
    const f = [...ln(mean(prompt.map(embedding))), ...ln(mean(prompt.map(hidden))), ...ln(hidden(prompt.at(-1)!))];
    return Array.from({ length: N }, (_, i) => f.reduce((a, x, k) => a + x * W[k * N + i]!, bias[i]!));
  });
}

describe('prompt router', () => {
  it('scores match a float64 reference on left-, right- and un-padded rows, with and without prompt lengths', () => {
    const { router } = routed();
    for (const batch of [BATCH, { ...BATCH, promptLens: Int32Array.from([2, 3, 6]) }]) {
      const got = tf.tidy(() => router.logits(promptFeatures(model, batch)).arraySync());
      expect(maxAbsDiff(got.flat(), referenceLogits(router, batch).flat())).toBeLessThan(1e-4);
    }
    // Prompt lengths change what is read (a wrong pooling would not).
    const a = tf.tidy(() => promptFeatures(model, BATCH).dataSync());
    const b = tf.tidy(() => promptFeatures(model, { ...BATCH, promptLens: Int32Array.from([2, 3, 6]) }).dataSync());
    expect(maxAbsDiff(a.subarray(0, 96), b.subarray(0, 96))).toBeGreaterThan(1e-2);
  });

  it('each routed row equals its chosen expert alone, at full strength', async () => {
    const { comp } = routed();
    const all = logits(model, BATCH);
    const chosen = (await comp.lastRouting())!.weights.map((w) => w.indexOf(1));
    expect(new Set(chosen).size).toBeGreaterThan(1);
    const V = model.config.vocabSize;
    const T = BATCH.seq;
    chosen.forEach((e, b) => {
      comp.mask([NAMES[e]!]);
      const alone = logits(model, row(BATCH, b));
      const mask = BATCH.attentionMask!.slice(b * T, (b + 1) * T);
      for (let t = 0; t < T; t++) {
        if (!mask[t]) continue;
        expect(maxAbsDiff(all.subarray((b * T + t) * V, (b * T + t + 1) * V), alone.subarray(t * V, (t + 1) * V))).toBeLessThan(1e-5);
      }
    });
  });

  it('a padded row equals the row alone', async () => {
    const { comp } = routed(2);
    const all = logits(model, BATCH);
    const V = model.config.vocabSize;
    const T = BATCH.seq;
    for (let b = 0; b < BATCH.batch; b++) {
      const alone = logits(model, row(BATCH, b));
      for (let t = 0; t < T; t++) if (BATCH.attentionMask![b * T + t]) expect(maxAbsDiff(all.subarray((b * T + t) * V, (b * T + t + 1) * V), alone.subarray(t * V, (t + 1) * V))).toBeLessThan(1e-5);
    }
    expect((await comp.lastRouting())!.weights).toHaveLength(1);
  });

  it('KV-cache decoding equals full recomputation, and the route is read from the prompt alone', async () => {
    routed(3);
    const prompts = [[5, 17, 33, 8], [12, 40, 3], [9, 22, 31, 4, 55]];
    const cached = await generate(model, prompts, { maxNewTokens: 6, keepLogits: true });
    const full = await generate(model, prompts, { maxNewTokens: 6, keepLogits: true, useCache: false });
    expect(cached.tokens).toEqual(full.tokens);
    cached.logits!.forEach((rows, b) => rows.forEach((l, k) => expect(maxAbsDiff(l, full.logits![b]![k]!)).toBeLessThan(1e-4)));
  });

  it('masks: the best allowed expert is chosen; masking every expert is refused; tensors stay flat', async () => {
    const { comp } = routed(4);
    logits(model, BATCH);
    const { probs, weights } = (await comp.lastRouting())!;
    const first = weights[0]!.indexOf(1);
    comp.mask(NAMES.filter((_, i) => i !== first));
    logits(model, BATCH);
    const second = probs[0]!.map((p, i) => (i === first ? -1 : p));
    expect((await comp.lastRouting())!.weights[0]!.indexOf(1)).toBe(second.indexOf(Math.max(...second)));
    // The base alone is detach(); an empty mask would be it in disguise.
    expect(() => comp.mask([])).toThrow(/leaves none of the experts/);
    comp.mask(null);
    // Each routing is kept for the pass (and lastRouting) until the next replaces it, or, under
    // the KV cache, until the cache goes: the count after a pass and a decoding stays the same.
    const counts: number[] = [];
    for (let i = 0; i < 4; i++) {
      logits(model, BATCH);
      await generate(model, [[5, 17, 33]], { maxNewTokens: 3 });
      counts.push(tf.memory().numTensors);
    }
    expect(new Set(counts).size).toBe(1);
  });

  it('routeWeights keeps the top-k allowed experts, renormalised', async () => {
    const p = tf.tensor2d([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]);
    const route = (allowed: number[][] | null, k: number) => tf.tidy(() => routeWeights(p, allowed, k)).array();
    expect(await route(null, 1)).toEqual([[1, 0, 0], [0, 1, 0]]);
    const two = await route([[0, 1, 1]], 2);
    expect(two[0]![1]).toBeCloseTo(0.6, 6);
    expect(two[0]![2]).toBeCloseTo(0.4, 6);
    expect(two[1]![0]).toBe(0);
    expect(await route([[0, 0, 0], [1, 0, 0]], 1)).toEqual([[0, 0, 0], [1, 0, 0]]);
    // More experts asked for than a row allows: only the allowed ones, renormalised over them.
    expect(await route([[0, 1, 0]], 2)).toEqual([[0, 1, 0], [0, 1, 0]]);
    // Allowed experts whose probabilities are all 0 share the row equally.
    const zero = tf.tensor2d([[1, 0, 0]]);
    expect(await tf.tidy(() => routeWeights(zero, [[0, 1, 1]], 2)).array()).toEqual([[0, 0.5, 0.5]]);
    tf.dispose([p, zero]);
  });

  it('a saved router loads back with the same scores, in any expert order; a changed expert is refused', async () => {
    const { comp, router } = routed(5);
    router.standardise({ mean: Float32Array.from({ length: 96 }, (_, i) => Math.sin(i)), invStd: Float32Array.from({ length: 96 }, (_, i) => 1 + (i % 5)) });
    const want = await router.probabilities(model, BATCH);
    const dir = join(tmp.dir, 'router');
    await saveRouting(comp, dir);
    // The same experts in another order load the router, its columns permuted to that order.
    comp.detach();
    const reordered = new MoleComposition(model);
    live.push(reordered);
    [2, 0, 1].forEach((i) => reordered.addExpert(NAMES[i]!, randomExpert(model, NAMES[i]!, TARGETS[i]!, 50 + i)));
    await loadRouting(reordered, dir);
    // Other tensors under the same names are refused.
    const changed = new MoleComposition(model);
    live.push(changed);
    NAMES.forEach((name, i) => changed.addExpert(name, randomExpert(model, name, TARGETS[i]!, 90 + i)));
    await expect(loadRouting(changed, dir)).rejects.toThrow(/expert 'math' changed: its tensors differ/);
    changed.detach();
    const got = await reordered.router!.probabilities(model, BATCH);
    expect(maxAbsDiff(got.flat(), want.flatMap((p) => [p[2]!, p[0]!, p[1]!]))).toBeLessThan(1e-5);
    writeFileSync(join(dir, 'gate_config.json'), JSON.stringify({ format: 'molora.prompt_router', version: 1, experts: [], top_k: 1, feature: 'x', hidden_size: 32 }));
    await expect(loadRouting(reordered, dir)).rejects.toThrow(/router .*: version|feature|experts/);
  });
});

describe('routing losses', () => {
  /** A teacher-forced batch over BATCH: the last two real tokens of each row are the completion. */
  function batch(): Batch {
    const { batch: B, seq: T } = BATCH;
    const lossMask = new Float32Array(B * T);
    const promptLens = new Int32Array(B);
    for (let b = 0; b < B; b++) {
      const real = Array.from({ length: T }, (_, t) => t).filter((t) => BATCH.attentionMask![b * T + t]);
      promptLens[b] = real.length - 2;
      lossMask[b * T + real.at(-3)!] = 1;
      lossMask[b * T + real.at(-2)!] = 1;
    }
    return {
      ids: BATCH.ids,
      targets: Int32Array.from(BATCH.ids, (_, i) => BATCH.ids[i + 1] ?? 0),
      lossMask,
      attentionMask: Float32Array.from(BATCH.attentionMask!),
      taskIds: Int32Array.from([0, 2, 1]),
      promptLens,
      seqs: Uint32Array.from({ length: B }, (_, i) => i),
      batch: B,
      seq: T,
    };
  }

  /** The loss in float64 from the (constant) features, as a function of W and b. */
  function hostLoss(f: Float32Array, W: Float64Array, bias: Float64Array, kind: 'labels' | 'lm', labels: number[], nll: { sums: Float32Array; tokens: Float32Array }): number {
    const N = NAMES.length;
    const F = f.length / labels.length;
    let total = 0;
    labels.forEach((label, b) => {
      const z = Array.from({ length: N }, (_, i) => bias[i]! + Array.from({ length: F }, (_, k) => f[b * F + k]! * W[k * N + i]!).reduce((a, x) => a + x, 0));
      const m = Math.max(...z);
      const lse = m + Math.log(z.reduce((a, x) => a + Math.exp(x - m), 0));
      if (kind === 'labels') total += (lse - z[label]!) / labels.length;
      else {
        const joint = z.map((x, i) => x - lse - nll.sums[b * N + i]!);
        const jm = Math.max(...joint);
        total -= (jm + Math.log(joint.reduce((a, x) => a + Math.exp(x - jm), 0))) / nll.tokens[b]! / labels.length;
      }
    });
    return total;
  }

  it.each(['labels', 'lm'] as const)('%s: the loss and its gradients match float64 central differences', async (kind) => {
    const comp = new MoleComposition(model);
    live.push(comp);
    NAMES.forEach((name, i) => comp.addExpert(name, randomExpert(model, name, TARGETS[i]!, 70 + i)));
    const router = createRouter(NAMES, model.config.hidden, {}, new Rng(7));
    router.weight.assign(tf.randomNormal(router.weight.shape, 0, 0.3, 'float32', 7));
    try {
      const b = batch();
      const labels = Array.from(b.taskIds);
      const f = tf.tidy(() => promptFeatures(model, toLmBatch(b)).dataSync() as Float32Array);
      const nll = await expertLosses(comp, toLmBatch(b));
      expect(new Set(Array.from(nll.sums).map((x) => x.toFixed(3))).size).toBeGreaterThan(3);
      const cache = new ExpertLossCache();
      await cache.fill(comp, b);
      const lossOf = (): tf.Scalar => routerLoss(comp, router, b, Int32Array.from([0, 1, 2]), kind, cache);
      const { value, grads } = tf.variableGrads(lossOf, [router.weight, router.bias]);
      const W = Float64Array.from(router.weight.dataSync());
      const bias = Float64Array.from(router.bias.dataSync());
      expect(Math.abs(value.dataSync()[0]! - hostLoss(f, W, bias, kind, labels, nll))).toBeLessThan(1e-5);
      const h = 1e-4;
      const check = (x: Float64Array, g: Float32Array, name: string): void => {
        const scale = Math.max(...Array.from(g, Math.abs));
        expect(scale).toBeGreaterThan(1e-4);
        for (let i = 0; i < x.length; i++) {
          const keep = x[i]!;
          x[i] = keep + h;
          const up = hostLoss(f, W, bias, kind, labels, nll);
          x[i] = keep - h;
          const down = hostLoss(f, W, bias, kind, labels, nll);
          x[i] = keep;
          const fd = (up - down) / (2 * h);
          expect(Math.abs(fd - g[i]!), `${name}[${i}]: fd ${fd}, grad ${g[i]}`).toBeLessThan(1e-3 * scale + 1e-3 * Math.abs(fd));
        }
      };
      check(W, grads[router.weight.name]!.dataSync() as Float32Array, 'W');
      check(bias, grads[router.bias.name]!.dataSync() as Float32Array, 'b');
      value.dispose();
      for (const g of Object.values(grads)) g.dispose();
    } finally {
      router.dispose();
    }
  });

  it("the expert-loss cache returns each sequence's losses as computed, without recomputing them", async () => {
    const comp = new MoleComposition(model);
    live.push(comp);
    NAMES.forEach((name, i) => comp.addExpert(name, randomExpert(model, name, TARGETS[i]!, 80 + i)));
    const b = batch();
    const cache = new ExpertLossCache();
    const direct = await expertLosses(comp, toLmBatch(b));
    expect(() => cache.get(b, NAMES.length)).toThrow(/expert losses of sequence 0 were not computed: fill the cache before the pass/);
    await cache.fill(comp, b);
    expect(maxAbsDiff(cache.get(b, NAMES.length).sums, direct.sums)).toBe(0);
    const replacement = randomExpert(model, 'math', TARGETS[0]!, 99);
    comp.swapExpert('math', replacement);
    replacement.dispose();
    expect(maxAbsDiff((await expertLosses(comp, toLmBatch(b))).sums, direct.sums)).toBeGreaterThan(1e-3);
    // Rows in another order: same sequences, so the cached values, permuted.
    const swapped: Batch = { ...b, seqs: Uint32Array.from([2, 0, 1]) };
    await cache.fill(comp, swapped);
    const got = cache.get(swapped, NAMES.length);
    expect(Array.from(got.sums.subarray(0, 3))).toEqual(Array.from(direct.sums.subarray(6, 9)));
    expect(Array.from(got.tokens)).toEqual([direct.tokens[2], direct.tokens[0], direct.tokens[1]]);
  });

  it('labels map tasks to experts by name; unnamed tasks teach nothing', () => {
    const names = taskExperts({ taskNames: ['law', 'other', 'math'] } as never, NAMES);
    expect(Array.from(names)).toEqual([2, -1, 0]);
  });
});
