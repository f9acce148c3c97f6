import { attachAdapters } from '../adapters/peft.js';
import { loadBase } from '../base/load.js';
import { byteProgress } from '../train/job-progress.js';
import { MoleModel } from '../gating/mole-model.js';
import { gateStatsOn } from '../gating/train-gate.js';
import type { Sample, Summary } from '../report/summary.js';
import { evaluate, type EvalReport } from '../train/evaluate.js';
import { loadLmDataset } from '../train/lm.js';
import { dataFormatOf, servedFormat, type DataFormat } from '../data/record.js';
import type { DataFileFormat } from '../data/rows.js';
import type { TokenStore } from '../data/index.js';

/** The settings an eval step can score; `adapters` and `masks` expand to one setting per expert. */
export const EVAL_SETTINGS = ['base', 'adapters', 'static-equal', 'gate', 'masks'] as const;

export interface EvalStepOptions extends DataFormat {
  model: string;
  data: string;
  dataFormat?: DataFileFormat;
  taskColumn?: string;
  /** Plain adapters, always on (no experts then). */
  adapters?: string[];
  /** MoLE experts, [name, dir]; with `gate`, the composition settings can be scored. */
  experts?: [string, string][];
  gate?: string;
  /** Which of EVAL_SETTINGS to score; default every one the experts and gate allow. */
  settings?: string[];
  /** Test prompts per task to decode under the gate with and without each mask. */
  samples?: number;
  batchSize?: number;
  seqLen?: number;
  log: (m: string) => void;
}

/**
 * Score a model on a test CSV under several settings, the way the quickstart compares them: the
 * base, each expert alone, static equal weights, the gate, and the gate with each expert
 * masked; plus gate weights per task and a few samples. Returns a report-ready summary.
 */
export async function evalSettings(o: EvalStepOptions): Promise<Summary> {
  const experts = o.experts ?? [];
  const wanted = checkSettings(o, experts.length);
  const seqLen = o.seqLen ?? 256;
  const batchSize = o.batchSize ?? 16;
  const base = loadBase(o.model, { warn: o.log });
  const m = new MoleModel(base, o.log);
  const plain = attachAdapters(base, o.adapters ?? [], o.log);
  try {
    for (const [name, dir] of experts) m.addExpert(name, dir);
    // Without format fields, the row format the adapters recorded (as `molora eval` does).
    const given = dataFormatOf(o);
    const format = servedFormat(Object.keys(given).length ? given : null, [...(o.adapters ?? []), ...experts.map(([, d]) => d)], o.log) ?? {};
    const store = (await loadLmDataset(base, { ...o, ...format, seqLen, batchSize, seed: 0, role: 'evaluation' })).train;
    const run: Scoring = { m, store, seqLen, batchSize, wanted, log: o.log, settings: {}, samples: [], prompts: samplePrompts(base, store, o.samples ?? 0) };
    await scoreWithoutGate(run, o.adapters?.length ? 'adapters' : 'base');
    const summary: Summary = { tasks: store.taskNames.length ? [...store.taskNames] : ['all'], settings: run.settings };
    if (o.gate) Object.assign(summary, await scoreGate(run, o.gate));
    else await sample(run, Object.keys(run.settings).at(-1) ?? 'base');
    if (run.samples.length) summary.samples = run.samples;
    return summary;
  } finally {
    for (const a of plain) a.dispose();
    m.dispose();
  }
}

/** The settings to score: those asked for (default every one the experts and gate allow), each checked. */
function checkSettings(o: EvalStepOptions, experts: number): string[] {
  if (o.adapters?.length && experts) throw new Error('eval: give "adapters" (always on) or "experts" (composed), not both');
  if (o.gate && experts < 2) throw new Error('eval: "gate" needs the "experts" it was trained over (at least 2)');
  const allowed = new Set<string>(['base', ...(experts ? ['adapters', 'static-equal'] : []), ...(o.gate ? ['gate', 'masks'] : [])]);
  const wanted = o.settings ?? [...allowed];
  for (const s of wanted) {
    if (!(EVAL_SETTINGS as readonly string[]).includes(s)) throw new Error(`eval: unknown setting '${s}' (settings: ${EVAL_SETTINGS.join(', ')})`);
    if (!allowed.has(s)) throw new Error(`eval: setting '${s}' needs ${s === 'gate' || s === 'masks' ? '"gate" and ' : ''}"experts"`);
  }
  return wanted;
}

/** One eval step's scoring state: the model, its test store, and the reports and samples so far. */
interface Scoring {
  m: MoleModel;
  store: TokenStore;
  seqLen: number;
  batchSize: number;
  wanted: string[];
  log: (m: string) => void;
  settings: Record<string, EvalReport>;
  samples: Sample[];
  prompts: ReturnType<typeof samplePrompts>;
}

async function score(r: Scoring, name: string): Promise<void> {
  const bar = byteProgress(`eval ${name}`, 'examples');
  try {
    r.settings[name] = await evaluate(r.m.base, r.store, { batchSize: r.batchSize, seqLen: r.seqLen, useCache: r.m.kvCacheUsable, onProgress: bar.update });
  } finally {
    bar.stop();
  }
  r.log(`eval ${name}: exact match ${fmtExact(r.settings[name]!)}`);
}

/** Decode the sample prompts under the current setting. */
async function sample(r: Scoring, setting: string): Promise<void> {
  // From the prompt's tokens as scored: its text was already shaped by the row format.
  for (const { maxNew, ids, ...s } of r.prompts) r.samples.push({ ...s, setting, output: (await r.m.generate(ids, { maxNewTokens: maxNew })).text ?? '' });
}

/** The base (or the plain adapters) alone, each expert alone, and static equal weights. */
async function scoreWithoutGate(r: Scoring, baseName: string): Promise<void> {
  const names = r.m.experts;
  if (r.wanted.includes('base')) {
    if (names.length) r.m.composition.detach();
    await score(r, baseName);
    if (names.length) r.m.composition.attach();
  }
  if (r.wanted.includes('adapters')) {
    for (const n of names) {
      r.m.soloExpert(n);
      await score(r, `adapter:${n}`);
    }
    r.m.mask(null);
  }
  if (r.wanted.includes('static-equal')) {
    r.m.useWeights(Object.fromEntries(names.map((n) => [n, 1 / names.length])));
    await score(r, 'static-equal');
  }
}

/** The gate, and the gate with each expert masked (scored and sampled), with its weights per layer and task. */
async function scoreGate(r: Scoring, gate: string): Promise<Pick<Summary, 'experts' | 'gates'>> {
  const names = r.m.experts;
  await r.m.useGate(gate);
  if (r.wanted.includes('gate')) await score(r, 'gate');
  await sample(r, 'gate');
  for (const n of names) {
    r.m.mask([n]);
    if (r.wanted.includes('masks')) await score(r, `gate-mask:${n}`);
    await sample(r, `gate-mask:${n}`);
  }
  r.m.mask(null);
  const stats = await gateStatsOn(r.m.composition, r.store, r.store.taskNames, r.seqLen, Infinity);
  const matrix = (gates: typeof stats.gates): number[][] => gates.map((g) => g.meanWeight);
  return {
    experts: [...names],
    gates: {
      layers: stats.gates.map((g) => g.gate),
      experts: [...stats.experts],
      overall: matrix(stats.gates),
      by_task: Object.fromEntries(Object.entries(stats.byTask).map(([t, g]) => [t, matrix(g)])),
      entropy: stats.gates.map((g) => g.entropy),
    },
  };
}

/** The first `n` examples of each task, as text, with the length of their reference completion. */
function samplePrompts(model: MoleModel['base'], store: TokenStore, n: number): (Omit<Sample, 'setting' | 'output'> & { maxNew: number; ids: number[] })[] {
  const tok = model.tokenizer;
  if (n === 0 || !tok || store.mode !== 'completion') return [];
  const taken = new Map<number, number>();
  const out: (Omit<Sample, 'setting' | 'output'> & { maxNew: number; ids: number[] })[] = [];
  for (let i = 0; i < store.size; i++) {
    const t = store.taskIds[i]!;
    if ((taken.get(t) ?? 0) >= n) continue;
    taken.set(t, (taken.get(t) ?? 0) + 1);
    const ids = Array.from(store.example(i));
    const cut = store.promptLens[i]!;
    const reference = ids.slice(cut);
    out.push({
      task: store.taskNames[t] ?? 'all',
      prompt: tok.decode(ids.slice(0, cut), { skipSpecial: true }),
      reference: tok.decode(reference, { skipSpecial: true }),
      maxNew: reference.length,
      ids: ids.slice(0, cut),
    });
  }
  return out;
}

function fmtExact(r: EvalReport): string {
  const x = r.overall.exact_match;
  return x === null ? '-' : `${(100 * x).toFixed(1)}%`;
}
