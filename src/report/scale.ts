/** Colour ramps, axis ticks and number formats shared by the charts and tables. */

type Rgb = [number, number, number];

const hex = (c: Rgb): string => '#' + c.map((v) => Math.round(v).toString(16).padStart(2, '0')).join('');

function mix(stops: Rgb[], t: number): Rgb {
  const x = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(x), stops.length - 2);
  const f = x - i;
  const a = stops[i]!;
  const b = stops[i + 1]!;
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

// ColorBrewer RdBu/Greens stops: print-safe, and readable by most colour-blind viewers.
const BLUE_WHITE_RED: Rgb[] = [
  [33, 102, 172],
  [103, 169, 207],
  [209, 229, 240],
  [247, 247, 247],
  [253, 219, 199],
  [239, 138, 98],
  [178, 24, 43],
];
const GREENS: Rgb[] = [
  [247, 252, 245],
  [199, 233, 192],
  [116, 196, 118],
  [35, 139, 69],
  [0, 90, 50],
];

/** A value → fill colour mapping with the text colour that stays readable on it. */
export interface ColorScale {
  fill(v: number): string;
  ink(v: number): string;
  /** Values to label on the legend, low to high. */
  ticks: number[];
}

/** Text colour for a background: dark on light fills, white on dark ones (WCAG relative luminance). */
function inkOn(c: Rgb): string {
  const lin = c.map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * lin[0]! + 0.7152 * lin[1]! + 0.0722 * lin[2]! > 0.25 ? '#111' : '#fff';
}

/** lo → hi, white to dark green (higher is better: exact match). */
export function sequential(lo: number, hi: number): ColorScale {
  const at = (v: number): Rgb => mix(GREENS, hi > lo ? (v - lo) / (hi - lo) : 0);
  return { fill: (v) => hex(at(v)), ink: (v) => inkOn(at(v)), ticks: [lo, (lo + hi) / 2, hi] };
}

/**
 * Blue below `mid`, white at it, red above; symmetric so equal distances look equally strong.
 * Gates use the uniform weight 1/N as mid: red means an expert gets more than its even share.
 * The legend stops at `floor` (weights and loads are never negative).
 */
export function diverging(mid: number, spread: number, floor = -Infinity): ColorScale {
  const at = (v: number): Rgb => mix(BLUE_WHITE_RED, spread > 0 ? 0.5 + (v - mid) / (2 * spread) : 0.5);
  return { fill: (v) => hex(at(v)), ink: (v) => inkOn(at(v)), ticks: [Math.max(floor, mid - spread), mid, mid + spread] };
}

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  // The round step whose tick count comes closest to the one asked for; ties take the larger step.
  const steps = [1, 2, 2.5, 5, 10].map((m) => m * mag);
  const step = steps.reduce((best, s) => (Math.abs((hi - lo) / s - count) <= Math.abs((hi - lo) / best - count) ? s : best));
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** A number in at most `digits` significant figures, without float noise or exponent for everyday sizes. */
export function fmt(v: number | null | undefined, digits = 3): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  if (v !== 0 && (Math.abs(v) >= 1e6 || Math.abs(v) < 1e-3)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

/** A 0–1 fraction as a percentage with one decimal. */
export function pct(v: number | null | undefined): string {
  return v === null || v === undefined || !Number.isFinite(v) ? '—' : `${(v * 100).toFixed(1)}%`;
}
