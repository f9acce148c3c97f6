import type { DataFormat } from '../data/record.js';
import type { DataFileFormat } from '../data/rows.js';
import { evaluateCsv, type EvalReport } from '../train/evaluate.js';
import { openComposed, scoringFormat, type ComposeFlags } from './compose.js';
import { byteProgress } from '../train/job-progress.js';

export async function runEval(
  o: ComposeFlags &
    DataFormat & {
      data: string;
      dataFormat?: DataFileFormat;
      taskColumn?: string;
      batchSize: number;
      seqLen: number;
      exactMatch: boolean;
      json?: boolean;
    },
): Promise<void> {
  const format = scoringFormat(o);
  const composed = await openComposed(o);
  const bar = byteProgress('greedy completions', 'examples');
  try {
    const report = await evaluateCsv(composed.base, { ...o, ...format, useCache: composed.kvCacheUsable, onProgress: bar.update });
    bar.stop();
    process.stdout.write(o.json ? JSON.stringify(report) + '\n' : evalTable(report) + '\n');
  } finally {
    bar.stop();
    composed.dispose();
  }
}

export function evalTable(r: EvalReport): string {
  const rows = [...Object.entries(r.tasks), ['overall', r.overall] as const];
  const lines = ['task\tn\tloss\tperplexity\texact_match'];
  for (const [name, s] of rows) {
    lines.push([name, s.n, s.loss.toFixed(4), s.perplexity.toFixed(3), s.exact_match === null ? '-' : (100 * s.exact_match).toFixed(1) + '%'].join('\t'));
  }
  return lines.join('\n');
}
