import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { webGpuAdapter } from './webgpu.js';

/**
 * Memory plans: one estimator (weights, activations, optimizer state) and the budget of the
 * backend that runs it: the wasm heap, or a GPU's memory. A plan over budget is refused before
 * anything is allocated, with the numbers, rather than failing (or, on wasm, corrupting) later.
 */

/**
 * wasm32 addresses at most 4 GiB, and tfjs 4.22 does not fail past it: an allocation returns
 * offset 0 and later results are silently wrong. molora refuses to plan past 3.5 GiB, leaving
 * room for allocator fragmentation (the heap never shrinks) and kernels' scratch buffers.
 */
export const WASM_HEAP_LIMIT_BYTES = 3.5 * 2 ** 30;

const F32 = 4;
const MiB = 2 ** 20;
const GiB = 2 ** 30;

/**
 * Share of a GPU's memory a plan may take: the driver, other processes and the allocator's
 * rounding take the rest.
 */
export const GPU_MEMORY_SHARE = 0.9;

/**
 * Bytes of float32 weights. On wasm every matrix used as a matMul weight also gets an XNNPACK
 * operator holding a packed copy for as long as the tensor lives (measured: 32 MiB of weights grew
 * the heap by 36 MiB more after one matMul each), so they count twice there.
 */
export function estimateModelBytes(params: number, backend = tf.getBackend()): number {
  return (backend === 'wasm' ? 2 : 1) * F32 * params;
}

export interface TrainingShape {
  params: number;
  trainableParams: number;
  batch: number;
  seq: number;
  hidden: number;
  layers: number;
  heads: number;
  ffn: number;
  vocab: number;
}

/**
 * Peak heap for one training step. tfjs keeps every forward op's output until the backward pass
 * ends, and the backward adds one gradient per output, so activations count twice. Per token and
 * layer a llama block produces about 30·hidden + 5·ffn floats (norms, projections, RoPE, heads
 * transposes, residuals, the gated MLP) plus 4·heads·seq for the attention scores, scaled and
 * masked scores and probabilities. The loss keeps about four [tokens, vocab] tensors (logits,
 * log-probabilities and their products). Gradients and Adam's two moments add three floats per
 * trainable parameter. The heap keeps its high-water mark and fragments: add a quarter. Against
 * the one point measured (9.5M params, B=8, T=128, V=8192: a 1.2 GiB heap) this gives 1.3-1.7
 * GiB for the plausible shapes of that model, erring on the high side as it should.
 */
export function estimateTrainingBytes(s: TrainingShape, backend = tf.getBackend()): number {
  const tokens = s.batch * s.seq;
  const perTokenLayer = 30 * s.hidden + 5 * s.ffn + 4 * s.heads * s.seq;
  const activations = 2 * F32 * tokens * s.layers * perTokenLayer;
  const logits = 2 * F32 * 4 * tokens * s.vocab;
  const optimizer = 3 * F32 * s.trainableParams;
  // Training keeps a transposed copy of each frozen weight for its input gradient (ops.frozenLinear),
  // packed by XNNPACK too on wasm: the weights count twice over.
  return 1.25 * (2 * estimateModelBytes(s.params, backend) + activations + logits + optimizer);
}

function fmt(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(2)} GiB` : `${(bytes / MiB).toFixed(0)} MiB`;
}

/** What a plan must fit in on the running backend, or null where nothing is known or needed. */
export interface MemoryBudget {
  bytes: number;
  /** "on the wasm heap, over the 3.50 GiB molora allows (…)". */
  over: (bytes: number) => string;
  /** The ways out. */
  advice: string;
}

export function memoryBudget(): MemoryBudget | null {
  const backend = tf.getBackend();
  if (backend === 'wasm') {
    return {
      bytes: WASM_HEAP_LIMIT_BYTES,
      over: () => `on the wasm heap, over the ${fmt(WASM_HEAP_LIMIT_BYTES)} molora allows (wasm tops out at 4 GiB and then corrupts results silently)`,
      advice: 'Use a smaller batch or sequence length, or install @tensorflow/tfjs-node (or -gpu) to train on the tensorflow backend.',
    };
  }
  const memory = backend === 'webgpu' ? webGpuAdapter()?.memory : null;
  if (!memory) return null;
  const bytes = GPU_MEMORY_SHARE * memory.bytes;
  return {
    bytes,
    over: () => `of GPU memory, over the ${fmt(bytes)} molora allows (${Math.round(100 * GPU_MEMORY_SHARE)}% of ${fmt(memory.bytes)}, from ${memory.source})`,
    advice: 'Use a smaller batch or sequence length, or a GPU with more memory.',
  };
}

/** Refuse a plan over the running backend's memory budget; a no-op where there is none. */
export function assertFitsMemory(bytes: number, what: string): void {
  const budget = memoryBudget();
  if (!budget || bytes <= budget.bytes) return;
  throw new Error(`${what} needs about ${fmt(bytes)} ${budget.over(bytes)}. ${budget.advice}`);
}

/**
 * Refuse a batch whose logits [tokens, vocab] are over the GPU's binding limit: kernels bind a
 * tensor whole, and unlike the vocabulary tables (vocab.ts) activations are not split.
 */
export function assertLogitsFit(tokens: number, vocab: number, limit: number | null, what: string): void {
  const bytes = F32 * tokens * vocab;
  if (limit === null || bytes <= limit) return;
  throw new Error(`${what}: its logits, ${tokens} tokens × ${vocab} vocabulary float32 (${fmt(bytes)}), are over the GPU's ` +
    `${fmt(limit)} binding limit. Use a smaller batch or sequence length (at most ${Math.floor(limit / (F32 * vocab))} tokens a batch).`);
}

export interface HeapUsage {
  /** Size of the wasm memory (it only grows), or null off wasm. */
  heapBytes: number | null;
  /** Bytes held by live tensors, as tfjs counts them. */
  tensorBytes: number;
  numTensors: number;
}

/** The emscripten module behind the wasm backend (its typings omit these members). */
interface EmscriptenHeap {
  HEAPU8: Uint8Array;
  _malloc: (n: number) => number;
  _free: (p: number) => void;
}

function emscripten(backend: BackendWasm): EmscriptenHeap {
  return backend.wasm as unknown as EmscriptenHeap;
}

export function heapUsage(): HeapUsage {
  const m = tf.memory();
  const heapBytes = tf.getBackend() === 'wasm' ? emscripten(tf.backend() as BackendWasm).HEAPU8.buffer.byteLength : null;
  return { heapBytes, tensorBytes: m.numBytes, numTensors: m.numTensors };
}

const guarded = new WeakSet<BackendWasm>();

/**
 * Make heap exhaustion loud: tfjs uses whatever malloc returns as a tensor's offset, and near
 * 4 GiB that is 0 or a block too small. Wraps the backend's malloc to throw instead.
 */
export function guardWasmHeap(): void {
  if (tf.getBackend() !== 'wasm') return;
  const backend = tf.backend() as BackendWasm;
  if (guarded.has(backend)) return;
  const module = emscripten(backend);
  // Emscripten's _malloc starts as a stub that replaces itself on first call, which would drop
  // our wrapper: resolve it first.
  module._free(module._malloc(4));
  const malloc = module._malloc;
  module._malloc = (n: number) => {
    const p = n < 2 ** 32 ? malloc(n) : 0;
    // Failure shows as 0, or, when the size overflows inside malloc, as a block that ends past
    // the heap.
    if (n > 0 && (p === 0 || (p >>> 0) + n > module.HEAPU8.length)) {
      if (p !== 0) module._free(p);
      throw new Error(`wasm heap exhausted allocating ${fmt(n)} (heap ${fmt(module.HEAPU8.buffer.byteLength)}, ` +
        `${fmt(tf.memory().numBytes)} in live tensors). Use a smaller batch or sequence length, or ` +
        `install @tensorflow/tfjs-node.`);
    }
    return p;
  };
  guarded.add(backend);
}
