/**
 * The train/validation split. Each example's side is drawn from a hash of its text mixed with
 * the seed, not from its position: the same seed gives the same split whatever the row order,
 * duplicates of one text never straddle the split, and the store (and its cache) stays
 * seed-free.
 */
import { partitionStore, type TokenStore } from './store.js';

/** FNV-1a over the UTF-16 code units of each part, each part's length folded in after it. */
export function contentHash(parts: string[]): number {
  let h = 0x811c9dc5;
  for (const part of parts) {
    for (let i = 0; i < part.length; i++) h = Math.imul(h ^ part.charCodeAt(i), 0x01000193);
    h = Math.imul(h ^ part.length, 0x01000193);
  }
  return fmix32(h);
}

/** Whether an example with this content hash goes to validation, for this seed and fraction. */
export function isValidation(hash: number, seed: number, fraction: number): boolean {
  return fmix32(hash ^ fmix32(seed >>> 0)) / 4294967296 < fraction;
}

/** Moves about `fraction` of the examples into a validation store; `store` is consumed. */
export function splitStore(store: TokenStore, fraction: number, seed: number): { train: TokenStore; val: TokenStore } {
  const toVal = new Uint8Array(store.size);
  for (let i = 0; i < store.size; i++) toVal[i] = isValidation(store.hashes[i]!, seed, fraction) ? 1 : 0;
  const { kept, moved } = partitionStore(store, toVal);
  return { train: kept, val: moved };
}

/** MurmurHash3's finaliser: every input bit flips about half the output bits. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
