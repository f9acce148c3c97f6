import { isAbsolute, join } from 'node:path';
import { INIT_BASE_OPTIONS } from '../base/init-options.js';
import { checkFields, int, list, namedPaths, OptionValueError, path, paths, required, type Table, type Values } from '../base/options.js';
import { TRAIN_ADAPTER_OPTIONS } from '../adapters/lora-options.js';
import { readTemplateArg } from '../data/template.js';
import { TRAIN_GATE_OPTIONS } from '../gating/gate-options.js';
import { TRAIN_MOE_OPTIONS, UPCYCLE_OPTIONS } from '../moe/moe-options.js';
import { COLUMN_OPTIONS, PRETRAIN_OPTIONS } from '../train/train-options.js';
import { EVAL_SETTINGS } from './eval-step.js';

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

// Recipe-only steps: eval and gates score with the options of src/recipes/eval-step.ts and gateStatsOn.
const EVAL_OPTIONS = {
  model: required(path('base model folder')),
  ...COLUMN_OPTIONS,
  adapters: paths('plain adapters, always on'),
  experts: namedPaths('MoLE experts {"name": "dir"}'),
  gate: path('gate folder'),
  settings: list(`settings to score: ${EVAL_SETTINGS.join(', ')}`),
  samples: int('test prompts per task to decode', 0),
  batchSize: int('sequences per batch', 1),
  seqLen: int('longest sequence', 2),
} as const;

const GATES_OPTIONS = {
  model: required(path('base model folder')),
  ...COLUMN_OPTIONS,
  experts: required(namedPaths('MoLE experts {"name": "dir"}')),
  gate: required(path('gate folder')),
  seqLen: int('longest sequence (default 256)', 2),
} as const;

const REPORT_OPTIONS = { dir: path('run folder to report (default: the run folder)') } as const;

/** Each step type's fields (besides type, id and out): the option table of its CLI command. */
const STEP_OPTIONS = {
  'init-base': INIT_BASE_OPTIONS,
  pretrain: PRETRAIN_OPTIONS,
  'train-adapter': TRAIN_ADAPTER_OPTIONS,
  'train-gate': TRAIN_GATE_OPTIONS,
  upcycle: UPCYCLE_OPTIONS,
  'train-moe': TRAIN_MOE_OPTIONS,
  eval: EVAL_OPTIONS,
  gates: GATES_OPTIONS,
  report: REPORT_OPTIONS,
} as const satisfies Record<StepType, Table>;

export type StepOptions = typeof STEP_OPTIONS;

/** A step of one type after checking, with every path made absolute. */
export interface StepOf<K extends StepType> {
  id: string;
  type: K;
  out: string;
  /** The step's fields under their option names (aliases renamed); `experts` as [name, dir] pairs in file order. */
  fields: Values<StepOptions[K]>;
}

export type Step = { [K in StepType]: StepOf<K> }[StepType];

/** A step's fields as a plain record, for code that reads fields shared by several step types (data, columns). */
export function fieldsOf(step: Step): Readonly<Record<string, unknown>> {
  return step.fields;
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
    const type = STEP_TYPES.find((t) => t === raw.type) ?? fail(`${where} has unknown type ${JSON.stringify(raw.type)} (types: ${STEP_TYPES.join(', ')})`);
    const out = raw.out ?? (type === 'report' ? 'report.html' : undefined);
    if (typeof out !== 'string' || out === '') return fail(`${where} (${type}) needs "out": the path it writes, relative to the run folder`);
    const id = raw.id ?? out;
    if (typeof id !== 'string' || id === '') return fail(`${where} (${type}): "id" must be a non-empty string`);
    const named = `step '${id}' (${type})`;
    if (ids.has(id)) fail(`${named}: id used twice (give each step its own "id" or "out")`);
    ids.add(id);
    const rest = Object.fromEntries(Object.entries(raw).filter(([k]) => !['type', 'id', 'out'].includes(k)));
    const fields = checkFields(STEP_OPTIONS[type], rest, { resolvePath, readTemplate: (v) => readTemplate(v, resolvePath) }, (msg) => fail(`${named}${msg.startsWith('needs ') ? ' ' : ': '}${msg}`));
    // checkFields checked `fields` against STEP_OPTIONS[type], the table Step pairs with that type.
    return { id, type, out: isAbsolute(out) ? out : join(roots.run, out), fields } as Step;
  });
  const name = json.name ?? undefined;
  if (name !== undefined && typeof name !== 'string') fail('"name" must be a string');
  const description = json.description;
  if (description !== undefined && typeof description !== 'string') fail('"description" must be a string');
  return { name: (name as string | undefined) ?? 'recipe', description: description as string | undefined, steps };
}

/** A template field's text: as given, or read from "@file" (relative like any recipe path). */
function readTemplate(v: string, resolvePath: (p: string) => string): string {
  try {
    return v.startsWith('@') ? readTemplateArg(`@${resolvePath(v.slice(1))}`) : v;
  } catch (e) {
    throw new OptionValueError((e as Error).message);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
