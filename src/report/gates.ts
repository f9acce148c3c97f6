import { heatmap } from './heatmap.js';
import { html, type Html } from './html.js';
import { diverging, fmt } from './scale.js';
import type { GateSummary } from './summary.js';

/**
 * The longest dotted prefix all names share ("model.layers."), so rows can show what differs;
 * empty when it would swallow a whole name.
 */
export function commonPrefix(names: string[]): string {
  if (names.length < 2) return '';
  let p = names[0]!;
  for (const n of names) while (!n.startsWith(p)) p = p.slice(0, -1);
  p = p.slice(0, p.lastIndexOf('.') + 1);
  return names.some((n) => n.length === p.length) ? '' : p;
}

/**
 * Gate weight heatmaps (layer × expert): overall, with entropy per layer, then one per task.
 * All share one colour scale centred on the uniform weight 1/N, so red reads "this expert gets
 * more than an even share" in every panel and panels compare directly.
 */
export function gateHeatmaps(g: GateSummary, source: string): Html {
  const N = g.experts.length;
  const uniform = 1 / N;
  const matrices = [g.overall, ...Object.values(g.by_task ?? {})];
  const spread = Math.max(0.01, ...matrices.flat(2).map((w) => Math.abs(w - uniform)));
  const scale = diverging(uniform, spread, 0);
  const prefix = commonPrefix(g.layers);
  const rows = g.layers.map((l) => l.slice(prefix.length));
  const legend = `mean gate weight · white = uniform 1/${N}`;
  const panel = (title: string, values: number[][], kind: string, entropy?: number[]): Html =>
    heatmap({
      title,
      kind,
      rows,
      cols: g.experts,
      values,
      scale,
      format: (v) => v.toFixed(2),
      legend,
      ...(entropy ? { note: { header: `entropy (max ${fmt(Math.log(N), 3)})`, values: entropy.map((h) => fmt(h, 3)) } } : {}),
    });
  const tasks = Object.entries(g.by_task ?? {});
  return html`<p class="source">From <code>${source}</code>. ${prefix ? html`Layer names drop their common prefix <code>${prefix}</code> ` : ''}${
    tasks.length ? '' : html`<br>No per-task weights (<code>"by_task"</code>) were recorded.`
  }</p><div class="panels">${panel('All tokens', g.overall, 'gates', g.entropy)}${tasks.map(([task, m]) =>
    panel(`Task: ${task}`, m, 'gates-task'),
  )}</div>`;
}
