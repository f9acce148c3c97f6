import { existsSync } from 'node:fs';
import { openCsv } from '../data/csv.js';
import { DataError } from '../data/errors.js';
import type { Recipe, Step, StepType } from './format.js';

/**
 * Held-out scoring: an eval step of a recipe must not score a prompt that any training step of
 * the same recipe reads (its `data` or `valData`), or its exact match measures memory, not skill.
 * Prompts are compared exactly, after trimming surrounding whitespace; a step's prompts are its
 * prompt column, else its text column (default `text`, as the trainers read it).
 */
export const TRAINING_STEPS: readonly StepType[] = ['pretrain', 'train-adapter', 'train-gate', 'train-moe'];

/** One CSV a step reads prompts from. */
export interface PromptFile {
  step: Step;
  file: string;
  column: string;
}

/** An eval prompt that a training file also holds, and how many of the eval file's prompts do. */
export interface SharedPrompt {
  prompt: string;
  eval: PromptFile & { line: number };
  train: PromptFile & { line: number };
  /** Distinct eval prompts found in training, of all distinct eval prompts. */
  shared: number;
  evalPrompts: number;
}

export class HeldOutError extends Error {
  constructor(
    readonly recipeFile: string,
    readonly found: SharedPrompt,
  ) {
    const { eval: e, train: t } = found;
    super(
      `${recipeFile}: step '${e.step.id}' (eval) scores prompts the recipe trains on: ${found.shared} of the ${found.evalPrompts} distinct prompts in ${e.file} ` +
        `also occur in its training data, e.g. ${JSON.stringify(found.prompt)} (${e.file}:${e.line}; ${t.file}:${t.line}, read by step '${t.step.id}' (${t.step.type})). ` +
        'Score held-out rows: remove those prompts from the eval file or from the training files.',
    );
    this.name = 'HeldOutError';
  }
}

function columnOf(step: Step): string {
  return (step.fields.promptColumn ?? step.fields.textColumn ?? 'text') as string;
}

/** The files the recipe's training steps read (data and valData), each with its prompt column. */
export function trainingFiles(recipe: Recipe): PromptFile[] {
  return recipe.steps
    .filter((s) => TRAINING_STEPS.includes(s.type))
    .flatMap((step) => [step.fields.data, step.fields.valData].filter((f): f is string => typeof f === 'string').map((file) => ({ step, file, column: columnOf(step) })));
}

/** Calls `visit` with each row's trimmed prompt and line until it returns false. */
async function forEachPrompt(f: PromptFile, visit: (prompt: string, line: number) => boolean): Promise<void> {
  const table = await openCsv(f.file, { skipBadRows: f.step.fields.skipBadRows === true });
  try {
    const col = table.header.indexOf(f.column);
    if (col < 0) throw new DataError(`no column '${f.column}' for step '${f.step.id}' (columns: ${table.header.join(', ')})`, f.file, table.headerLine);
    for await (const row of table.rows) {
      if (row.fields.length > 0 && !visit(row.fields[col]!.trim(), row.line)) break;
    }
  } finally {
    await table.close();
  }
}

/** The first prompt of an eval step's data that a training file of the recipe holds; null when none does. */
export async function findSharedPrompt(recipe: Recipe, evalStep: Step): Promise<SharedPrompt | null> {
  const ev: PromptFile = { step: evalStep, file: evalStep.fields.data as string, column: columnOf(evalStep) };
  const lines = new Map<string, number>();
  await forEachPrompt(ev, (p, line) => {
    if (!lines.has(p)) lines.set(p, line);
    return true;
  });
  const shared = new Set<string>();
  let first = null as Omit<SharedPrompt, 'shared' | 'evalPrompts'> | null;
  for (const t of trainingFiles(recipe)) {
    await forEachPrompt(t, (p, line) => {
      if (!lines.has(p)) return true;
      shared.add(p);
      first ??= { prompt: p, eval: { ...ev, line: lines.get(p)! }, train: { ...t, line } };
      return shared.size < lines.size;
    });
  }
  return first && { ...first, shared: shared.size, evalPrompts: lines.size };
}

/**
 * Throws a HeldOutError naming the recipe, the step, both files and a shared prompt when one of
 * `steps` (default: every eval step) scores a training prompt. With `skipMissing`, an eval step
 * whose files do not all exist yet (an earlier step writes them) is left out. Returns the ids of
 * the steps checked.
 */
export async function assertHeldOut(recipe: Recipe, recipeFile: string, steps?: Step[], o: { skipMissing?: boolean } = {}): Promise<Set<string>> {
  const checked = new Set<string>();
  const training = trainingFiles(recipe).map((t) => t.file);
  for (const step of steps ?? recipe.steps.filter((s) => s.type === 'eval')) {
    if (o.skipMissing && ![step.fields.data as string, ...training].every((f) => existsSync(f))) continue;
    const found = await findSharedPrompt(recipe, step);
    if (found) throw new HeldOutError(recipeFile, found);
    checked.add(step.id);
  }
  return checked;
}
