#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { Command, Help, Option } from 'commander';
import { BACKENDS, initBackend } from '../base/backend.js';
import { hiddenSizeOf } from './model-hint.js';
// Sparse MoE folders (Mixtral, Qwen2-MoE, OLMoE) load through the layouts src/moe registers.
import '../moe/register.js';
import { runForward, runGenerate, runInitBase, runInspect, runMerge } from './commands.js';
import { runTrainAdapter } from './train.js';
import { addOptions } from './options.js';
import { INIT_BASE_OPTIONS } from '../base/init-options.js';
import { DEFAULT_ALPHA, DEFAULT_RANK, DEFAULT_TARGETS } from '../adapters/config.js';
import { TRAIN_ADAPTER_OPTIONS } from '../adapters/lora-options.js';
import { TRAIN_GATE_OPTIONS } from '../gating/gate-options.js';
import { runEval } from './eval.js';
import { addPromptFormatFlags } from './serve-flags.js';
import { addComposeFlags, addScoringFlags } from './compose.js';
import { runGates, runTrainGate } from './gates.js';
import { runReport } from '../report/cli.js';
import { registerMoeCommands } from './moe.js';
import { registerRecipeCommands } from './recipes.js';
import { ROUTER_VARIANTS } from '../bench/compose.js';
import { taskFamilies } from '../data/families.js';
import { addModelShapeFlags, runBenchProbe, runBenchCompose, runBenchForward, runBenchGate, runBenchParity, runBenchSwap, runBenchTrain } from './bench.js';
import { PRESET_NAMES } from '../bench/presets.js';
import { choice, collect, float, idList, int, nameList, threadSetting } from './args.js';

/**
 * Commander checks required options before unknown ones, so a typo (`--modle x`) was reported as
 * a missing `--model` with no suggestion. Required options are therefore checked in preAction,
 * after commander has refused unknown options (suggesting the closest flag) and excess arguments.
 */
const required = new Set<Option>();

function deferRequiredOptions(root: Command): void {
  for (const c of leaves(root)) {
    for (const o of c.options.filter((o) => o.mandatory)) {
      o.mandatory = false;
      required.add(o);
    }
  }
}

function checkRequiredOptions(action: Command): void {
  for (const o of action.options) {
    if (required.has(o) && action.getOptionValue(o.attributeName()) === undefined) action.error(`error: required option '${o.flags}' not specified`);
  }
}

/** --help marks required options, which commander does not. */
function optionDescription(this: Help, o: Option): string {
  const text = Help.prototype.optionDescription.call(this, o);
  return required.has(o) || o.mandatory ? `${text} (required)` : text;
}

/** From package.json at run time: it sits two folders above dist/cli/main.js, in the repository and in the installed package. */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

const leaves = (c: Command): Command[] => (c.commands.length ? c.commands.flatMap(leaves) : [c]);

const program = new Command('molora')
  .description('Mixture-of-LoRA experts for Node: load Hugging Face transformers, train and compose LoRA adapters.')
  .version(packageVersion())
  .configureHelp({ optionDescription })
  .showHelpAfterError()
  .hook('preAction', async (_program, action) => {
    checkRequiredOptions(action);
    // The report and the demo data are plain files: no tensors, no backend to start.
    if (!['report', 'demo-data'].includes(action.name())) await initBackend({ backend: action.opts().backend, threads: action.opts().threads, hiddenSize: hiddenSizeOf(action) });
  });

addComposeFlags(
  program
    .command('forward')
    .description('Run one sequence through a model and show next-token log-probs.')
    .requiredOption('--model <dir>', 'Hugging Face model folder (config.json, safetensors)'),
)
  .option('--ids <ids>', 'input token ids, comma-separated (works without a tokenizer)', idList)
  .option('--text <text>', 'input text, encoded with the folder\'s tokenizer.json')
  .option('--json', 'print {"ids": [...], "logprobs": [[...]]}: logprobs[t] is the full log-softmax over the vocabulary for the token after position t')
  .addHelpText('after', '\nWithout --json, prints a table: each token, the log-prob of the actual next token, and the top-5 predictions.')
  .action(runForward);

addPromptFormatFlags(addComposeFlags(
  program
    .command('generate')
    .description('Generate a continuation with the KV cache, streaming tokens to stdout; stops at eos.')
    .requiredOption('--model <dir>', 'Hugging Face model folder'),
))
  .option('--prompt <text>', 'prompt text (needs tokenizer.json); shaped as the adapters were trained, see below')
  .option('--prompt-ids <ids>', 'prompt as token ids, comma-separated', idList)
  .option('--max-new-tokens <n>', 'most tokens to generate', int(1), 64)
  .option('--temperature <t>', 'sampling temperature; 0 = greedy', float(0), 0)
  .option('--top-k <k>', 'sample from the k most likely tokens; 0 = all', int(0), 0)
  .option('--top-p <p>', 'nucleus sampling mass; 1 = all', float(0, 1), 1)
  .option('--seed <n>', 'sampling seed', int(0), 0)
  .action(runGenerate);

addOptions(
  program.command('init-base').description('Write a randomly initialised Hugging Face model folder with a byte-level tokenizer.'),
  INIT_BASE_OPTIONS,
).action(runInitBase);

addOptions(
  program
    .command('train-adapter')
    .description('Train a LoRA adapter on the frozen base from a CSV or JSONL file; writes a PEFT adapter folder (plus molora_data.json, the row format it was trained with) with metrics.jsonl and checkpoints.'),
  TRAIN_ADAPTER_OPTIONS,
).action(runTrainAdapter);

addOptions(
  program
    .command('train-gate')
    .description('Train a router over frozen LoRA experts (base and experts stay frozen): by default the prompt router, which reads each prompt through the base and sends the row to its best expert at full strength. Writes gate_config.json + gate.safetensors, metrics.jsonl and checkpoints.'),
  TRAIN_GATE_OPTIONS,
).action(runTrainGate);

addScoringFlags(addComposeFlags(
  program
    .command('gates')
    .description('Report a trained gate on data: mean gate weight per layer per expert (per task with --task-column) and entropy.')
    .requiredOption('--model <dir>', 'base model folder'),
))
  .option('--json', 'print the report as JSON')
  .option('--html <file>', 'also write a self-contained heatmap page (layer × expert, per task)')
  .action(runGates);

program
  .command('report')
  .description('Write a self-contained HTML report of a run folder: loss curves, mask-effect table, gate and MoE-load heatmaps, samples.')
  .argument('<run-dir>', 'folder to scan for metrics.jsonl, summary.json and gates.json')
  .option('--out <file>', 'where to write the page (default: RUN_DIR/report.html)')
  .option('--open', 'open the page in the default browser')
  .action(runReport);

addScoringFlags(addComposeFlags(
  program
    .command('eval')
    .description('Score a model (plus adapters or a composition of experts) on a CSV or JSONL file: loss, perplexity and exact match of greedy completions, per task and overall. Without format flags, rows are read in the row format the adapters recorded when they were trained (molora_data.json), when they agree.')
    .requiredOption('--model <dir>', 'base model folder'),
))
  .option('--batch-size <n>', 'sequences per batch', int(1), 16)
  .option('--no-exact-match', 'skip greedy decoding (loss and perplexity only)')
  .option('--json', 'print {"tasks": {"<task>": {"n", "loss", "perplexity", "exact_match"}}, "overall": {…}, "truncated", "skipped"}: rows scored with their prompt cut from the left, rows left out because their completion alone is longer than --seq-len')
  .action(runEval);

program
  .command('merge')
  .description('Fold LoRA adapters into the base (W += scale·BA) and write a plain Hugging Face model folder.')
  .requiredOption('--model <dir>', 'base model folder')
  .option('--adapter <dir>', 'PEFT LoRA adapter folder (required); repeat to merge several', collect, [])
  .requiredOption('--out <dir>', 'folder to write (never --model or an --adapter)')
  .option('--overwrite', 'replace a model already in --out')
  .action(runMerge);

program
  .command('inspect')
  .description('Summarise a model or adapter folder: architecture, parameter count, dtypes, tensors.')
  .argument('<dir>', 'model or adapter folder')
  .option('--json', 'print the summary as JSON')
  .action(runInspect);

const bench = program.command('bench').description('Benchmarks (speed figures, not tests).');
addModelShapeFlags(
  bench
    .command('forward')
    .description('Prefill tokens/s, and decode tokens/s with and without the KV cache, on a random Llama-style model.'),
  'prefill batch',
  'prefill length',
)
  .option('--new-tokens <n>', 'tokens to decode', int(1), 256)
  .option('--json', 'print one JSON line')
  .action(runBenchForward);

registerMoeCommands(program, bench);
registerRecipeCommands(program);


addModelShapeFlags(
  bench
    .command('train')
    .description('Time AdamW LoRA training steps on a random Llama-style model; same flags as ../shared/peers/torch_lora_step.py.'),
)
  .option('--rank <r>', 'LoRA rank', int(1), DEFAULT_RANK)
  .option('--alpha <a>', 'LoRA alpha', float(0), DEFAULT_ALPHA)
  .option('--targets <list>', 'target modules, comma-separated', nameList, [...DEFAULT_TARGETS])
  .option('--steps <n>', 'timed steps', int(1), 8)
  .option('--warmup <n>', 'untimed steps first', int(0), 2)
  .option('--json', 'print one JSON line: the shapes, tokens_per_s, step_ms (median), achieved and matmul GFLOP/s, and memory (below)')
  .addHelpText('after', [
    '',
    'Memory in --json: peak_rss_mib is the process\'s peak resident set (its whole life, the model build included);',
    'peak_heap_mib the wasm heap, which only grows, so its size is its peak (null off wasm);',
    'peak_gpu_buffers_mib the GPU buffers the webgpu backend holds, pooled free ones included, the largest seen',
    'between steps (null where the backend has none); memory_note says why a figure is null.',
    'weight_packing says how the frozen weights were held, the fastest way the wasm heap allowed: "transposed"',
    '(both orientations, each with XNNPACK\'s packed copy: runs under 1 GiB, e.g. --preset peer), "cached" (one',
    'orientation and its packed copy: --preset smollm2-135m), "per-use" (packed per product: --preset',
    'smollm2-360m). A shape that cannot fit even so is refused before its weights are built.',
  ].join('\n'))
  .action(runBenchTrain);

bench
  .command('swap')
  .description('Hot-swap latency: replace every MoLE expert\'s tensors in place on a SmolLM-135M-shaped base (no base reload).')
  .option('--preset <name>', `the base's shapes: ${PRESET_NAMES.join(', ')}`, choice(PRESET_NAMES), 'smollm2-135m')
  .option('--experts <n>', 'experts in the set', int(1), 4)
  .option('--rank <r>', 'LoRA rank', int(1), DEFAULT_RANK)
  .option('--targets <list>', 'adapted modules', nameList, [...DEFAULT_TARGETS])
  .option('--json', 'print one JSON line')
  .action(runBenchSwap);

addModelShapeFlags(
  bench
    .command('gate')
    .description('Gate-training step over N frozen experts against a single-LoRA training step, same shapes.'),
)
  .option('--experts <n>', 'frozen experts', int(2), 4)
  .option('--rank <r>', 'LoRA rank', int(1), DEFAULT_RANK)
  .option('--targets <list>', 'adapted modules', nameList, [...DEFAULT_TARGETS])
  .option('--steps <n>', 'timed steps', int(1), 5)
  .option('--json', 'print one JSON line')
  .action(runBenchGate);

bench
  .command('parity')
  .description('Check log-probs against the float64 references on the backend in use: every model folder under --fixtures with a reference.json, each case, max |Δ| against a 1e-4 tolerance. Exits 1 if any fails.')
  .option('--fixtures <dir>', 'folder of fixture model folders', 'test/fixtures/models')
  .option('--json', 'print one JSON line: backend, tolerance, and per fixture its cases (positions, max_abs_diff, pass) or its error')
  .action(runBenchParity);

bench
  .command('compose')
  .description('The composition benchmark suite: task families whose prompts never name their task, with held-out test inputs (checked disjoint in code); per family, one LoRA expert per task, then each router variant scored per task: adapters alone, oracle routing, static equal weights, the router, the router with each expert masked, and the routing share. Resumable; writes suite.json and prints markdown tables.')
  .option('--out <dir>', 'run folder', 'runs/bench-compose')
  .option('--model <dir>', 'frozen base (default: the shipped models/tiny-llama)')
  .option('--families <list>', `families to run (default: all of ${taskFamilies().map((f) => f.name).join(', ')})`, nameList)
  .option('--routers <list>', `router variants (default: all of ${Object.keys(ROUTER_VARIANTS).join(', ')})`, nameList)
  .option('--task-rows <n>', 'training rows in each adapter file', int(16), 400)
  .option('--gate-rows <n>', "rows in each family's router file", int(16), 1200)
  .option('--test-rows <n>', 'held-out test rows per task', int(4), 50)
  .option('--adapter-steps <n>', 'updates per adapter', int(1), 600)
  .option('--gate-steps <n>', 'router updates', int(1), 400)
  .option('--seed <n>', 'seed', int(0), 0)
  .option('--progress <mode>', 'auto, bar, lines or off', choice(['auto', 'bar', 'lines', 'off'] as const), 'auto')
  .option('--json', 'print suite.json instead of the tables')
  .action(runBenchCompose);

bench
  .command('probe')
  .description("Linear probes of routing features on a family folder of `bench compose`: can what a MoLE gate reads (the experts' normalised outputs, at each position before the prompt's end), the linears' inputs, or the prompt router's feature predict the row's task? Fitted on the family's router file, scored on its held-out rows.")
  .requiredOption('--dir <dir>', 'a family folder of a bench compose run (it holds data/ and adapters/)')
  .option('--model <dir>', 'the frozen base the adapters were trained on (default: the shipped models/tiny-llama)')
  .option('--modules <list>', 'adapted linears to probe (default: the first and the last)', nameList)
  .option('--json', 'print JSON rows')
  .action(runBenchProbe);

// Every command takes --backend and --threads, wherever they sit on the command line.
for (const c of leaves(program)) {
  c.addOption(
    new Option('--backend <name>', 'tfjs backend (default: tensorflow if tfjs-node is installed, else webgpu on a hardware GPU, else wasm; webgpu on a software adapter only when asked)')
      .choices(BACKENDS)
      .env('MOLORA_BACKEND'),
  );
  c.addOption(
    new Option('--threads <n>', "wasm threads for matrix products: a count, or 'auto' (default): one per idle core for a model of hidden size ≥ 256, else one, and back to one if other processes take the cores")
      .argParser(threadSetting)
      .env('MOLORA_THREADS'),
  );
}

deferRequiredOptions(program);

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`molora: error: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
