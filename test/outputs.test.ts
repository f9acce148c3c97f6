import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLora } from '../src/adapters/adapter.js';
import { DEFAULT_LORA } from '../src/adapters/config.js';
import { mergeFolder } from '../src/adapters/merge.js';
import { saveAdapter } from '../src/adapters/peft.js';
import { trainAdapter } from '../src/adapters/train-adapter.js';
import { initBackend } from '../src/base/backend.js';
import { initBase } from '../src/base/init.js';
import { loadBase } from '../src/base/load.js';
import { claimOutput } from '../src/base/output.js';
import { Rng } from '../src/base/rng.js';
import { upcycleFolder } from '../src/moe/train-moe.js';
import { runRecipe } from '../src/recipes/run.js';
import { trainGate } from '../src/gating/train-gate.js';
import { tempDir } from './helpers.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const tmp = tempDir();
const base = join(tmp.dir, 'base');
const adapter = join(tmp.dir, 'adapter');
const SHAPE = { arch: 'llama', layers: 1, hidden: 16, heads: 2, ffn: 32, seed: 0 } as const;
const bytes = (dir: string): Record<string, Buffer> => Object.fromEntries(readdirSync(dir).map((f) => [f, readFileSync(join(dir, f))]));

beforeAll(async () => {
  await initBackend();
  await initBase({ ...SHAPE, out: base });
  const model = loadBase(base);
  const lora = createLora(model, { ...DEFAULT_LORA, r: 2, init: 'gaussian' }, 'a', new Rng(1));
  await saveAdapter(lora, adapter);
  lora.dispose();
  model.dispose();
});
afterAll(tmp.cleanup);

describe('output folders', () => {
  it('never writes into an input: the same folder, another spelling of it, inside it or around it', () => {
    const link = join(tmp.dir, 'base-link');
    symlinkSync(base, link);
    const inputs: [string, string][] = [['--model', base]];
    expect(() => claimOutput({ out: base, inputs })).toThrow(`--out ${base} is the same folder as --model ${base}: writing there could destroy the input; choose another --out`);
    expect(() => claimOutput({ out: link, inputs })).toThrow(/is the same folder as --model/);
    expect(() => claimOutput({ out: join(link, 'merged'), inputs })).toThrow(`--out ${join(link, 'merged')} is inside --model ${base}`);
    expect(() => claimOutput({ out: tmp.dir, inputs })).toThrow(`--out ${tmp.dir} contains --model ${base}`);
    expect(readdirSync(base)).not.toContain('merged');
  });

  it('merge onto its own base (or an adapter) is refused and the base stays byte-identical, in the CLI too', async () => {
    const before = bytes(base);
    await expect(mergeFolder({ model: base, adapters: [adapter], out: base, overwrite: true })).rejects.toThrow(/--out .* is the same folder as --model/);
    await expect(mergeFolder({ model: base, adapters: [adapter], out: adapter })).rejects.toThrow(/--out .* is the same folder as --adapter/);
    const r = spawnSync('node', [CLI, 'merge', '--model', base, '--adapter', adapter, '--out', base], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`molora: error: --out ${base} is the same folder as --model ${base}`);
    expect(bytes(base)).toEqual(before);
  });

  it('init-base, merge and upcycle refuse a folder that holds a model unless told to overwrite', async () => {
    const target = join(tmp.dir, 'target');
    await initBase({ ...SHAPE, out: target });
    const before = bytes(target);
    const refused = /already holds a model \(model\.safetensors\); pass --overwrite to replace it, or choose another --out/;
    await expect(initBase({ ...SHAPE, seed: 5, out: target })).rejects.toThrow(refused);
    await expect(mergeFolder({ model: base, adapters: [adapter], out: target })).rejects.toThrow(refused);
    await expect(upcycleFolder({ model: base, experts: 2, topK: 1, out: target })).rejects.toThrow(refused);
    expect(bytes(target)).toEqual(before);
    await initBase({ ...SHAPE, seed: 5, out: target, overwrite: true });
    expect(readFileSync(join(target, 'model.safetensors'))).not.toEqual(before['model.safetensors']);
    await mergeFolder({ model: base, adapters: [adapter], out: target, overwrite: true });
    expect(readdirSync(target).sort()).toEqual(Object.keys(before).sort());
  });

  it('a recipe step redoes its own unmarked output in the run folder, but replaces no model outside it', async () => {
    const run = join(tmp.dir, 'recipe-run');
    const outside = join(tmp.dir, 'outside');
    await initBase({ ...SHAPE, out: join(run, 'base') });
    await initBase({ ...SHAPE, out: outside });
    const before = bytes(outside);
    const file = join(tmp.dir, 'recipe.json');
    const quiet = { out: run, progress: 'off' as const, log: () => {}, print: () => {} };
    writeFileSync(file, JSON.stringify({ steps: [{ type: 'init-base', out: 'base', ...SHAPE, seed: 3 }] }));
    expect((await runRecipe(file, quiet)).ran).toEqual(['base']);
    writeFileSync(file, JSON.stringify({ steps: [{ type: 'init-base', out: outside, ...SHAPE, seed: 3 }] }));
    await expect(runRecipe(file, quiet)).rejects.toThrow(`${outside} already holds a model (model.safetensors)`);
    expect(bytes(outside)).toEqual(before);
  });

  it('train-adapter checks its output before reading any data: an adapter without a run, a run, an input', async () => {
    const o = { model: base, data: join(tmp.dir, 'missing.csv'), seqLen: 16, batchSize: 2, lr: 1e-3, seed: 0, steps: 1, progress: 'off' as const, log: () => {} };
    const done = join(tmp.dir, 'done-adapter');
    mkdirSync(done);
    for (const f of readdirSync(adapter)) writeFileSync(join(done, f), readFileSync(join(adapter, f)));
    await expect(trainAdapter({ ...o, out: done })).rejects.toThrow(`${done} already holds an adapter (adapter_model.safetensors); pass --overwrite`);
    // With --overwrite it goes on, to the data.
    await expect(trainAdapter({ ...o, out: done, overwrite: true })).rejects.toThrow(/missing\.csv/);
    const run = join(tmp.dir, 'a-run');
    mkdirSync(run);
    writeFileSync(join(run, 'latest'), 'checkpoint-1\n');
    await expect(trainAdapter({ ...o, out: run, overwrite: true })).rejects.toThrow(`${run} already holds a run (it has a 'latest' checkpoint pointer)`);
    await expect(trainAdapter({ ...o, out: base })).rejects.toThrow(/is the same folder as --model/);
    await expect(trainGate({ ...o, out: adapter, experts: [['a', adapter], ['b', adapter]] })).rejects.toThrow(`--out ${adapter} is the same folder as --expert a ${adapter}`);
    expect(bytes(adapter)).toEqual(bytes(done));
  });
});
