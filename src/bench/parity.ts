import * as tf from '@tensorflow/tfjs';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { activeBackend, type BackendInfo } from '../base/backend.js';
import { loadBase } from '../base/load.js';
import type { TokenBatch } from '../base/model.js';
import { logprobs } from '../base/scoring.js';

/**
 * float32 lands within about 1e-5 of the float64 references; 1e-4 still fails subtly wrong math
 * (exact-erf GELU for gelu_new is 8.8e-4 off, a wrong rms_norm_eps 5.2e-4): test/parity.test.ts.
 */
export const PARITY_TOLERANCE = 1e-4;

/** One case of a fixture's reference.json (scripts/make_fixtures.py, make_moe_fixtures.py). */
export interface ReferenceCase {
  ids: number[][];
  attention_mask: number[][];
  /** logprobs[b][t]: the float64 log-softmax after position t of row b; null at padding. */
  logprobs: (number[] | null)[][];
}

export interface ParityCase {
  case: number;
  /** Positions compared (padding has no reference). */
  positions: number;
  /** Largest |molora − reference| over every compared position and vocabulary entry. */
  max_abs_diff: number;
  pass: boolean;
}

export interface ParityFixture {
  name: string;
  cases: ParityCase[];
  /** Set when the fixture could not be run at all (load or forward failed); it then fails. */
  error?: string;
  pass: boolean;
}

export interface ParityResult {
  backend: string;
  /** How the backend was chosen, and whatever it reports about itself (adapter, …). */
  backend_info: BackendInfo | null;
  tolerance: number;
  fixtures: ParityFixture[];
  pass: boolean;
}

export interface ParityOptions {
  /** A folder of model folders; those holding reference.json are checked. */
  fixtures: string;
  tolerance?: number;
}

/**
 * Load every fixture model that has a float64 reference, compute its log-probs on the backend in
 * use and compare them with the reference, case by case. A fixture that fails to load or run is
 * reported as failed with its error, and the others still run: on a new backend one missing
 * kernel should not hide the state of the rest.
 */
export async function benchParity(o: ParityOptions): Promise<ParityResult> {
  const tolerance = o.tolerance ?? PARITY_TOLERANCE;
  const fixtures: ParityFixture[] = [];
  for (const name of fixtureNames(o.fixtures)) fixtures.push(await checkFixture(join(o.fixtures, name), name, tolerance));
  return {
    backend: tf.getBackend(),
    backend_info: activeBackend(),
    tolerance,
    fixtures,
    pass: fixtures.every((f) => f.pass),
  };
}

/** Sub-folders of `dir` holding a reference.json, sorted. */
export function fixtureNames(dir: string): string[] {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`fixtures folder ${dir} does not exist`);
  const names = readdirSync(dir).filter((n) => existsSync(join(dir, n, 'reference.json'))).sort();
  if (names.length === 0) throw new Error(`no model folder under ${dir} has a reference.json`);
  return names;
}

async function checkFixture(dir: string, name: string, tolerance: number): Promise<ParityFixture> {
  // A malformed reference is a broken fixture, not a backend failure: it throws.
  const cases = readReferenceCases(join(dir, 'reference.json'));
  const out: ParityCase[] = [];
  try {
    const model = loadBase(dir, { warn: () => {} });
    try {
      for (const [i, ref] of cases.entries()) {
        const got = await logprobs(model, batchOf(ref));
        const { positions, worst } = compare(got, ref, `${name} case ${i}`);
        out.push({ case: i, positions, max_abs_diff: worst, pass: positions > 0 && worst < tolerance });
      }
    } finally {
      model.dispose();
    }
  } catch (err) {
    return { name, cases: out, error: err instanceof Error ? err.message : String(err), pass: false };
  }
  return { name, cases: out, pass: out.every((c) => c.pass) };
}

function batchOf(ref: ReferenceCase): TokenBatch {
  return {
    ids: Int32Array.from(ref.ids.flat()),
    attentionMask: Uint8Array.from(ref.attention_mask.flat()),
    batch: ref.ids.length,
    seq: ref.ids[0]!.length,
  };
}

/** Largest |Δ| over every position the reference has; a NaN makes it NaN, which fails. */
function compare(got: Float32Array[][], ref: ReferenceCase, what: string): { positions: number; worst: number } {
  let positions = 0;
  let worst = 0;
  for (const [b, row] of ref.logprobs.entries()) {
    for (const [t, want] of row.entries()) {
      if (want === null) continue;
      const have = got[b]![t]!;
      if (have.length !== want.length) throw new Error(`${what}, row ${b}, position ${t}: ${have.length} log-probs against the reference's ${want.length}`);
      for (let v = 0; v < want.length; v++) {
        const d = Math.abs(have[v]! - want[v]!);
        if (Number.isNaN(d)) return { positions, worst: NaN };
        worst = Math.max(worst, d);
      }
      positions++;
    }
  }
  return { positions, worst };
}

/** The cases of a reference.json, checked enough that a bad file is named rather than misread. */
export function readReferenceCases(file: string): ReferenceCase[] {
  const json = JSON.parse(readFileSync(file, 'utf8')) as { cases?: unknown };
  if (!Array.isArray(json.cases) || json.cases.length === 0) throw new Error(`${file}: no "cases" array`);
  return json.cases.map((c: Partial<ReferenceCase>, i) => {
    const rows = c.ids?.length;
    const seq = c.ids?.[0]?.length;
    const ok = rows && seq && c.ids!.every((r) => r.length === seq) &&
      c.attention_mask?.length === rows && c.attention_mask.every((r) => r.length === seq) &&
      c.logprobs?.length === rows && c.logprobs.every((r) => r.length === seq);
    if (!ok) throw new Error(`${file}: case ${i} needs ids, attention_mask and logprobs of the same [rows, seq] shape`);
    return c as ReferenceCase;
  });
}
