import { existsSync } from 'node:fs';
import { DataError } from '../data/errors.js';
import { cellText, parseMessages } from '../data/row-format.js';
import { openRows, type DataFileFormat } from '../data/rows.js';
import { columnTemplate, parseTemplate, renderTemplate, templateColumns } from '../data/template.js';
import { fieldsOf, type Recipe, type Step, type StepType } from './format.js';

/**
 * Held-out scoring: an eval step of a recipe must not score a prompt that any training step of
 * the same recipe reads (its `data` or `valData`), or its exact match measures memory, not skill.
 * Prompts are compared exactly, after trimming surrounding whitespace; a step's prompts are its
 * prompt (its prompt column or template, filled from the row), the user column or the messages
 * before the last assistant turn of chat rows, else its text column (default `text`, as the
 * trainers read it).
 */
export const TRAINING_STEPS: readonly StepType[] = ['pretrain', 'train-adapter', 'train-gate', 'train-moe'];

/** One file a step reads prompts from; `column` names where they are (a column, or a template). */
export interface PromptFile {
  step: Step;
  file: string;
  column: string;
}

/** Where a step's prompts are: the columns to read and how they make the prompt. */
interface PromptSource {
  label: string;
  columns: string[];
  prompt(values: unknown[]): string;
}

function promptSource(step: Step): PromptSource {
  const f = fieldsOf(step) as Record<string, string | undefined>;
  if (f.messagesColumn !== undefined) {
    const column = f.messagesColumn;
    return {
      label: column,
      columns: [column],
      prompt: ([v]) => {
        const messages = parseMessages(v, column);
        const last = messages.map((m) => m.role).lastIndexOf('assistant');
        return JSON.stringify(messages.slice(0, last < 0 ? messages.length : last).map((m) => [m.role, m.content]));
      },
    };
  }
  const template =
    f.userColumn !== undefined
      ? columnTemplate(f.userColumn)
      : f.promptTemplate !== undefined
        ? parseTemplate(f.promptTemplate, `step '${step.id}': promptTemplate`)
        : columnTemplate(f.promptColumn ?? f.textColumn ?? 'text');
  const columns = templateColumns(template);
  const single = template.parts.length === 1 && columns.length === 1;
  return {
    label: single ? columns[0]! : `promptTemplate ${JSON.stringify(f.promptTemplate)}`,
    columns,
    prompt: (values) => renderTemplate(template, (c) => cellText(values[columns.indexOf(c)], c)),
  };
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

/** The files the recipe's training steps read (data and valData), each with where its prompts are. */
export function trainingFiles(recipe: Recipe): PromptFile[] {
  return recipe.steps
    .filter((s) => TRAINING_STEPS.includes(s.type))
    .flatMap((step) => [fieldsOf(step).data, fieldsOf(step).valData].filter((f): f is string => typeof f === 'string').map((file) => ({ step, file, column: promptSource(step).label })));
}

/**
 * Calls `visit` with each row's trimmed prompt and line until it returns false. Rows whose prompt
 * cannot be read (a value missing from a JSONL object) are left to the step itself to report.
 */
async function forEachPrompt(f: PromptFile, visit: (prompt: string, line: number) => boolean): Promise<void> {
  const source = promptSource(f.step);
  const rows = await openRows(f.file, { skipBadRows: fieldsOf(f.step).skipBadRows === true, format: fieldsOf(f.step).dataFormat as DataFileFormat | undefined });
  try {
    const missing = source.columns.find((c) => !rows.columns.includes(c));
    if (missing !== undefined) throw new DataError(`no column '${missing}' for step '${f.step.id}' (columns: ${rows.columns.join(', ')})`, f.file, rows.columnsLine);
    for await (const row of rows.select(source.columns.map((name) => ({ name })))) {
      if (row.values === null) continue;
      let prompt: string;
      try {
        prompt = source.prompt(row.values).trim();
      } catch {
        continue;
      }
      if (!visit(prompt, row.line)) break;
    }
  } finally {
    await rows.close();
  }
}

/** The first prompt of an eval step's data that a training file of the recipe holds; null when none does. */
export async function findSharedPrompt(recipe: Recipe, evalStep: Step): Promise<SharedPrompt | null> {
  const ev: PromptFile = { step: evalStep, file: fieldsOf(evalStep).data as string, column: promptSource(evalStep).label };
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
    if (o.skipMissing && ![fieldsOf(step).data as string, ...training].every((f) => existsSync(f))) continue;
    const found = await findSharedPrompt(recipe, step);
    if (found) throw new HeldOutError(recipeFile, found);
    checked.add(step.id);
  }
  return checked;
}
