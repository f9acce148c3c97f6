import type { MetricsEntry } from '../train/metrics.js';
import { html, type Html } from './html.js';
import { downsample, lineChart, type Point } from './line-chart.js';
import { fmt } from './scale.js';

/** One metrics.jsonl, named by its folder relative to RUN_DIR. */
export interface MetricsRun {
  path: string;
  entries: MetricsEntry[];
}

/** Points per curve; longer runs are averaged down (see downsample). */
const MAX_POINTS = 600;
const TRAIN = '#1f77b4';
const VAL = '#d62728';

const num = (e: MetricsEntry, key: string): number | null => {
  const v = e[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
};

function series(entries: MetricsEntry[], key: string): Point[] {
  return entries.flatMap((e) => {
    const v = num(e, key);
    return v === null ? [] : [[e.step, v] as Point];
  });
}

function median(xs: number[]): number | null {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** A loss-curve card for one run: train and val loss vs step, and the numbers people look for first. */
export function runCard(run: MetricsRun): Html {
  const train = series(run.entries, 'loss');
  const val = series(run.entries, 'val_loss');
  const title = run.path === '.' ? 'RUN_DIR' : run.path;
  if (!train.length && !val.length) {
    return html`<article class="card run"><h3>${title}</h3><p class="missing">This metrics.jsonl has no <code>loss</code> or <code>val_loss</code> entries yet.</p></article>`;
  }
  const { points, k } = downsample(train, MAX_POINTS);
  const chart = lineChart({
    title: `Loss curve: ${title}`,
    kind: 'loss',
    xLabel: 'step',
    yLabel: 'loss',
    series: [
      ...(points.length ? [{ name: k > 1 ? `train loss (mean of ${k} steps)` : 'train loss', points, color: TRAIN }] : []),
      ...(val.length ? [{ name: 'val loss', points: val, color: VAL, markers: true }] : []),
    ],
  });
  const best = val.reduce<Point | null>((b, p) => (b === null || p[1] < b[1] ? p : b), null);
  const last = run.entries.at(-1)!;
  const lastLr = [...run.entries].reverse().find((e) => num(e, 'lr') !== null);
  const lastPpl = [...run.entries].reverse().find((e) => num(e, 'perplexity') !== null);
  const speed = median(run.entries.flatMap((e) => num(e, 'tokens_per_s') ?? []));
  const facts: [string, string][] = [
    ['steps', String(last.step)],
    ['final train loss', train.length ? fmt(train.at(-1)![1], 4) : '—'],
    ['best val loss', best ? `${fmt(best[1], 4)} (step ${best[0]})` : '—'],
    ['val perplexity', lastPpl ? fmt(num(lastPpl, 'perplexity'), 4) : '—'],
    ['last lr', lastLr ? fmt(num(lastLr, 'lr'), 3) : '—'],
    ['tokens/s (median)', speed === null ? '—' : fmt(speed, 4)],
  ];
  return html`<article class="card run"><h3>${title}</h3>${chart}<dl class="facts">${facts.map(([k, v]) => html`<div><dt>${k}</dt><dd>${v}</dd></div>`)}</dl></article>`;
}
