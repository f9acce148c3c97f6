import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadDataset } from '../src/data/dataset.js';
import type { Batch } from '../src/data/layout.js';
import { BatchSampler, evalBatches, type SamplerState } from '../src/data/sampler.js';
import type { TokenStore } from '../src/data/store.js';
import { byteEncoder } from './fixtures/csv/byte-encoder.js';
import { tempDir } from './helpers.js';

const tmp = tempDir('molora-sampler-');
afterAll(tmp.cleanup);

async function store(header: string, rows: string[], extra: object = {}): Promise<TokenStore> {
  const path = join(tmp.dir, `s${Math.random().toString(36).slice(2)}.csv`);
  writeFileSync(path, [header, ...rows].join('\n') + '\n');
  const ds = await loadDataset({ path, encoder: byteEncoder, tokenizerId: 'bytes', seqLen: 8, seed: 0, ...extra });
  return ds.train;
}

let text: TokenStore;
let completion: TokenStore;
beforeAll(async () => {
  text = await store('text', Array.from({ length: 23 }, (_, i) => `document ${i} ${'x'.repeat(i % 5)}`));
  completion = await store(
    'task,prompt,completion',
    Array.from({ length: 37 }, (_, i) => `t${i % 3},question ${i}?,answer ${'y'.repeat(i % 7)}`),
    // Cut from the right by the layout, as these sampler checks were written for.
    { promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task', truncate: 'right' },
  );
});

const PAD = 258;
const same = (a: Batch, b: Batch) => expect(b).toEqual(a);

describe('BatchSampler', () => {
  for (const kind of ['text', 'completion'] as const) {
    it(`resumes ${kind} batches exactly where a saved state left off`, () => {
      const s = kind === 'text' ? text : completion;
      const opts = { batchSize: 5, seqLen: kind === 'text' ? 8 : 16, seed: 42 };
      const straight = new BatchSampler(s, opts);
      const interrupted = new BatchSampler(s, opts);
      const k = straight.stepsPerEpoch + 2; // past an epoch boundary
      for (let i = 0; i < k; i++) same(straight.next(), interrupted.next());
      const saved = JSON.parse(JSON.stringify(interrupted.state())) as SamplerState;
      const resumed = new BatchSampler(s, { ...opts, seed: 999 });
      resumed.restore(saved);
      expect(resumed.epoch).toBe(1);
      for (let i = 0; i < 3 * straight.stepsPerEpoch; i++) same(straight.next(), resumed.next());
    });
  }

  it('visits every sequence once per epoch, in a new seeded order each epoch', () => {
    const opts = { batchSize: 4, seqLen: 32, seed: 3 };
    const sampler = new BatchSampler(completion, opts);
    expect(sampler.sequences).toBe(37);
    expect(sampler.stepsPerEpoch).toBe(10);
    const epoch = () => {
      const rows: string[] = [];
      for (let i = 0; i < sampler.stepsPerEpoch; i++) {
        const b = sampler.next();
        expect(b.batch).toBe(i === 9 ? 1 : 4);
        for (let r = 0; r < b.batch; r++) rows.push(Array.from(b.ids.subarray(r * b.seq, (r + 1) * b.seq)).filter((t) => t !== PAD).join());
      }
      return rows;
    };
    const e0 = epoch();
    const e1 = epoch();
    expect(new Set(e0).size).toBe(37);
    expect([...e1].sort()).toEqual([...e0].sort());
    expect(e1).not.toEqual(e0);
    expect(sampler.epoch).toBe(1);
    const again = new BatchSampler(completion, opts);
    expect(again.next()).toEqual(new BatchSampler(completion, opts).next());
    expect(new BatchSampler(completion, { ...opts, seed: 4 }).next()).not.toEqual(again.next());
  });

  it('carries task ids into batches', () => {
    const b = new BatchSampler(completion, { batchSize: 37, seqLen: 64, seed: 1 }).next();
    const counts = [0, 0, 0];
    b.taskIds.forEach((t) => counts[t]!++);
    expect(counts).toEqual([13, 12, 12]);
  });

  it('refuses a state saved for other data or shapes', async () => {
    const a = new BatchSampler(text, { batchSize: 4, seqLen: 8, seed: 1 });
    const edited = await store('text', Array.from({ length: 23 }, (_, i) => `document ${i === 5 ? 'V' : i} ${'x'.repeat(i % 5)}`));
    expect(() => new BatchSampler(edited, { batchSize: 4, seqLen: 8, seed: 1 }).restore(a.state())).toThrow(/data differs/);
    expect(() => new BatchSampler(text, { batchSize: 4, seqLen: 16, seed: 1 }).restore(a.state())).toThrow(/cannot resume/);
    expect(() => new BatchSampler(completion, { batchSize: 4, seqLen: 16, seed: 1 }).restore(a.state())).toThrow(/data differs/);
  });
});

describe('evalBatches', () => {
  it('covers the text stream in order, every token a target exactly once', () => {
    const targets: number[] = [];
    for (const b of evalBatches(text, { batchSize: 3, seqLen: 8 })) {
      for (let i = 0; i < b.batch * b.seq; i++) if (b.lossMask[i]) targets.push(b.targets[i]!);
    }
    expect(targets).toEqual(Array.from(text.tokens).slice(1));
  });

  it('yields each completion example once, in store order', () => {
    const batches = [...evalBatches(completion, { batchSize: 10, seqLen: 64 })];
    expect(batches.map((b) => b.batch)).toEqual([10, 10, 10, 7]);
    const firstIds = batches.flatMap((b) => Array.from({ length: b.batch }, (_, r) => Array.from(b.ids.subarray(r * b.seq, r * b.seq + 12))));
    expect(firstIds).toEqual(Array.from({ length: 37 }, (_, i) => Array.from(completion.example(i).subarray(0, 12))));
  });
});
