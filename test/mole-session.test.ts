import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadAdapter, saveAdapter } from '../src/adapters/peft.js';
import { initBackend } from '../src/base/backend.js';
import { generate } from '../src/base/generate.js';
import { loadBase } from '../src/base/load.js';
import { applyProfile, readProfiles } from '../src/gating/profile.js';
import { loadModel, type MoleModel } from '../src/gating/mole-model.js';
import { MODEL_FIXTURES, tempDir } from './helpers.js';
import { installReference, randomExpert } from './mole-reference.js';

const BASE = join(MODEL_FIXTURES, 'llama-gqa');
const tmp = tempDir('molora-session-');
const dirs: Record<string, string> = {};
const PROMPTS = [[1, 5, 17, 33], [1, 40, 3, 77]];
const GEN = { maxNewTokens: 4, stopIds: [] };

beforeAll(async () => {
  await initBackend();
  const base = loadBase(BASE);
  const specs: [string, string[]][] = [['math', ['q_proj', 'v_proj']], ['code', ['v_proj', 'down_proj']], ['law', ['q_proj', 'up_proj', 'down_proj']], ['code2', ['v_proj', 'down_proj']]];
  for (const [i, [name, targets]] of specs.entries()) {
    const a = randomExpert(base, name, targets, 50 + i);
    dirs[name] = join(tmp.dir, name);
    await saveAdapter(a, dirs[name]!);
    a.dispose();
  }
  base.dispose();
});
afterAll(() => tmp.cleanup());

const live: MoleModel[] = [];
afterEach(() => {
  while (live.length) live.pop()!.dispose();
});

async function session(names: string[], as: Record<string, string> = {}): Promise<MoleModel> {
  const m = await loadModel(BASE);
  live.push(m);
  for (const n of names) m.addExpert(n, dirs[as[n] ?? n]!);
  return m;
}

describe('loadModel session', () => {
  it('addExpert → useGate → mask → generate, the same after a gate round trip', async () => {
    const gateDir = join(tmp.dir, 'gate');
    const a = await session(['math', 'code', 'law']);
    a.initGate({}, 3, { eStd: 0.5 });
    await a.saveGate(gateDir);
    const want = await a.keepExperts(['math', 'law']).generateBatch(PROMPTS, GEN);
    expect(want[0]!.text).toBeNull();
    // The tokens greedy decoding picks under the float64 reference of this gate and mask.
    a.composition.detach();
    const alone = (await generate(a.base, PROMPTS, GEN)).tokens;
    const undo = installReference(a.base, { experts: a.experts.map((n) => a.composition.expert(n)), gates: a.composition.gate, mask: [[1, 0, 1]] });
    const reference = (await generate(a.base, PROMPTS, { ...GEN, useCache: false })).tokens;
    undo();
    a.composition.attach();
    expect(want.map((g) => g.tokens)).toEqual(reference);
    expect(reference).not.toEqual(alone);

    const b = await session(['law', 'code', 'math']);
    (await b.useGate(gateDir)).keepExperts(['math', 'law']);
    expect(await b.generateBatch(PROMPTS, GEN)).toEqual(want);
  });

  it('soloExpert(name) generates exactly what that adapter alone does', async () => {
    const m = await session(['math', 'code']);
    m.initGate({}, 4, { eStd: 0.5 });
    const got = (await m.soloExpert('code').generate(PROMPTS[0]!, GEN)).tokens;
    m.composition.detach();
    const alone = loadAdapter(m.base, dirs.code!);
    alone.attach(m.base);
    expect((await generate(m.base, [PROMPTS[0]!], GEN)).tokens[0]).toEqual(got);
    alone.dispose();
  });

  it('a mixed batch generates what each row does alone with its experts', async () => {
    const m = await session(['math', 'code', 'law']);
    m.initGate({}, 5, { eStd: 0.5 });
    const rows = [['code'], ['math', 'law']];
    const mixed = await m.rows({ mask: rows.map((r) => m.composition.maskRow(r)) }).generateBatch(PROMPTS, GEN);
    m.rows(null);
    for (const [b, names] of rows.entries()) expect(await m.keepExperts(names).generate(PROMPTS[b]!, GEN)).toEqual(mixed[b]);
  });

  it('a per-sequence gate generates without the KV cache', async () => {
    const m = await session(['math', 'code']);
    m.initGate({ granularity: 'sequence' }, 6, { eStd: 0.5 });
    const got = (await m.generate(PROMPTS[1]!, GEN)).tokens;
    expect((await generate(m.base, [PROMPTS[1]!], { ...GEN, useCache: false })).tokens[0]).toEqual(got);
  });

  it('swapExpert from a folder equals adding that folder in its place', async () => {
    const m = await session(['math', 'code']);
    m.useWeights([0.25, 0.75]).swapExpert('code', dirs.code2!);
    const fresh = (await session(['math', 'code'], { code: 'code2' })).useWeights([0.25, 0.75]);
    expect(await m.generateBatch(PROMPTS, GEN)).toEqual(await fresh.generateBatch(PROMPTS, GEN));
  });

  it('refuses dropping every expert and weights that are not shares, as --mask and --weights do', async () => {
    const m = await session(['math', 'code']);
    expect(() => m.mask(['math', 'code'])).toThrow(/leaves none of the experts \[math, code\]/);
    expect(() => m.useWeights({ math: 0, code: 0 })).toThrow(/every weight is 0/);
    expect(() => m.useWeights([0.5, 1.5])).toThrow(/the weights sum to 2 /);
    expect(() => m.useWeights({ math: 1e30 })).toThrow(/the weights sum to 1e\+30 /);
  });

  it('a profile after one with weights runs its own experts, not the old shares', async () => {
    const file = join(tmp.dir, 'profiles.json');
    writeFileSync(file, JSON.stringify({ tasks: { mix: { experts: { math: dirs.math, code: dirs.code }, weights: { math: 0.5, code: 0.5 } }, law: { experts: { law: dirs.law } } } }));
    const profiles = readProfiles(file);
    const m = await session([]);
    await applyProfile(m, profiles.tasks.mix!);
    await applyProfile(m, profiles.tasks.law!);
    const got = (await m.generateBatch(PROMPTS, GEN)).map((g) => g.tokens);
    m.composition.detach();
    const law = loadAdapter(m.base, dirs.law!);
    law.attach(m.base);
    expect(got).toEqual((await generate(m.base, PROMPTS, GEN)).tokens);
    law.dispose();
  });
});
