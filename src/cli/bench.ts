import type { Command } from 'commander';
import { int } from './args.js';
import { backendLine } from './format.js';
import { benchForward, type BenchForwardOptions, type ModelShape } from '../bench/forward.js';
import { benchTrain, type BenchTrainOptions } from '../bench/train.js';
import { SHIPPED_BASE } from './recipes.js';
import { probeFamily, type ProbeOptions } from '../bench/probe.js';
import { benchCompose, suiteSummary, suiteTable, type BenchComposeOptions } from '../bench/compose.js';
import { benchGateStep, benchSwap, SMOL_135M } from '../bench/mole.js';

export async function runBenchForward(o: BenchForwardOptions & { json?: boolean }): Promise<void> {
  const r = await benchForward(o);
  if (o.json) {
    process.stdout.write(JSON.stringify(r) + '\n');
    return;
  }
  process.stdout.write(
    [
      `backend: ${backendLine(r)}`,
      `prefill: ${r.prefill_tokens_per_s.toFixed(0)} tokens/s (${r.prefill_ms.toFixed(1)} ms for ${o.batch}×${o.seq})`,
      `decode with KV cache: ${r.decode_cached_tokens_per_s.toFixed(1)} tokens/s`,
      `decode recomputing the prefix: ${r.decode_recompute_tokens_per_s.toFixed(1)} tokens/s`,
      `cache speed-up over ${o.newTokens} tokens: ${r.cache_speedup.toFixed(1)}×`,
    ].join('\n') + '\n',
  );
}

export async function runBenchTrain(o: BenchTrainOptions & { json?: boolean }): Promise<void> {
  const r = await benchTrain(o);
  if (o.json) {
    process.stdout.write(JSON.stringify(r) + '\n');
    return;
  }
  process.stdout.write(
    [
      `backend: ${backendLine(r)}`,
      `LoRA step: ${r.step_ms.toFixed(1)} ms median, ${r.tokens_per_s.toFixed(0)} tokens/s (${r.trainable_params} trainable parameters)`,
      `achieved ${r.achieved_gflops.toFixed(2)} GFLOP/s of matmul work; plain matMul on these shapes: ${r.matmul_gflops.toFixed(2)} GFLOP/s (${(100 * r.efficiency).toFixed(0)}%)`,
    ].join('\n') + '\n',
  );
}

export async function runBenchSwap(o: { experts: number; rank: number; targets: string[]; json?: boolean }): Promise<void> {
  const r = await benchSwap(SMOL_135M, o);
  process.stdout.write(
    o.json
      ? JSON.stringify(r) + '\n'
      : `backend: ${backendLine(r)}\nbase: ${(r.base_params / 1e6).toFixed(0)}M parameters (SmolLM-135M shapes); ${r.experts} experts of ${r.adapter_params} parameters\nswap the whole expert set: ${r.swap_set_ms.toFixed(2)} ms median; one expert: ${r.swap_one_ms.toFixed(2)} ms\n`,
  );
}

export async function runBenchGate(o: ModelShape & { experts: number; rank: number; targets: string[]; batch: number; seq: number; steps: number; json?: boolean }): Promise<void> {
  const r = await benchGateStep(o, o);
  process.stdout.write(
    o.json
      ? JSON.stringify(r) + '\n'
      : [
          `backend: ${backendLine(r)}`,
          `single-LoRA step: ${r.lora_step_ms.toFixed(1)} ms; over ${r.experts} frozen experts:`,
          `  MoLE gate step: ${r.gate_step_ms.toFixed(1)} ms (${r.ratio.toFixed(2)}×)`,
          `  prompt-router step, labels: ${r.router_labels_step_ms.toFixed(1)} ms (${r.router_labels_ratio.toFixed(2)}×)`,
          `  prompt-router step, LM loss alone: ${r.router_lm_step_ms.toFixed(1)} ms (${r.router_lm_ratio.toFixed(2)}×)`,
        ].join('\n') + '\n',
  );
}

export async function runBenchCompose(o: Omit<BenchComposeOptions, 'model'> & { model?: string; json?: boolean }): Promise<void> {
  const r = await benchCompose({ ...o, model: o.model ?? SHIPPED_BASE });
  process.stdout.write(o.json ? JSON.stringify(r) + '\n' : `exact match (%) on held-out rows:\n\n${suiteSummary(r)}\n\n${suiteTable(r)}\nresults: ${o.out}/suite.json\n`);
}

export async function runBenchProbe(o: Omit<ProbeOptions, 'model'> & { model?: string; json?: boolean }): Promise<void> {
  const rows = await probeFamily({ ...o, model: o.model ?? SHIPPED_BASE });
  const pct = (x: number): string => (100 * x).toFixed(0);
  process.stdout.write(o.json ? JSON.stringify(rows) + '\n' : ['| feature | fit acc. | held-out acc. |', '|---|---|---|', ...rows.map((r) => `| ${r.feature} | ${pct(r.train)} | ${pct(r.test)} |`)].join('\n') + '\n');
}

/** The random benchmark model's sizes; the defaults are the PyTorch peer's. */
export function addModelShapeFlags(c: Command): Command {
  return c
    .option('--layers <n>', 'blocks', int(1), 4)
    .option('--hidden <d>', 'hidden size', int(1), 256)
    .option('--heads <h>', 'heads', int(1), 4)
    .option('--kv-heads <k>', 'key/value heads', int(1), 4)
    .option('--ffn <f>', 'feed-forward size', int(1), 688)
    .option('--vocab <v>', 'vocabulary', int(1), 2048);
}
