/**
 * How a token store becomes training sequences, and sequences become padded batches.
 *
 * - text: each task's documents form one stream (documents already end in eos), cut into
 *   windows of seqLen + 1 tokens that overlap by one, so every token is a target once. Tasks
 *   get separate streams so each sequence has a single task; a task's last window is shorter.
 * - completion: one example per sequence, cut from the right to seqLen + 1 tokens. An example
 *   whose prompt alone fills seqLen has no completion token left to learn and is left out. (Left
 *   truncation, which keeps the completion, fits the store first: fitPrompts.) Loss falls after
 *   the prompt, except on the example's gaps (a chat's user turns between assistant turns).
 *
 * Batches are as long as their longest sequence (at most seqLen) and padded on the right.
 */
import { TokenStoreBuilder, type TokenStore } from './store.js';

/** ids[t] predicts targets[t]; all arrays are row-major [batch, seq]. */
export interface Batch {
  ids: Int32Array;
  targets: Int32Array;
  /** 1 where the target counts toward the loss. */
  lossMask: Float32Array;
  /** 1 on real tokens, 0 on padding. */
  attentionMask: Float32Array;
  /** Per row, an index into the dataset's taskNames (0 without a task column). */
  taskIds: Int32Array;
  /** Completion mode: per row, its prompt tokens (what a router may read); null for text. */
  promptLens: Int32Array | null;
  /** Per row, its sequence's index in the layout (stable for a store and seqLen: a cache key). */
  seqs: Uint32Array;
  batch: number;
  seq: number;
}

export interface Layout {
  /** Number of sequences. */
  readonly count: number;
  /** Input/target pairs in sequence k (1 … seqLen). */
  pairs(k: number): number;
  task(k: number): number;
  /** Prompt tokens of sequence k within its row; null when sequences have no prompt (text). */
  promptLen(k: number): number | null;
  /** Writes sequence k into row `row` of `b`; the caller has filled the row with padding. */
  write(k: number, b: Batch, row: number): void;
}

export function layoutOf(store: TokenStore, seqLen: number): Layout {
  if (!Number.isInteger(seqLen) || seqLen < 1) throw new Error(`seqLen must be a positive integer, got ${seqLen}`);
  return store.mode === 'text' ? new TextLayout(store, seqLen) : new CompletionLayout(store, seqLen);
}

/**
 * Right truncation (the layout's own): completion examples cut at seqLen + 1 tokens, and those
 * of them whose prompt fills seqLen, left out for want of a completion token.
 */
export function truncation(store: TokenStore, seqLen: number): { truncated: number; dropped: number } {
  let truncated = 0;
  let dropped = 0;
  if (store.mode === 'completion') {
    for (let i = 0; i < store.size; i++) {
      if (store.length(i) > seqLen + 1) truncated++;
      if (store.promptLens[i]! > seqLen) dropped++;
    }
  }
  return { truncated, dropped };
}

/**
 * Completion examples fitted to `window` tokens by left truncation. A longer one keeps its whole
 * completion and the end of its prompt (the part next to the answer), after the prompt's bos when
 * it starts with one. Scoring needs the whole reference, and training on a completion is what a
 * row is for, so only an example whose completion leaves no room for one prompt token is left
 * out (`skipped`). A copy: the caller's store is left as it was.
 */
export function fitPrompts(store: TokenStore, window: number, bosId: number | null): { store: TokenStore; cut: number; skipped: number } {
  const out = new TokenStoreBuilder('completion', store.padId);
  let cut = 0;
  let skipped = 0;
  for (let i = 0; i < store.size; i++) {
    const ex = store.example(i);
    const p = store.promptLens[i]!;
    const gaps = store.gapsOf(i);
    const room = window - (ex.length - p);
    const head = ex[0] === bosId ? 1 : 0;
    if (p <= room) out.add([ex], p, store.taskIds[i]!, store.hashes[i]!, gaps);
    else if (room <= head) skipped++;
    else {
      cut++;
      // Gaps lie after the prompt, so they move left by the tokens the prompt loses.
      const drop = p - room;
      out.add([ex.subarray(0, head), ex.subarray(head + drop)], room, store.taskIds[i]!, store.hashes[i]!, gaps.map((g) => g - drop));
    }
  }
  return { store: out.finish(store.taskNames), cut, skipped };
}

/** A batch of the given sequences, padded to the longest. */
export function makeBatch(layout: Layout, seqs: ArrayLike<number>, padId: number): Batch {
  const B = seqs.length;
  let T = 1;
  for (let r = 0; r < B; r++) T = Math.max(T, layout.pairs(seqs[r]!));
  const b: Batch = {
    ids: new Int32Array(B * T).fill(padId),
    targets: new Int32Array(B * T).fill(padId),
    lossMask: new Float32Array(B * T),
    attentionMask: new Float32Array(B * T),
    taskIds: new Int32Array(B),
    promptLens: B > 0 && layout.promptLen(seqs[0]!) !== null ? new Int32Array(B) : null,
    seqs: Uint32Array.from(seqs),
    batch: B,
    seq: T,
  };
  for (let r = 0; r < B; r++) {
    layout.write(seqs[r]!, b, r);
    b.taskIds[r] = layout.task(seqs[r]!);
    if (b.promptLens) b.promptLens[r] = layout.promptLen(seqs[r]!)!;
  }
  return b;
}

class TextLayout implements Layout {
  readonly count: number;
  private readonly tokens: TokenStore['tokens'];
  private readonly offsets: Uint32Array;
  /** Documents grouped by task, in file order within a task. */
  private readonly order: Uint32Array;
  /** cum[m]: where document order[m] starts in the concatenated streams. */
  private readonly cum: Uint32Array;
  private readonly starts: Uint32Array;
  private readonly ends: Uint32Array;
  private readonly tasks: Uint16Array;
  private readonly window: Int32Array;

  constructor(store: TokenStore, seqLen: number) {
    const n = store.size;
    const nTasks = Math.max(1, store.taskNames.length);
    const first = new Uint32Array(nTasks + 1);
    for (let i = 0; i < n; i++) first[store.taskIds[i]! + 1]!++;
    for (let t = 0; t < nTasks; t++) first[t + 1]! += first[t]!;
    const next = first.slice(0, nTasks);
    this.order = new Uint32Array(n);
    for (let i = 0; i < n; i++) this.order[next[store.taskIds[i]!]!++] = i;
    this.cum = new Uint32Array(n + 1);
    for (let m = 0; m < n; m++) this.cum[m + 1] = this.cum[m]! + store.length(this.order[m]!);

    const streamOf = (t: number): [number, number] => [this.cum[first[t]!]!, this.cum[first[t + 1]!]!];
    let count = 0;
    for (let t = 0; t < nTasks; t++) {
      const [a, z] = streamOf(t);
      if (z - a >= 2) count += Math.ceil((z - a - 1) / seqLen);
    }
    this.count = count;
    this.starts = new Uint32Array(count);
    this.ends = new Uint32Array(count);
    this.tasks = new Uint16Array(count);
    let k = 0;
    for (let t = 0; t < nTasks; t++) {
      const [a, z] = streamOf(t);
      for (let s = a; s + 1 < z; s += seqLen, k++) {
        this.starts[k] = s;
        this.ends[k] = Math.min(s + seqLen + 1, z);
        this.tasks[k] = t;
      }
    }
    this.tokens = store.tokens;
    this.offsets = store.offsets;
    this.window = new Int32Array(seqLen + 1);
  }

  pairs(k: number): number {
    return this.ends[k]! - this.starts[k]! - 1;
  }

  task(k: number): number {
    return this.tasks[k]!;
  }

  promptLen(): null {
    return null;
  }

  write(k: number, b: Batch, row: number): void {
    const s = this.starts[k]!;
    const e = this.ends[k]!;
    // The window may span several documents: gather it, then shift by one for the targets.
    let m = upperBound(this.cum, s) - 1;
    for (let pos = s; pos < e; m++) {
      const doc = this.order[m]!;
      const from = this.offsets[doc]! + (pos - this.cum[m]!);
      const take = Math.min(e, this.cum[m + 1]!) - pos;
      this.window.set(this.tokens.subarray(from, from + take), pos - s);
      pos += take;
    }
    const n = e - s - 1;
    const at = row * b.seq;
    b.ids.set(this.window.subarray(0, n), at);
    b.targets.set(this.window.subarray(1, n + 1), at);
    b.lossMask.fill(1, at, at + n);
    b.attentionMask.fill(1, at, at + n);
  }
}

class CompletionLayout implements Layout {
  readonly count: number;
  /** The examples with at least one completion token within seqLen. */
  private readonly items: Uint32Array;

  constructor(
    private readonly store: TokenStore,
    private readonly seqLen: number,
  ) {
    const items: number[] = [];
    for (let i = 0; i < store.size; i++) if (store.promptLens[i]! <= seqLen) items.push(i);
    this.items = Uint32Array.from(items);
    this.count = items.length;
  }

  pairs(k: number): number {
    return Math.min(this.store.length(this.items[k]!) - 1, this.seqLen);
  }

  task(k: number): number {
    return this.store.taskIds[this.items[k]!]!;
  }

  promptLen(k: number): number {
    return Math.min(this.store.promptLens[this.items[k]!]!, this.pairs(k));
  }

  write(k: number, b: Batch, row: number): void {
    const i = this.items[k]!;
    const ex = this.store.example(i);
    const n = this.pairs(k);
    const at = row * b.seq;
    b.ids.set(ex.subarray(0, n), at);
    b.targets.set(ex.subarray(1, n + 1), at);
    b.attentionMask.fill(1, at, at + n);
    // Target t is token t + 1: it is a completion token (or the eos) from the prompt's end on,
    // except inside a gap.
    b.lossMask.fill(1, at + Math.max(0, this.store.promptLens[i]! - 1), at + n);
    const gaps = this.store.gapsOf(i);
    for (let j = 0; j < gaps.length; j += 2) {
      const from = gaps[j]! - 1;
      if (from >= n) break;
      b.lossMask.fill(0, at + from, at + Math.min(gaps[j + 1]! - 1, n));
    }
  }
}

/** First index m with a[m] > x (a sorted ascending). */
function upperBound(a: Uint32Array, x: number): number {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! <= x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
