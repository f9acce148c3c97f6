import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { trainAdapter } from '../adapters/train-adapter.js';
import { writeJsonAtomic } from '../base/atomic.js';
import { taskFamilies, writeFamily, type TaskFamily } from '../data/families.js';
import { GATE_CONFIG } from '../gating/gate-io.js';
import { DEFAULT_GATE_LR, trainGate, type TrainGateOptions } from '../gating/train-gate.js';
import { evalSettings } from '../recipes/eval-step.js';
import type { Summary } from '../report/summary.js';

/**
 * The composition benchmark: for each task family (data/families.ts), one LoRA expert per task,
 * then every router variant trained on the family's gate file and scored on its held-out rows:
 * each adapter alone (whose diagonal is oracle routing), static equal weights, the router, the
 * router with each expert masked, and the routing share per task.
 */
export interface BenchComposeOptions {
  out: string;
  /** The frozen base (default: the shipped tiny Llama). */
  model: string;
  /** Families to run (default: all). */
  families?: string[];
  /** Router variants to run (default: all of ROUTER_VARIANTS). */
  routers?: string[];
  taskRows: number;
  gateRows: number;
  testRows: number;
  adapterSteps: number;
  gateSteps: number;
  seed: number;
  progress?: 'auto' | 'bar' | 'lines' | 'off';
  log?: (m: string) => void;
}

type GateSettings = Pick<TrainGateOptions, 'router' | 'routingLoss' | 'gate' | 'maskDropout' | 'lr' | 'taskColumn'>;

/**
 * The routers compared. Settings are train-gate's defaults, so the table measures what a user
 * gets without tuning; 'mole-quickstart' is the old quickstart's tuned gate.
 */
export const ROUTER_VARIANTS: Record<string, GateSettings> = {
  'prompt-labels': { router: 'prompt', taskColumn: 'task', lr: DEFAULT_GATE_LR.prompt },
  'prompt-lm': { router: 'prompt', lr: DEFAULT_GATE_LR.prompt },
  centroid: { router: 'centroid', taskColumn: 'task', lr: DEFAULT_GATE_LR.centroid },
  mole: { router: 'mole', taskColumn: 'task', lr: DEFAULT_GATE_LR.mole },
  'mole-prefix-top1': { router: 'mole', taskColumn: 'task', lr: DEFAULT_GATE_LR.mole, gate: { granularity: 'prefix', topK: 1 } },
  'mole-quickstart': {
    router: 'mole',
    taskColumn: 'task',
    lr: 3e-3,
    gate: { granularity: 'prefix', temperature: { mode: 'fixed', value: 1 }, balanceAlpha: 0.1 },
    maskDropout: 0.7,
  },
};

/**
 * Rank 8 on attention and MLP, as the quickstart; lr 5e-3 (with 600 steps by default), because at
 * the quickstart's 1e-2 the same two-letter skill reached 8, 72 or 98% depending on the seed.
 */
export const ADAPTER_SETTINGS = { rank: 8, alpha: 16, targets: ['q_proj', 'v_proj', 'o_proj', 'up_proj', 'down_proj'], lr: 5e-3, batchSize: 16, seqLen: 32 };

export interface FamilyResult {
  cue: string;
  tasks: string[];
  /** adapter → task → exact match (0–1). */
  adapters: Record<string, Record<string, number>>;
  oracle: Record<string, number>;
  staticEqual: Record<string, number>;
  /** variant → its scores. */
  routers: Record<string, RouterResult>;
}

export interface RouterResult {
  gate: Record<string, number>;
  /** masked expert → task → exact match. */
  masks: Record<string, Record<string, number>>;
  /** task → mean weight the router gave that task's own expert (for top-1 routers: the share routed right). */
  routing: Record<string, number>;
}

export async function benchCompose(o: BenchComposeOptions): Promise<Record<string, FamilyResult>> {
  const log = o.log ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const all = taskFamilies();
  const unknown = (o.families ?? []).filter((n) => !all.some((f) => f.name === n));
  if (unknown.length) throw new Error(`unknown famil${unknown.length > 1 ? 'ies' : 'y'} ${unknown.map((n) => `'${n}'`).join(', ')} (families: ${all.map((f) => f.name).join(', ')})`);
  const families = all.filter((f) => !o.families || o.families.includes(f.name));
  const variants = o.routers ?? Object.keys(ROUTER_VARIANTS);
  for (const v of variants) if (!ROUTER_VARIANTS[v]) throw new Error(`unknown router variant '${v}' (variants: ${Object.keys(ROUTER_VARIANTS).join(', ')})`);
  const results: Record<string, FamilyResult> = {};
  for (const family of families) {
    results[family.name] = await benchFamily(family, variants, o, log);
    writeJsonAtomic(join(o.out, 'suite.json'), results);
  }
  return results;
}

async function benchFamily(family: TaskFamily, variants: string[], o: BenchComposeOptions, log: (m: string) => void): Promise<FamilyResult> {
  const dir = join(o.out, family.name);
  const files = writeFamily(join(dir, 'data'), family, { taskRows: o.taskRows, gateRows: o.gateRows, testRows: o.testRows, seed: o.seed });
  const tasks = family.tasks.map((t) => t.name);
  const experts: [string, string][] = tasks.map((t) => [t, join(dir, 'adapters', t)]);
  const columns = { promptColumn: 'prompt', completionColumn: 'completion' };
  const common = { ...columns, seed: o.seed, progress: o.progress, log };
  for (const [t, out] of experts) {
    if (existsSync(join(out, 'adapter_model.safetensors'))) continue;
    const { rank, alpha, targets, ...trainer } = ADAPTER_SETTINGS;
    await trainAdapter({ ...common, ...trainer, model: o.model, data: files.tasks[t]!, out, name: t, steps: o.adapterSteps, lora: { rank, alpha, targets } });
  }
  const score = (settings: string[], gate?: string): Promise<Summary> =>
    evalSettings({ model: o.model, data: files.test, ...columns, taskColumn: 'task', experts, gate, settings, batchSize: 32, seqLen: 32, log: () => {} });
  const em = (s: Summary, setting: string): Record<string, number> => Object.fromEntries(tasks.map((t) => [t, s.settings![setting]!.tasks[t]!.exact_match ?? 0]));
  const plain = await score(['adapters', 'static-equal']);
  const adapters = Object.fromEntries(tasks.map((e) => [e, em(plain, `adapter:${e}`)]));
  const result: FamilyResult = { cue: family.cue, tasks, adapters, oracle: Object.fromEntries(tasks.map((t) => [t, adapters[t]![t]!])), staticEqual: em(plain, 'static-equal'), routers: {} };
  for (const v of variants) {
    const gateDir = join(dir, 'routers', v);
    if (!existsSync(join(gateDir, GATE_CONFIG))) {
      const { taskColumn, ...settings } = ROUTER_VARIANTS[v]!;
      await trainGate({ ...common, ...settings, taskColumn, model: o.model, data: files.gate, out: gateDir, experts, steps: o.gateSteps, batchSize: 16, seqLen: 32 });
    }
    const s = await score(['gate', 'masks'], gateDir);
    const byTask = s.gates!.by_task ?? {};
    result.routers[v] = {
      gate: em(s, 'gate'),
      masks: Object.fromEntries(tasks.map((e) => [e, em(s, `gate-mask:${e}`)])),
      routing: Object.fromEntries(tasks.map((t, i) => [t, mean((byTask[t] ?? []).map((layer) => layer[i]!))])),
    };
    log(`${family.name} / ${v}: ${tasks.map((t) => `${t} ${pct(result.routers[v]!.gate[t]!)} (oracle ${pct(result.oracle[t]!)})`).join(', ')}`);
  }
  return result;
}

function mean(xs: number[]): number {
  return xs.reduce((a, x) => a + x, 0) / Math.max(xs.length, 1);
}

function pct(x: number): string {
  return (100 * x).toFixed(0);
}

/**
 * One line per router variant and family: mean exact match against oracle routing's, the worst
 * task's share of its oracle score, the mean routing share, and the worst move of another task
 * when one expert is masked (the acceptance figures).
 */
export function suiteSummary(results: Record<string, FamilyResult>): string {
  const variants = [...new Set(Object.values(results).flatMap((f) => Object.keys(f.routers)))];
  const out = ['| router | family | exact match (oracle) | worst task / oracle | routing share | worst other-task move under a mask | own task under its mask (max) |', '|---|---|---|---|---|---|---|'];
  for (const v of variants) {
    for (const [name, f] of Object.entries(results)) {
      const r = f.routers[v];
      if (!r) continue;
      const worst = Math.min(...f.tasks.map((t) => (f.oracle[t]! > 0 ? r.gate[t]! / f.oracle[t]! : 1)));
      const moves = f.tasks.flatMap((e) => f.tasks.filter((t) => t !== e).map((t) => Math.abs(r.masks[e]![t]! - r.gate[t]!)));
      const own = Math.max(...f.tasks.map((e) => r.masks[e]![e]!));
      out.push(`| ${v} | ${name} | ${pct(mean(f.tasks.map((t) => r.gate[t]!)))} (${pct(mean(f.tasks.map((t) => f.oracle[t]!)))}) | ${pct(worst)}% | ${pct(mean(f.tasks.map((t) => r.routing[t]!)))}% | ${pct(Math.max(...moves))} | ${pct(own)} |`);
    }
  }
  return out.join('\n');
}

/** Markdown tables: per family, tasks × (adapters, oracle, static, each router, routing share). */
export function suiteTable(results: Record<string, FamilyResult>): string {
  const out: string[] = [];
  for (const [name, f] of Object.entries(results)) {
    out.push(`### ${name}: ${f.cue}`, '', `| setting | ${f.tasks.join(' | ')} |`, `|---|${f.tasks.map(() => '---').join('|')}|`);
    const row = (label: string, xs: Record<string, number>): string => `| ${label} | ${f.tasks.map((t) => pct(xs[t]!)).join(' | ')} |`;
    for (const e of f.tasks) out.push(row(`adapter:${e}`, f.adapters[e]!));
    out.push(row('oracle routing', f.oracle), row('static equal', f.staticEqual));
    for (const [v, r] of Object.entries(f.routers)) {
      out.push(row(`**${v}**`, r.gate), row(`${v} routing share`, r.routing));
      for (const e of f.tasks) out.push(row(`${v} mask ${e}`, r.masks[e]!));
    }
    out.push('');
  }
  return out.join('\n');
}
