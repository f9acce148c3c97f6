/**
 * Tokenized examples in flat typed arrays: a few bytes per token and per example, with no JS
 * objects per row, so millions of rows fit and the whole store can be cached as raw bytes.
 */
export type TokenArray = Uint16Array | Int32Array;

/** 'text': documents packed into one stream, loss everywhere; 'completion': loss after the prompt. */
export type StoreMode = 'text' | 'completion';

export interface TokenStoreInit {
  mode: StoreMode;
  /** Every example's tokens, back to back (text mode: eos already appended to each document). */
  tokens: TokenArray;
  /** Example i is tokens[offsets[i] .. offsets[i + 1]); length = examples + 1. */
  offsets: Uint32Array;
  /** Leading tokens of each example that get no loss (the prompt); 0 in text mode. */
  promptLens: Uint32Array;
  /**
   * Example i's gaps are gaps[2·gapOffsets[i] .. 2·gapOffsets[i + 1]): [start, end) token ranges
   * after its prompt that get no loss either (the user turns between a chat's assistant turns).
   * Most examples have none; length = examples + 1.
   */
  gapOffsets: Uint32Array;
  gaps: Uint32Array;
  /** Index into taskNames per example; 0 when there is no task column. */
  taskIds: Uint16Array;
  /** Seed-free content hash per example; the validation split is drawn from it. */
  hashes: Uint32Array;
  /** Empty when there is no task column. */
  taskNames: string[];
  /** Id written into padding: the tokenizer's pad, else its eos. */
  padId: number;
}

export class TokenStore implements TokenStoreInit {
  readonly mode: StoreMode;
  readonly tokens: TokenArray;
  readonly offsets: Uint32Array;
  readonly promptLens: Uint32Array;
  readonly gapOffsets: Uint32Array;
  readonly gaps: Uint32Array;
  readonly taskIds: Uint16Array;
  readonly hashes: Uint32Array;
  readonly taskNames: string[];
  readonly padId: number;

  constructor(init: TokenStoreInit) {
    this.mode = init.mode;
    this.tokens = init.tokens;
    this.offsets = init.offsets;
    this.promptLens = init.promptLens;
    this.gapOffsets = init.gapOffsets;
    this.gaps = init.gaps;
    this.taskIds = init.taskIds;
    this.hashes = init.hashes;
    this.taskNames = init.taskNames;
    this.padId = init.padId;
  }

  /** Number of examples. */
  get size(): number {
    return this.offsets.length - 1;
  }

  get tokenCount(): number {
    return this.offsets[this.size]!;
  }

  length(i: number): number {
    return this.offsets[i + 1]! - this.offsets[i]!;
  }

  /** Example i's tokens, as a view. */
  example(i: number): TokenArray {
    return this.tokens.subarray(this.offsets[i]!, this.offsets[i + 1]!);
  }

  /** Example i's gaps as [start, end, start, end, …], relative to the example; a view. */
  gapsOf(i: number): Uint32Array {
    return this.gaps.subarray(2 * this.gapOffsets[i]!, 2 * this.gapOffsets[i + 1]!);
  }
}

const MAX_TOKENS = 0xffffffff;
const NO_GAPS: number[] = [];

/** Appends examples to growing arrays; tokens stay Uint16 until an id needs more. */
export class TokenStoreBuilder {
  private tokens: TokenArray = new Uint16Array(1 << 16);
  private nTokens = 0;
  private offsets = new Uint32Array(1024);
  private promptLens = new Uint32Array(1024);
  private gapOffsets = new Uint32Array(1024);
  private gaps = new Uint32Array(0);
  private nGaps = 0;
  private taskIds = new Uint16Array(1024);
  private hashes = new Uint32Array(1024);
  private n = 0;

  constructor(
    private readonly mode: StoreMode,
    private readonly padId: number,
  ) {}

  get size(): number {
    return this.n;
  }

  /**
   * Adds one example made of `parts` in order; its first `promptLen` tokens get no loss, nor do
   * its `gaps` ([start, end) pairs after the prompt, relative to the example, in order).
   */
  add(parts: ArrayLike<number>[], promptLen: number, taskId: number, hash: number, gaps: ArrayLike<number> = NO_GAPS): void {
    let len = 0;
    for (const p of parts) len += p.length;
    if (this.nTokens + len > MAX_TOKENS) throw new Error(`more than ${MAX_TOKENS} tokens in one data file`);
    this.reserveTokens(this.nTokens + len);
    for (const p of parts) {
      for (let j = 0; j < p.length; j++) {
        const id = p[j]!;
        if (id > 0xffff || id < 0) this.widen(id);
        this.tokens[this.nTokens++] = id;
      }
    }
    if (this.n + 2 > this.offsets.length) {
      const cap = grow(this.offsets.length, this.n + 2);
      this.offsets = resize(this.offsets, cap);
      this.promptLens = resize(this.promptLens, cap);
      this.gapOffsets = resize(this.gapOffsets, cap);
      this.taskIds = resize(this.taskIds, cap);
      this.hashes = resize(this.hashes, cap);
    }
    this.promptLens[this.n] = promptLen;
    this.taskIds[this.n] = taskId;
    this.hashes[this.n] = hash;
    this.addGaps(gaps, promptLen, len);
    this.n++;
    this.offsets[this.n] = this.nTokens;
    this.gapOffsets[this.n] = this.nGaps;
  }

  /** Checks gaps lie in order after the prompt and within the example, and appends them. */
  private addGaps(gaps: ArrayLike<number>, promptLen: number, len: number): void {
    if (gaps.length % 2 !== 0) throw new Error('gaps come in [start, end) pairs');
    let last = promptLen;
    for (let j = 0; j < gaps.length; j += 2) {
      const [a, b] = [gaps[j]!, gaps[j + 1]!];
      if (!(a >= last && b > a && b <= len)) throw new Error(`gap [${a}, ${b}) is not after the prompt (${promptLen}) and earlier gaps, within the example's ${len} tokens`);
      last = b;
    }
    if (gaps.length === 0) return;
    if (2 * this.nGaps + gaps.length > this.gaps.length) this.gaps = resize(this.gaps, grow(this.gaps.length, 2 * this.nGaps + gaps.length));
    for (let j = 0; j < gaps.length; j++) this.gaps[2 * this.nGaps + j] = gaps[j]!;
    this.nGaps += gaps.length / 2;
  }

  finish(taskNames: string[]): TokenStore {
    return new TokenStore({
      mode: this.mode,
      tokens: this.tokens.subarray(0, this.nTokens),
      offsets: this.offsets.subarray(0, this.n + 1),
      promptLens: this.promptLens.subarray(0, this.n),
      gapOffsets: this.gapOffsets.subarray(0, this.n + 1),
      gaps: this.gaps.subarray(0, 2 * this.nGaps),
      taskIds: this.taskIds.subarray(0, this.n),
      hashes: this.hashes.subarray(0, this.n),
      taskNames,
      padId: this.padId,
    });
  }

  private reserveTokens(need: number): void {
    if (need > this.tokens.length) this.tokens = resize(this.tokens, grow(this.tokens.length, need));
  }

  private widen(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id > 0x7fffffff) throw new Error(`the tokenizer returned an invalid token id ${id}`);
    if (this.tokens instanceof Int32Array) return;
    const wide = new Int32Array(this.tokens.length);
    wide.set(this.tokens);
    this.tokens = wide;
  }
}

/** ×1.5 growth: less slack than doubling for the one big array. */
function grow(cap: number, need: number): number {
  return Math.max(need, Math.ceil(cap * 1.5));
}

function resize<A extends Uint16Array | Int32Array | Uint32Array>(a: A, cap: number): A {
  const out = new (a.constructor as new (n: number) => A)(cap);
  out.set(a);
  return out;
}

/**
 * Splits a store in two by `moveOut[i]`. The moved examples are copied into a new store; the
 * rest are compacted in place, so a large store is never held twice. `store` must not be used
 * afterwards.
 */
export function partitionStore(store: TokenStore, moveOut: Uint8Array): { kept: TokenStore; moved: TokenStore } {
  const moved = new TokenStoreBuilder(store.mode, store.padId);
  for (let i = 0; i < store.size; i++) {
    if (moveOut[i]) moved.add([store.example(i)], store.promptLens[i]!, store.taskIds[i]!, store.hashes[i]!, store.gapsOf(i));
  }
  const { tokens, offsets, promptLens, gapOffsets, gaps, taskIds, hashes } = store;
  let e = 0;
  let w = 0;
  let g = 0;
  let start = offsets[0]!;
  let gapStart = gapOffsets[0]!;
  for (let i = 0; i < store.size; i++) {
    const end = offsets[i + 1]!;
    const gapEnd = gapOffsets[i + 1]!;
    if (!moveOut[i]) {
      tokens.copyWithin(w, start, end);
      gaps.copyWithin(2 * g, 2 * gapStart, 2 * gapEnd);
      offsets[e] = w;
      gapOffsets[e] = g;
      promptLens[e] = promptLens[i]!;
      taskIds[e] = taskIds[i]!;
      hashes[e] = hashes[i]!;
      w += end - start;
      g += gapEnd - gapStart;
      e++;
    }
    start = end;
    gapStart = gapEnd;
  }
  offsets[e] = w;
  gapOffsets[e] = g;
  const kept = new TokenStore({
    mode: store.mode,
    taskNames: store.taskNames,
    padId: store.padId,
    tokens: tokens.subarray(0, w),
    offsets: offsets.subarray(0, e + 1),
    promptLens: promptLens.subarray(0, e),
    gapOffsets: gapOffsets.subarray(0, e + 1),
    gaps: gaps.subarray(0, 2 * g),
    taskIds: taskIds.subarray(0, e),
    hashes: hashes.subarray(0, e),
  });
  return { kept, moved: moved.finish(store.taskNames) };
}
