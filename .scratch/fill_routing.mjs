// Fill docs/routing.md's tables from a bench compose run, probe JSONs and bench gate lines.
import { readFileSync, writeFileSync } from 'node:fs';
const [suitePath, probeDir, gatePath] = process.argv.slice(2);
const m = await import('/work/main/dist/bench/compose.js');
const suite = JSON.parse(readFileSync(suitePath, 'utf8'));
let doc = readFileSync('/work/main/docs/routing.md', 'utf8');
const fams = ['tail', 'lead', 'form', 'lookup'];
const rows = {};
for (const f of fams) for (const r of JSON.parse(readFileSync(`${probeDir}/probe-${f}.json`, 'utf8'))) (rows[r.feature] ??= {})[f] = r.test;
const want = [
  ['router: embed-mean ⊕ final-mean ⊕ final-last (the default)', 'prompt router feature (the default)'],
  ['router part: embed-mean', '  its part: prompt mean embedding'],
  ['router part: final-mean ⊕ final-last', '  its parts: prompt mean ⊕ last final hidden state'],
  ['mole model.layers.0.self_attn.q_proj @ last-0', 'MoLE gate input, layer 0 q_proj, last prompt token'],
  ['mole model.layers.0.self_attn.q_proj prefix-mean', 'MoLE gate input, layer 0 q_proj, mean over the prompt'],
  ['input model.layers.0.self_attn.q_proj @ last-0', 'linear input x, layer 0 q_proj, last prompt token'],
  ['mole model.layers.1.mlp.down_proj @ last-0', 'MoLE gate input, layer 1 down_proj, last prompt token'],
  ['mole model.layers.1.mlp.down_proj @ last-1', 'MoLE gate input, layer 1 down_proj, one token earlier'],
  ['mole model.layers.1.mlp.down_proj prefix-mean', 'MoLE gate input, layer 1 down_proj, mean over the prompt'],
  ['input model.layers.1.mlp.down_proj @ last-0', 'linear input x, layer 1 down_proj, last prompt token'],
];
const probe = ['| feature | ' + fams.join(' | ') + ' |', '|---|' + fams.map(() => '---|').join('')];
for (const [k, label] of want) probe.push(`| ${label} | ` + fams.map((f) => Math.round(100 * rows[k][f])).join(' | ') + ' |');
const gates = readFileSync(gatePath, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
const med = (k) => { const xs = gates.map((g) => g[k]).sort((a, b) => a - b); return xs[Math.floor(xs.length / 2)]; };
const bench = [
  `Peer-default shapes (4 layers, hidden 256, batch 4 × 128, rank 8 on q/v, 4 experts), WASM, medians of ${gates.length} runs of \`molora bench gate\` on this 2-core machine:`,
  '',
  '| step | ms | × a single-LoRA step |',
  '|---|---|---|',
  `| single-LoRA step | ${med('lora_step_ms').toFixed(0)} | 1 |`,
  `| MoLE gates (every adapted linear, trained through the network) | ${med('gate_step_ms').toFixed(0)} | ${med('ratio').toFixed(2)} |`,
  `| prompt router, labels (one plain pass, no backward through the base) | ${med('router_labels_step_ms').toFixed(0)} | ${med('router_labels_ratio').toFixed(2)} |`,
  `| prompt router, LM loss alone, first epoch (plain pass + one pass per expert) | ${med('router_lm_step_ms').toFixed(0)} | ${med('router_lm_ratio').toFixed(2)} |`,
  '',
  'On data of up to 8192 rows (64 MiB of features) `train-gate` computes every row\'s feature (and, for the LM loss, every expert\'s loss on it) once, fits the router to convergence on all of them, and each step after that is one small matrix product; larger data trains on batches, and the LM loss reuses each row\'s expert losses after its first epoch.',
];
doc = doc.replace('PROBE_TABLE', probe.join('\n')).replace('SUITE_SUMMARY', m.suiteSummary(suite)).replace('SUITE_TABLES', m.suiteTable(suite)).replace('BENCH_GATE', bench.join('\n'));
writeFileSync('/work/main/docs/routing.md', doc);
