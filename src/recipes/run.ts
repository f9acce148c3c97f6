import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { writeJsonAtomic } from '../base/atomic.js';
import { holding, lockFolder } from '../base/lock.js';
import type { ProgressMode } from '../train/progress.js';
import { parseRecipe, type Recipe, type Step } from './format.js';
import { assertHeldOut } from './heldout.js';
import { outputOf, replayStep, runStep, type StepContext } from './steps.js';

/** Markers live here, one per completed step: `<run>/.recipe/<id>.json`. */
export const MARKER_DIR = '.recipe';

export interface RunRecipeOptions {
  /** Run folder; default runs/<recipe name>. */
  out?: string;
  progress?: ProgressMode;
  log?: (m: string) => void;
  print?: (text: string) => void;
}

export interface RecipeRun {
  recipe: Recipe;
  run: string;
  /** Step ids run this time, and those skipped as already complete. */
  ran: string[];
  skipped: string[];
  status: 'done' | 'interrupted';
}

/** Read and check a recipe file; paths resolve against its folder and the run folder. */
export function loadRecipe(file: string, run?: string): Recipe & { run: string } {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`${file}: cannot read the recipe (${e instanceof Error ? e.message : String(e)})`);
  }
  const name = typeof (json as { name?: unknown })?.name === 'string' ? (json as { name: string }).name : basename(file, extname(file));
  const runDir = resolve(run ?? join('runs', name));
  return { ...parseRecipe(json, file, { recipe: dirname(resolve(file)), run: runDir }), run: runDir };
}

/**
 * `molora run FILE`: the recipe's steps in order. A step whose output exists and whose marker
 * (written when it finished) is present is skipped; so a rerun after an interruption picks up at
 * the first unfinished step, and a training step there resumes from its last checkpoint. A
 * completed step whose fields changed since is an error, not a silent skip. An eval step that
 * scores a prompt one of the recipe's training files holds is an error (see heldout.ts). One
 * run at a time per run folder: it is locked while the steps run.
 */
export async function runRecipe(file: string, o: RunRecipeOptions = {}): Promise<RecipeRun> {
  const log = o.log ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const print = o.print ?? ((t: string) => process.stdout.write(t));
  const recipe = loadRecipe(file, o.out);
  return holding(lockFolder(recipe.run, log), () => runSteps(recipe, file, { run: recipe.run, progress: o.progress ?? 'auto', log, print }));
}

async function runSteps(recipe: Recipe & { run: string }, file: string, ctx: StepContext): Promise<RecipeRun> {
  const { log } = ctx;
  const result: RecipeRun = { recipe, run: recipe.run, ran: [], skipped: [], status: 'done' };
  const total = recipe.steps.length;
  // Refuse at once to score training prompts; an eval step whose files come from earlier steps is checked when it runs.
  const heldOutChecked = await assertHeldOut(recipe, file, undefined, { skipMissing: true });
  for (const [i, step] of recipe.steps.entries()) {
    const label = `[${i + 1}/${total}] ${step.type} '${step.id}'`;
    const marker = markerPath(recipe.run, step);
    const spec = specOf(step, recipe.run);
    if (existsSync(marker) && existsSync(outputOf(step))) {
      const done = JSON.parse(readFileSync(marker, 'utf8')) as { spec?: unknown };
      if (JSON.stringify(done.spec) !== JSON.stringify(spec)) {
        throw new Error(`${file}: step '${step.id}' (${step.type}) changed since it completed in ${recipe.run}; delete ${step.out} and ${marker}, or run with another --out`);
      }
      log(`${label}: complete, skipping`);
      replayStep(step, ctx);
      result.skipped.push(step.id);
      continue;
    }
    if (step.type === 'eval' && !heldOutChecked.has(step.id)) await assertHeldOut(recipe, file, [step]);
    log(`${label}: running`);
    const started = Date.now();
    let status: RecipeRun['status'];
    try {
      status = await runStep(step, ctx);
    } catch (e) {
      throw new Error(`${file}: step '${step.id}' (${step.type}) failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (status === 'interrupted') {
      log(`${label}: interrupted; run the recipe again to resume`);
      return { ...result, status };
    }
    if (!existsSync(outputOf(step))) throw new Error(`${file}: step '${step.id}' (${step.type}) finished without writing ${outputOf(step)}`);
    writeJsonAtomic(marker, { type: step.type, spec, finished: new Date().toISOString(), seconds: (Date.now() - started) / 1000 });
    result.ran.push(step.id);
    log(`${label}: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  return result;
}

function markerPath(run: string, step: Step): string {
  return join(run, MARKER_DIR, `${step.id.replace(/[^A-Za-z0-9._-]+/g, '_')}.json`);
}

/** What identifies a step's work: its type, output and fields, with run-folder paths as `$run/…` so a moved run folder still matches. */
function specOf(step: Step, run: string): unknown {
  const json = JSON.stringify({ type: step.type, out: step.out, fields: step.fields });
  return JSON.parse(json.split(JSON.stringify(run).slice(1, -1)).join('$run'));
}
