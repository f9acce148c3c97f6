import type { Command } from 'commander';
import { benchMoe, type BenchMoeOptions } from '../bench/moe.js';
import { trainMoe, upcycleFolder } from '../moe/train-moe.js';
import { int } from './args.js';
import { backendLine } from './format.js';
import { TRAIN_MOE_OPTIONS, UPCYCLE_OPTIONS } from '../moe/moe-options.js';
import { addOptions, optionValues } from './options.js';
import { lmOptions } from './train.js';

/** `upcycle`, `train-moe` and `bench moe`. */
export function registerMoeCommands(program: Command, bench: Command): void {
  addOptions(
    program
      .command('upcycle')
      .description('Sparse upcycling: turn a dense Llama-family model into a Mixtral (or, with --shared, Qwen2-MoE) folder whose experts all start as copies of the dense MLP.'),
    UPCYCLE_OPTIONS,
  ).action(runUpcycle);

  addOptions(
    program
      .command('train-moe')
      .description('Train a sparse MoE model\'s FFNs (routers and experts, or --router-only) from a CSV; attention, norms and embeddings stay frozen. Writes the whole model folder, metrics.jsonl with per-layer routing, and checkpoints.'),
    TRAIN_MOE_OPTIONS,
  ).action(runTrainMoe);

  bench
    .command('moe')
    .description('Time the sparse MoE FFN (forward, and forward + backward) against computing every expert on every token.')
    .option('--experts <n>', 'experts', int(1), 8)
    .option('--top-k <k>', 'experts per token', int(1), 2)
    .option('--tokens <n>', 'tokens through the layer', int(1), 512)
    .option('--hidden <d>', 'hidden size', int(1), 256)
    .option('--ffn <i>', 'each expert\'s intermediate size', int(1), 512)
    .option('--repeats <n>', 'timed repetitions (median reported)', int(1), 5)
    .option('--json', 'print one JSON line')
    .action(runBenchMoe);
}

export async function runUpcycle(flags: Record<string, unknown>): Promise<void> {
  const o = optionValues(UPCYCLE_OPTIONS, flags);
  const cfg = await upcycleFolder(o);
  process.stderr.write(`molora: upcycled ${o.model} into a ${cfg.modelType} with ${o.experts} experts (top-${o.topK}${o.shared ? `, ${o.shared} shared` : ''}) in ${o.out}\n`);
}

export async function runTrainMoe(flags: Record<string, unknown>): Promise<void> {
  const o = optionValues(TRAIN_MOE_OPTIONS, flags);
  if (o.balanceBias !== undefined && !(o.balanceBias > 0)) throw new Error(`--balance-bias must be positive, got ${o.balanceBias}`);
  const opts = lmOptions(o);
  try {
    const r = await trainMoe({ ...opts, model: o.model, routerOnly: o.routerOnly, auxCoef: o.auxCoef, zCoef: o.zCoef, balanceBias: o.balanceBias });
    if (r.status === 'interrupted') process.exitCode = 130;
    else process.stderr.write(`molora: trained ${o.routerOnly ? 'the routers' : 'the MoE FFNs'} for ${r.step} steps; model folder ${o.out}\n`);
  } finally {
    opts.stopProgress();
  }
}

export async function runBenchMoe(o: BenchMoeOptions & { json?: boolean }): Promise<void> {
  if (o.topK > o.experts) throw new Error(`--top-k ${o.topK} exceeds --experts ${o.experts}`);
  const r = await benchMoe(o);
  if (o.json) {
    process.stdout.write(JSON.stringify({ experts: o.experts, top_k: o.topK, tokens: o.tokens, hidden: o.hidden, ffn: o.ffn, ...r }) + '\n');
    return;
  }
  const ms = (x: number): string => `${x.toFixed(1)} ms`;
  process.stdout.write(
    [
      `backend: ${backendLine(r)}; ${o.tokens} tokens, hidden ${o.hidden}, ${o.experts} experts of width ${o.ffn}, top-${o.topK}`,
      `forward: sparse ${ms(r.sparse_forward_ms)}, all experts ${ms(r.dense_forward_ms)}, ratio ${r.forward_ratio.toFixed(2)}× (ideal ${(o.topK / o.experts).toFixed(2)}×)`,
      `forward + backward: sparse ${ms(r.sparse_train_ms)}, all experts ${ms(r.dense_train_ms)}, ratio ${r.train_ratio.toFixed(2)}×`,
    ].join('\n') + '\n',
  );
}
