import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { runReport } from '../src/report/cli.js';
import { collectRun } from '../src/report/collect.js';
import { commonPrefix, gateHeatmaps } from '../src/report/gates.js';
import { heatmap } from '../src/report/heatmap.js';
import { esc, html } from '../src/report/html.js';
import { downsample, lineChart } from '../src/report/line-chart.js';
import { maskTable } from '../src/report/mask-table.js';
import { renderReport } from '../src/report/page.js';
import { diverging, fmt, niceTicks, pct } from '../src/report/scale.js';
import { parseGates, parseSummary, type SettingReport } from '../src/report/summary.js';
import { tempDir } from './helpers.js';

const count = (text: string, needle: string): number => text.split(needle).length - 1;
const NOW = new Date('2025-01-01T00:00:00Z');

function report(tasks: Record<string, number | null>, loss = 1): SettingReport {
  const s = (em: number | null) => ({ n: 10, loss, perplexity: Math.exp(loss), exact_match: em });
  return { tasks: Object.fromEntries(Object.entries(tasks).map(([t, em]) => [t, s(em)])) };
}

describe('html', () => {
  it('escapes every interpolated value and keeps nested Html, arrays and empty parts', () => {
    const inner = html`<b>${'<i>'}</b>`;
    const out = html`<p title="${`"' & <`}">${inner}${['a<', html`<br>`]}${null}${undefined}${false}${0}</p>`;
    expect(out.value).toBe('<p title="&quot;&#39; &amp; &lt;"><b>&lt;i&gt;</b>a&lt;<br>0</p>');
    expect(esc(`<script>"x"</script>`)).toBe('&lt;script&gt;&quot;x&quot;&lt;/script&gt;');
  });
});

describe('summary.json', () => {
  it('keeps well-formed parts and drops each malformed one with a reason', () => {
    const { value, problems } = parseSummary({
      tasks: ['a', 'b'],
      experts: 'a,b',
      settings: { base: report({ a: 0.5, b: null }), broken: { tasks: 3 } },
      gates: { layers: ['l0'], experts: ['a', 'b'], overall: [[0.5]] },
      samples: [{ prompt: 'p', setting: 'base', output: 'o' }, { prompt: 1 }],
      moe: { layers: [0], experts: 2, load: [[0.5, 0.5]] },
    });
    expect(value.tasks).toEqual(['a', 'b']);
    expect(value.experts).toBeUndefined();
    expect(Object.keys(value.settings!)).toEqual(['base']);
    expect(value.settings!.base!.tasks.b!.exact_match).toBeNull();
    expect(value.gates).toBeUndefined();
    expect(value.samples).toHaveLength(1);
    expect(value.moe).toEqual({ layers: [0], experts: 2, load: [[0.5, 0.5]] });
    expect(problems).toHaveLength(4);
    expect(problems.join('\n')).toMatch(/"experts" ignored[\s\S]*settings\.broken[\s\S]*"gates" ignored: "overall" must be a 1 × 2 matrix[\s\S]*1 of 2 samples ignored/);
    expect(parseSummary([1, 2]).problems).toEqual(['the file is not a JSON object']);
  });

  it('treats JSON nulls (NaN on the writing side) as missing numbers, and keeps "__proto__" an ordinary key', () => {
    const { value } = parseSummary(JSON.parse('{"settings": {"__proto__": {"tasks": {"t": {"n": 3, "loss": null, "perplexity": null, "exact_match": 1}}}}}'));
    expect(Object.getPrototypeOf(value.settings)).toBe(Object.prototype);
    expect(Object.keys(value.settings!)).toEqual(['__proto__']);
    expect(value.settings!['__proto__']!.tasks.t).toEqual({ n: 3, loss: null, perplexity: null, exact_match: 1 });
  });

  it('reads gates in the summary form and in the form `molora gates --json` prints', () => {
    const summaryForm = { layers: ['x.0', 'x.1'], experts: ['a', 'b'], overall: [[0.6, 0.4], [0.3, 0.7]], by_task: { a: [[0.9, 0.1], [0.8, 0.2]], z: [[1]] }, entropy: [0.6, 0.5] };
    const parsed = parseGates(summaryForm);
    expect(parsed.value).toEqual({ ...summaryForm, by_task: { a: summaryForm.by_task.a } });
    expect(parsed.problems).toEqual(['"by_task.z" ignored: expected a 2 × 2 matrix']);

    const stat = (gate: string, meanWeight: number[]) => ({ gate, modules: [gate], tokens: 5, meanWeight, entropy: 0.5 });
    const cli = parseGates({
      experts: ['a', 'b'],
      gates: [stat('x.0', [0.6, 0.4]), stat('x.1', [0.3, 0.7])],
      byTask: { a: [stat('x.1', [0.8, 0.2]), stat('x.0', [0.9, 0.1])], b: [stat('x.0', [0.1, 0.9])] },
    });
    expect(cli.value).toEqual({ layers: ['x.0', 'x.1'], experts: ['a', 'b'], overall: summaryForm.overall, entropy: [0.5, 0.5], by_task: { a: summaryForm.by_task.a } });
    expect(cli.problems).toEqual(['"byTask.b" ignored: it lacks some gates']);
    expect(parseGates({ layers: ['x'], experts: ['a'], overall: [[Infinity]] }).value).toBeNull();
  });
});

describe('collectRun', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => (t = tempDir('molora-report-')));
  afterEach(() => t.cleanup());

  it('finds every metrics.jsonl, summary.json and gates.json below RUN_DIR, skipping hidden folders and links', () => {
    const put = (path: string, text: string): void => {
      mkdirSync(join(t.dir, path, '..'), { recursive: true });
      writeFileSync(join(t.dir, path), text);
    };
    put('metrics.jsonl', '{"step": 1, "loss": 2}\n');
    put('b/metrics.jsonl', '{"step": 1, "loss": 2}\n{"step": 1, "val_loss": 3}\n');
    put('a/deep/metrics.jsonl', '');
    put('.scratch/metrics.jsonl', '{"step": 1, "loss": 2}\n');
    put('node_modules/x/metrics.jsonl', '{"step": 1, "loss": 2}\n');
    put('summary.json', '{"tasks": ["t"]}');
    put('a/gates.json', JSON.stringify({ layers: ['l'], experts: ['e', 'f'], overall: [[0.5, 0.5]] }));
    put('b/gates.json', '{not json');
    symlinkSync(join(t.dir, 'b'), join(t.dir, 'link'));
    const data = collectRun(t.dir);
    expect(data.runs.map((r) => [r.path, r.entries.length])).toEqual([['.', 1], ['a/deep', 0], ['b', 2]]);
    expect(data.summaries).toEqual([{ path: 'summary.json', summary: { tasks: ['t'] } }]);
    expect(data.gates.map((g) => g.path)).toEqual(['a/gates.json']);
    expect(data.problems.map((p) => p.path)).toEqual(['b/gates.json']);
    expect(data.problems[0]!.message).toMatch(/JSON/);
  });
});

describe('renderReport', () => {
  it('on an empty RUN_DIR says what is missing and what each part would show', () => {
    const page = renderReport({ root: '/runs/empty', runs: [], summaries: [], gates: [], problems: [] }, NOW);
    expect(page).toMatch(/^<!doctype html>/);
    expect(page).toContain('No summary.json: no mask-effect table, gate heatmaps, samples or expert load.');
    expect(page).toContain('No metrics.jsonl under RUN_DIR.');
    expect(page).toContain('No standalone gates.json.');
    expect(page).toContain('generated 2025-01-01T00:00:00.000Z');
    expect(page).not.toContain('<svg');
  });

  it('names each summary part that is absent', () => {
    const page = renderReport({ root: 'r', runs: [{ path: 'x', entries: [{ step: 3, lr: 0.1 }] }], summaries: [{ path: 'summary.json', summary: { settings: {} } }], gates: [], problems: [] }, NOW);
    for (const part of ['settings', 'gates', 'moe', 'samples']) expect(page).toContain(`No <code>"${part}"</code> in summary.json`);
    expect(page).toContain('This metrics.jsonl has no <code>loss</code> or <code>val_loss</code> entries yet.');
  });

  it('escapes text from every input: paths, task, setting, expert and layer names, samples, problems', () => {
    const x = (where: string): string => `<script>${where}</script>`;
    const page = renderReport(
      {
        root: x('root'),
        runs: [{ path: x('run'), entries: [{ step: 1, loss: 1 }, { step: 2, loss: 0.5, val_loss: 0.7 }] }],
        summaries: [
          {
            path: x('summary'),
            summary: {
              tasks: [x('task')],
              settings: { [x('setting')]: report({ [x('task')]: 0.5 }), [`gate-mask:${x('task')}`]: report({ [x('task')]: 0.1 }), gate: report({ [x('task')]: 0.9 }) },
              gates: { layers: [x('layer')], experts: [x('e1'), 'e2'], overall: [[0.5, 0.5]], by_task: { [x('bytask')]: [[1, 0]] } },
              samples: [{ prompt: x('prompt'), setting: x('ss'), output: x('output'), task: x('st'), reference: x('ref') }],
            },
          },
        ],
        gates: [],
        problems: [{ path: x('ppath'), message: x('message') }],
      },
      NOW,
    );
    expect(count(page, '<script')).toBe(0);
    for (const where of ['root', 'run', 'summary', 'task', 'setting', 'layer', 'e1', 'bytask', 'prompt', 'ss', 'output', 'st', 'ref', 'ppath', 'message']) {
      expect(page, where).toContain(`&lt;script&gt;${where}&lt;/script&gt;`);
    }
  });
});

describe('mask-effect table', () => {
  const settings = {
    gate: report({ a: 0.9, b: 0.8 }),
    'gate-mask:a': report({ a: 0.1, b: 0.78 }),
    'gate-mask:b': report({ a: 0.5, b: 0.7 }),
  };

  it('outlines the masked task, shows the change from the gate, and judges whether the mask hit its own task hardest', () => {
    const t = maskTable(settings, ['a', 'b']).value;
    expect(count(t, 'class="masked"')).toBe(2);
    expect(t).toContain('−80.0 pts'); // a under gate-mask:a
    expect(t).toContain('<span class="ok">✓</span> own −80.0 pts, others at worst −2.0 pts');
    // Masking b cost a more (−40) than b itself (−10): flagged.
    expect(t).toContain('<span class="bad">✗</span> own −10.0 pts, others at worst −40.0 pts');
    expect(t).toContain('data-metric="exact_match"');
  });

  it('falls back to loss (lower is better) when no eval has exact match', () => {
    const t = maskTable({ gate: report({ a: null }, 0.5), 'gate-mask:a': report({ a: null }, 2) }, ['a']).value;
    expect(t).toContain('data-metric="loss"');
    expect(t).toContain('<small>+1.5</small>'); // loss went up by 1.5
    expect(t).toContain('<span class="ok">✓</span> own +1.5');
  });
});

describe('charts', () => {
  it('heatmap: one titled cell per value, legend within the data range', () => {
    const svg = heatmap({
      title: 't',
      kind: 'k',
      rows: ['r0', 'r1'],
      cols: ['c0', 'c1', 'c2'],
      values: [[0, 0.5, 1], [0.2, 0.3, 0.5]],
      scale: diverging(1 / 3, 0.67, 0),
      format: (v) => v.toFixed(2),
      legend: 'weight',
      note: { header: 'H', values: ['1', '2'] },
    }).value;
    expect(count(svg, '<rect class="cell"')).toBe(6);
    expect(svg).toContain('<title>r1 · c2: 0.50</title>');
    expect(svg).not.toContain('NaN');
    expect(svg).not.toContain('>-0.'); // floor 0: no negative legend tick
  });

  it('gate heatmaps share one scale and strip the common layer prefix', () => {
    expect(commonPrefix(['model.layers.0.q', 'model.layers.1.q'])).toBe('model.layers.');
    expect(commonPrefix(['a.b', 'a.b.c'])).toBe('a.');
    expect(commonPrefix(['a.', 'a.b'])).toBe('');
    expect(commonPrefix(['only.one'])).toBe('');
    const out = gateHeatmaps({ layers: ['m.0', 'm.1'], experts: ['a', 'b'], overall: [[0.5, 0.5], [0.5, 0.5]], by_task: { a: [[1, 0], [0.9, 0.1]] } }, 'src').value;
    expect(count(out, '<rect class="cell"')).toBe(8);
    expect(out).toContain('<title>0 · a: 1.00</title>');
    // The all-tokens panel is uniform (white) on the scale the task panel stretches to 1.
    expect(out).toContain('fill="#f7f7f7"');
    expect(out).toContain('fill="#b2182b"');
  });

  it('line chart: drops non-finite points, survives a single point, never writes NaN', () => {
    const svg = lineChart({ title: 't', kind: 'loss', xLabel: 'step', yLabel: 'loss', series: [{ name: 's', color: '#000', points: [[1, 2], [2, NaN], [3, Infinity]] }] }).value;
    expect(svg).not.toMatch(/NaN|Infinity/);
    expect(svg).toMatch(/<polyline points="[\d.]+,[\d.]+"/);
  });

  it('downsample averages runs of k points and keeps short series as they are', () => {
    const pts = Array.from({ length: 10 }, (_, i): [number, number] => [i, i * 2]);
    expect(downsample(pts, 10)).toEqual({ points: pts, k: 1 });
    expect(downsample(pts, 4)).toEqual({ points: [[1, 2], [4, 8], [7, 14], [9, 18]], k: 3 });
  });

  it('ticks are round and cover the range; numbers print without float noise', () => {
    expect(niceTicks(0.13, 3.4)).toEqual([0.5, 1, 1.5, 2, 2.5, 3]);
    expect(niceTicks(0, 2000, 6)).toEqual([0, 500, 1000, 1500, 2000]); // 4 and 8 steps tie: the larger step wins
    expect(niceTicks(2, 2)).toEqual([2]);
    expect(fmt(0.1 + 0.2)).toBe('0.3');
    expect(fmt(null)).toBe('—');
    expect(fmt(2e-5)).toBe('2.00e-5');
    expect(pct(0.8766)).toBe('87.7%');
  });
});

describe('runReport', () => {
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => (t = tempDir('molora-report-cli-')));
  afterEach(() => {
    vi.restoreAllMocks();
    t.cleanup();
  });

  it('writes RUN_DIR/report.html (or --out) atomically and prints its path', async () => {
    writeFileSync(join(t.dir, 'metrics.jsonl'), '{"step": 1, "loss": 2}\n{"step": 2, "loss": 1}\n');
    const printed: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((s) => (printed.push(String(s)), true));
    await runReport(t.dir, {});
    const file = join(t.dir, 'report.html');
    expect(printed).toEqual([file + '\n']);
    expect(readFileSync(file, 'utf8')).toContain('data-kind="loss"');
    const out = join(t.dir, 'elsewhere', 'r.html');
    await runReport(t.dir, { out });
    expect(printed[1]).toBe(out + '\n');
    expect(readdirSync(t.dir).sort()).toEqual(['elsewhere', 'metrics.jsonl', 'report.html']); // no temp files left
  });

  it('refuses a RUN_DIR that is not a folder', async () => {
    await expect(runReport(join(t.dir, 'nope'), {})).rejects.toThrow(/is not a folder/);
  });
});
