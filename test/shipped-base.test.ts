import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import { writeCorpus } from '../src/data/corpus.js';
import { loadRecipe } from '../src/recipes/run.js';
import { evaluateCsv } from '../src/train/evaluate.js';
import { tempDir } from './helpers.js';

const ROOT = join(import.meta.dirname, '..');
const MODEL = join(ROOT, 'models', 'tiny-llama');
const tmp = tempDir();
afterAll(tmp.cleanup);
beforeAll(async () => {
  await initBackend();
});

describe('shipped tiny base', () => {
  it('is a small untied HF Llama folder with a byte-level tokenizer', () => {
    for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) expect(existsSync(join(MODEL, f)), f).toBe(true);
    expect(statSync(join(MODEL, 'model.safetensors')).size).toBeLessThanOrEqual(10 * 2 ** 20);
    const cfg = JSON.parse(readFileSync(join(MODEL, 'config.json'), 'utf8'));
    expect(cfg).toMatchObject({ model_type: 'llama', architectures: ['LlamaForCausalLM'], tie_word_embeddings: false });
  });

  it('is pretrained: low loss on fresh text from the corpus generator', async () => {
    const csv = join(tmp.dir, 'heldout.csv');
    writeCorpus(csv, 30, 12345);
    const model = loadBase(MODEL);
    try {
      expect(model.tokenizer).not.toBeNull();
      const r = await evaluateCsv(model, { data: csv, textColumn: 'text', batchSize: 8, seqLen: 128 });
      // A random init sits near ln(259) ≈ 5.6 nats per byte.
      expect(r.overall.loss).toBeLessThan(1.0);
    } finally {
      model.dispose();
    }
  });

  it('the shipped recipes parse and their inputs exist', () => {
    for (const name of ['quickstart', 'pretrain-tiny']) {
      const r = loadRecipe(join(ROOT, 'recipes', `${name}.json`), join(tmp.dir, name));
      for (const s of r.steps) {
        for (const v of Object.values(s.fields).flat(2)) {
          if (typeof v === 'string' && v.startsWith(ROOT) && !v.startsWith(r.run)) expect(existsSync(v), `${name}: ${s.id}: ${v}`).toBe(true);
        }
      }
    }
    const q = loadRecipe(join(ROOT, 'recipes', 'quickstart.json'), join(tmp.dir, 'q'));
    expect(q.steps.filter((s) => s.type === 'train-adapter').map((s) => s.fields.model)).toEqual([MODEL, MODEL, MODEL, MODEL]);
  });
});
