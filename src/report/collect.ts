import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { METRICS_FILE, readMetrics } from '../train/metrics.js';
import type { MetricsRun } from './runs.js';
import { parseGates, parseSummary, type GateSummary, type Summary } from './summary.js';

export const SUMMARY_FILE = 'summary.json';
export const GATES_FILE = 'gates.json';

/** Everything the report shows, found under one RUN_DIR; paths are relative to it, with '/'. */
export interface RunData {
  root: string;
  runs: MetricsRun[];
  summaries: { path: string; summary: Summary }[];
  gates: { path: string; gates: GateSummary }[];
  /** Files that could not be read or parsed, and parts dropped for their shape. */
  problems: { path: string; message: string }[];
}

/** Folders never worth walking into: dependencies, VCS data, hidden folders (caches, scratch). */
const SKIP = (name: string): boolean => name === 'node_modules' || name.startsWith('.');

/** Walks RUN_DIR (not following symlinks, so links cannot loop) and reads every part it finds. */
export function collectRun(root: string): RunData {
  const data: RunData = { root, runs: [], summaries: [], gates: [], problems: [] };
  const rel = (path: string): string => relative(root, path).split(sep).join('/') || '.';
  // One unreadable file (or folder) becomes a line on the page, not a failed report.
  const attempt = <T>(path: string, read: () => T): T | undefined => {
    try {
      return read();
    } catch (err) {
      data.problems.push({ path: rel(path), message: err instanceof Error ? err.message : String(err) });
      return undefined;
    }
  };
  const readJson = (path: string): unknown => attempt(path, () => JSON.parse(readFileSync(path, 'utf8')) as unknown);
  const walk = (dir: string): void => {
    const entries = attempt(dir, () => readdirSync(dir, { withFileTypes: true }));
    if (!entries) return;
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const path = join(dir, e.name);
      if (e.isFile() && e.name === METRICS_FILE) {
        const metrics = attempt(path, () => readMetrics(path));
        if (metrics) data.runs.push({ path: rel(dir), entries: metrics });
      } else if (e.isFile() && e.name === SUMMARY_FILE) {
        const json = readJson(path);
        if (json === undefined) continue;
        const { value, problems } = parseSummary(json);
        data.summaries.push({ path: rel(path), summary: value });
        for (const message of problems) data.problems.push({ path: rel(path), message });
      } else if (e.isFile() && e.name === GATES_FILE) {
        const json = readJson(path);
        if (json === undefined) continue;
        const { value, problems } = parseGates(json);
        if (value) data.gates.push({ path: rel(path), gates: value });
        for (const message of problems) data.problems.push({ path: rel(path), message });
      }
    }
    // Files of a folder before its subfolders: a top-level summary comes first.
    for (const e of entries) if (e.isDirectory() && !SKIP(e.name)) walk(join(dir, e.name));
  };
  walk(root);
  return data;
}
