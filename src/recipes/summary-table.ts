import type { Summary } from '../report/summary.js';

/** The mask-effect table an eval step prints: settings × tasks, exact match in %. */
export function summaryTable(s: Summary): string {
  const tasks = s.tasks ?? [];
  const lines = [['setting', ...tasks, 'overall'].join('\t')];
  for (const [name, r] of Object.entries(s.settings ?? {})) {
    const pct = (x: number | null | undefined): string => (x === null || x === undefined ? '-' : `${(100 * x).toFixed(1)}`);
    lines.push([name, ...tasks.map((t) => pct(r.tasks[t]?.exact_match)), pct(r.overall?.exact_match)].join('\t'));
  }
  return lines.join('\n');
}
