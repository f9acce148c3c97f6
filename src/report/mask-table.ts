import { html, type Html } from './html.js';
import { fmt, pct, sequential } from './scale.js';
import type { Score, SettingReport } from './summary.js';

const OVERALL = 'overall';
const MASK = /^gate-mask:(.+)$/;

/** The tasks of a summary: its own list, else every task a setting reports, in first-seen order. */
export function taskColumns(settings: Record<string, SettingReport>, tasks?: string[]): string[] {
  return tasks ?? [...new Set(Object.values(settings).flatMap((r) => Object.keys(r.tasks)))];
}

/** How one table reads its settings: which metric, each cell's value and fill, changes from the gate. */
interface MaskView {
  settings: Record<string, SettingReport>;
  tasks: string[];
  cols: string[];
  useEm: boolean;
  unit: string;
  hasGate: boolean;
  hasMasks: boolean;
  scoreOf(setting: string, col: string): Score | undefined;
  value(s: Score | undefined): number | null;
  /** Goodness in [0, 1], which drives the fill. */
  good(v: number): number;
  /** Change from the gate in the metric's unit: exact-match points, or loss. */
  change(gate: number, v: number): number;
}

function maskView(settings: Record<string, SettingReport>, tasks: string[]): MaskView {
  const names = Object.keys(settings);
  const cols = [...tasks, ...(names.some((n) => settings[n]!.overall) ? [OVERALL] : [])];
  const scoreOf = (setting: string, col: string): Score | undefined =>
    col === OVERALL ? settings[setting]!.overall : Object.hasOwn(settings[setting]!.tasks, col) ? settings[setting]!.tasks[col] : undefined;
  const useEm = names.some((n) => cols.some((c) => scoreOf(n, c)?.exact_match != null));
  const value = (s: Score | undefined): number | null => (s ? (useEm ? s.exact_match : s.loss) : null);
  const values = names.flatMap((n) => cols.flatMap((c) => value(scoreOf(n, c)) ?? []));
  // Exact match as is; loss reversed over the range seen.
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  return {
    settings, tasks, cols, useEm, scoreOf, value,
    unit: useEm ? ' pts' : '',
    hasGate: Object.hasOwn(settings, 'gate'),
    hasMasks: names.some((n) => MASK.test(n)),
    good: (v) => (useEm ? v : hi > lo ? (hi - v) / (hi - lo) : 0.5),
    change: (gate, v) => (useEm ? (v - gate) * 100 : v - gate),
  };
}

/**
 * Exact match (or loss, for text-only evals) per setting and task. Fill: how good the cell is.
 * Rows `gate-mask:<expert>` also show the change from the unmasked `gate` row, outline the
 * masked expert's own task, and end with the verdict: masking should hurt that task most.
 */
export function maskTable(settings: Record<string, SettingReport>, tasks: string[]): Html {
  const v = maskView(settings, tasks);
  const rows = Object.keys(settings).map((name) => maskRow(v, name));
  const metric = v.useEm ? 'exact match' : 'loss (no exact match in these evals)';
  return html`<div class="scroll"><table class="mask" data-metric="${v.useEm ? 'exact_match' : 'loss'}"><caption>${metric} per setting and task; hover a cell for loss, perplexity and n</caption><thead><tr><th scope="col">setting</th>${v.cols.map(
    (c) => html`<th scope="col">${c}</th>`,
  )}${v.hasMasks ? html`<th scope="col">mask effect</th>` : ''}</tr></thead><tbody>${rows}</tbody></table></div><p class="legend-note">Darker green is better${
    v.useEm ? '' : ' (lower loss)'
  }. ${
    v.hasMasks
      ? html`In <code>gate-mask:&lt;expert&gt;</code> rows the small figure is the change from the unmasked <code>gate</code> row, and the outlined cell is the masked expert’s own task: masking should hurt it and spare the others (✓).`
      : ''
  }</p>`;
}

function maskRow(v: MaskView, name: string): Html {
  const masked = MASK.exec(name)?.[1];
  const scale = sequential(0, 1);
  const show = (x: number | null): string => (v.useEm ? pct(x) : fmt(x, 4));
  const cells = v.cols.map((col) => {
    const s = v.scoreOf(name, col);
    const x = v.value(s);
    const own = masked !== undefined && col === masked;
    const ref = v.hasGate && masked !== undefined ? v.value(v.scoreOf('gate', col)) : null;
    const tip = s
      ? `${name} on ${col}: exact match ${pct(s.exact_match)} · loss ${fmt(s.loss, 4)} · perplexity ${fmt(s.perplexity, 4)} · n ${fmt(s.n, 8)}${own ? ' · the masked expert’s own task' : ''}`
      : `${name} has no score for ${col}`;
    const delta = ref !== null && x !== null ? v.change(ref, x) : null;
    return html`<td${own ? html` class="masked"` : ''} title="${tip}"${
      x === null ? '' : html` style="background:${scale.fill(v.good(x))};color:${scale.ink(v.good(x))}"`
    }>${show(x)}${delta === null ? '' : html`<small>${signed(delta, v.unit)}</small>`}</td>`;
  });
  return html`<tr><th scope="row">${name}</th>${cells}${v.hasMasks ? html`<td class="verdict">${masked !== undefined ? verdict(v, masked) : ''}</td>` : ''}</tr>`;
}

/** Masking an expert should hurt its own task more than any other. */
function verdict(v: MaskView, masked: string): Html | string {
  if (!v.hasGate || !v.tasks.includes(masked)) return '—';
  const changeOn = (t: string): number | null => {
    const g = v.value(v.scoreOf('gate', t));
    const m = v.value(v.scoreOf(`gate-mask:${masked}`, t));
    return g === null || m === null ? null : v.change(g, m);
  };
  // Worse means lower exact match, or higher loss.
  const worse = (c: number): number => (v.useEm ? -c : c);
  const own = changeOn(masked);
  if (own === null) return '—';
  const others = v.tasks.filter((t) => t !== masked).flatMap((t) => changeOn(t) ?? []);
  const worst = others.length ? others.reduce((a, c) => (worse(c) > worse(a) ? c : a)) : null;
  const ok = worse(own) > 0 && (worst === null || worse(own) > worse(worst));
  return html`<span class="${ok ? 'ok' : 'bad'}">${ok ? '✓' : '✗'}</span> own ${signed(own, v.unit)}${
    worst === null ? '' : html`, others at worst ${signed(worst, v.unit)}`
  }`;
}

/** A change with its sign (a true minus sign); points to one decimal, losses to 3 significant figures. */
function signed(v: number, unit: string): string {
  const mag = unit ? Math.abs(v).toFixed(1) : fmt(Math.abs(v), 3);
  return `${Number(mag) === 0 ? '±' : v > 0 ? '+' : '−'}${mag}${unit}`;
}
