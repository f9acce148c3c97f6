#!/usr/bin/env node
import { Command, Option } from 'commander';
import { BACKENDS, initBackend } from '../base/backend.js';
import { runForward, runGenerate, runInitBase, runInspect, runMerge } from './commands.js';
import { addDataFlags, addTrainerFlags, runTrainAdapter } from './train.js';
import { runEval } from './eval.js';
import { addComposeFlags, addScoringFlags } from './compose.js';
import { runGates, runTrainGate } from './gates.js';
import { runReport } from '../report/cli.js';
import { addMixLoraFlags, registerMoeCommands } from './moe.js';
import { registerRecipeCommands } from './recipes.js';
import { addModelShapeFlags, runBenchCompose, runBenchForward, runBenchGate, runBenchSwap, runBenchTrain } from './bench.js';
import { choice, collect, float, idList, int, namedPaths, nameList, rangeList } from './args.js';

const program = new Command('molora')
  .description('Mixture-of-LoRA experts for Node: load Hugging Face transformers, train and compose LoRA adapters.')
  .showHelpAfterError()
  .hook('preAction', async (_program, action) => {
    // The report and the demo data are plain files: no tensors, no backend to start.
    if (!['report', 'demo-data'].includes(action.name())) await initBackend({ backend: action.opts().backend });
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

addComposeFlags(
  program
    .command('generate')
    .description('Generate a continuation with the KV cache, streaming tokens to stdout; stops at eos.')
    .requiredOption('--model <dir>', 'Hugging Face model folder'),
)
  .option('--prompt <text>', 'prompt text (needs tokenizer.json)')
  .option('--prompt-ids <ids>', 'prompt as token ids, comma-separated', idList)
  .option('--max-new-tokens <n>', 'most tokens to generate', int(1), 64)
  .option('--temperature <t>', 'sampling temperature; 0 = greedy', float(0), 0)
  .option('--top-k <k>', 'sample from the k most likely tokens; 0 = all', int(0), 0)
  .option('--top-p <p>', 'nucleus sampling mass; 1 = all', float(0, 1), 1)
  .option('--seed <n>', 'sampling seed', int(0), 0)
  .action(runGenerate);

program
  .command('init-base')
  .description('Write a randomly initialised Hugging Face model folder with a byte-level tokenizer.')
  .requiredOption('--arch <arch>', 'llama or gpt2', choice(['llama', 'gpt2'] as const))
  .requiredOption('--layers <n>', 'transformer blocks', int(1))
  .requiredOption('--hidden <d>', 'hidden size', int(1))
  .requiredOption('--heads <h>', 'attention heads', int(1))
  .option('--kv-heads <k>', 'key/value heads (llama GQA); default = heads', int(1))
  .requiredOption('--ffn <f>', 'feed-forward (intermediate) size', int(1))
  .option('--vocab <v>', 'vocabulary size; default = the byte-level tokenizer\'s 259', int(1))
  .option('--max-positions <n>', 'context length', int(1))
  .option('--tie', 'tie lm_head to the embedding (llama; gpt2 always ties)')
  .requiredOption('--out <dir>', 'folder to write')
  .option('--seed <n>', 'init seed', int(0), 0)
  .action(runInitBase);

addMixLoraFlags(addTrainerFlags(
  addDataFlags(
    program
      .command('train-adapter')
      .description('Train a LoRA adapter on the frozen base from a CSV; writes a PEFT adapter folder with metrics.jsonl and checkpoints.')
      .requiredOption('--model <dir>', 'base model folder (Hugging Face layout)')
      .requiredOption('--out <dir>', 'output folder: the PEFT adapter, metrics.jsonl, checkpoints')
      .option('--name <name>', 'adapter name for logs (default: the output folder)')
      .option('--rank <r>', 'LoRA rank r', int(1), 8)
      .option('--alpha <a>', 'lora_alpha; scale = alpha/r (alpha/√r with --rslora)', float(0), 16)
      .option('--dropout <p>', 'lora_dropout on the adapter input', float(0, 0.99), 0)
      .option('--rslora', 'rank-stabilised scaling alpha/√r')
      .option('--targets <list>', 'module-name suffixes to adapt, comma-separated', nameList, ['q_proj', 'v_proj'])
      .option('--target-regex <re>', 'adapt modules whose full name matches this regex (instead of --targets)')
      .option('--layers <list>', 'only these transformer layers, e.g. 0-3,6 (layers_to_transform)', rangeList)
      .option('--init <kind>', 'A init: kaiming (PEFT default) or gaussian; B starts at 0', choice(['kaiming', 'gaussian'] as const), 'kaiming'),
  ),
)).action(runTrainAdapter);

addTrainerFlags(
  addDataFlags(
    program
      .command('train-gate')
      .description('Train MoLE gates over frozen LoRA experts (base and experts stay frozen); writes gate_config.json + gate.safetensors, metrics.jsonl and checkpoints.')
      .requiredOption('--model <dir>', 'base model folder')
      .option('--expert <name=dir>', 'a frozen PEFT LoRA expert; repeat (at least 2); the order fixes the gate columns', namedPaths, [])
      .requiredOption('--out <dir>', 'output folder for the gate')
      .option('--level <level>', 'one gate per gated linear (layer) or per transformer block (block)', choice(['layer', 'block'] as const), 'layer')
      .option('--granularity <g>', "token: weights per position; sequence: one per row, pooled over its real tokens (the paper; sees the answer while training); prefix: per row but causal, pooled over the tokens so far (best for prompt/completion data)", choice(['token', 'sequence', 'prefix'] as const), 'token')
      .option('--top-k <k>', 'keep the k largest gate weights per unit, renormalised', int(1))
      .option('--balance <alpha>', 'balance-loss coefficient α in α·(−Σ log qᵢ); 0 disables it', float(0), 0.5)
      .option('--temperature <t>', "'learn' for a learnable τ, or a fixed positive value", 'learn')
      .option('--mask-dropout <p>', "train for masking: each row drops one random expert (never the one named like the row's --task-column task) with probability p", float(0, 0.99), 0),
  ),
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
    .description('Score a model (plus adapters or a composition of experts) on a CSV: loss, perplexity and exact match of greedy completions, per task and overall.')
    .requiredOption('--model <dir>', 'base model folder'),
))
  .option('--batch-size <n>', 'sequences per batch', int(1), 16)
  .option('--no-exact-match', 'skip greedy decoding (loss and perplexity only)')
  .option('--json', 'print {"tasks": {"<task>": {"n", "loss", "perplexity", "exact_match"}}, "overall": {…}}')
  .action(runEval);

program
  .command('merge')
  .description('Fold LoRA adapters into the base (W += scale·BA) and write a plain Hugging Face model folder.')
  .requiredOption('--model <dir>', 'base model folder')
  .option('--adapter <dir>', 'PEFT LoRA adapter folder (required); repeat to merge several', collect, [])
  .requiredOption('--out <dir>', 'folder to write')
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
)
  .option('--batch <b>', 'prefill batch', int(1), 4)
  .option('--seq <t>', 'prefill length', int(1), 128)
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
  .option('--rank <r>', 'LoRA rank', int(1), 8)
  .option('--alpha <a>', 'LoRA alpha', float(0), 16)
  .option('--targets <list>', 'target modules, comma-separated', nameList, ['q_proj', 'v_proj'])
  .option('--batch <b>', 'batch size', int(1), 4)
  .option('--seq <t>', 'sequence length', int(1), 128)
  .option('--steps <n>', 'timed steps', int(1), 8)
  .option('--warmup <n>', 'untimed steps first', int(0), 2)
  .option('--json', 'print one JSON line: tokens_per_s, step_ms (median), achieved and matmul GFLOP/s')
  .action(runBenchTrain);

bench
  .command('swap')
  .description('Hot-swap latency: replace every MoLE expert\'s tensors in place on a SmolLM-135M-shaped base (no base reload).')
  .option('--experts <n>', 'experts in the set', int(1), 4)
  .option('--rank <r>', 'LoRA rank', int(1), 8)
  .option('--targets <list>', 'adapted modules', nameList, ['q_proj', 'v_proj'])
  .option('--json', 'print one JSON line')
  .action(runBenchSwap);

addModelShapeFlags(
  bench
    .command('gate')
    .description('Gate-training step over N frozen experts against a single-LoRA training step, same shapes.'),
)
  .option('--experts <n>', 'frozen experts', int(2), 4)
  .option('--rank <r>', 'LoRA rank', int(1), 8)
  .option('--targets <list>', 'adapted modules', nameList, ['q_proj', 'v_proj'])
  .option('--batch <b>', 'batch size', int(1), 4)
  .option('--seq <t>', 'sequence length', int(1), 128)
  .option('--steps <n>', 'timed steps', int(1), 5)
  .option('--json', 'print one JSON line')
  .action(runBenchGate);

bench
  .command('compose')
  .description('The fuller MoLE composition experiment on synthetic keyword tasks: adapters, gate, and the mask-effect table (resumable).')
  .option('--out <dir>', 'run folder', 'runs/bench-compose')
  .option('--rows <n>', 'training rows per task', int(16), 400)
  .option('--test-rows <n>', 'test rows', int(8), 200)
  .option('--adapter-steps <n>', 'updates per adapter', int(1), 120)
  .option('--gate-steps <n>', 'gate updates', int(1), 400)
  .option('--gate-lr <lr>', 'gate learning rate (higher rates saturated the gate softmax early in our runs)', float(0), 1e-3)
  .option('--seed <n>', 'seed', int(0), 0)
  .option('--progress <mode>', 'auto, bar, lines or off', choice(['auto', 'bar', 'lines', 'off'] as const), 'auto')
  .option('--json', 'print the settings as JSON')
  .action(runBenchCompose);

// Every command takes --backend, wherever it sits on the command line.
const leaves = (c: Command): Command[] => (c.commands.length ? c.commands.flatMap(leaves) : [c]);
for (const c of leaves(program)) {
  c.addOption(
    new Option('--backend <name>', 'tfjs backend (default: tensorflow if tfjs-node is installed, else wasm)')
      .choices(BACKENDS)
      .env('MOLORA_BACKEND'),
  );
}

program.parseAsync().catch((err: unknown) => {
  process.stderr.write(`molora: error: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
