import { html, type Html } from './html.js';
import { fmt, niceTicks } from './scale.js';

export type Point = [x: number, y: number];

export interface Series {
  name: string;
  points: Point[];
  color: string;
  /** Draw a dot per point with its value on hover (sparse series such as evals). */
  markers?: boolean;
}

export interface LineChartOptions {
  title: string;
  /** Marks the chart in the DOM (data-kind). */
  kind: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
}

const W = 600;
const H = 280;
const M = { left: 58, right: 16, top: 30, bottom: 42 };

/** An x/y line chart as inline SVG with round-number axes, grid and legend; non-finite points are left out. */
export function lineChart(o: LineChartOptions): Html {
  const series = o.series.map((s) => ({ ...s, points: s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)) }));
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [x0, x1] = padded(Math.min(...xs), Math.max(...xs), 0);
  const [y0, y1] = padded(Math.min(...ys), Math.max(...ys), 0.05);
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const sx = (x: number): number => M.left + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number): number => M.top + (1 - (y - y0) / (y1 - y0)) * ph;
  const r2 = (v: number): number => Math.round(v * 100) / 100;

  const xTicks = niceTicks(x0, x1, 6).map(
    (t) => html`<line class="grid" x1="${r2(sx(t))}" x2="${r2(sx(t))}" y1="${M.top}" y2="${M.top + ph}"/><text x="${r2(sx(t))}" y="${M.top + ph + 16}" text-anchor="middle">${fmt(t, 6)}</text>`,
  );
  const yTicks = niceTicks(y0, y1, 5).map(
    (t) => html`<line class="grid" x1="${M.left}" x2="${M.left + pw}" y1="${r2(sy(t))}" y2="${r2(sy(t))}"/><text x="${M.left - 6}" y="${r2(sy(t))}" text-anchor="end" dominant-baseline="central">${fmt(t, 4)}</text>`,
  );
  const lines = series.map((s) => {
    const d = s.points.map(([x, y]) => `${r2(sx(x))},${r2(sy(y))}`).join(' ');
    const dots = s.markers
      ? s.points.map(([x, y]) => html`<circle cx="${r2(sx(x))}" cy="${r2(sy(y))}" r="3" fill="${s.color}"><title>${s.name} at ${o.xLabel} ${fmt(x, 8)}: ${fmt(y, 4)}</title></circle>`)
      : '';
    return html`<g class="series" data-series="${s.name}"><polyline points="${d}" fill="none" stroke="${s.color}" stroke-width="1.6" stroke-linejoin="round"><title>${s.name}</title></polyline>${dots}</g>`;
  });
  let lx = M.left;
  const legend = series.map((s) => {
    const item = html`<rect x="${lx}" y="8" width="14" height="4" fill="${s.color}"/><text x="${lx + 19}" y="10" dominant-baseline="central">${s.name}</text>`;
    lx += 19 + s.name.length * 6.6 + 18;
    return item;
  });
  return html`<svg class="chart" data-kind="${o.kind}" role="img" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-size="11"><title>${o.title}</title>${xTicks}${yTicks}<rect class="frame" x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none"/>${lines}<g aria-hidden="true">${legend}</g><text x="${M.left + pw / 2}" y="${H - 6}" text-anchor="middle" class="muted">${o.xLabel}</text><text transform="rotate(-90)" x="${-(M.top + ph / 2)}" y="14" text-anchor="middle" class="muted">${o.yLabel}</text></svg>`;
}

/** A non-empty range around [lo, hi]: a single value still gets an axis. */
function padded(lo: number, hi: number, frac: number): [number, number] {
  if (!Number.isFinite(lo)) return [0, 1];
  if (hi === lo) return lo === 0 ? [-1, 1] : [lo - Math.abs(lo) * 0.1, hi + Math.abs(hi) * 0.1];
  const pad = (hi - lo) * frac;
  return [lo - pad, hi + pad];
}

/**
 * At most `max` points: consecutive runs of k points become their mean, so a long run's curve
 * stays a few kilobytes and reads like a lightly smoothed one. Returns k (1: untouched).
 */
export function downsample(points: Point[], max: number): { points: Point[]; k: number } {
  if (points.length <= max) return { points, k: 1 };
  const k = Math.ceil(points.length / max);
  const out: Point[] = [];
  for (let i = 0; i < points.length; i += k) {
    const chunk = points.slice(i, i + k);
    out.push([chunk.reduce((a, p) => a + p[0], 0) / chunk.length, chunk.reduce((a, p) => a + p[1], 0) / chunk.length]);
  }
  return { points: out, k };
}
