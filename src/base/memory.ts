import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import type { WeightPacking } from './linear.js';
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
/** The heap before any tensor: the wasm module's data and stack. */
const RUNTIME_BYTES = 16 * MiB;
const GiB = 2 ** 30;

/**
/**
 * Share of a GPU's memory a plan may take: the driver, other processes and the allocator's
 * rounding take the rest.
 */
export const GPU_MEMORY_SHARE = 0.9;

/**
 * Bytes of float32 weights. Off wasm, the weights once. On wasm every matrix used as a matMul
 * weight also gets an XNNPACK operator holding a packed copy for as long as the tensor lives
 * (measured: 32 MiB of weights grew the heap by 36 MiB more after one matMul each), so count them
 * twice; 'transposed' (Linear.packing) holds both orientations, four times; 'per-use' only the
 * largest weight's packing, and only during its product.
 */
export function estimateModelBytes(params: number, packing: WeightPacking = 'cached', largestWeight = 0, backend = tf.getBackend()): number {
  if (backend !== 'wasm') return F32 * params;
  if (packing === 'transposed') return 4 * F32 * params;
  return F32 * params + F32 * (packing === 'cached' ? params : largestWeight);
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
  /** How the frozen weights are packed (Linear.packing); 'cached' when absent. */
  packing?: WeightPacking;
  /** Elements of the largest frozen weight (usually the head's), for 'per-use' packing; hidden·vocab when absent. */
  largestWeight?: number;
}

/**
 * Peak heap for one training step, fitted to the heaps measured after lean layout and backward
 * pass (docs/cpu-speed.md): tfjs keeps every forward op's output until the backward pass ends,
 * which frees each gradient once used. Per token and layer a llama block then peaks at about
 * 24·hidden + 6·ffn floats (norms, projections, heads, residuals, the gated MLP, the gradients in
 * flight) plus 4·heads·seq for the attention scores (measured: 28K floats on SmolLM2-135M's
 * shape, 46K on 360M's). The loss holds about four [tokens, vocab] tensors. Trainable
 * parameters cost four floats each (value, gradient, Adam's two moments). The heap keeps its
 * high-water mark and fragments: add a quarter. Against the heaps measured (the peer's shape
 * 207 MiB transposed; SmolLM2-135M B2×T128 2183 MiB cached, 1633 per-use; 360M B1×T128 2531
 * per-use; an 11.5M model trained whole 919 cached) this errs high by 14-25 %.
 */
export function estimateTrainingBytes(s: TrainingShape, backend = tf.getBackend()): number {
  const tokens = s.batch * s.seq;
  const perTokenLayer = 24 * s.hidden + 6 * s.ffn + 4 * s.heads * s.seq;
  const activations = F32 * tokens * s.layers * perTokenLayer;
  const logits = 4 * F32 * tokens * s.vocab;
  const optimizer = 4 * F32 * s.trainableParams;
  const weights = estimateModelBytes(s.params, s.packing, s.largestWeight ?? s.hidden * s.vocab, backend);
  return (backend === 'wasm' ? RUNTIME_BYTES : 0) + 1.25 * (weights + activations + logits + optimizer);
}

/**
 * A run small enough to afford both orientations of every weight: the copies speed a training
 * step up by 5-9 % (docs/cpu-speed.md), which is worth at most this much heap.
 */
export const TRANSPOSED_BUDGET_BYTES = 2 ** 30;

/**
 * How a run holds its frozen weights on wasm (Linear.packing), the fastest way its memory
 * allows: both orientations while the whole run stays under TRANSPOSED_BUDGET_BYTES (a small
 * model); one orientation with XNNPACK's packed copies when that fits the heap; else packing per
 * product (one weight's packing held at a time). Refuses, naming the leanest figure, when nothing
 * fits. Off wasm (no such heap, no XNNPACK) 'cached', checked against that backend's budget.
 */
export function planPacking(bytes: (packing: WeightPacking) => number, what: string, weightBytes = 0): WeightPacking {
  if (tf.getBackend() !== 'wasm') {
    assertFitsMemory(bytes('cached'), what, weightBytes);
    return 'cached';
  }
  if (bytes('transposed') <= TRANSPOSED_BUDGET_BYTES) return 'transposed';
  if (bytes('cached') <= WASM_HEAP_LIMIT_BYTES) return 'cached';
  assertFitsMemory(bytes('per-use'), what, weightBytes);
  return 'per-use';
}

function fmt(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(2)} GiB` : `${(bytes / MiB).toFixed(0)} MiB`;
}

/** What a plan must fit in on the running backend, or null where nothing is known or needed. */
export interface MemoryBudget {
  bytes: number;
  /** Where the bytes go: "on the wasm heap". */
  where: string;
  /** "over the 3.50 GiB molora allows (…)". */
  over: string;
  /** The ways out. */
  advice: string;
  /** The way out when the weights alone take most of the budget. */
  tooLarge: string;
}

export function memoryBudget(): MemoryBudget | null {
  const backend = tf.getBackend();
  if (backend === 'wasm') {
    return {
      bytes: WASM_HEAP_LIMIT_BYTES,
      where: 'on the wasm heap',
      over: `over the ${fmt(WASM_HEAP_LIMIT_BYTES)} molora allows (wasm tops out at 4 GiB and then corrupts results silently)`,
      advice: 'Use a smaller batch or sequence length, or install @tensorflow/tfjs-node (or -gpu) to train on the tensorflow backend.',
      tooLarge: 'This model is too large for the wasm backend: install @tensorflow/tfjs-node (or -gpu) to run it on the tensorflow backend.',
    };
  }
  const memory = backend === 'webgpu' ? webGpuAdapter()?.memory : null;
  if (!memory) return null;
  const bytes = GPU_MEMORY_SHARE * memory.bytes;
  return {
    bytes,
    where: 'of GPU memory',
    over: `over the ${fmt(bytes)} molora allows (${Math.round(100 * GPU_MEMORY_SHARE)}% of ${fmt(memory.bytes)}, from ${memory.source})`,
    advice: 'Use a smaller batch or sequence length, or a GPU with more memory.',
    tooLarge: 'This model is too large for this GPU: use one with more memory.',
  };
}

/**
 * Refuse a plan over the running backend's memory budget; a no-op where there is none.
 * `weightBytes` (the model's weights alone, when known) picks the advice: a smaller batch cannot
 * help a model whose weights take most of the budget.
 */
export function assertFitsMemory(bytes: number, what: string, weightBytes = 0): void {
  const budget = memoryBudget();
  if (!budget || bytes <= budget.bytes) return;
  const weightsAlone = weightBytes > budget.bytes / 2;
  const share = weightsAlone ? ` ${fmt(weightBytes)} of it the float32 weights,` : '';
  throw new Error(`${what} needs about ${fmt(bytes)} ${budget.where},${share} ${budget.over}. ${weightsAlone ? budget.tooLarge : budget.advice}`);
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
