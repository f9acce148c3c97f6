import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collectRun } from '../src/report/collect.js';
import { renderReport } from '../src/report/page.js';
import type { Summary } from '../src/report/summary.js';

/**
 * The report as a browser sees it: Debian's headless Chromium driven over the DevTools protocol.
 * CDP goes over --remote-debugging-pipe (NUL-separated JSON on fds 3 and 4), which needs no
 * WebSocket client (Node 20 has none built in) and no npm dependency.
 */
const CHROMIUM = '/usr/bin/chromium';
const CALL_TIMEOUT_MS = 30_000;

/** CDP messages: loosely typed, the protocol is checked by the assertions instead. */
type Json = Record<string, any>;

class Browser {
  private nextId = 0;
  private buffer = '';
  private readonly pending = new Map<number, { resolve: (r: Json) => void; reject: (e: Error) => void }>();
  private readonly listeners = new Set<(method: string, params: Json, sessionId?: string) => void>();
  private stderr = '';

  private constructor(
    private readonly proc: ChildProcess,
    private readonly profile: string,
  ) {
    const out = proc.stdio[4] as Readable;
    out.setEncoding('utf8');
    out.on('data', (chunk: string) => {
      this.buffer += chunk;
      for (let end = this.buffer.indexOf('\0'); end >= 0; end = this.buffer.indexOf('\0')) {
        const msg = JSON.parse(this.buffer.slice(0, end)) as Json;
        this.buffer = this.buffer.slice(end + 1);
        if (typeof msg.id === 'number') {
          const p = this.pending.get(msg.id);
          this.pending.delete(msg.id);
          if (msg.error) p?.reject(new Error(`CDP: ${JSON.stringify(msg.error)}`));
          else p?.resolve(msg.result as Json);
        } else for (const l of this.listeners) l(msg.method as string, msg.params as Json, msg.sessionId as string | undefined);
      }
    });
    proc.stderr!.on('data', (d: Buffer) => void (this.stderr = (this.stderr + d.toString()).slice(-4000)));
    proc.on('exit', (code) => {
      for (const p of this.pending.values()) p.reject(new Error(`Chromium exited (${code}) mid-call; its stderr:\n${this.stderr}`));
      this.pending.clear();
    });
  }

  static async launch(): Promise<Browser> {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`Chromium is not installed at ${CHROMIUM}; the report's browser test needs it: apt-get install -y chromium (.ci/run installs it)`);
    }
    const profile = mkdtempSync(join(tmpdir(), 'molora-chromium-'));
    const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
    const proc = spawn(CHROMIUM, [...flags, '--no-first-run', '--hide-scrollbars', `--user-data-dir=${profile}`, '--remote-debugging-pipe', 'about:blank'], {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'],
    });
    const b = new Browser(proc, profile);
    await b.send('Browser.getVersion');
    return b;
  }

  send(method: string, params: Json = {}, sessionId?: string): Promise<Json> {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`CDP ${method}: no reply in ${CALL_TIMEOUT_MS} ms; Chromium's stderr:\n${this.stderr}`));
      }, CALL_TIMEOUT_MS);
      this.pending.set(id, {
        resolve: (r) => (clearTimeout(timer), resolve(r)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      (this.proc.stdio[3] as Writable).write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + '\0');
    });
  }

  /**
   * Loads a URL in a fresh tab and reports what a developer console would show: console errors,
   * uncaught exceptions, browser-logged errors (CSP violations, failed loads), failed requests, and
   * any request that leaves the page's own file (the report must be self-contained).
   */
  async open(url: string): Promise<Page> {
    const { targetId } = await this.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await this.send('Target.attachToTarget', { targetId, flatten: true });
    const page: Page = { errors: [], foreignRequests: [], sessionId, targetId };
    let loaded!: () => void;
    const load = new Promise<void>((r) => (loaded = r));
    const listener = (method: string, p: Json, sid?: string): void => {
      if (sid !== sessionId) return;
      if (method === 'Runtime.consoleAPICalled' && (p.type === 'error' || p.type === 'assert')) {
        page.errors.push(`console.${p.type}: ${(p.args as Json[]).map((a) => a.value ?? a.description).join(' ')}`);
      } else if (method === 'Runtime.exceptionThrown') {
        page.errors.push(`exception: ${p.exceptionDetails.exception?.description ?? p.exceptionDetails.text}`);
      } else if (method === 'Log.entryAdded' && p.entry.level === 'error') {
        page.errors.push(`${p.entry.source}: ${p.entry.text}`);
      } else if (method === 'Network.loadingFailed') {
        page.errors.push(`request failed: ${p.blockedReason ? `blocked by ${p.blockedReason}` : p.errorText}`);
      } else if (method === 'Network.requestWillBeSent' && p.request.url !== url && !String(p.request.url).startsWith('data:')) {
        page.foreignRequests.push(p.request.url as string);
      } else if (method === 'Page.loadEventFired') loaded();
    };
    this.listeners.add(listener);
    for (const domain of ['Runtime', 'Log', 'Network', 'Page']) await this.send(`${domain}.enable`, {}, sessionId);
    await this.send('Page.navigate', { url }, sessionId);
    await load;
    // A round trip after load lets events queued during it arrive before the caller looks.
    await this.eval(page, '0');
    return page;
  }

  async eval<T>(page: Page, expression: string): Promise<T> {
    const r = await this.send('Runtime.evaluate', { expression, returnByValue: true }, page.sessionId);
    if (r.exceptionDetails) throw new Error(`evaluate ${expression}: ${JSON.stringify(r.exceptionDetails)}`);
    return r.result.value as T;
  }

  async close(): Promise<void> {
    const exited = new Promise<void>((r) => (this.proc.exitCode !== null ? r() : this.proc.once('exit', () => r())));
    await this.send('Browser.close').catch(() => this.proc.kill('SIGKILL'));
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
    rmSync(this.profile, { recursive: true, force: true });
  }
}

interface Page {
  errors: string[];
  foreignRequests: string[];
  sessionId: string;
  targetId: string;
}

const XSS = `<script>alert("x")</script><img src=x onerror=alert(1)>`;
const TASKS = ['reverse', 'upper', 'parity'];
const LAYERS = [0, 1, 2, 3].flatMap((l) => ['q_proj', 'v_proj'].map((m) => `model.layers.${l}.self_attn.${m}`));

function score(em: number): { n: number; loss: number; perplexity: number; exact_match: number } {
  const loss = 2.5 * (1 - em) + 0.05;
  return { n: 40, loss, perplexity: Math.exp(loss), exact_match: em };
}

function setting(ems: number[]): { tasks: Record<string, ReturnType<typeof score>>; overall: ReturnType<typeof score> } {
  return { tasks: Object.fromEntries(TASKS.map((t, i) => [t, score(ems[i]!)])), overall: score(ems.reduce((a, b) => a + b) / ems.length) };
}

/** Weights for 8 layers × 3 experts, leaning towards `favourite` (−1: near uniform). */
function weights(favourite: number): number[][] {
  return LAYERS.map((_, l) => {
    const w = TASKS.map((_, e) => (e === favourite ? 1.5 + l / 4 : 1));
    const s = w.reduce((a, b) => a + b);
    return w.map((x) => x / s);
  });
}

/** A run folder like the quickstart leaves: three adapters, a gate, summary.json, and a gates.json from `molora gates --json`. */
function writeRunDir(root: string): { settings: number; cells: number; runs: number; masks: number } {
  const metrics = (dir: string, steps: number, evalEvery: number): void => {
    mkdirSync(dir, { recursive: true });
    const lines: string[] = [];
    for (let step = 1; step <= steps; step++) {
      lines.push(JSON.stringify({ step, loss: 3 * Math.exp(-step / 40) + 0.1 + 0.05 * Math.sin(step), lr: 1e-3, grad_norm: 1, tokens_per_s: 900 }));
      if (step % evalEvery === 0) lines.push(JSON.stringify({ step, val_loss: 3 * Math.exp(-step / 40) + 0.2, perplexity: 2 }));
    }
    writeFileSync(join(dir, 'metrics.jsonl'), lines.join('\n') + '\n');
  };
  for (const t of TASKS) metrics(join(root, 'experts', t), 120, 20);
  metrics(join(root, 'gate'), 2000, 250); // long enough to be averaged down
  const summary: Summary = {
    tasks: TASKS,
    experts: TASKS,
    settings: {
      base: setting([0, 0.02, 0.1]),
      'adapter:reverse': setting([0.9, 0.05, 0.1]),
      'adapter:upper': setting([0.02, 0.95, 0.1]),
      'adapter:parity': setting([0, 0.02, 0.85]),
      gate: setting([0.85, 0.9, 0.8]),
      'static-equal': setting([0.4, 0.5, 0.45]),
      'gate-mask:reverse': setting([0.05, 0.88, 0.79]),
      'gate-mask:upper': setting([0.84, 0.1, 0.8]),
      'gate-mask:parity': setting([0.8, 0.9, 0.15]),
    },
    gates: {
      layers: LAYERS,
      experts: TASKS,
      overall: weights(-1),
      by_task: Object.fromEntries(TASKS.map((t, i) => [t, weights(i)])),
      entropy: LAYERS.map((_, l) => 1.0 - l * 0.05),
    },
    samples: [
      { prompt: 'reverse: abc', setting: 'gate', output: 'cba', task: 'reverse', reference: 'cba' },
      { prompt: 'upper: abc', setting: 'gate-mask:upper', output: 'abc', task: 'upper', reference: 'ABC' },
      { prompt: XSS, setting: 'base', output: `"'><svg onload=alert(2)>`, task: 'parity', reference: '0' },
    ],
    moe: { layers: [0, 1], experts: 8, load: [0, 1].map((l) => Array.from({ length: 8 }, (_, e) => (e === l ? 0.3 : 0.1))) },
  };
  writeFileSync(join(root, 'summary.json'), JSON.stringify(summary));
  const statsGates = LAYERS.map((gate, l) => ({ gate, modules: [gate], tokens: 100, meanWeight: weights(0)[l], entropy: 0.9 }));
  writeFileSync(join(root, 'gate', 'gates.json'), JSON.stringify({ experts: TASKS, gates: statsGates, byTask: {} }));
  const L = LAYERS.length;
  const N = TASKS.length;
  return { settings: 9, runs: 4, masks: 3, cells: L * N * (1 + N) + 2 * 8 + L * N };
}

describe('report in headless Chromium', () => {
  let browser: Browser;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'molora-report-browser-'));
    browser = await Browser.launch();
  });
  afterAll(async () => {
    await browser?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('catches console errors, exceptions, CSP violations and failed requests (the check can fail)', async () => {
    const bad = join(dir, 'bad.html');
    writeFileSync(
      bad,
      `<!doctype html><meta http-equiv="Content-Security-Policy" content="script-src 'unsafe-inline'"><script>console.error("deliberate"); missingFunction();</script><script src="data:text/javascript,1"></script><img src="missing.png"><link rel="stylesheet" href="https://example.invalid/x.css">`,
    );
    const page = await browser.open(pathToFileURL(bad).href);
    const all = page.errors.join('\n');
    expect(all).toContain('console.error: deliberate');
    expect(all).toMatch(/exception: ReferenceError: missingFunction is not defined/);
    expect(all).toMatch(/Content Security Policy/);
    expect(all).toContain('request failed: blocked by csp');
    expect(all).toMatch(/request failed: net::ERR_FILE_NOT_FOUND/);
    expect(page.foreignRequests).toContain('https://example.invalid/x.css');
    expect(page.foreignRequests.some((u) => u.endsWith('/missing.png'))).toBe(true);
  });

  it('renders a full run folder offline with no console errors, every chart present and the data inert', async () => {
    const run = join(dir, 'run');
    const expected = writeRunDir(run);
    const file = join(run, 'report.html');
    writeFileSync(file, renderReport(collectRun(run), new Date('2025-01-01T00:00:00Z')));
    const page = await browser.open(pathToFileURL(file).href);
    expect(page.errors).toEqual([]);
    expect(page.foreignRequests).toEqual([]);

    const dom = await browser.eval<Record<string, unknown>>(
      page,
      `(() => {
        const all = (s) => [...document.querySelectorAll(s)];
        const charts = all('svg.chart');
        return {
          loss: all('svg.chart[data-kind="loss"]').length,
          gates: all('svg.chart[data-kind="gates"]').length,
          gatesTask: all('svg.chart[data-kind="gates-task"]').length,
          moe: all('svg.chart[data-kind="moe-load"]').length,
          cells: all('rect.cell').length,
          drawn: charts.every((c) => c.getBoundingClientRect().width > 100 && c.getBoundingClientRect().height > 50),
          titled: charts.every((c) => c.firstElementChild?.tagName === 'title' && c.firstElementChild.textContent.length > 0),
          cellTitles: all('rect.cell').every((r) => r.querySelector('title')?.textContent.includes(':')),
          trainLines: all('svg.chart[data-kind="loss"] polyline').length,
          maskRows: all('table.mask tbody tr').length,
          masked: all('table.mask td.masked').map((td) => td.closest('tr').querySelector('th').textContent + '/' + td.cellIndex),
          verdicts: all('table.mask td.verdict .ok').length,
          samples: all('table.samples tbody tr').length,
          scripts: all('script').length,
          handlers: all('*').filter((e) => [...e.attributes].some((a) => a.name.startsWith('on'))).length,
          text: document.body.innerText,
          overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
        };
      })()`,
    );
    expect(dom.loss).toBe(expected.runs);
    expect(dom.trainLines).toBe(expected.runs * 2);
    expect(dom.gates).toBe(2); // summary.json's gates and the standalone gates.json
    expect(dom.gatesTask).toBe(TASKS.length);
    expect(dom.moe).toBe(1);
    expect(dom.cells).toBe(expected.cells);
    expect(dom.drawn).toBe(true);
    expect(dom.titled).toBe(true);
    expect(dom.cellTitles).toBe(true);
    expect(dom.maskRows).toBe(expected.settings);
    // Each mask outlines its own task's column (column 0 is the row header).
    expect(dom.masked).toEqual(['gate-mask:reverse/1', 'gate-mask:upper/2', 'gate-mask:parity/3']);
    expect(dom.verdicts).toBe(expected.masks);
    expect(dom.samples).toBe(3);
    expect(dom.scripts).toBe(0);
    expect(dom.handlers).toBe(0);
    expect(dom.text).toContain(XSS);
    expect(dom.text).toContain(`"'><svg onload=alert(2)>`);
    expect(dom.text).toContain('train loss (mean of 4 steps)');
    expect(dom.overflow).toBeLessThanOrEqual(0);
  });
});
