/**
 * Training batches in a seeded random order, one permutation per epoch, with a position that
 * can be saved in a checkpoint and restored so a resumed run sees the same batches as an
 * uninterrupted one. Also the in-order validation batches.
 */
import { Rng, type RngState } from '../base/rng.js';
import { layoutOf, makeBatch, type Batch, type Layout } from './layout.js';
import type { TokenStore } from './store.js';

export interface SamplerOptions {
  batchSize: number;
  seqLen: number;
  seed: number;
}

/** A sampler's position; plain JSON. */
export interface SamplerState {
  epoch: number;
  /** Sequences of this epoch's permutation already handed out. */
  cursor: number;
  /** The generator state that drew this epoch's permutation. */
  rng: RngState;
  /** What it was saved for, checked on restore: a fingerprint of the data, and the shape. */
  data: string;
  batchSize: number;
  seqLen: number;
}

export class BatchSampler {
  /** Training sequences per epoch. */
  readonly sequences: number;
  /** Batches per epoch; the last one is smaller when batchSize does not divide sequences. */
  readonly stepsPerEpoch: number;
  private readonly layout: Layout;
  private readonly padId: number;
  private readonly batchSize: number;
  private readonly seqLen: number;
  private readonly data: string;
  private rng: Rng;
  private epochRng: RngState;
  private readonly order: Uint32Array;
  private epochNo = 0;
  private cursor = 0;

  constructor(store: TokenStore, opts: SamplerOptions) {
    checkBatchSize(opts.batchSize);
    this.layout = layoutOf(store, opts.seqLen);
    if (this.layout.count === 0) throw new Error('the training data has no sequences to train on');
    this.padId = store.padId;
    this.batchSize = opts.batchSize;
    this.seqLen = opts.seqLen;
    this.sequences = this.layout.count;
    this.stepsPerEpoch = Math.ceil(this.sequences / this.batchSize);
    this.data = fingerprint(store);
    this.order = new Uint32Array(this.sequences);
    this.rng = new Rng(opts.seed);
    this.epochRng = this.shuffle();
  }

  /** The current epoch, counting from 0. */
  get epoch(): number {
    return this.epochNo;
  }

  next(): Batch {
    if (this.cursor >= this.sequences) {
      this.epochNo++;
      this.cursor = 0;
      this.epochRng = this.shuffle();
    }
    const end = Math.min(this.cursor + this.batchSize, this.sequences);
    const batch = makeBatch(this.layout, this.order.subarray(this.cursor, end), this.padId);
    this.cursor = end;
    return batch;
  }

  state(): SamplerState {
    return {
      epoch: this.epochNo,
      cursor: this.cursor,
      rng: [...this.epochRng],
      data: this.data,
      batchSize: this.batchSize,
      seqLen: this.seqLen,
    };
  }

  /** Continues from a saved position; the data and shape must be those it was saved with. */
  restore(s: SamplerState): void {
    if (s.data !== this.data) throw new Error('cannot resume: the training data differs from the run that saved the sampler');
    const saved = `batchSize ${s.batchSize}, seqLen ${s.seqLen}`;
    const now = `batchSize ${this.batchSize}, seqLen ${this.seqLen}`;
    if (saved !== now) throw new Error(`cannot resume: the sampler was saved for ${saved}, this run has ${now}`);
    if (!(s.cursor >= 0 && s.cursor <= this.sequences)) throw new Error(`cannot resume: bad sampler cursor ${s.cursor}`);
    this.rng = new Rng(s.rng);
    this.epochRng = this.shuffle();
    this.epochNo = s.epoch;
    this.cursor = s.cursor;
  }

  /** Draws the next epoch's order; returns the generator state it started from. */
  private shuffle(): RngState {
    const start = this.rng.state();
    for (let i = 0; i < this.order.length; i++) this.order[i] = i;
    this.rng.shuffle(this.order);
    return start;
  }
}

/** Every validation sequence once, in order; the last batch may be smaller. */
export function* evalBatches(store: TokenStore, opts: { batchSize: number; seqLen: number }): Generator<Batch> {
  checkBatchSize(opts.batchSize);
  const layout = layoutOf(store, opts.seqLen);
  const all = new Uint32Array(layout.count).map((_, i) => i);
  for (let at = 0; at < layout.count; at += opts.batchSize) {
    yield makeBatch(layout, all.subarray(at, at + opts.batchSize), store.padId);
  }
}

/** Example count, token count and a hash over the examples' content hashes, in order. */
function fingerprint(store: TokenStore): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < store.size; i++) h = Math.imul(h ^ store.hashes[i]!, 0x01000193);
  return `${store.size}:${store.tokenCount}:${(h >>> 0).toString(16)}`;
}

function checkBatchSize(n: number): void {
  if (!Number.isInteger(n) || n < 1) throw new Error(`batchSize must be a positive integer, got ${n}`);
}
