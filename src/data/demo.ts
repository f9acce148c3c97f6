import { relative } from 'node:path';
import { demoFamily, writeFamily } from './families.js';

export interface DemoDataOptions {
  out: string;
  /** Training rows per task file. */
  rows?: number;
  /** Rows of the router's file. */
  gateRows?: number;
  /** Held-out test rows per task. */
  testRows?: number;
  seed?: number;
}

/** The files writeDemoData produces, relative to its folder. */
export interface DemoDataFiles {
  tasks: Record<string, string>;
  gate: string;
  test: string;
  testUnlabelled: string;
}

/**
 * Write the quickstart's CSVs (prompt,completion,task) for demoFamily: one training file per
 * task, gate.csv for the router, and test.csv (with and without its task column) whose inputs no
 * training file holds (writeFamily checks it on the rows it writes).
 */
export function writeDemoData(o: DemoDataOptions): DemoDataFiles {
  const files = writeFamily(o.out, demoFamily(), { taskRows: o.rows ?? 400, gateRows: o.gateRows ?? 1200, testRows: o.testRows ?? 50, seed: o.seed ?? 0 });
  const rel = (p: string): string => relative(o.out, p);
  return {
    tasks: Object.fromEntries(Object.entries(files.tasks).map(([t, p]) => [t, rel(p)])),
    gate: rel(files.gate),
    test: rel(files.test),
    testUnlabelled: rel(files.testUnlabelled),
  };
}
