/**
 * summary.json: what an experiment (the quickstart) measured, in one file the report reads.
 * Every part is optional; the report shows the parts present and names the ones missing.
 *
 * ```json
 * { "tasks": ["reverse", "upper", "parity"],
 *   "experts": ["reverse", "upper", "parity"],
 *   "settings": { "base": EvalReport, "adapter:reverse": EvalReport, "gate": EvalReport,
 *                 "static-equal": EvalReport, "gate-mask:reverse": EvalReport, … },
 *   "gates": { "layers": ["model.layers.0.self_attn.q_proj", …], "experts": ["reverse", …],
 *              "overall": [[w per expert] per layer], "by_task": {"reverse": [[…]]},
 *              "entropy": [per layer] },
 *   "samples": [{"prompt": "…", "setting": "gate", "output": "…"}],
 *   "moe": { "layers": [0, 1], "experts": 8, "load": [[fraction per expert] per layer] } }
 * ```
 */
export interface Summary {
  /** Task names, in the order the mask-effect table shows them (default: as the settings list them). */
  tasks?: string[];
  /** Expert names; `gate-mask:<expert>` masks the expert trained on the task of the same name. */
  experts?: string[];
  /**
   * One `molora eval --json` report per setting, in display order. Names by convention: `base`,
   * `adapter:<expert>` (one adapter alone), `gate` (all experts under the learned gate),
   * `static-equal` (equal fixed weights), `gate-mask:<expert>` (the gate with that expert masked).
   */
  settings?: Record<string, SettingReport>;
  gates?: GateSummary;
  /** Generated completions to read side by side. */
  samples?: Sample[];
  /** Router load of a mixture-of-experts base, when the base is one. */
  moe?: MoeLoad;
}

/** The `eval --json` contract; JSON writes NaN as null, so every number may be null. */
export interface SettingReport {
  tasks: Record<string, Score>;
  overall?: Score;
}

export interface Score {
  /** Examples scored. */
  n: number | null;
  /** Mean next-token loss. */
  loss: number | null;
  perplexity: number | null;
  /** Fraction (0–1) of greedy completions equal to the reference; null for text-only data. */
  exact_match: number | null;
}

/** Mean gate weights; also the shape of a standalone gates.json. */
export interface GateSummary {
  /** Gated units (linear modules, or blocks), one heatmap row each. */
  layers: string[];
  /** One heatmap column each. */
  experts: string[];
  /** [layer][expert]: mean weight over all tokens. */
  overall: number[][];
  /** task → [layer][expert]: mean weight over that task's tokens. */
  by_task?: Record<string, number[][]>;
  /** Mean per-token entropy of the weights per layer, in nats (0: one expert; ln N: uniform). */
  entropy?: number[];
}

export interface Sample {
  prompt: string;
  /** The setting (a key of `settings`) that generated it. */
  setting: string;
  output: string;
  task?: string;
  /** The reference completion; with it the report marks the output right or wrong. */
  reference?: string;
}

export interface MoeLoad {
  /** Indices of the MoE layers, one heatmap row each. */
  layers: number[];
  /** Experts per layer. */
  experts: number;
  /** [layer][expert]: fraction of routed tokens (each row sums to about 1; top-k routing sums to k). */
  load: number[][];
}

/** What was kept, and a sentence for each part that was dropped for its shape. */
export interface Parsed<T> {
  value: T;
  problems: string[];
}

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const numOrNull = (v: unknown): number | null => (isNum(v) ? v : null);

function isMatrix(v: unknown, rows: number, cols: number): v is number[][] {
  return Array.isArray(v) && v.length === rows && v.every((r) => Array.isArray(r) && r.length === cols && r.every(isNum));
}

/** Validates a parsed summary.json part by part: a malformed part is dropped with a reason, the rest kept. */
export function parseSummary(json: unknown): Parsed<Summary> {
  if (!isObj(json)) return { value: {}, problems: ['the file is not a JSON object'] };
  const out: Summary = {};
  const problems: string[] = [];
  const drop = (key: string, why: string): void => void problems.push(`"${key}" ignored: ${why}`);
  for (const key of ['tasks', 'experts'] as const) {
    if (json[key] === undefined) continue;
    if (isStrings(json[key])) out[key] = json[key];
    else drop(key, 'expected a list of names');
  }
  if (json.settings !== undefined) {
    if (!isObj(json.settings)) drop('settings', 'expected an object of eval reports');
    else {
      const settings: [string, SettingReport][] = [];
      for (const [name, r] of Object.entries(json.settings)) {
        const report = parseSetting(r);
        if (report) settings.push([name, report]);
        else drop(`settings.${name}`, 'expected {"tasks": {"<task>": {"n", "loss", "perplexity", "exact_match"}}, "overall": {…}}');
      }
      // fromEntries keeps a key like "__proto__" an own key, where assignment would set the prototype.
      out.settings = Object.fromEntries(settings);
    }
  }
  if (json.gates !== undefined) {
    const g = parseGates(json.gates);
    if (g.value) out.gates = g.value;
    problems.push(...g.problems.map((p) => `"gates" ${p}`));
  }
  if (json.samples !== undefined) {
    if (!Array.isArray(json.samples)) drop('samples', 'expected a list');
    else {
      const ok = json.samples.filter(isSample);
      if (ok.length < json.samples.length) problems.push(`${json.samples.length - ok.length} of ${json.samples.length} samples ignored: each needs string "prompt", "setting" and "output"`);
      out.samples = ok.map((s) => ({ ...s }));
    }
  }
  if (json.moe !== undefined) {
    const m = json.moe;
    if (isObj(m) && Array.isArray(m.layers) && m.layers.every(isNum) && isNum(m.experts) && m.experts >= 1 && isMatrix(m.load, m.layers.length, m.experts)) {
      out.moe = { layers: m.layers, experts: m.experts, load: m.load };
    } else drop('moe', 'expected {"layers": [i…], "experts": E, "load": [[fraction per expert] per layer]}');
  }
  return { value: out, problems };
}

function parseSetting(r: unknown): SettingReport | null {
  if (!isObj(r) || !isObj(r.tasks)) return null;
  const scores = Object.entries(r.tasks);
  if (!scores.every(([, s]) => isObj(s))) return null;
  const tasks = Object.fromEntries(scores.map(([task, s]) => [task, score(s as Obj)]));
  return isObj(r.overall) ? { tasks, overall: score(r.overall) } : { tasks };
}

function score(s: Obj): Score {
  return { n: numOrNull(s.n), loss: numOrNull(s.loss), perplexity: numOrNull(s.perplexity), exact_match: numOrNull(s.exact_match) };
}

function isSample(s: unknown): s is Sample {
  return (
    isObj(s) &&
    typeof s.prompt === 'string' &&
    typeof s.setting === 'string' &&
    typeof s.output === 'string' &&
    (s.task === undefined || typeof s.task === 'string') &&
    (s.reference === undefined || typeof s.reference === 'string')
  );
}

/**
 * A gates object: the summary form above, or what `molora gates --json` prints
 * (`{experts, gates: [{gate, meanWeight, entropy}], byTask}`), converted to the summary form.
 */
export function parseGates(json: unknown): Parsed<GateSummary | null> {
  if (isObj(json) && isStrings(json.experts) && Array.isArray(json.gates)) return fromStats(json.experts, json.gates, json.byTask);
  const bad = (why: string): Parsed<null> => ({ value: null, problems: [`ignored: ${why}`] });
  if (!isObj(json) || !isStrings(json.layers) || !isStrings(json.experts)) return bad('expected {"layers": [names], "experts": [names], "overall": [[w]]}');
  const L = json.layers.length;
  const N = json.experts.length;
  if (!isMatrix(json.overall, L, N)) return bad(`"overall" must be a ${L} × ${N} matrix (layers × experts) of numbers`);
  const value: GateSummary = { layers: json.layers, experts: json.experts, overall: json.overall };
  const problems: string[] = [];
  if (json.by_task !== undefined) {
    if (!isObj(json.by_task)) problems.push('"by_task" ignored: expected task → matrix');
    else {
      const kept: [string, number[][]][] = [];
      for (const [task, m] of Object.entries(json.by_task)) {
        if (isMatrix(m, L, N)) kept.push([task, m]);
        else problems.push(`"by_task.${task}" ignored: expected a ${L} × ${N} matrix`);
      }
      value.by_task = Object.fromEntries(kept);
    }
  }
  if (json.entropy !== undefined) {
    if (Array.isArray(json.entropy) && json.entropy.length === L && json.entropy.every(isNum)) value.entropy = json.entropy;
    else problems.push(`"entropy" ignored: expected ${L} numbers`);
  }
  return { value, problems };
}

function fromStats(experts: string[], gates: unknown[], byTask: unknown): Parsed<GateSummary | null> {
  type Stat = { gate: string; meanWeight: number[]; entropy: number };
  const isStat = (g: unknown): g is Stat =>
    isObj(g) && typeof g.gate === 'string' && Array.isArray(g.meanWeight) && g.meanWeight.length === experts.length && g.meanWeight.every(isNum) && isNum(g.entropy);
  if (!gates.every(isStat)) return { value: null, problems: ['ignored: every gate needs "gate", "meanWeight" (one per expert) and "entropy"'] };
  const layers = gates.map((g) => g.gate);
  const value: GateSummary = { layers, experts, overall: gates.map((g) => g.meanWeight), entropy: gates.map((g) => g.entropy) };
  const problems: string[] = [];
  if (isObj(byTask)) {
    const kept: [string, number[][]][] = [];
    for (const [task, stats] of Object.entries(byTask)) {
      // Match rows by gate name: a task's list need not be in the overall order.
      const byGate = new Map(Array.isArray(stats) ? stats.filter(isStat).map((s) => [s.gate, s.meanWeight]) : []);
      if (layers.every((l) => byGate.has(l))) kept.push([task, layers.map((l) => byGate.get(l)!)]);
      else problems.push(`"byTask.${task}" ignored: it lacks some gates`);
    }
    value.by_task = Object.fromEntries(kept);
  }
  return { value, problems };
}
