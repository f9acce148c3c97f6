import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_LORA, loraConfigJson } from '../src/adapters/config.js';
import { loraConfigFrom, loraConfigOf, TRAIN_ADAPTER_OPTIONS, LORA_OPTIONS, withFormerNames, type LoraConfigInput } from '../src/adapters/lora-options.js';
import type { Table } from '../src/base/options.js';
import { parseTemperature, TRAIN_GATE_OPTIONS } from '../src/gating/gate-options.js';
import { TRAIN_MOE_OPTIONS } from '../src/moe/moe-options.js';
import { parseRecipe, RecipeError } from '../src/recipes/format.js';
import * as api from '../src/index.js';

// The CLI as users run it: the built dist/ (npm test builds first).
const CLI = join(import.meta.dirname, '..', 'dist', 'cli', 'main.js');
const help = (command: string): string => execFileSync('node', [CLI, command, '--help'], { encoding: 'utf8' });

const kebab = (name: string): string => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const COMMANDS: [string, Table][] = [['train-adapter', TRAIN_ADAPTER_OPTIONS], ['train-gate', TRAIN_GATE_OPTIONS], ['train-moe', TRAIN_MOE_OPTIONS]];

const roots = { recipe: '/recipes', run: '/runs/r' };
const step = (type: string, fields: Record<string, unknown>): unknown => ({ steps: [{ type, out: 'x', ...fields }] });
const parse = (type: string, fields: Record<string, unknown>) => parseRecipe(step(type, fields), 'r.json', roots).steps[0]!;
const refusal = (type: string, fields: Record<string, unknown>): string => {
  try {
    parse(type, fields);
  } catch (e) {
    if (e instanceof RecipeError) return e.message;
    throw e;
  }
  throw new Error('accepted');
};
const REQUIRED: Record<string, Record<string, unknown>> = {
  'train-adapter': { model: 'm', data: 'd.csv' },
  'train-gate': { model: 'm', data: 'd.csv', experts: { a: 'ea', b: 'eb' } },
  'train-moe': { model: 'm', data: 'd.csv' },
};

describe('option tables', () => {
  it.each(COMMANDS)('%s: every flag in --help comes from its table, and every table option is a flag', (command, table) => {
    const flags = [...help(command).matchAll(/^\s{2}(--[a-z0-9-]+)/gm)].map((m) => m[1])
      // --help, and the two every command takes (main.ts), come from no table.
      .filter((f) => !['--help', '--backend', '--threads'].includes(f!));
    const fromTable = Object.entries(table).filter(([, o]) => o.scope !== 'recipe').map(([name, o]) => `--${o.flag ?? kebab(name)}`);
    expect(flags.sort()).toEqual(fromTable.sort());
  });

  it.each(COMMANDS)('%s: a recipe step takes exactly its table\'s fields (the CLI-only ones aside)', (command, table) => {
    const listed = /\(fields: ([^)]*)\)/.exec(refusal(command, { ...REQUIRED[command], bogus: 1 }))![1]!.split(', ');
    expect(listed.sort()).toEqual(Object.entries(table).filter(([, o]) => o.scope !== 'cli').map(([k]) => k).sort());
  });

  it('accepts PEFT camelCase aliases under the one name, and refuses a setting spelled twice', () => {
    const s = parse('train-adapter', { ...REQUIRED['train-adapter'], r: 4, loraAlpha: 8, targetModules: ['q_proj'], loraDropout: 0.1, useRslora: true, layersToTransform: [0, 1] });
    expect(s.fields).toMatchObject({ rank: 4, alpha: 8, targets: ['q_proj'], dropout: 0.1, rslora: true, layers: [0, 1] });
    expect(refusal('train-adapter', { ...REQUIRED['train-adapter'], rank: 4, r: 4 })).toMatch(/'rank' and 'r' are the same setting; give one/);
  });

  it('refuses an unknown field, naming the closest one', () => {
    expect(refusal('train-adapter', { ...REQUIRED['train-adapter'], ranks: 4 })).toMatch(/step 'x' \(train-adapter\): unknown field 'ranks' \(did you mean 'rank'\?\)/);
    expect(refusal('train-gate', { ...REQUIRED['train-gate'], routerl2: 0.1 })).toMatch(/unknown field 'routerl2' \(did you mean 'routerL2'\?\)/);
  });

  it('checks values by kind: ranges, choices, integer bounds', () => {
    expect(parse('train-adapter', { ...REQUIRED['train-adapter'], layers: '0-2,5' }).fields).toMatchObject({ layers: [0, 1, 2, 5] });
    expect(refusal('train-adapter', { ...REQUIRED['train-adapter'], init: 'xavier' })).toMatch(/"init" expected one of kaiming, gaussian, got 'xavier'/);
    expect(refusal('train-adapter', { ...REQUIRED['train-adapter'], rank: 0 })).toMatch(/"rank" must be an integer ≥ 1/);
    expect(refusal('train-gate', { ...REQUIRED['train-gate'], router: 'moe' })).toMatch(/"router" expected one of prompt, centroid, mole/);
  });

  it("parses a temperature one way: 'learn' or a positive number, from a flag's text or a recipe's JSON", () => {
    expect(parseTemperature('learn')).toBe('learn');
    expect(parseTemperature('0.5')).toBe(0.5);
    expect(parseTemperature(2)).toBe(2);
    for (const bad of ['0', -1, '', 'hot', null]) expect(() => parseTemperature(bad)).toThrow(/must be 'learn' or a positive number/);
    expect(parse('train-gate', { ...REQUIRED['train-gate'], router: 'mole', temperature: 'learn' }).fields).toMatchObject({ temperature: 'learn' });
  });

  it('maps every LoRA option with a PEFT key to that key of adapter_config.json', () => {
    const s = { rank: 4, alpha: 12, dropout: 0.25, rslora: true, targets: ['k_proj'], layers: [1], init: 'gaussian' as const };
    const json = loraConfigJson({ ...DEFAULT_LORA, ...loraConfigOf(s) });
    expect(json).toMatchObject({ r: 4, lora_alpha: 12, lora_dropout: 0.25, use_rslora: true, target_modules: ['k_proj'], layers_to_transform: [1], init_lora_weights: 'gaussian' });
    for (const [name, o] of Object.entries(LORA_OPTIONS)) if (o.peft && name in s) expect(json).toHaveProperty(o.peft);
    // The defaults are the table's.
    expect([DEFAULT_LORA.rank, DEFAULT_LORA.alpha]).toEqual([LORA_OPTIONS.rank.default, LORA_OPTIONS.alpha.default]);
  });
});

describe('LoRA settings through the API (loraConfigFrom)', () => {
  it('takes every former name the option table lists as an alias, under the field it names', () => {
    const values: Record<string, unknown> = { rank: 4, alpha: 12, dropout: 0.25, rslora: true, targets: ['k_proj'], layers: [1, 2] };
    const aliased = Object.entries(LORA_OPTIONS as Table).flatMap(([name, o]) => (o.aliases ?? []).map((a): [string, string] => [a, name]));
    expect(aliased.map(([, name]) => name).sort()).toEqual(Object.keys(values).sort());
    const old = Object.fromEntries(aliased.map(([a, name]) => [a, values[name]]));
    expect(loraConfigFrom(old)).toEqual({ ...DEFAULT_LORA, ...values });
    // What scripts written before the rename pass: the defaults spread, then the former names.
    const spread: LoraConfigInput = { ...DEFAULT_LORA, r: 4, loraAlpha: 12, targetModules: 'model\\..*_proj' };
    expect(loraConfigFrom(spread)).toMatchObject({ rank: 4, alpha: 12, targets: 'model\\..*_proj' });
  });

  it('refuses one setting under two names with two values, and an unknown name; the same value twice is fine', () => {
    expect(() => loraConfigFrom({ rank: 4, r: 2 }, 'my script')).toThrow(/my script: 'rank' and 'r' are the same setting; give one \(they differ: 4 and 2\)/);
    expect(() => loraConfigFrom({ targetModules: ['q_proj'], targets: ['v_proj'] })).toThrow(/'targetModules' and 'targets' are the same setting/);
    expect(loraConfigFrom({ alpha: 8, loraAlpha: 8 }).alpha).toBe(8);
    expect(() => loraConfigFrom({ lora_alpha: 8 } as LoraConfigInput)).toThrow(/unknown LoRA setting\(s\) 'lora_alpha' \(settings: rank, alpha, dropout/);
    expect(() => loraConfigFrom({ r: 0 })).toThrow(/rank \(r\) must be a positive integer, got 0/);
  });
});

describe('a config read under its former names (withFormerNames)', () => {
  it('answers r, loraAlpha, targetModules… with the fields they name, and JSON and spreads see only the fields', () => {
    const config = loraConfigFrom({ rank: 4, alpha: 12, dropout: 0.1, rslora: true, targets: ['q_proj'], layers: [0, 2] });
    const read = withFormerNames(config);
    expect([read.r, read.loraAlpha, read.loraDropout, read.useRslora, read.targetModules, read.layersToTransform]).toEqual([4, 12, 0.1, true, ['q_proj'], [0, 2]]);
    // Every alias the table lists reads back (a new alias needs no second list here).
    for (const [field, option] of Object.entries(LORA_OPTIONS)) {
      for (const alias of (option as { aliases?: string[] }).aliases ?? []) {
        if (field in config) expect((read as unknown as Record<string, unknown>)[alias]).toEqual(config[field as keyof typeof config]);
      }
    }
    expect(JSON.parse(JSON.stringify(read))).toEqual(JSON.parse(JSON.stringify(config)));
    expect(Object.keys({ ...read })).toEqual(Object.keys(config));
  });
});

describe('the package entry', () => {
  it('exports every option table the *-options.ts files define, so API users see defaults and help', () => {
    const src = join(import.meta.dirname, '..', 'src');
    const files = readdirSync(src, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('-options.ts'));
    const tables = files.flatMap((f) => [...readFileSync(join(src, f), 'utf8').matchAll(/^export const ([A-Z_]+_OPTIONS) = \{/gm)].map((m) => m[1]!));
    expect(tables.length).toBeGreaterThanOrEqual(10);
    expect(tables.filter((t) => !(t in api))).toEqual([]);
    expect(api.defaultOf(api.TRAINER_OPTIONS.lr)).toBe(1e-3);
  });
});
