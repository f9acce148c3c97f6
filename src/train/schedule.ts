export const SCHEDULE_KINDS = ['cosine', 'linear', 'constant'] as const;
export type ScheduleKind = (typeof SCHEDULE_KINDS)[number];

export interface ScheduleConfig {
  kind: ScheduleKind;
  /** Peak learning rate, reached at the end of warmup. */
  lr: number;
  /** Floor that cosine and linear decay to. */
  minLr: number;
  /** Updates of linear warmup from 0. */
  warmup: number;
  /** Total updates of the run; decay reaches minLr here. */
  total: number;
}

/**
 * Learning rate for update `t` (0-based), a pure function so that a resumed run picks up the
 * curve exactly. Warmup is linear from 0 and reaches `lr` on its last update (update 0 gets
 * lr/warmup rather than a wasted lr of 0); decay then runs from `lr` at update `warmup` towards
 * `minLr` at update `total`.
 */
export function lrAt(t: number, c: ScheduleConfig): number {
  if (t < c.warmup) return (c.lr * (t + 1)) / c.warmup;
  if (c.kind === 'constant') return c.lr;
  const p = Math.min(1, (t - c.warmup) / Math.max(1, c.total - c.warmup));
  const shape = c.kind === 'cosine' ? 0.5 * (1 + Math.cos(Math.PI * p)) : 1 - p;
  return c.minLr + (c.lr - c.minLr) * shape;
}

export function validateSchedule(c: ScheduleConfig): void {
  if (!(SCHEDULE_KINDS as readonly string[]).includes(c.kind)) {
    throw new Error(`schedule '${c.kind}' is not one of: ${SCHEDULE_KINDS.join(', ')}`);
  }
  if (!(c.lr > 0) || !Number.isFinite(c.lr)) throw new Error(`lr must be a positive number, got ${c.lr}`);
  if (!(c.minLr >= 0 && c.minLr <= c.lr)) throw new Error(`minLr must be in [0, lr], got ${c.minLr}`);
  if (!Number.isInteger(c.warmup) || c.warmup < 0) throw new Error(`warmup must be a non-negative integer, got ${c.warmup}`);
  if (!Number.isInteger(c.total) || c.total < 1) throw new Error(`steps must be a positive integer, got ${c.total}`);
}
