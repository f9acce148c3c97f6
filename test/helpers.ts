import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const FIXTURES = join(import.meta.dirname, 'fixtures');
export const MODEL_FIXTURES = join(FIXTURES, 'models');

export interface ReferenceCase {
  ids: number[][];
  attention_mask: number[][];
  position_ids: number[][];
  logprobs: (number[] | null)[][];
}

export interface Reference {
  cases: ReferenceCase[];
  greedy: { prompt: number[]; tokens: number[]; min_margin: number };
}

export function readReference(name: string): Reference {
  return JSON.parse(readFileSync(join(MODEL_FIXTURES, name, 'reference.json'), 'utf8')) as Reference;
}

/** A fresh temp folder, removed by the returned cleanup. */
export function tempDir(prefix = 'molora-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Largest absolute difference relative to the reference's largest magnitude (lengths must match). */
export function maxRelErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new Error(`length ${got.length} != ${ref.length}`);
  let m = 0;
  let scale = 1e-6;
  for (let i = 0; i < got.length; i++) {
    m = Math.max(m, Math.abs(got[i]! - ref[i]!));
    scale = Math.max(scale, Math.abs(ref[i]!));
  }
  return m / scale;
}
