import * as tf from '@tensorflow/tfjs';
import { generate } from '../base/generate.js';
import type { CausalLM } from '../base/model.js';
import { evalBatches, type TokenStore } from '../data/index.js';
import { loadLmDataset, skippedNote, toLmBatch } from './lm.js';

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
}

export interface EvaluateOptions {
  batchSize: number;
  seqLen: number;
  /** Greedy-decode each completion and compare (completion-mode stores only). Default true. */
  exactMatch?: boolean;
  /** Decode with the KV cache (default); false for compositions whose gate pools whole rows. */
  useCache?: boolean;
  /** Called after each batch with examples done and the total (progress bars). */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Loss, perplexity and exact match of greedy completions, per task and overall. Loss runs the
 * batches in order; exact match decodes each prompt greedily for as many tokens as its reference
 * completion has and counts identical sequences (eos included).
 */
export function evaluate(model: CausalLM, store: TokenStore, o: EvaluateOptions): EvalReport {
  const T = store.taskNames.length || 1;
  const lossSum = new Float64Array(T);
  const tokenCount = new Float64Array(T);
  const examples = new Float64Array(T);
  for (let i = 0; i < store.size; i++) examples[store.taskIds[i]!]++;
  for (const b of evalBatches(store, o)) {
    const lb = toLmBatch(b);
    const perToken = tf.tidy(() => tokenLosses(model.forward(lb), lb.targets));
    const host = perToken.dataSync();
    perToken.dispose();
    for (let r = 0; r < b.batch; r++) {
      const task = b.taskIds[r]!;
      for (let t = 0; t < b.seq; t++) {
        const w = b.lossMask[r * b.seq + t]!;
        lossSum[task] += w * host[r * b.seq + t]!;
        tokenCount[task] += w;
      }
    }
  }
  const exact = store.mode === 'completion' && (o.exactMatch ?? true) ? exactMatches(model, store, o) : null;
  const score = (tasks: number[]): TaskScore => {
    const sum = (xs: ArrayLike<number>): number => tasks.reduce((a, t) => a + xs[t]!, 0);
    const loss = sum(lossSum) / Math.max(sum(tokenCount), 1);
    const n = sum(examples);
    return { n, loss, perplexity: Math.exp(loss), exact_match: exact ? sum(exact) / Math.max(n, 1) : null };
  };
  const ids = Array.from({ length: T }, (_, t) => t);
  const names = store.taskNames.length ? store.taskNames : ['all'];
  return { tasks: Object.fromEntries(names.map((name, t) => [name, score([t])])), overall: score(ids) };
}

/** Per-position next-token loss, logsumexp(z) − z[target], [N]. */
export function tokenLosses(logits: tf.Tensor2D, targets: Int32Array): tf.Tensor1D {
  const [N, V] = logits.shape;
  const flat = Int32Array.from(targets, (t, i) => i * V + Math.max(0, Math.min(V - 1, t)));
  return logits.logSumExp(-1).sub(tf.gather(logits.reshape([N * V]), tf.tensor1d(flat, 'int32'))) as tf.Tensor1D;
}

/** Exact-match counts per task, decoding prompts a batch at a time. */
function exactMatches(model: CausalLM, store: TokenStore, o: EvaluateOptions): Float64Array {
  const hits = new Float64Array(store.taskNames.length || 1);
  for (let start = 0; start < store.size; start += o.batchSize) {
    const idx = Array.from({ length: Math.min(o.batchSize, store.size - start) }, (_, j) => start + j);
    const prompts = idx.map((i) => Array.from(store.example(i).subarray(0, store.promptLens[i]!)));
    const refs = idx.map((i) => Array.from(store.example(i).subarray(store.promptLens[i]!)));
    const maxNew = Math.max(...refs.map((r) => r.length));
    const { tokens } = generate(model, prompts, { maxNewTokens: maxNew, useCache: o.useCache });
    idx.forEach((i, j) => {
      const got = tokens[j]!.slice(0, refs[j]!.length);
      if (got.length === refs[j]!.length && got.every((x, k) => x === refs[j]![k])) hits[store.taskIds[i]!]++;
    });
    o.onProgress?.(start + idx.length, store.size);
  }
  return hits;
}

export interface EvaluateCsvOptions extends Omit<EvaluateOptions, 'onProgress'> {
  data: string;
  textColumn?: string;
  promptColumn?: string;
  completionColumn?: string;
  taskColumn?: string;
  skipBadRows?: boolean;
  onProgress?: EvaluateOptions['onProgress'];
  /** Where the data summary goes; stderr by default. */
  log?: (msg: string) => void;
}

/**
 * `molora eval`: every row of a CSV, tokenized with the model's tokenizer, scored per task.
 * Logs what was left out and why: blank rows, rows with an empty completion (no reference to
 * score) and bad rows under skipBadRows.
 */
export async function evaluateCsv(model: CausalLM, o: EvaluateCsvOptions): Promise<EvalReport> {
  const log = o.log ?? ((m: string) => process.stderr.write(`molora: ${m}\n`));
  const { train: store, stats } = await loadLmDataset(model, { ...o, seed: 0, role: 'evaluation' });
  log(`eval data: ${stats.rowsRead} rows, ${stats.examples} examples` + skippedNote(stats));
  return evaluate(model, store, o);
}
