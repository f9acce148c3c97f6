import { isAbsolute, join } from 'node:path';
import { readTemplateArg } from '../data/template.js';

/**
 * The recipe file: a JSON object `{ "name"?, "description"?, "steps": [Step, …] }`. Each step has
 * a `type`, an optional `id` (default: its `out`), an `out` and the fields its type takes. Fields
 * are checked here, before anything runs, so a typo fails at once and names the step.
 *
 * Paths: `out` is relative to the run folder. Every other path is relative to the recipe file's
 * folder, except those starting with `$run/`, which point into the run folder (earlier steps'
 * outputs). Absolute paths stay as they are. Template fields (promptTemplate, completionTemplate,
 * system, chatTemplate) are text, or "@path" to read them from a file, resolved the same way.
 */
export const STEP_TYPES = ['init-base', 'pretrain', 'train-adapter', 'train-gate', 'upcycle', 'train-moe', 'eval', 'gates', 'report'] as const;
export type StepType = (typeof STEP_TYPES)[number];

type Kind = 'string' | 'path' | 'template' | 'number' | 'int' | 'bool' | 'strings' | 'paths' | 'named-paths' | 'temperature';

// The trainer and data fields every training step shares (LmTrainOptions, CLI names in camelCase).
export const TRAINER: Record<string, Kind> = {
  steps: 'int',
  epochs: 'int',
  lr: 'number',
  batchSize: 'int',
  gradAccum: 'int',
  seqLen: 'int',
  warmup: 'int',
  schedule: 'string',
  weightDecay: 'number',
  clip: 'number',
  evalEvery: 'int',
  saveEvery: 'int',
  seed: 'int',
  valSplit: 'number',
  valData: 'path',
  truncate: 'string',
  skipBadRows: 'bool',
};
// The row-format fields (the CLI's format flags); templates given as "@file" are read from that file.
export const COLUMNS: Record<string, Kind> = {
  textColumn: 'string',
  promptColumn: 'string',
  completionColumn: 'string',
  promptTemplate: 'template',
  completionTemplate: 'template',
  messagesColumn: 'string',
  userColumn: 'string',
  assistantColumn: 'string',
  system: 'template',
  chatTemplate: 'template',
  taskColumn: 'string',
  dataFormat: 'string',
};

/** Each step type's fields (besides type, id and out) and which of them it needs. */
const FIELDS: Record<StepType, { required: string[]; fields: Record<string, Kind> }> = {
  'init-base': {
    required: ['arch', 'layers', 'hidden', 'heads', 'ffn'],
    fields: { arch: 'string', layers: 'int', hidden: 'int', heads: 'int', kvHeads: 'int', ffn: 'int', vocab: 'int', maxPositions: 'int', tie: 'bool', seed: 'int' },
  },
  pretrain: { required: ['model', 'data'], fields: { model: 'path', data: 'path', ...COLUMNS, ...TRAINER } },
  'train-adapter': {
    required: ['model', 'data'],
    fields: { model: 'path', data: 'path', name: 'string', rank: 'int', alpha: 'number', dropout: 'number', rslora: 'bool', targets: 'strings', ...COLUMNS, ...TRAINER },
  },
  'train-gate': {
    required: ['model', 'data', 'experts'],
    fields: {
      model: 'path',
      data: 'path',
      experts: 'named-paths',
      router: 'string',
      routingLoss: 'string',
      routerL2: 'number',
      level: 'string',
      granularity: 'string',
      topK: 'int',
      balance: 'number',
      temperature: 'temperature',
      maskDropout: 'number',
      ...COLUMNS,
      ...TRAINER,
    },
  },
  upcycle: { required: ['model', 'experts', 'topK'], fields: { model: 'path', experts: 'int', topK: 'int', shared: 'int', noise: 'number', seed: 'int' } },
  'train-moe': {
    required: ['model', 'data'],
    fields: { model: 'path', data: 'path', routerOnly: 'bool', auxCoef: 'number', zCoef: 'number', balanceBias: 'number', ...COLUMNS, ...TRAINER },
  },
  eval: {
    required: ['model', 'data'],
    fields: { model: 'path', data: 'path', adapters: 'paths', experts: 'named-paths', gate: 'path', settings: 'strings', samples: 'int', batchSize: 'int', seqLen: 'int', ...COLUMNS },
  },
  gates: { required: ['model', 'data', 'experts', 'gate'], fields: { model: 'path', data: 'path', experts: 'named-paths', gate: 'path', seqLen: 'int', ...COLUMNS } },
  report: { required: [], fields: { dir: 'path' } },
};

/** A step after checking, with every path made absolute. */
export interface Step {
  id: string;
  type: StepType;
  out: string;
  /** The step's fields, paths resolved; `experts` as [name, dir] pairs in file order. */
  fields: Record<string, unknown>;
}

export interface Recipe {
  name: string;
  description?: string;
  steps: Step[];
}

export class RecipeError extends Error {}

export interface PathRoots {
  /** The recipe file's folder. */
  recipe: string;
  /** The run folder. */
  run: string;
}

/** Check a parsed recipe file and resolve its paths; every error names the file and the step. */
export function parseRecipe(json: unknown, file: string, roots: PathRoots): Recipe {
  const fail = (msg: string): never => {
    throw new RecipeError(`${file}: ${msg}`);
  };
  if (!isObject(json)) return fail('a recipe is a JSON object with a "steps" list');
  for (const k of Object.keys(json)) if (!['name', 'description', 'steps'].includes(k)) fail(`unknown top-level key '${k}' (allowed: name, description, steps)`);
  if (!Array.isArray(json.steps) || json.steps.length === 0) fail('"steps" must be a non-empty list');
  const resolvePath = (p: string): string => (p.startsWith('$run/') ? join(roots.run, p.slice(5)) : isAbsolute(p) ? p : join(roots.recipe, p));
  const ids = new Set<string>();
  const steps = (json.steps as unknown[]).map((raw, i): Step => {
    const where = `step ${i + 1}`;
    if (!isObject(raw)) return fail(`${where} is not an object`);
    const type = raw.type;
    if (typeof type !== 'string' || !(STEP_TYPES as readonly string[]).includes(type)) {
      return fail(`${where} has unknown type ${JSON.stringify(type)} (types: ${STEP_TYPES.join(', ')})`);
    }
    const spec = FIELDS[type as StepType];
    const out = raw.out ?? (type === 'report' ? 'report.html' : undefined);
    if (typeof out !== 'string' || out === '') return fail(`${where} (${type}) needs "out": the path it writes, relative to the run folder`);
    const id = raw.id ?? out;
    if (typeof id !== 'string' || id === '') return fail(`${where} (${type}): "id" must be a non-empty string`);
    const named = `step '${id}' (${type})`;
    if (ids.has(id)) fail(`${named}: id used twice (give each step its own "id" or "out")`);
    ids.add(id);
    for (const k of spec.required) if (raw[k] === undefined) fail(`${named} needs "${k}"`);
    const fields: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(raw)) {
      if (k === 'type' || k === 'id' || k === 'out') continue;
      const kind = spec.fields[k];
      if (!kind) fail(`${named}: unknown field '${k}' (fields: ${Object.keys(spec.fields).join(', ')})`);
      fields[k] = checkField(v, kind!, (msg) => fail(`${named}: "${k}" ${msg}`), resolvePath);
    }
    return { id, type: type as StepType, out: isAbsolute(out) ? out : join(roots.run, out), fields };
  });
  const name = json.name ?? undefined;
  if (name !== undefined && typeof name !== 'string') fail('"name" must be a string');
  const description = json.description;
  if (description !== undefined && typeof description !== 'string') fail('"description" must be a string');
  return { name: (name as string | undefined) ?? 'recipe', description: description as string | undefined, steps };
}

function checkField(v: unknown, kind: Kind, fail: (msg: string) => never, resolvePath: (p: string) => string): unknown {
  switch (kind) {
    case 'string':
      return typeof v === 'string' ? v : fail('must be a string');
    case 'path':
      return typeof v === 'string' && v !== '' ? resolvePath(v) : fail('must be a path');
    case 'template':
      if (typeof v !== 'string') return fail('must be a string (or "@file")');
      try {
        return v.startsWith('@') ? readTemplateArg(`@${resolvePath(v.slice(1))}`) : v;
      } catch (e) {
        return fail((e as Error).message);
      }
    case 'number':
      return typeof v === 'number' && Number.isFinite(v) ? v : fail('must be a number');
    case 'int':
      return Number.isInteger(v) ? v : fail('must be an integer');
    case 'bool':
      return typeof v === 'boolean' ? v : fail('must be true or false');
    case 'strings':
      return Array.isArray(v) && v.every((s) => typeof s === 'string') ? v : fail('must be a list of strings');
    case 'paths':
      return Array.isArray(v) && v.every((s) => typeof s === 'string' && s !== '') ? v.map((s: string) => resolvePath(s)) : fail('must be a list of paths');
    case 'named-paths':
      if (!isObject(v) || Object.keys(v).length === 0) return fail('must be an object {"name": "path", …}');
      return Object.entries(v).map(([n, p]) => (typeof p === 'string' && p !== '' ? [n, resolvePath(p)] : fail(`entry '${n}' must be a path`)));
    case 'temperature':
      return v === 'learn' || (typeof v === 'number' && v > 0) ? v : fail("must be 'learn' or a positive number");
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
