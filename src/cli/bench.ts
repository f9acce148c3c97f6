import { Option, type Command } from 'commander';
import { choice, int } from './args.js';
import { backendLine } from './format.js';
import { benchForward, type BenchForwardOptions } from '../bench/forward.js';
import { benchTrain, type BenchTrainOptions, type BenchTrainResult } from '../bench/train.js';
import { benchParity, type ParityResult } from '../bench/parity.js';
import { PRESET_NAMES, PRESETS, presetHelp, resolveBenchShape, type BenchShape, type BenchShapeFlags, type PresetName } from '../bench/presets.js';
import { SHIPPED_BASE } from './recipes.js';
import { probeFamily, type ProbeOptions } from '../bench/probe.js';
import { benchCompose, suiteSummary, suiteTable, type BenchComposeOptions } from '../bench/compose.js';
import { benchGateStep, benchSwap } from '../bench/mole.js';

/** A bench command's options: the shape flags as given, the rest as commander parsed them. */
type WithShapeFlags<T> = Omit<T, keyof BenchShape> & BenchShapeFlags & { json?: boolean };

export async function runBenchForward(flags: WithShapeFlags<BenchForwardOptions>): Promise<void> {
  const o = { ...flags, ...resolveBenchShape(flags) };
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

export async function runBenchTrain(flags: WithShapeFlags<BenchTrainOptions>): Promise<void> {
  const shape = resolveBenchShape(flags);
  const o = { ...flags, ...shape };
  const r = await benchTrain(o);
  if (o.json) {
    // The shapes first, so a line read on its own says what was measured.
    process.stdout.write(JSON.stringify({ preset: flags.preset ?? null, ...shape, rank: o.rank, targets: o.targets, ...r }) + '\n');
    return;
  }
  process.stdout.write(
    [
      `backend: ${backendLine(r)}${r.threads > 1 ? ` (${r.threads} threads)` : ''}`,
      `LoRA step: ${r.step_ms.toFixed(1)} ms median, ${r.tokens_per_s.toFixed(0)} tokens/s (${r.trainable_params} trainable parameters)`,
      `achieved ${r.achieved_gflops.toFixed(2)} GFLOP/s of matmul work; plain matMul on these shapes: ${r.matmul_gflops.toFixed(2)} GFLOP/s (${(100 * r.efficiency).toFixed(0)}%)`,
      `peak RSS ${mib(r.peak_rss_mib)}; wasm heap ${mib(r.peak_heap_mib)}; GPU buffers ${mib(r.peak_gpu_buffers_mib)}${r.memory_note ? ` (${r.memory_note})` : ''}`,
      `frozen weights: ${PACKING[r.weight_packing]}`,
    ].join('\n') + '\n',
  );
}

const PACKING: Record<BenchTrainResult['weight_packing'], string> = {
  transposed: 'both orientations, with XNNPACK\'s packed copies (a small run)',
  cached: 'one orientation and its packed copy',
  'per-use': 'packed per product (only that fits the wasm heap)',
};

const mib = (x: number | null): string => (x === null ? 'n/a' : `${x.toFixed(0)} MiB`);

export async function runBenchSwap(o: { preset: PresetName; experts: number; rank: number; targets: string[]; json?: boolean }): Promise<void> {
  const r = await benchSwap(PRESETS[o.preset], o);
  process.stdout.write(
    o.json
      ? JSON.stringify(r) + '\n'
      : `backend: ${backendLine(r)}\nbase: ${(r.base_params / 1e6).toFixed(0)}M parameters (${PRESETS[o.preset].about} shapes); ${r.experts} experts of ${r.adapter_params} parameters\nswap the whole expert set: ${r.swap_set_ms.toFixed(2)} ms median; one expert: ${r.swap_one_ms.toFixed(2)} ms\n`,
  );
}

export async function runBenchGate(flags: BenchShapeFlags & { experts: number; rank: number; targets: string[]; steps: number; json?: boolean }): Promise<void> {
  const o = { ...flags, ...resolveBenchShape(flags) };
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

export async function runBenchParity(o: { fixtures: string; json?: boolean }): Promise<void> {
  const r = await benchParity({ fixtures: o.fixtures });
  process.stdout.write(o.json ? JSON.stringify(r) + '\n' : parityTable(r));
  if (!r.pass) process.exitCode = 1;
}

function parityTable(r: ParityResult): string {
  const rows = r.fixtures.flatMap((f) =>
    f.error !== undefined
      ? [`| ${f.name} | – | – | – | FAIL: ${f.error} |`]
      : f.cases.map((c) => `| ${f.name} | ${c.case} | ${c.positions} | ${c.max_abs_diff.toExponential(2)} | ${c.pass ? 'ok' : 'FAIL'} |`),
  );
  const cases = r.fixtures.flatMap((f) => f.cases);
  const failed = r.fixtures.filter((f) => !f.pass).map((f) => f.name);
  return [
    `backend: ${r.backend}; float64 references, tolerance ${r.tolerance}`,
    '',
    '| fixture | case | positions | max abs diff | |',
    '|---|---|---|---|---|',
    ...rows,
    '',
    failed.length ? `FAILED: ${failed.join(', ')}` : `all ${cases.length} cases of ${r.fixtures.length} fixtures within ${r.tolerance}`,
  ].join('\n') + '\n';
}

/**
 * The random benchmark model's sizes and batch: a --preset, with any flag given put over it.
 * Without a preset the defaults are the PyTorch peer's.
 */
export function addModelShapeFlags(c: Command, batch = 'batch size', seq = 'sequence length'): Command {
  const peer = PRESETS.peer;
  const dflt = (v: number): string => `(default: the preset's, else ${v})`;
  return c
    .addOption(new Option('--preset <name>', 'published model shapes and a batch (listed below); flags given override its fields').argParser(choice(PRESET_NAMES)))
    .option('--layers <n>', `blocks ${dflt(peer.layers)}`, int(1))
    .option('--hidden <d>', `hidden size ${dflt(peer.hidden)}`, int(1))
    .option('--heads <h>', `heads ${dflt(peer.heads)}`, int(1))
    .option('--kv-heads <k>', `key/value heads ${dflt(peer.kvHeads)}`, int(1))
    .option('--ffn <f>', `feed-forward size ${dflt(peer.ffn)}`, int(1))
    .option('--vocab <v>', `vocabulary ${dflt(peer.vocab)}`, int(1))
    .option('--batch <b>', `${batch} ${dflt(peer.batch)}`, int(1))
    .option('--seq <t>', `${seq} ${dflt(peer.seq)}`, int(1))
    .addHelpText('after', `\nPresets (--preset):\n${presetHelp()}\n`);
}
