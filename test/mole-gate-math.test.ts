import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { LoraAdapter } from '../src/adapters/adapter.js';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import type { CausalLM, TokenBatch } from '../src/base/model.js';
import { Rng } from '../src/base/rng.js';
import { MoleComposition } from '../src/gating/composition.js';
import type { GateLevel } from '../src/gating/mole.js';
import { MODEL_FIXTURES, maxAbsDiff } from './helpers.js';
import { installReference, logits, randomExpert } from './mole-reference.js';

let model: CausalLM;
beforeAll(async () => {
  await initBackend();
  model = loadBase(join(MODEL_FIXTURES, 'llama-gqa'));
});

const V = 96;
const NAMES = ['math', 'code', 'law'];
// Overlapping targets across both blocks, so some experts give a zero delta at some gated linears.
const TARGETS = [['q_proj', 'v_proj'], ['v_proj', 'down_proj'], ['q_proj', 'up_proj', 'down_proj']];
/** A sharp, non-uniform gate, so that weights (and their gradients) matter. */
const SHARP = { eStd: 0.5, tau: 0.7 };

const live: MoleComposition[] = [];
afterEach(() => {
  while (live.length) live.pop()!.dispose();
});

function compose(targets: string[][], seed = 1): { comp: MoleComposition; experts: LoraAdapter[] } {
  const comp = new MoleComposition(model);
  const experts = NAMES.map((name, i) => randomExpert(model, name, targets[i]!, seed * 10 + i));
  for (const e of experts) comp.addExpert(e.name, e);
  live.push(comp);
  return { comp, experts };
}

function batchOf(rows: { ids: number[]; real: number[] }[]): TokenBatch {
  return {
    ids: Int32Array.from(rows.flatMap((r) => r.ids)),
    attentionMask: Uint8Array.from(rows.flatMap((r) => r.real)),
    batch: rows.length,
    seq: rows[0]!.ids.length,
  };
}

const LEFT_PADDED = batchOf([
  { ids: [0, 0, 5, 17, 33, 8], real: [0, 0, 1, 1, 1, 1] },
  { ids: [0, 12, 40, 3, 77, 61], real: [0, 1, 1, 1, 1, 1] },
]);
const RIGHT_PADDED = batchOf([
  { ids: [5, 17, 33, 8, 0, 0], real: [1, 1, 1, 1, 0, 0] },
  { ids: [12, 40, 3, 0, 0, 0], real: [1, 1, 1, 0, 0, 0] },
]);
const MIXED = batchOf([
  { ids: [0, 0, 5, 17, 33, 8], real: [0, 0, 1, 1, 1, 1] },
  { ids: [12, 40, 3, 77, 0, 0], real: [1, 1, 1, 1, 0, 0] },
  { ids: [61, 2, 19, 44, 9, 70], real: [1, 1, 1, 1, 1, 1] },
]);
const BATCHES: Record<string, TokenBatch> = { 'left-padded': LEFT_PADDED, 'right-padded': RIGHT_PADDED, mixed: MIXED };

/** Row b's real tokens alone, unpadded, and where they sit in the padded row. */
function realPart(batch: TokenBatch, b: number): { alone: TokenBatch; positions: number[] } {
  const T = batch.seq;
  const positions = [...Array(T).keys()].filter((t) => batch.attentionMask![b * T + t] === 1);
  const ids = Int32Array.from(positions, (t) => batch.ids[b * T + t]!);
  return { alone: { ids, attentionMask: new Uint8Array(ids.length).fill(1), batch: 1, seq: ids.length }, positions };
}

/** The composition's logits against the float64 reference of the same gate. */
function againstReference(comp: MoleComposition, experts: LoraAdapter[], batch: TokenBatch, mask?: number[][]): number {
  const got = logits(model, batch);
  comp.detach();
  const undo = installReference(model, { experts, gates: comp.gate, mask });
  const want = logits(model, batch);
  undo();
  comp.attach();
  return maxAbsDiff(got, want);
}

describe('prefix gate against the float64 reference', () => {
  const cases = (['layer', 'block'] as GateLevel[]).flatMap((level) => Object.keys(BATCHES).map((name) => [level, name] as const));
  it.each(cases)('per %s, %s batch', (level, name) => {
    const batch = BATCHES[name]!;
    const { comp, experts } = compose(TARGETS);
    comp.initGate({ level, granularity: 'token' }, new Rng(4), SHARP);
    const perToken = logits(model, batch);
    comp.initGate({ level, granularity: 'prefix' }, new Rng(4), SHARP);
    // Same e and τ, so the pooling alone moved the output: the comparison is not vacuous.
    expect(maxAbsDiff(logits(model, batch), perToken)).toBeGreaterThan(1e-3);
    expect(againstReference(comp, experts, batch)).toBeLessThan(1e-4);
  });

  it('per block, top-2, per-row masks, mixed batch', () => {
    const { comp, experts } = compose(TARGETS);
    comp.initGate({ level: 'block', granularity: 'prefix', topK: 2 }, new Rng(5), SHARP);
    const mask = [[1, 1, 1], [1, 0, 1], [0, 1, 1]];
    comp.setRows({ mask });
    expect(againstReference(comp, experts, MIXED, mask)).toBeLessThan(1e-4);
  });

  it('before a row’s first real token the logits are 0, so the weights are uniform', () => {
    const { comp } = compose(TARGETS);
    comp.initGate({ granularity: 'prefix' }, new Rng(6), SHARP);
    comp.traceWeights(true);
    logits(model, LEFT_PADDED);
    for (const t of comp.lastWeights().values()) {
      // Row 0's two pads and row 1's one pad.
      for (const r of [0, 1, 6]) expect(maxAbsDiff(t.probs.subarray(r * 3, r * 3 + 3), [1 / 3, 1 / 3, 1 / 3]), `${t.gate} row ${r}`).toBeLessThan(1e-7);
      // Real tokens are not uniform under this sharp gate.
      expect(maxAbsDiff(t.probs.subarray(2 * 3, 3 * 3), [1 / 3, 1 / 3, 1 / 3]), t.gate).toBeGreaterThan(1e-3);
    }
  });

  it.each(['layer', 'block'] as GateLevel[])('per %s: a padded row equals its real tokens run alone', (level) => {
    const { comp } = compose(TARGETS);
    comp.initGate({ level, granularity: 'prefix' }, new Rng(7), SHARP);
    const padded = logits(model, MIXED);
    for (const b of [0, 1, 2]) {
      const { alone, positions } = realPart(MIXED, b);
      const got = positions.flatMap((t) => [...padded.subarray((b * MIXED.seq + t) * V, (b * MIXED.seq + t + 1) * V)]);
      expect(maxAbsDiff(got, logits(model, alone)), `row ${b}`).toBeLessThan(1e-5);
    }
  });
});
