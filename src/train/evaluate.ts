import * as tf from '@tensorflow/tfjs';
import { generate } from '../base/generate.js';
import { readHost } from '../base/host.js';
import type { CausalLM } from '../base/model.js';
import { evalBatches, fitPrompts, type TokenStore } from '../data/index.js';
import type { DataFormat } from '../data/record.js';
import { loadLmDataset, skippedNote, toLmBatch, type LmDataOptions } from './lm.js';

export interface TaskScore {
  /** Examples scored. */
  n: number;
  /** Mean next-token loss over loss-bearing tokens. */
  loss: number;
  perplexity: number;
  /** Fraction of greedy completions equal to the reference (prompt/completion data only). */
  exact_match: number | null;
}

/** The `eval --json` contract: per task and overall. */
export interface EvalReport {
  tasks: Record<string, TaskScore>;
  overall: TaskScore;
  /** Rows scored with their prompt cut from the left to fit (see evaluate). */
  truncated: number;
  /** Rows left out because their completion alone fills the window; not in any n. */
  skipped: number;
}

export interface EvaluateOptions {
  batchSize: number;
  /** Longest row scored (capped at the model's positions); longer ones are cut, see evaluate. */
  seqLen: number;
  /** Greedy-decode each completion and compare (completion-mode stores only). Default true. */
  exactMatch?: boolean;
  /** Decode with the KV cache (default); false for compositions whose gate pools whole rows. */
  useCache?: boolean;
  /** Called after each batch with examples done and the total (progress bars). */
  onProgress?: (done: number, total: number) => void;
  /** Told, before scoring, of rows cut or left out to fit the window. */
  log?: (msg: string) => void;
}

/**
 * Loss, perplexity and exact match of greedy completions, per task and overall. Loss runs the
 * batches in order; exact match decodes each prompt greedily for as many tokens as its reference
 * completion has and counts identical sequences (eos included).
 *
 * Rows are scored within min(seqLen, the model's positions) tokens. A longer completion row keeps
 * its whole completion and the end of its prompt (fitPrompts), so loss and exact match score the
 * same tokens; a row whose completion alone fills the window is counted in `skipped`. Text is
 * cut into windows as in training.
 */
export async function evaluate(model: CausalLM, store: TokenStore, o: EvaluateOptions): Promise<EvalReport> {
  const window = Math.min(o.seqLen, model.config.maxPositions);
  const fit = store.mode === 'completion' ? fitPrompts(store, window, model.tokenizer?.bosId ?? null) : { store, cut: 0, skipped: 0 };
  const data = fit.store;
  if (fit.cut > 0 || fit.skipped > 0) {
    o.log?.(`eval: rows longer than ${window} tokens: ${fit.cut} scored with the prompt cut from the left, ${fit.skipped} left out (the completion alone fills them)`);
  }
  const T = data.taskNames.length || 1;
  const lossSum = new Float64Array(T);
  const tokenCount = new Float64Array(T);
  const examples = new Float64Array(T);
  for (let i = 0; i < data.size; i++) examples[data.taskIds[i]!]++;
  for (const b of evalBatches(data, { batchSize: o.batchSize, seqLen: window })) {
    const lb = toLmBatch(b);
    const host = await readHost(() => tokenLosses(model.forward(lb), lb.targets));
    for (let r = 0; r < b.batch; r++) {
      const task = b.taskIds[r]!;
      for (let t = 0; t < b.seq; t++) {
        const w = b.lossMask[r * b.seq + t]!;
        lossSum[task] += w * host[r * b.seq + t]!;
        tokenCount[task] += w;
      }
    }
  }
  const exact = data.mode === 'completion' && (o.exactMatch ?? true) ? await exactMatches(model, data, o) : null;
  const score = (tasks: number[]): TaskScore => {
    const sum = (xs: ArrayLike<number>): number => tasks.reduce((a, t) => a + xs[t]!, 0);
    const loss = sum(lossSum) / Math.max(sum(tokenCount), 1);
    const n = sum(examples);
    return { n, loss, perplexity: Math.exp(loss), exact_match: exact ? sum(exact) / Math.max(n, 1) : null };
  };
  const ids = Array.from({ length: T }, (_, t) => t);
  const names = data.taskNames.length ? data.taskNames : ['all'];
  return { tasks: Object.fromEntries(names.map((name, t) => [name, score([t])])), overall: score(ids), truncated: fit.cut, skipped: fit.skipped };
}

/** Per-position next-token loss, logsumexp(z) − z[target], [N]. */
export function tokenLosses(logits: tf.Tensor2D, targets: Int32Array): tf.Tensor1D {
  const [N, V] = logits.shape;
  const flat = Int32Array.from(targets, (t, i) => i * V + Math.max(0, Math.min(V - 1, t)));
  return logits.logSumExp(-1).sub(tf.gather(logits.reshape([N * V]), tf.tensor1d(flat, 'int32'))) as tf.Tensor1D;
}

/** Exact-match counts per task, decoding prompts a batch at a time. */
async function exactMatches(model: CausalLM, store: TokenStore, o: EvaluateOptions): Promise<Float64Array> {
  const hits = new Float64Array(store.taskNames.length || 1);
  let done = 0;
  for (const idx of decodeBatches(store, o.batchSize, model.config.maxPositions)) {
    const prompts = idx.map((i) => Array.from(store.example(i).subarray(0, store.promptLens[i]!)));
    const refs = idx.map((i) => untilStop(Array.from(store.example(i).subarray(store.promptLens[i]!)), model.config.eosIds));
    const maxNew = Math.max(...refs.map((r) => r.length));
    const { tokens } = await generate(model, prompts, { maxNewTokens: maxNew, useCache: o.useCache });
    idx.forEach((i, j) => {
      const got = tokens[j]!.slice(0, refs[j]!.length);
      if (got.length === refs[j]!.length && got.every((x, k) => x === refs[j]![k])) hits[store.taskIds[i]!]++;
    });
    done += idx.length;
    o.onProgress?.(done, store.size);
  }
  return hits;
}

/**
 * A reference up to its first stop token, inclusive: decoding ends there, so what a chat template
 * writes after its end-of-turn token (Qwen's newline after <|im_end|>) is never generated.
 */
function untilStop(ref: number[], stopIds: number[]): number[] {
  const at = ref.findIndex((id) => stopIds.includes(id));
  return at < 0 ? ref : ref.slice(0, at + 1);
}

/**
 * Consecutive examples, at most batchSize at a time, in batches that generate can decode: it
 * pads every row to the longest prompt and decodes for the longest completion, so those two
 * together must fit the model's positions even when each row alone does.
 */
function* decodeBatches(store: TokenStore, batchSize: number, positions: number): Generator<number[]> {
  let batch: number[] = [];
  let prompt = 0;
  let completion = 0;
  for (let i = 0; i < store.size; i++) {
    const p = store.promptLens[i]!;
    const c = store.length(i) - p;
    if (batch.length === batchSize || (batch.length > 0 && Math.max(prompt, p) + Math.max(completion, c) > positions)) {
      yield batch;
      batch = [];
      prompt = completion = 0;
    }
    batch.push(i);
    prompt = Math.max(prompt, p);
    completion = Math.max(completion, c);
  }
  if (batch.length > 0) yield batch;
}

export interface EvaluateCsvOptions extends Omit<EvaluateOptions, 'onProgress' | 'log'>, Pick<LmDataOptions, keyof DataFormat | 'dataFormat'> {
  data: string;
  taskColumn?: string;
  skipBadRows?: boolean;
  onProgress?: EvaluateOptions['onProgress'];
  /** Where the data summary and evaluate's notes go; stderr by default. */
  log?: (msg: string) => void;
}

/**
 * `molora eval`: every row of a CSV or JSONL file, in its row format (chat rows: the last
 * assistant turn, after the rest with the generation prompt), tokenized with the model's
 * tokenizer, scored per task.
 * Logs what was left out and why: blank rows, rows with an empty completion (no reference to
 * score), bad rows under skipBadRows, and rows too long to score whole.
 */
export async function evaluateCsv(model: CausalLM, o: EvaluateCsvOptions): Promise<EvalReport> {
  const log = o.log ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const { train: store, stats } = await loadLmDataset(model, { ...o, seed: 0, role: 'evaluation' });
  log(`eval data: ${stats.rowsRead} rows, ${stats.examples} examples` + skippedNote(stats));
  return evaluate(model, store, { ...o, log });
}
