import * as tf from '@tensorflow/tfjs';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../src/base/backend.js';
import { benchParity, PARITY_TOLERANCE } from '../src/bench/parity.js';
import { MODEL_FIXTURES, tempDir } from './helpers.js';

// The CLI as users run it: the built dist/ (npm test builds first).
const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const tmp = tempDir();
afterAll(() => tmp.cleanup());

beforeAll(async () => {
  await initBackend({ backend: 'wasm' });
});

/** A fixtures folder holding copies of the named fixtures. */
function copyFixtures(name: string, models: string[]): string {
  const dir = join(tmp.dir, name);
  for (const m of models) cpSync(join(MODEL_FIXTURES, m), join(dir, m), { recursive: true });
  return dir;
}

/** gpt2 as it is, and llama-gqa with case 1's reference off by 2e-4 at one entry. */
function perturbedFixtures(name: string): string {
  const dir = copyFixtures(name, ['llama-gqa', 'gpt2']);
  const file = join(dir, 'llama-gqa', 'reference.json');
  const ref = JSON.parse(readFileSync(file, 'utf8'));
  ref.cases[1].logprobs[0][5][7] += 2e-4;
  writeFileSync(file, JSON.stringify(ref));
  return dir;
}

describe('bench parity', () => {
  it('checks every fixture with a reference, every case, within 1e-4 on wasm', async () => {
    const before = tf.memory().numTensors;
    const r = await benchParity({ fixtures: MODEL_FIXTURES });
    expect(tf.memory().numTensors).toBe(before);
    expect(r).toMatchObject({ backend: 'wasm', tolerance: PARITY_TOLERANCE, pass: true });
    expect(r.backend_info?.name).toBe('wasm');
    expect(r.fixtures.map((f) => f.name)).toEqual(readdirSync(MODEL_FIXTURES).sort());
    for (const f of r.fixtures) {
      expect(f.cases.map((c) => c.case)).toEqual([0, 1, 2]);
      for (const c of f.cases) {
        expect(c.positions).toBeGreaterThan(10);
        // float32 against float64 is never exact: a zero would mean the reference compared with itself.
        expect(c.max_abs_diff).toBeGreaterThan(0);
        expect(c.max_abs_diff).toBeLessThan(PARITY_TOLERANCE);
      }
    }
  });

  it('fails a case whose reference is off by 2e-4 at one entry, and says which', async () => {
    const r = await benchParity({ fixtures: perturbedFixtures('perturbed') });
    expect(r.pass).toBe(false);
    const [gpt2, llama] = r.fixtures;
    expect(gpt2!.pass).toBe(true);
    expect(llama!.cases.map((c) => c.pass)).toEqual([true, false, true]);
    expect(llama!.cases[1]!.max_abs_diff).toBeCloseTo(2e-4, 5);
  });

  it('reports a fixture that cannot load as failed with its error, and still runs the others', async () => {
    const dir = copyFixtures('broken', ['qwen2', 'mistral']);
    writeFileSync(join(dir, 'qwen2', 'config.json'), '{"model_type": "qwen2"}');
    const r = await benchParity({ fixtures: dir });
    expect(r.pass).toBe(false);
    expect(r.fixtures[0]!.pass).toBe(true);
    expect(r.fixtures[1]).toMatchObject({ name: 'qwen2', pass: false, cases: [] });
    expect(r.fixtures[1]!.error).toMatch(/config/);
  });

  it('refuses a missing folder, a folder without references, and a malformed reference, naming them', async () => {
    await expect(benchParity({ fixtures: join(tmp.dir, 'none') })).rejects.toThrow(`fixtures folder ${join(tmp.dir, 'none')} does not exist`);
    mkdirSync(join(tmp.dir, 'empty', 'model'), { recursive: true });
    await expect(benchParity({ fixtures: join(tmp.dir, 'empty') })).rejects.toThrow(`no model folder under ${join(tmp.dir, 'empty')} has a reference.json`);
    const dir = copyFixtures('malformed', ['llama-gqa']);
    const file = join(dir, 'llama-gqa', 'reference.json');
    const ref = JSON.parse(readFileSync(file, 'utf8'));
    ref.cases[2].logprobs.pop();
    writeFileSync(file, JSON.stringify(ref));
    await expect(benchParity({ fixtures: dir })).rejects.toThrow(`${file}: case 2 needs ids, attention_mask and logprobs of the same [rows, seq] shape`);
  });

  it('the CLI exits 0 when every case passes and 1 when one fails, in both output modes', () => {
    const good = spawnSync('node', [CLI, 'bench', 'parity', '--fixtures', copyFixtures('cli-good', ['mistral-swa']), '--backend', 'wasm'], { encoding: 'utf8' });
    expect(good.status).toBe(0);
    expect(good.stdout).toContain('all 3 cases of 1 fixtures within 0.0001');
    const bad = perturbedFixtures('cli-bad');
    const json = spawnSync('node', [CLI, 'bench', 'parity', '--fixtures', bad, '--json'], { encoding: 'utf8' });
    expect(json.status).toBe(1);
    const r = JSON.parse(json.stdout);
    expect(r.pass).toBe(false);
    expect(r.fixtures.map((f: { name: string; pass: boolean }) => [f.name, f.pass])).toEqual([['gpt2', true], ['llama-gqa', false]]);
    const text = spawnSync('node', [CLI, 'bench', 'parity', '--fixtures', bad], { encoding: 'utf8' });
    expect(text.status).toBe(1);
    expect(text.stdout).toMatch(/\| llama-gqa \| 1 \| \d+ \| 2\.\d+e-4 \| FAIL \|/);
    expect(text.stdout).toContain('FAILED: llama-gqa');
  });
});
