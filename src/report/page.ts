import { basename, resolve } from 'node:path';
import type { RunData } from './collect.js';
import { gateHeatmaps } from './gates.js';
import { html, trusted, type Html } from './html.js';
import { maskTable, taskColumns } from './mask-table.js';
import { moeHeatmap } from './moe.js';
import { runCard } from './runs.js';
import { samplesTable } from './samples.js';
import { STYLE } from './style.js';
import type { Summary } from './summary.js';

/**
 * Nothing may load from anywhere: no scripts at all, styles and images only inline. The page is
 * self-contained by design, and a CSP violation is a console error the browser test catches.
 */
const CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

interface Section {
  id: string;
  title: string;
  body: Html;
}

/** An entry of the contents list: what was found (with a link to it), or what is missing (href null). */
interface Found {
  text: string;
  href: string | null;
}

const missing = (text: Html | string): Html => html`<p class="missing">${text}</p>`;
const plural = (n: number, one: string, many = one + 's'): string => `${n} ${n === 1 ? one : many}`;

/** The whole report as one HTML document: no scripts, no external resources, all data escaped. */
export function renderReport(data: RunData, generatedAt: Date): string {
  const sections: Section[] = [];
  const found: Found[] = [];

  if (!data.summaries.length) {
    found.push({ text: 'No summary.json: no mask-effect table, gate heatmaps, samples or expert load.', href: null });
  }
  data.summaries.forEach(({ path, summary }, i) => {
    const suffix = data.summaries.length > 1 ? ` (${path})` : '';
    const id = (name: string): string => (i ? `${name}-${i}` : name);
    found.push({ text: `Experiment summary: ${path}`, href: `#${id('mask')}` });
    for (const s of summarySections(summary, path, id, found)) sections.push({ ...s, title: s.title + suffix });
  });

  data.gates.forEach(({ path, gates }, i) => {
    sections.push({ id: `gates-file-${i}`, title: `Gate weights: ${path}`, body: gateHeatmaps(gates, path) });
    found.push({ text: `gates.json at ${path}`, href: `#gates-file-${i}` });
  });
  if (!data.gates.length) found.push({ text: 'No standalone gates.json.', href: null });

  found.push(
    data.runs.length
      ? { text: `${plural(data.runs.length, 'training run')} (metrics.jsonl)`, href: '#runs' }
      : { text: 'No metrics.jsonl: no loss curves.', href: null },
  );
  sections.push({
    id: 'runs',
    title: 'Training runs',
    body: data.runs.length
      ? html`<div class="cards">${data.runs.map(runCard)}</div>`
      : missing('No metrics.jsonl under RUN_DIR. molora train-adapter and train-gate write one into their --out folder.'),
  });

  const name = basename(resolve(data.root));
  const problems = data.problems.length
    ? html`<section class="problems" aria-label="problems"><p><strong>Some inputs were skipped:</strong></p><ul>${data.problems.map(
        (p) => html`<li><code>${p.path}</code>: ${p.message}</li>`,
      )}</ul></section>`
    : '';
  const contents = found.map((f) =>
    f.href ? html`<li><a href="${f.href}">${f.text}</a></li>` : html`<li class="absent">${f.text}</li>`,
  );
  const page = html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><meta http-equiv="Content-Security-Policy" content="${CSP}"><link rel="icon" href="data:,"><title>molora report: ${name}</title><style>${trusted(STYLE)}</style></head>
<body><main>
<header><h1>molora report: ${name}</h1><p class="meta">RUN_DIR <code>${data.root}</code> · generated ${generatedAt.toISOString()}</p></header>
${problems}<nav aria-label="contents"><ul class="found">${contents}</ul></nav>
${sections.map((s) => html`<section id="${s.id}"><h2>${s.title}</h2>${s.body}</section>\n`)}</main></body></html>
`;
  return page.value;
}

/** The sections one summary.json feeds, each saying what is missing when its part is absent. */
function summarySections(s: Summary, path: string, id: (name: string) => string, found: Found[]): Section[] {
  const out: Section[] = [];
  const part = (present: boolean, name: string, what: string, href: string): void =>
    void found.push(present ? { text: what, href: `#${href}` } : { text: `${what}: not in ${path} ("${name}").`, href: null });

  const settings = s.settings && Object.keys(s.settings).length ? s.settings : null;
  part(settings !== null, 'settings', 'Mask-effect table', id('mask'));
  out.push({
    id: id('mask'),
    title: 'Mask effects',
    body: settings
      ? maskTable(settings, taskColumns(settings, s.tasks))
      : missing(html`No <code>"settings"</code> in ${path}: the table needs one eval report per setting (base, adapters, gate, gate-mask:…).`),
  });

  part(s.gates !== undefined, 'gates', 'Gate-weight heatmaps', id('gates'));
  out.push({
    id: id('gates'),
    title: 'Gate weights',
    body: s.gates ? gateHeatmaps(s.gates, `${path} → gates`) : missing(html`No <code>"gates"</code> in ${path}: no gate-weight heatmaps.`),
  });

  part(s.moe !== undefined, 'moe', 'Expert load (MoE)', id('moe'));
  out.push({
    id: id('moe'),
    title: 'Expert load (MoE)',
    body: s.moe ? moeHeatmap(s.moe) : missing(html`No <code>"moe"</code> in ${path}: the base is not a mixture of experts, or its load was not recorded.`),
  });

  const samples = s.samples?.length ? s.samples : null;
  part(samples !== null, 'samples', samples ? plural(samples.length, 'sample') : 'Samples', id('samples'));
  out.push({
    id: id('samples'),
    title: 'Samples',
    body: samples ? samplesTable(samples) : missing(html`No <code>"samples"</code> in ${path}.`),
  });
  return out;
}
