import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { diskError, writeFileAtomic } from '../base/atomic.js';

export const METRICS_FILE = 'metrics.jsonl';

/** A training line: `{step, loss, lr, grad_norm, tokens_per_s}`; an eval line: `{step, val_loss, perplexity, …}`. */
export type MetricsEntry = { step: number } & Record<string, unknown>;

/**
 * metrics.jsonl in the run folder, one JSON object per line. A fresh run starts the file empty;
 * a run resumed from step s keeps the lines up to s and drops the rest (steps the interrupted run
 * logged after its checkpoint, and a torn last line), so the file ends up the same as an
 * uninterrupted run's.
 */
export class MetricsLog {
  readonly path: string;

  constructor(outDir: string, resumeStep: number | null) {
    mkdirSync(outDir, { recursive: true });
    this.path = join(outDir, METRICS_FILE);
    const kept = resumeStep === null ? [] : readMetrics(this.path).filter((e) => e.step <= resumeStep);
    writeFileAtomic(this.path, kept.map((e) => JSON.stringify(e) + '\n').join(''));
  }

  write(entry: MetricsEntry): void {
    try {
      appendFileSync(this.path, JSON.stringify(entry) + '\n');
    } catch (e) {
      throw diskError(e, this.path);
    }
  }
}

/** The entries of a metrics.jsonl; lines that do not parse to an object with a step are skipped. */
export function readMetrics(path: string): MetricsEntry[] {
  if (!existsSync(path)) return [];
  const out: MetricsEntry[] = [];
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      const e = JSON.parse(line) as unknown;
      if (typeof e === 'object' && e !== null && typeof (e as MetricsEntry).step === 'number') out.push(e as MetricsEntry);
    } catch {
      // a line torn by a crash mid-write
    }
  }
  return out;
}
