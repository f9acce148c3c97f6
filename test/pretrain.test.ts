import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { modelTensors } from '../src/base/export.js';
import { initBase } from '../src/base/init.js';
import { loadBase } from '../src/base/load.js';
import { writeCorpus } from '../src/data/corpus.js';
import { readMetrics } from '../src/train/metrics.js';
import { pretrain } from '../src/train/pretrain.js';
import { tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(tmp.cleanup);
const base = join(tmp.dir, 'base');
const corpus = join(tmp.dir, 'corpus.csv');

beforeAll(async () => {
  await initBackend();
  await initBase({ arch: 'llama', layers: 1, hidden: 16, heads: 2, ffn: 32, out: base, seed: 0 });
  writeCorpus(corpus, 60, 0);
});

describe('pretrain', () => {
  it('trains every weight of the model (embedding, norms, linears, untied head) and saves a loadable folder', async () => {
    const out = join(tmp.dir, 'trained');
    const tensors = tf.memory().numTensors;
    const r = await pretrain({ model: base, data: corpus, out, steps: 12, lr: 1e-2, batchSize: 4, seqLen: 64, seed: 0, progress: 'off', log: () => {} });
    expect(r.status).toBe('done');
    const before = loadBase(base);
    const after = loadBase(out);
    try {
      const a = await modelTensors(before);
      const b = await modelTensors(after);
      expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
      for (const [key, t] of a) {
        const changed = t.data.some((x, i) => Math.abs(x - b.get(key)!.data[i]!) > 1e-6);
        expect(changed, key).toBe(true);
      }
      expect(after.tokenizer).not.toBeNull();
    } finally {
      before.dispose();
      after.dispose();
    }
    const losses = readMetrics(join(out, 'metrics.jsonl')).flatMap((m) => (typeof m.loss === 'number' ? [m.loss] : []));
    expect(losses.at(-1)!).toBeLessThan(losses[0]! - 0.5);
    // Everything the run and the two loaded models held is freed.
    expect(tf.memory().numTensors).toBe(tensors);
  });

  it('refuses a tied model, naming the folder', async () => {
    const tied = join(tmp.dir, 'tied');
    await initBase({ arch: 'llama', layers: 1, hidden: 16, heads: 2, ffn: 32, out: tied, tieWordEmbeddings: true });
    await expect(pretrain({ model: tied, data: corpus, out: join(tmp.dir, 't'), steps: 1, lr: 1e-3, batchSize: 1, seqLen: 16, seed: 0, progress: 'off', log: () => {} })).rejects.toThrow(/tied.*untied head/);
  });
});
