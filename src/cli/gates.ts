import { dirname } from 'node:path';
import { writeFileAtomic } from '../base/atomic.js';
import { gateStatsOn, trainGate } from '../gating/train-gate.js';
import { gateLr, routerSettings, TRAIN_GATE_OPTIONS } from '../gating/gate-options.js';
import { optionValues } from './options.js';
import { renderReport } from '../report/page.js';
import { parseGates } from '../report/summary.js';
import type { GateStatsReport } from '../gating/stats.js';
import { loadLmData } from '../train/lm.js';
import type { DataFormat } from '../data/record.js';
import type { DataFileFormat } from '../data/rows.js';
import { openComposed, scoringFormat, type ComposeFlags } from './compose.js';
import { lmOptions } from './train.js';

export async function runTrainGate(flags: Record<string, unknown>): Promise<void> {
  const o = optionValues(TRAIN_GATE_OPTIONS, flags);
  const settings = routerSettings(o);
  const opts = lmOptions({ ...o, lr: gateLr(o.lr, settings) });
  try {
    const r = await trainGate({ ...opts, model: o.model, experts: o.experts, ...settings });
    if (r.status === 'interrupted') process.exitCode = 130;
    else process.stderr.write(`molora: trained the ${settings.router} router for ${r.step} steps; gate folder ${o.out}\n`);
  } finally {
    opts.stopProgress();
  }
}

export async function runGates(
  o: ComposeFlags & DataFormat & { data: string; dataFormat?: DataFileFormat; taskColumn?: string; seqLen: number; json?: boolean; html?: string },
): Promise<void> {
  if (!o.gate) throw new Error('gates reports a trained gate: give --gate DIR with its --expert set');
  const format = scoringFormat(o);
  const m = await openComposed(o);
  try {
    const { dataset } = await loadLmData(m.base, { ...o, ...format, batchSize: 8, seed: 0, role: 'evaluation' }, () => {});
    const report = await gateStatsOn(m.composition, dataset.train, dataset.taskNames, o.seqLen, Infinity);
    if (o.html) writeGatesPage(report, o.html);
    process.stdout.write(o.json ? JSON.stringify(report) + '\n' : gatesTable(report) + '\n');
  } finally {
    m.dispose();
  }
}

export function gatesTable(r: GateStatsReport): string {
  const block = (title: string, gates: GateStatsReport['gates']): string[] => [
    title,
    ['gate', ...r.experts, 'entropy'].join('\t'),
    ...gates.map((g) => [g.gate, ...g.meanWeight.map((w) => w.toFixed(3)), g.entropy.toFixed(3)].join('\t')),
  ];
  const lines = block('all tokens', r.gates);
  for (const [task, gates] of Object.entries(r.byTask)) lines.push('', ...block(`task ${task}`, gates));
  return lines.join('\n');
}

/** The gate heatmaps as a self-contained page, rendered by the report module. */
function writeGatesPage(r: GateStatsReport, path: string): void {
  const { value, problems } = parseGates(r);
  if (!value) throw new Error(`cannot render the gate report: ${problems.join('; ')}`);
  writeFileAtomic(path, renderReport({ root: dirname(path), runs: [], summaries: [], gates: [{ path: 'molora gates', gates: value }], problems: [] }, new Date()));
  process.stderr.write(`molora: wrote ${path}\n`);
}
