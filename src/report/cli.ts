import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { writeFileAtomic } from '../base/atomic.js';
import { collectRun } from './collect.js';
import { renderReport } from './page.js';

export const REPORT_FILE = 'report.html';

/**
 * `molora report RUN_DIR`: walks RUN_DIR for metrics.jsonl, summary.json and gates.json, writes
 * one self-contained HTML page (RUN_DIR/report.html, or `out`) atomically and prints its path.
 */
export async function runReport(dir: string, o: { out?: string; open?: boolean }): Promise<void> {
  if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`report: ${dir} is not a folder`);
  const out = resolve(o.out ?? join(dir, REPORT_FILE));
  writeFileAtomic(out, renderReport(collectRun(dir), new Date()));
  process.stdout.write(out + '\n');
  if (o.open) await openInBrowser(out);
}

/** Hands the file to the desktop's opener; failing to open is a note, the report is written. */
function openInBrowser(path: string): Promise<void> {
  const [cmd, args] =
    process.platform === 'darwin' ? ['open', [path]] : process.platform === 'win32' ? ['cmd', ['/c', 'start', '', path]] : ['xdg-open', [path]];
  return new Promise((done) => {
    const child = spawn(cmd, args, { stdio: 'ignore', detached: true });
    child.on('error', (err) => {
      process.stderr.write(`molora: could not open the report (${err.message}); open ${path} yourself\n`);
      done();
    });
    child.on('spawn', () => {
      child.unref();
      done();
    });
  });
}
