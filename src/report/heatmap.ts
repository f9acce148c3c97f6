import { html, type Html } from './html.js';
import type { ColorScale } from './scale.js';

export interface HeatmapOptions {
  /** The accessible name and visible caption. */
  title: string;
  /** Marks the chart in the DOM (data-kind), e.g. "gates" or "moe-load". */
  kind: string;
  rows: string[];
  cols: string[];
  /** [row][col]. */
  values: number[][];
  scale: ColorScale;
  /** Cell text and hover value. */
  format: (v: number) => string;
  /** What the colours mean, shown beside the legend bar. */
  legend: string;
  /** An extra text column on the right, one value per row (e.g. gate entropy). */
  note?: { header: string; values: string[] };
}

const FONT = 11;
/** Average glyph width of the 11 px sans-serif labels; sizes label gutters without measuring text. */
const GLYPH = 6.4;
const MAX_LABEL = 40;
const LEGEND_STEPS = 40;
const LEGEND_W = 160;

const clip = (s: string, n: number): string => (s.length > n ? s.slice(0, n - 1) + '…' : s);

/**
 * A rows × cols heatmap as inline SVG: every cell a <rect class="cell"> whose <title> shows its
 * row, column and value on hover; the chart's own <title> and <desc> name it for screen readers.
 */
export function heatmap(o: HeatmapOptions): Html {
  const R = o.rows.length;
  const C = o.cols.length;
  const rowLabel = o.rows.map((r) => clip(r, MAX_LABEL));
  const colLabel = o.cols.map((c) => clip(c, 24));
  const longest = Math.max(0, ...colLabel.map((l) => l.length)) * GLYPH;
  // Few columns widen to fit their names across (up to 96 px); many shrink to keep the map ~520 px wide.
  const cellW = C <= 10 ? Math.min(96, Math.max(48, Math.ceil(longest) + 12)) : Math.max(10, Math.floor(520 / C));
  const cellH = R <= 32 ? 20 : Math.max(6, Math.floor(640 / R));
  const showText = cellW >= 34 && cellH >= 14;
  const left = Math.ceil(Math.max(0, ...rowLabel.map((l) => l.length)) * GLYPH) + 10;
  // Column names that do not fit across a cell are set at 45°, which needs height instead of width.
  const rotate = longest > cellW - 4 || (C > 10 && longest > 0);
  const top = rotate ? Math.ceil(longest * 0.72) + 14 : 20;
  const noteW = o.note ? Math.max(o.note.header.length * GLYPH, 48) + 12 : 0;
  const gridW = C * cellW;
  const gridH = R * cellH;
  const legendY = top + gridH + 16;
  const width = Math.ceil(Math.max(left + gridW + noteW + (rotate ? longest * 0.72 : 0), left + LEGEND_W + 10 + o.legend.length * GLYPH) + 8);
  const height = legendY + 34;

  const cells = o.values.map((row, i) =>
    row.map((v, j) => {
      const x = left + j * cellW;
      const y = top + i * cellH;
      return html`<rect class="cell" x="${x}" y="${y}" width="${cellW - 1}" height="${cellH - 1}" fill="${o.scale.fill(v)}"><title>${o.rows[i]!} · ${o.cols[j]!}: ${o.format(v)}</title></rect>${
        showText
          ? html`<text x="${x + (cellW - 1) / 2}" y="${y + cellH / 2}" fill="${o.scale.ink(v)}" text-anchor="middle" dominant-baseline="central" aria-hidden="true">${o.format(v)}</text>`
          : ''
      }`;
    }),
  );
  // Dense maps label every k-th row or column so labels never overlap; each cell's title still names both.
  const rowEvery = Math.ceil(12 / cellH);
  const colEvery = Math.ceil(12 / cellW);
  const rowText = rowLabel.map((l, i) =>
    i % rowEvery ? '' : html`<text x="${left - 6}" y="${top + i * cellH + cellH / 2}" text-anchor="end" dominant-baseline="central">${l}<title>${o.rows[i]!}</title></text>`,
  );
  const colText = colLabel.map((l, j) => {
    const x = left + j * cellW + cellW / 2;
    if (j % colEvery) return '';
    return rotate
      ? html`<text x="${x}" y="${top - 6}" transform="rotate(-45 ${x} ${top - 6})">${l}<title>${o.cols[j]!}</title></text>`
      : html`<text x="${x}" y="${top - 6}" text-anchor="middle">${l}<title>${o.cols[j]!}</title></text>`;
  });
  const note = o.note
    ? html`<text x="${left + gridW + 8}" y="${top - 6}" class="muted">${o.note.header}</text>${o.note.values.map(
        (v, i) => html`<text x="${left + gridW + 8}" y="${top + i * cellH + cellH / 2}" dominant-baseline="central" class="muted">${v}</text>`,
      )}`
    : '';
  return html`<figure class="heatmap"><figcaption>${o.title}</figcaption><svg class="chart" data-kind="${o.kind}" role="img" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-size="${FONT}"><title>${o.title}</title><desc>${R} rows × ${C} columns; ${o.legend}</desc>${rowText}${colText}${cells}${note}${legend(o, left, legendY)}</svg></figure>`;
}

function legend(o: HeatmapOptions, x: number, y: number): Html {
  const w = LEGEND_W;
  const lo = o.scale.ticks[0]!;
  const hi = o.scale.ticks.at(-1)!;
  const step = w / LEGEND_STEPS;
  const bar = Array.from({ length: LEGEND_STEPS }, (_, k) => {
    const v = lo + ((k + 0.5) / LEGEND_STEPS) * (hi - lo);
    return html`<rect x="${x + k * step}" y="${y}" width="${step + 0.5}" height="10" fill="${o.scale.fill(v)}"/>`;
  });
  const labels = o.scale.ticks.map((t) => {
    const tx = x + (hi > lo ? ((t - lo) / (hi - lo)) * w : 0);
    return html`<text x="${tx}" y="${y + 22}" text-anchor="middle" class="muted">${o.format(t)}</text>`;
  });
  return html`<g class="legend" aria-hidden="true">${bar}${labels}<text x="${x + w + 10}" y="${y + 9}" class="muted">${o.legend}</text></g>`;
}
