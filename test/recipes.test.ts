import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { loadRecipe, runRecipe } from '../src/recipes/run.js';
import { tempDir } from './helpers.js';

const tmp = tempDir();
afterAll(tmp.cleanup);
const quiet = { progress: 'off' as const, log: () => {}, print: () => {} };
const cols = { promptColumn: 'prompt', completionColumn: 'completion', taskColumn: 'task' };
const recipe = (steps: unknown[], name = 'tiny'): string => {
  const file = join(tmp.dir, `${name}.json`);
  writeFileSync(file, JSON.stringify({ name, steps }));
  return file;
};
const TINY = [
  { type: 'init-base', out: 'base', arch: 'llama', layers: 1, hidden: 16, heads: 2, ffn: 32, seed: 0 },
  { type: 'train-adapter', id: 'color', model: '$run/base', data: join(import.meta.dirname, '..', 'recipes', 'data', 'color.csv'), out: 'adapters/color', steps: 3, batchSize: 4, seqLen: 24, lr: 1e-2, ...cols },
  { type: 'eval', model: '$run/base', adapters: ['$run/adapters/color'], data: 'test.csv', out: 'summary.json', samples: 1, seqLen: 24, ...cols },
  { type: 'report' },
];

beforeAll(async () => {
  await initBackend();
  // Held out: no training file of these recipes holds either prompt.
  writeFileSync(join(tmp.dir, 'test.csv'), 'prompt,completion,task\ncolor: moss =, green,color\nsound: goat =, bleat,sound\n');
});

describe('recipes', () => {
  it('runs init-base → train-adapter → eval → report, then skips every step on a second run', async () => {
    const file = recipe(TINY);
    const run = join(tmp.dir, 'run');
    const first = await runRecipe(file, { ...quiet, out: run });
    expect(first.status).toBe('done');
    expect(first.ran).toEqual(['base', 'color', 'summary.json', 'report.html']);
    expect(existsSync(join(run, 'adapters', 'color', 'adapter_model.safetensors'))).toBe(true);
    const summary = JSON.parse(readFileSync(join(run, 'summary.json'), 'utf8'));
    expect(Object.keys(summary.settings)).toEqual(['adapters']);
    expect(summary.settings.adapters.tasks.color.n).toBe(1);
    expect(summary.samples.length).toBe(2);
    expect(readFileSync(join(run, 'report.html'), 'utf8')).toContain('<html');
    const printed: string[] = [];
    const second = await runRecipe(file, { ...quiet, out: run, print: (t) => printed.push(t) });
    expect(second.ran).toEqual([]);
    // The skipped eval still shows its table.
    expect(printed.join('')).toMatch(/setting\tcolor\tsound\toverall\nadapters\t/);
    expect(second.skipped).toEqual(first.ran);
  });

  it('reruns a step whose marker is missing, and refuses one whose fields changed', async () => {
    const steps = structuredClone(TINY).slice(0, 1);
    const run = join(tmp.dir, 'run2');
    await runRecipe(recipe(steps, 'one'), { ...quiet, out: run });
    steps[0]!.seed = 1;
    await expect(runRecipe(recipe(steps, 'one'), { ...quiet, out: run })).rejects.toThrow(/step 'base' \(init-base\) changed since it completed/);
  });

  it('runs train-gate, gates, a composed eval with every setting, upcycle and train-moe', async () => {
    const data = (t: string): string => join(import.meta.dirname, '..', 'recipes', 'data', `${t}.csv`);
    const train = { steps: 2, batchSize: 4, seqLen: 24, lr: 1e-2, ...cols };
    const experts = { color: '$run/adapters/color', sound: '$run/adapters/sound' };
    const file = recipe(
      [
        TINY[0],
        { type: 'train-adapter', out: 'adapters/color', model: '$run/base', data: data('color'), ...train },
        { type: 'train-adapter', out: 'adapters/sound', model: '$run/base', data: data('sound'), ...train },
        { type: 'train-gate', out: 'gate', model: '$run/base', data: data('gate'), experts, router: 'mole', granularity: 'prefix', temperature: 1, maskDropout: 0.5, ...train },
        { type: 'gates', out: 'gates.json', model: '$run/base', data: 'test.csv', experts, gate: '$run/gate', seqLen: 24, ...cols },
        { type: 'eval', out: 'summary.json', model: '$run/base', data: 'test.csv', experts, gate: '$run/gate', samples: 1, seqLen: 24, ...cols },
        { type: 'upcycle', out: 'moe', model: '$run/base', experts: 4, topK: 2 },
        { type: 'train-moe', out: 'moe-trained', model: '$run/moe', data: data('gate'), ...train },
        { type: 'train-gate', out: 'router', model: '$run/base', data: data('gate'), experts, ...train },
        { type: 'eval', out: 'router.json', model: '$run/base', data: 'test.csv', experts, gate: '$run/router', settings: ['gate', 'masks'], seqLen: 24, ...cols },
      ],
      'mole',
    );
    const run = join(tmp.dir, 'mole');
    const printed: string[] = [];
    const r = await runRecipe(file, { ...quiet, out: run, print: (t) => printed.push(t) });
    expect(r.ran).toHaveLength(10);
    const summary = JSON.parse(readFileSync(join(run, 'summary.json'), 'utf8'));
    expect(Object.keys(summary.settings)).toEqual(['base', 'adapter:color', 'adapter:sound', 'static-equal', 'gate', 'gate-mask:color', 'gate-mask:sound']);
    expect(summary.gates.experts).toEqual(['color', 'sound']);
    expect(new Set(summary.samples.map((s: { setting: string }) => s.setting))).toEqual(new Set(['gate', 'gate-mask:color', 'gate-mask:sound']));
    expect(printed.join('')).toContain('gate-mask:sound');
    expect(JSON.parse(readFileSync(join(run, 'gates.json'), 'utf8')).experts).toEqual(['color', 'sound']);
    expect(JSON.parse(readFileSync(join(run, 'moe', 'config.json'), 'utf8')).num_local_experts).toBe(4);
    expect(readFileSync(join(run, 'moe-trained', 'metrics.jsonl'), 'utf8')).toMatch(/"router"/);
    // The default train-gate step trains the prompt router; its eval routes every row to one expert.
    expect(JSON.parse(readFileSync(join(run, 'router', 'gate_config.json'), 'utf8')).format).toBe('molora.prompt_router');
    const routed = JSON.parse(readFileSync(join(run, 'router.json'), 'utf8'));
    expect(Object.keys(routed.settings)).toEqual(['gate', 'gate-mask:color', 'gate-mask:sound']);
    expect(routed.gates.layers).toEqual(['router']);
    for (const w of routed.gates.overall[0]) expect([0, 0.5, 1]).toContain(w);
  });

  it('the shipped MoE upcycle demo recipe parses with its inputs present', () => {
    const r = loadRecipe(join(import.meta.dirname, '..', 'recipes', 'moe-upcycle.json'));
    expect(r.steps.map((s) => s.type)).toEqual(['upcycle', 'eval', 'train-moe', 'eval', 'report']);
  });

  it('rejects an unknown step type or field before running anything, naming the step', () => {
    expect(() => loadRecipe(recipe([TINY[0], { type: 'train-adaptor', out: 'x' }]))).toThrow(/step 2 has unknown type "train-adaptor"/);
    expect(() => loadRecipe(recipe([{ ...TINY[0], layer: 2 }]))).toThrow(/step 'base' \(init-base\): unknown field 'layer'/);
    expect(() => loadRecipe(recipe([{ type: 'train-adapter', out: 'a', model: 'm' }]))).toThrow(/step 'a' \(train-adapter\) needs "data"/);
    expect(() => loadRecipe(recipe([{ ...TINY[0], layers: 'two' }]))).toThrow(/"layers" must be an integer/);
    writeFileSync(join(tmp.dir, 'bad.json'), '{"steps": [');
    expect(() => loadRecipe(join(tmp.dir, 'bad.json'))).toThrow(/bad\.json: cannot read the recipe/);
  });

  it('a failing step is an error naming the step', async () => {
    const file = recipe([{ type: 'train-adapter', id: 'broken', model: join(tmp.dir, 'nowhere'), data: 'test.csv', out: 'a', ...cols }], 'broken');
    await expect(runRecipe(file, { ...quiet, out: join(tmp.dir, 'run3') })).rejects.toThrow(/step 'broken' \(train-adapter\) failed/);
  });
});
