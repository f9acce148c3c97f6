import type { Command } from 'commander';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CORPUS_DOCS, CORPUS_FILE, writeCorpus } from '../data/corpus.js';
import { writeDemoData } from '../data/demo.js';
import { MOE_DATA_DIR, writeMoeDemoData } from '../data/moe-demo.js';
import { runRecipe } from '../recipes/run.js';
import type { ProgressMode } from '../train/progress.js';
import { choice, int } from './args.js';

/** The shipped recipes folder (next to dist/ in the package). */
export const RECIPES_DIR = fileURLToPath(new URL('../../recipes/', import.meta.url));
/** The shipped tiny base, inside the installed package. */
export const SHIPPED_BASE = fileURLToPath(new URL('../../models/tiny-llama', import.meta.url));

/** `run`, `quickstart` and `demo-data`. */
export function registerRecipeCommands(program: Command): void {
  const progress = (c: Command): Command => c.option('--progress <mode>', 'auto, bar, lines or off', choice(['auto', 'bar', 'lines', 'off'] as const), 'auto');
  progress(
    program
      .command('run')
      .description('Run a JSON recipe\'s steps in order (init-base, pretrain, train-adapter, train-gate, upcycle, eval, gates, report); steps already complete are skipped, an interrupted one resumes.')
      .argument('<file>', 'recipe JSON (see RECIPES.md)')
      .option('--out <dir>', 'run folder (default: runs/<recipe name>)'),
  ).action((file: string, o: { out?: string; progress: ProgressMode }) => runAndReport(file, o));

  progress(
    program
      .command('quickstart')
      .description('The whole mission on the shipped tiny base and demo data: one LoRA per task, a prompt router over them, every setting scored on held-out inputs with and without masks, summary.json and report.html (= molora run recipes/quickstart.json).')
      .option('--out <dir>', 'run folder', 'runs/quickstart'),
  ).action((o: { out: string; progress: ProgressMode }) => runAndReport(`${RECIPES_DIR}quickstart.json`, o));

  program
    .command('demo-data')
    .description("Write the demo CSVs: the quickstart's task files (prompt,completion,task; tasks never named in the prompt), gate.csv for its router and test.csv / test-unlabelled.csv with held-out inputs; corpus.csv (text), the pretraining corpus of the tiny base; and moe/train.csv, moe/test.csv (held-out words) for recipes/moe-upcycle.json.")
    .option('--out <dir>', 'folder to write', 'recipes/data')
    .option('--rows <n>', 'training rows per task', int(1), 400)
    .option('--gate-rows <n>', "rows of the router's file", int(1), 1200)
    .option('--test-rows <n>', 'held-out test rows per task', int(1), 50)
    .option('--seed <n>', 'seed', int(0), 0)
    .action((o: { out: string; rows: number; gateRows: number; testRows: number; seed: number }) => {
      const files = writeDemoData(o);
      writeCorpus(join(o.out, CORPUS_FILE), CORPUS_DOCS, o.seed);
      writeMoeDemoData({ out: join(o.out, MOE_DATA_DIR), seed: o.seed });
      process.stderr.write(`molora: wrote ${[...Object.values(files.tasks), files.gate, files.test, files.testUnlabelled, CORPUS_FILE, `${MOE_DATA_DIR}/train.csv`, `${MOE_DATA_DIR}/test.csv`].join(', ')} in ${o.out}\n`);
    });
}

async function runAndReport(file: string, o: { out?: string; progress: ProgressMode }): Promise<void> {
  const started = Date.now();
  const r = await runRecipe(file, o);
  if (r.status === 'interrupted') process.exitCode = 130;
  else process.stderr.write(`molora: ${r.recipe.name}: ${r.ran.length} steps run, ${r.skipped.length} already complete, ${((Date.now() - started) / 1000).toFixed(0)} s; run folder ${r.run}\n`);
}
