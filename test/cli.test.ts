import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import { createLora } from '../src/adapters/adapter.js';
import { DEFAULT_LORA } from '../src/adapters/config.js';
import { saveAdapter } from '../src/adapters/peft.js';
import { initBackend } from '../src/base/backend.js';
import { loadBase } from '../src/base/load.js';
import { Rng } from '../src/base/rng.js';
import { generate } from '../src/base/generate.js';
import { promptIds } from '../src/base/prompt.js';
import { MODEL_FIXTURES, readReference, tempDir, maxAbsDiff } from './helpers.js';
import { randomExpert } from './mole-reference.js';

// The CLI is tested as users run it: the built dist/ (npm test builds first).
const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const run = (...args: string[]): string => execFileSync('node', [CLI, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const fail = (...args: string[]): { status: number | null; stderr: string } => {
  const r = spawnSync('node', [CLI, ...args], { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
};

const tmp = tempDir();
afterAll(() => tmp.cleanup());

describe('molora CLI', () => {
  it('--help lists every command', () => {
    const help = run('--help');
    for (const c of ['forward', 'generate', 'init-base', 'inspect', 'merge', 'train-adapter', 'train-gate', 'gates', 'eval', 'report', 'upcycle', 'train-moe', 'bench']) expect(help).toContain(c);
    // Every command, however nested, takes --backend.
    for (const c of [['train-gate'], ['bench', 'train'], ['bench', 'compose'], ['bench', 'moe'], ['upcycle']]) expect(run(...c, '--help')).toContain('--backend');
  });

  it('forward --json keeps its contract and matches the reference', () => {
    const ref = readReference('llama-gqa').cases[0]!;
    const ids = ref.ids[0]!;
    const out = JSON.parse(run('forward', '--model', join(MODEL_FIXTURES, 'llama-gqa'), '--ids', ids.join(','), '--json'));
    expect(Object.keys(out).sort()).toEqual(['ids', 'logprobs']);
    expect(out.ids).toEqual(ids);
    expect(out.logprobs).toHaveLength(ids.length);
    // As tight as the library's parity with the float64 reference (parity.test.ts).
    out.logprobs.forEach((row: number[], t: number) => expect(maxAbsDiff(row, ref.logprobs[0]![t]!)).toBeLessThan(1e-4));
  });

  it('forward without --json prints a table with the top-5 predictions', () => {
    const table = run('forward', '--model', join(MODEL_FIXTURES, 'gpt2'), '--ids', '1,2,3');
    const lines = table.trim().split('\n');
    expect(lines[0]).toMatch(/pos\ttoken\tlogp\(next\)\ttop-5 next/);
    expect(lines).toHaveLength(4);
    expect(lines[1]!.split('\t')[3]!.split(', ')).toHaveLength(5);
  });

  it('init-base, then generate from text streams the greedy continuation', async () => {
    const dir = join(tmp.dir, 'base');
    run('init-base', '--arch', 'llama', '--layers', '2', '--hidden', '32', '--heads', '4', '--kv-heads', '2', '--ffn', '64', '--out', dir);
    const out = run('generate', '--model', dir, '--prompt', 'Hello', '--max-new-tokens', '5', '--seed', '1');
    await initBackend();
    const model = loadBase(dir);
    const prompt = promptIds(model, { text: 'Hello' });
    const want = (await generate(model, [prompt], { maxNewTokens: 5 })).tokens[0]!.filter((t) => !model.config.eosIds.includes(t));
    expect(out).toBe(`Hello${model.tokenizer!.decode(want)}\n`);
    model.dispose();
    const info = JSON.parse(run('inspect', dir, '--json'));
    expect(info.kind).toBe('model');
    expect(info.type).toBe('llama');
    expect(info.parameters).toBe(info.architecture.expectedParameters);
  });

  it('forward --adapter equals forward on the merged export; inspect reads the adapter', async () => {
    await initBackend();
    const model = loadBase(join(MODEL_FIXTURES, 'qwen2'), { warn: () => {} });
    const adapter = createLora(model, { ...DEFAULT_LORA, rank: 4, targets: ['q_proj', 'down_proj'] }, 'a', new Rng(2));
    for (const l of adapter.layers.values()) l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.2, 'float32', 4));
    const adir = join(tmp.dir, 'adapter');
    await saveAdapter(adapter, adir);
    adapter.dispose();
    model.dispose();
    const merged = join(tmp.dir, 'merged');
    run('merge', '--model', join(MODEL_FIXTURES, 'qwen2'), '--adapter', adir, '--out', merged);
    const withAdapter = JSON.parse(run('forward', '--model', join(MODEL_FIXTURES, 'qwen2'), '--adapter', adir, '--ids', '3,1,4,1,5', '--json'));
    const fromMerged = JSON.parse(run('forward', '--model', merged, '--ids', '3,1,4,1,5', '--json'));
    const plain = JSON.parse(run('forward', '--model', join(MODEL_FIXTURES, 'qwen2'), '--ids', '3,1,4,1,5', '--json'));
    withAdapter.logprobs.forEach((row: number[], t: number) => expect(maxAbsDiff(row, fromMerged.logprobs[t])).toBeLessThan(1e-4));
    expect(maxAbsDiff(withAdapter.logprobs[4], plain.logprobs[4])).toBeGreaterThan(1e-3);
    const info = JSON.parse(run('inspect', adir, '--json'));
    expect(info).toMatchObject({ kind: 'adapter', type: 'LORA' });
    expect(info.tensors).toHaveLength(8);
  });

  it('train-gate, gates (--json, --html), eval with a composition and report work end to end', async () => {
    await initBackend();
    const base = join(tmp.dir, 'gate-base');
    run('init-base', '--arch', 'llama', '--layers', '1', '--hidden', '32', '--heads', '2', '--ffn', '48', '--out', base);
    const model = loadBase(base, { warn: () => {} });
    for (const [name, seed] of [['a', 1], ['b', 2]] as const) {
      const ad = createLora(model, { ...DEFAULT_LORA, rank: 2, targets: ['q_proj', 'v_proj'] }, name, new Rng(seed));
      for (const l of ad.layers.values()) l.bT.assign(tf.randomNormal(l.bT.shape, 0, 0.1, 'float32', seed));
      await saveAdapter(ad, join(tmp.dir, `expert-${name}`));
      ad.dispose();
    }
    model.dispose();
    const csv = join(tmp.dir, 'mixed.csv');
    writeFileSync(csv, 'prompt,completion,task\n' + Array.from({ length: 24 }, (_, i) => `q${i} =, ${i % 2 ? 'yes' : 'no'},${i % 2 ? 'a' : 'b'}`).join('\n') + '\n');
    const experts = ['--expert', `a=${join(tmp.dir, 'expert-a')}`, '--expert', `b=${join(tmp.dir, 'expert-b')}`];
    const cols = ['--data', csv, '--prompt-column', 'prompt', '--completion-column', 'completion', '--task-column', 'task'];
    const gate = join(tmp.dir, 'gate');
    run('train-gate', '--model', base, ...experts, ...cols, '--out', gate, '--steps', '3', '--batch-size', '4', '--seq-len', '16', '--router', 'mole', '--granularity', 'prefix', '--progress', 'off');
    expect(existsSync(join(gate, 'gate_config.json')) && existsSync(join(gate, 'gate.safetensors'))).toBe(true);
    const html = join(tmp.dir, 'gates.html');
    const stats = JSON.parse(run('gates', '--model', base, ...experts, '--gate', gate, ...cols, '--seq-len', '16', '--json', '--html', html));
    expect(stats.experts).toEqual(['a', 'b']);
    expect(Object.keys(stats.byTask).sort()).toEqual(['a', 'b']);
    expect(readFileSync(html, 'utf8')).toMatch(/<svg/);
    const masked = JSON.parse(run('eval', '--model', base, ...experts, '--gate', gate, '--mask', 'a', ...cols, '--seq-len', '16', '--json'));
    expect(Object.keys(masked.tasks).sort()).toEqual(['a', 'b']);
    expect(masked.overall.n).toBe(24);
    run('report', tmp.dir);
    expect(readFileSync(join(tmp.dir, 'report.html'), 'utf8')).toMatch(/gate/);
    const wrong = fail('train-gate', '--model', base, '--expert', `a=${join(tmp.dir, 'expert-a')}`, ...cols, '--out', join(tmp.dir, 'g1'), '--steps', '1');
    expect(wrong.stderr).toMatch(/at least 2 experts/);
  });

  it('train-gate trains the prompt router by default; eval and gates use it; bad routing flags are refused by name', async () => {
    // Reuses the base, experts and data of the test above.
    const base = join(tmp.dir, 'gate-base');
    const experts = ['--expert', `a=${join(tmp.dir, 'expert-a')}`, '--expert', `b=${join(tmp.dir, 'expert-b')}`];
    const cols = ['--data', join(tmp.dir, 'mixed.csv'), '--prompt-column', 'prompt', '--completion-column', 'completion', '--task-column', 'task'];
    const router = join(tmp.dir, 'router');
    run('train-gate', '--model', base, ...experts, ...cols, '--out', router, '--steps', '3', '--seq-len', '16', '--progress', 'off');
    expect(JSON.parse(readFileSync(join(router, 'gate_config.json'), 'utf8'))).toMatchObject({ format: 'molora.prompt_router', top_k: 1, experts: [{ name: 'a' }, { name: 'b' }] });
    const scored = JSON.parse(run('eval', '--model', base, ...experts, '--gate', router, ...cols, '--seq-len', '16', '--json'));
    expect(scored.overall.n).toBe(24);
    const stats = JSON.parse(run('gates', '--model', base, ...experts, '--gate', router, ...cols, '--seq-len', '16', '--json'));
    // Hard routing: each row goes to one expert, so every per-task share is a multiple of 1/12.
    expect(stats.gates.map((g: { gate: string }) => g.gate)).toEqual(['router']);
    for (const g of Object.values(stats.byTask as Record<string, { meanWeight: number[] }[]>)) for (const w of g[0]!.meanWeight) expect(Math.abs(w * 12 - Math.round(w * 12))).toBeLessThan(1e-6);
    const out = (name: string): string[] => ['--out', join(tmp.dir, name), '--steps', '1', '--seq-len', '16'];
    expect(fail('train-gate', '--model', base, ...experts, ...cols, ...out('r1'), '--granularity', 'prefix').stderr).toMatch(/granularity: MoLE gate settings, for router 'mole' only/);
    expect(fail('train-gate', '--model', base, ...experts, ...cols, ...out('r2'), '--router', 'mole', '--routing-loss', 'lm').stderr).toMatch(/routing loss and router L2 are for router 'prompt'/);
    expect(fail('train-gate', '--model', base, ...experts, ...cols, ...out('r3'), '--router', 'nearest').stderr).toMatch(/--router.*nearest/);
    expect(fail('train-gate', '--model', base, ...experts, ...cols, ...out('r4'), '--router-l2', '-1').stderr).toMatch(/--router-l2/);
    const unlabelled = ['--data', join(tmp.dir, 'mixed.csv'), '--prompt-column', 'prompt', '--completion-column', 'completion'];
    expect(fail('train-gate', '--model', base, ...experts, ...unlabelled, ...out('r5'), '--routing-loss', 'labels').stderr).toMatch(/routing loss 'labels' needs a task column whose values name experts \(a, b\)/);
    expect(fail('train-gate', '--model', base, ...experts, ...unlabelled, ...out('r6'), '--router', 'centroid').stderr).toMatch(/centroid router needs a task column/);
    expect(fail('bench', 'compose', '--families', 'tail,nope', '--out', join(tmp.dir, 'bc')).stderr).toMatch(/unknown family 'nope' \(families: tail, lead, form, lookup\)/);
    expect(fail('bench', 'probe', '--dir', join(tmp.dir, 'no-such-family')).status).toBe(1);
  });

  it('--mask-experts masks routed experts of a sparse model and names a bad expert', () => {
    const mixtral = join(MODEL_FIXTURES, 'mixtral');
    const plain = JSON.parse(run('forward', '--model', mixtral, '--ids', '3,1,4,1,5', '--json'));
    const masked = JSON.parse(run('forward', '--model', mixtral, '--ids', '3,1,4,1,5', '--json', '--mask-experts', '0:1,2'));
    expect(maxAbsDiff(plain.logprobs[4], masked.logprobs[4])).toBeGreaterThan(1e-4);
    const bad = fail('forward', '--model', mixtral, '--ids', '1', '--mask-experts', '9');
    expect(bad.stderr).toMatch(/cannot mask expert 9; experts are 0\.\.3/);
  });

  it('refuses compositions that are the base alone or scale experts by nonsense; a mask renormalises shares', async () => {
    await initBackend();
    const llama = join(MODEL_FIXTURES, 'llama-gqa');
    const model = loadBase(llama, { warn: () => {} });
    for (const [name, seed] of [['a', 1], ['b', 2]] as const) {
      const e = randomExpert(model, name, ['q_proj', 'v_proj'], seed);
      await saveAdapter(e, join(tmp.dir, `share-${name}`));
      e.dispose();
    }
    model.dispose();
    const experts = ['--expert', `a=${join(tmp.dir, 'share-a')}`, '--expert', `b=${join(tmp.dir, 'share-b')}`];
    const forward = (...flags: string[]): string[] => ['forward', '--model', llama, '--ids', '3,1,4,1,5', '--json', ...flags];
    const profiles = join(tmp.dir, 'profiles.json');
    writeFileSync(profiles, JSON.stringify({ tasks: { none: { experts: { a: 'share-a', b: 'share-b' }, mask: ['a', 'b'] } } }));
    const cases: [string[], RegExp][] = [
      [[...experts, '--mask', 'a,b'], /mask: leaves none of the experts \[a, b\]; that is the base model alone/],
      [[...experts, '--weights', 'a=0,b=0'], /every weight is 0/],
      [[...experts, '--weights', 'a=-0.5,b=1.5'], /the weight of expert 'a' is -0\.5; weights are shares of the mix, ≥ 0/],
      [[...experts, '--weights', 'a=1e30'], /the weights sum to 1e\+30 .*must sum to 1/],
      [[...experts, '--weights', 'a=1', '--only', 'b'], /the experts kept \[b\] all have weight 0/],
      [[...experts, '--weights', 'a=0.5,a=0.5'], /'a' is given twice/],
      [['--profile', profiles, '--task', 'none'], /leaves none of the experts \[a, b\]/],
    ];
    for (const [flags, message] of cases) {
      const r = fail(...forward(...flags));
      expect(r.status, flags.join(' ')).toBe(1);
      expect(r.stderr, flags.join(' ')).toMatch(message);
    }
    const only = JSON.parse(run(...forward(...experts, '--only', 'a')));
    const masked = JSON.parse(run(...forward(...experts, '--weights', 'a=0.3,b=0.7', '--mask', 'b')));
    expect(maxAbsDiff(masked.logprobs.flat(), only.logprobs.flat())).toBeLessThan(1e-6);
  });

  it('a mistyped option is named with a suggestion; required options are marked; excess arguments are refused; --version', () => {
    const llama = join(MODEL_FIXTURES, 'llama-gqa');
    const typo = fail('forward', '--modle', llama, '--ids', '1');
    expect(typo.status).toBe(1);
    expect(typo.stderr).toMatch(/unknown option '--modle'\n\(Did you mean --model\?\)/);
    expect(typo.stderr).not.toMatch(/required option/);
    expect(fail('train-adapter', '--model', llama, '--out', join(tmp.dir, 'typo'), '--dtaa', 'x.csv').stderr).toMatch(/unknown option '--dtaa'\n\(Did you mean --data\?\)/);
    expect(fail('forward', '--ids', '1').stderr).toMatch(/required option '--model <dir>' not specified/);
    expect(fail('forward', 'extra', '--model', llama, '--ids', '1').stderr).toMatch(/too many arguments for 'forward'/);
    const help = run('train-adapter', '--help').replace(/\s+/g, ' ');
    // An option's help runs until the next option's flag.
    const marked = (flag: string): boolean => new RegExp(`${flag} (?:(?! --[a-z]).)*\\(required\\)`).test(help);
    for (const flag of ['--model <dir>', '--out <dir>', '--data <file>']) expect(marked(flag), flag).toBe(true);
    for (const flag of ['--name <name>', '--rank <r>']) expect(marked(flag), flag).toBe(false);
    const { version } = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8'));
    expect(run('--version')).toBe(`${version}\n`);
  });

  it('bad input fails with a clear message and a non-zero exit', () => {
    expect(fail('forward', '--model', join(MODEL_FIXTURES, 'llama-gqa'), '--ids', '1,x')).toMatchObject({ status: 1 });
    const r = fail('forward', '--model', join(MODEL_FIXTURES, 'llama-gqa'), '--ids', '1,500');
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/token id 500 is outside the vocabulary \(size 96\)/);
    const noTok = fail('forward', '--model', join(MODEL_FIXTURES, 'llama-gqa'), '--text', 'hi');
    expect(noTok.stderr).toMatch(/has no tokenizer\.json: pass token ids/);
    const badBackend = fail('forward', '--model', join(MODEL_FIXTURES, 'llama-gqa'), '--ids', '1', '--backend', 'tensorflow');
    expect(badBackend.status).toBe(1);
    expect(badBackend.stderr).toMatch(/tfjs-node/);
  });
});
