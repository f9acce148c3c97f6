import { heatmap } from './heatmap.js';
import type { Html } from './html.js';
import { diverging, pct } from './scale.js';
import type { MoeLoad } from './summary.js';

/**
 * Router load of a mixture-of-experts base (MoE layer × expert), centred on the even share so
 * overloaded experts are red and starved ones blue. The even share is the mean load, not 1/E:
 * top-k routing makes each row sum to k.
 */
export function moeHeatmap(m: MoeLoad): Html {
  const all = m.load.flat();
  const even = all.reduce((a, v) => a + v, 0) / Math.max(all.length, 1);
  const spread = Math.max(1e-3, ...all.map((v) => Math.abs(v - even)));
  return heatmap({
    title: `Expert load over ${m.layers.length} MoE layer${m.layers.length === 1 ? '' : 's'} × ${m.experts} experts`,
    kind: 'moe-load',
    rows: m.layers.map((l) => `layer ${l}`),
    cols: Array.from({ length: m.experts }, (_, e) => String(e)),
    values: m.load,
    scale: diverging(even, spread, 0),
    format: (v) => pct(v),
    legend: `fraction of routed tokens · white = even share ${pct(even)}`,
  });
}
