import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { installLeanBackprop } from './backprop.js';
import { pollThreadGuard } from './thread-guard.js';

/**
 * Fixes for tfjs 4.22's traps (TFJS-NOTES.md), installed through tfjs's own extension points.
 *
 * wasm kernels replaced:
 * - BatchMatMul: only a flag-free, unbatched product reached XNNPACK (~20 GFLOP/s); flags and
 *   batches ran a naive loop (~1-2 GFLOP/s). Now transposes are materialised (on whichever side
 *   moves fewer elements) and every batch slice runs on XNNPACK through zero-copy views; an
 *   inner dimension as long as a vocabulary runs in slices that stay in cache; a weight marked
 *   with packPerUse gets no kept XNNPACK packing.
 * - _FusedMatMul: gave wrong numbers (bias with a flag or a batch; relu past 48 inner dims,
 *   where its blocked loop clamps partial sums). Now the matMul above, then Add and the
 *   activation kernels.
 * - Slice, Unpack, SplitV: each slice copied the whole input out of the heap first, so
 *   unstack/split were quadratic. Now they copy only what they return.
 * - GatherV2: 40x faster in JS (0.15 ms against 6 ms for 512 rows of [8000,256]), and
 *   batchDims > 0 no longer reads out of bounds.
 * - UnsortedSegmentSum: missing, which broke every gather gradient.
 * - Identity, same-dtype Cast: copied the tensor; now they share its memory (tfjs clones every
 *   tensor it saves for a gradient).
 * - Transpose of the last two axes: the stock loop strides through memory; now 16×16 tiles.
 *
 * gradients added or replaced (all backends):
 * - BatchMatMul: the stock one throws on broadcast batch dims and transposes twice where once
 *   does; a weight shared across a batch (x[B,T,D] @ w[D,K]) gets its gradient from one 2-D
 *   product.
 * - GatherV2: one segment sum for any axis and batchDims (the stock one loops over batches).
 * - TopK (values), GatherNd, StridedSlice: missing.
 * - The backward pass itself (backprop.ts): frees each intermediate gradient once used.
 *
 * molora's own kernels (wasm and cpu, in JS; ops.ts uses stock ops on other backends):
 * - MoloraSplitHeads / MoloraMergeHeads: RoPE, the attention score scale and the head
 *   transpose in one pass, each the other's gradient.
 *
 * webgpu kernels replaced (only these: none of the wasm ones above applies there):
 * - AddN: it binds every input and the output as storage buffers, and tfjs 4.22 does not split a
 *   sum past the device's maxStorageBuffersPerShaderStage (8 inputs failed validation on an
 *   8-buffer device; Concat does split). Now it sums in chunks that fit.
 *
 * Not patched: tf.fused.matMul leaks one tensor per call in tfjs-core itself (all backends);
 * molora's linear never fuses.
 *
 * Still without gradients, so molora must not differentiate through them: ScatterNd and
 * TensorScatterUpdate (build from gather / one-hot products), Einsum (no wasm forward either:
 * use matMul).
 *
 * Gradients are global and installed at once. A backend's kernels are installed only once its
 * package has registered its own, since loading it later would overwrite ours: call this again
 * after setBackend (initBackend does). Idempotent: each patch checks it is not already in place.
 */
export function installKernelPatches(): void {
  installLeanBackprop();
  for (const g of GRADIENTS) {
    if (tf.getGradient(g.kernelName) !== g) tf.registerGradient(g);
  }
  for (const k of MOLORA_KERNELS) {
    if (tf.getKernel(k.kernelName, k.backendName) !== k) tf.registerKernel(k);
  }
  if (tf.getKernel(tf.BatchMatMul, 'wasm')) replaceKernels(WASM_KERNELS);
  if (tf.getKernel(tf.BatchMatMul, 'webgpu')) replaceKernels(WEBGPU_KERNELS);
}

/** Names of molora's kernels registered for a backend right now: what the patches change there. */
export function patchedKernels(backendName: string): string[] {
  return [...MOLORA_KERNELS, ...WASM_KERNELS, ...WEBGPU_KERNELS]
    .filter((k) => k.backendName === backendName && tf.getKernel(k.kernelName, backendName) === k)
    .map((k) => k.kernelName);
}

/** Register `kernels` over the stock ones of their backend, keeping those for delegation. */
function replaceKernels(kernels: tf.KernelConfig[]): void {
  for (const k of kernels) {
    const current = tf.getKernel(k.kernelName, k.backendName);
    if (current === k) continue;
    if (current) {
      ORIGINAL.set(`${k.backendName}/${k.kernelName}`, current);
      tf.unregisterKernel(k.kernelName, k.backendName);
    }
    tf.registerKernel(k);
  }
}

/** The stock kernels we replaced, by backend/kernel (kept for the cases we delegate, e.g. string slices). */
const ORIGINAL = new Map<string, tf.KernelConfig>();

function stock(backendName: string, kernelName: string): tf.KernelConfig {
  const k = ORIGINAL.get(`${backendName}/${kernelName}`);
  if (!k) throw new Error(`the stock ${backendName} kernel '${kernelName}' was not kept`);
  return k;
}

type Info = tf.TensorInfo;
type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: BackendWasm; attrs: tf.NamedAttrMap };

function wasmKernel(kernelName: string, f: (args: KernelArgs) => Info | Info[]): tf.KernelConfig {
  return { kernelName, backendName: 'wasm', kernelFunc: (args) => f(args as KernelArgs) };
}

const prod = (s: readonly number[]) => s.reduce((p, d) => p * d, 1);

/** Run another (stock) wasm kernel from inside ours. */
function run(name: string, backend: BackendWasm, inputs: Record<string, Info>, attrs: tf.NamedAttrMap = {}): Info {
  const k = tf.getKernel(name, 'wasm');
  if (!k) throw new Error(`wasm kernel '${name}' is not registered`);
  return k.kernelFunc({ inputs, backend, attrs }) as Info;
}

function heapOffset(backend: BackendWasm, t: Info): number {
  return backend.dataIdMap.get(t.dataId)!.memoryOffset;
}

function heapId(backend: BackendWasm, t: Info): number {
  return backend.dataIdMap.get(t.dataId)!.id;
}

// ---------------------------------------------------------------- matMul on XNNPACK only

type WasmMatMul = (aId: number, aShape: Uint8Array, aRank: number, bId: number, bShape: Uint8Array,
  bRank: number, transposeA: boolean, transposeB: boolean, outId: number) => void;
const wasmMatMul = new WeakMap<BackendWasm, WasmMatMul>();

/** The C++ BatchMatMul entry; with no flags and batch 1 on both sides it is one XNNPACK call. */
function xnnMatMul(backend: BackendWasm): WasmMatMul {
  let f = wasmMatMul.get(backend);
  if (!f) {
    const module = backend.wasm as unknown as { cwrap: (name: string, ret: null, args: string[]) => unknown };
    f = module.cwrap(tf.BatchMatMul, null,
      ['number', 'array', 'number', 'number', 'array', 'number', 'number', 'number', 'number']) as WasmMatMul;
    wasmMatMul.set(backend, f);
  }
  return f;
}

const shapeBytes = (s: number[]) => new Uint8Array(new Int32Array(s).buffer);

/**
 * A heap view: a tensor id over part of another tensor's memory, so a batch slice can be passed
 * to the C++ kernels without copying. Released with dropView, which must not free the memory.
 */
function view(backend: BackendWasm, offsetBytes: number, shape: number[]): Info {
  return backend.makeOutput(shape, 'float32', offsetBytes);
}

function dropView(backend: BackendWasm, v: Info): void {
  // Unregistering the id also runs the C++ disposal callbacks (XNNPACK's cached operator).
  backend.wasm.tfjs.disposeData(heapId(backend, v));
  backend.dataIdMap.delete(v.dataId);
}

function transposeLast2(backend: BackendWasm, t: Info): Info {
  const perm = t.shape.map((_, i) => i);
  perm[perm.length - 1] = perm.length - 2;
  perm[perm.length - 2] = perm.length - 1;
  return run(tf.Transpose, backend, { x: t }, { perm });
}

/** Flat index into a broadcast operand's batch for flat output batch index i. */
function broadcastIndex(i: number, outBatch: number[], batch: number[]): number {
  let idx = 0;
  let stride = 1;
  for (let d = outBatch.length - 1, e = batch.length - 1; d >= 0; d--, e--) {
    const coord = i % outBatch[d]!;
    i = Math.floor(i / outBatch[d]!);
    if (e >= 0) {
      if (batch[e] !== 1) idx += coord * stride;
      stride *= batch[e]!;
    }
  }
  return idx;
}

function fastMatMul(backend: BackendWasm, a: Info, b: Info, transposeA: boolean, transposeB: boolean): Info {
  // Between products, so a pool change never meets one in flight.
  pollThreadGuard();
  if (a.dtype !== 'float32' || b.dtype !== 'float32') {
    throw new Error(`matMul on wasm needs float32, got a ${a.dtype} [${a.shape}] and b ${b.dtype} [${b.shape}]`);
  }
  const last2 = (t: Info, flag: boolean) => (flag ? t.shape.slice(-2).reverse() : t.shape.slice(-2)) as [number, number];
  const [m, k] = last2(a, transposeA);
  const [k2, p] = last2(b, transposeB);
  if (k !== k2) {
    throw new Error(`matMul: inner dims differ, a [${a.shape}] (transposeA=${transposeA}) ` +
      `b [${b.shape}] (transposeB=${transposeB})`);
  }
  const outBatch = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
  // op(A)·op(B) transposes the flagged operands; (op(B)ᵀ·op(A)ᵀ)ᵀ the others and the result.
  // Take whichever moves fewer elements: xᵀ·du for a LoRA gradient ([512,256]ᵀ·[512,8]) then
  // moves du and the [256,8] result instead of all of x (0.56 → 0.14 ms).
  const [sa, sb, sc] = [prod(a.shape), prod(b.shape), prod(outBatch) * m * p];
  const direct = (transposeA ? sa : 0) + (transposeB ? sb : 0);
  const swapped = (transposeA ? 0 : sa) + (transposeB ? 0 : sb) + sc;
  if (swapped >= direct) return product(backend, a, b, transposeA, transposeB, [...outBatch, m, p]);
  const ct = product(backend, b, a, !transposeB, !transposeA, [...outBatch, p, m]);
  try {
    return transposeLast2(backend, ct);
  } finally {
    backend.disposeData(ct.dataId);
  }
}

/** op(a)·op(b) into a new [..., m, p] tensor, the flagged operands transposed first. */
function product(backend: BackendWasm, a: Info, b: Info, transposeA: boolean, transposeB: boolean, outShape: number[]): Info {
  const A = transposeA ? transposeLast2(backend, a) : a;
  const B = transposeB ? transposeLast2(backend, b) : b;
  try {
    const [m, k] = A.shape.slice(-2) as [number, number];
    const p = B.shape[B.shape.length - 1]!;
    const batchA = A.shape.slice(0, -2);
    const batchB = B.shape.slice(0, -2);
    const outBatch = outShape.slice(0, -2);
    const out = backend.makeOutput(outShape, 'float32');
    const n = prod(outBatch);
    if (n * m * p === 0) return out;
    if (k === 0) {
      backend.typedArrayFromHeap(out).fill(0);
      return out;
    }
    const mm = xnnMatMul(backend);
    if (prod(batchB) === 1 && k >= LONG_K) {
      longProduct(backend, A, B, n * m, k, p, out);
      return out;
    }
    if (prod(batchB) === 1) {
      // One weight for the whole batch: all of a's rows in one product. XNNPACK caches its packed
      // copy of B under B's id; a view's id takes the packing away with it.
      const bv = PACK_PER_USE.has(B.dataId) ? view(backend, heapOffset(backend, B), B.shape) : B;
      try {
        mm(heapId(backend, A), shapeBytes([1, n * m, k]), 3, heapId(backend, bv), shapeBytes([1, k, p]), 3,
          false, false, heapId(backend, out));
      } finally {
        if (bv !== B) dropView(backend, bv);
      }
      return out;
    }
    const [aOff, bOff, oOff] = [heapOffset(backend, A), heapOffset(backend, B), heapOffset(backend, out)];
    const aShape = shapeBytes([1, m, k]);
    const bShape = shapeBytes([1, k, p]);
    for (let i = 0; i < n; i++) {
      const av = view(backend, aOff + broadcastIndex(i, outBatch, batchA) * m * k * 4, [m, k]);
      const bv = view(backend, bOff + broadcastIndex(i, outBatch, batchB) * k * p * 4, [k, p]);
      const ov = view(backend, oOff + i * m * p * 4, [m, p]);
      mm(heapId(backend, av), aShape, 3, heapId(backend, bv), bShape, 3, false, false, heapId(backend, ov));
      dropView(backend, av);
      dropView(backend, bv);
      dropView(backend, ov);
    }
    return out;
  } finally {
    if (A !== a) backend.disposeData(A.dataId);
    if (B !== b) backend.disposeData(B.dataId);
  }
}

/** Tensors (by dataId) whose XNNPACK packing is made for each product and freed after it. */
const PACK_PER_USE = new WeakSet<object>();

/**
 * Make XNNPACK pack `t` for each matMul that uses it as the right operand, and free the packing
 * after it, instead of keeping a packed copy (as large as t) for t's life. Costs 12-15 % on that
 * product at 256 rows and 40-48 % at 128 (CPU time on SmolLM2 shapes); halves a frozen model's
 * weight memory.
 * A no-op off wasm.
 */
export function packPerUse(t: tf.Tensor): void {
  PACK_PER_USE.add(t.dataId);
}

/** Inner dimensions from here on (vocabularies) are multiplied in slices of K_SLICE. */
const LONG_K = 16384;
const K_SLICE = 4096;

/**
 * [rows, k]·[k, p] for a k as long as a vocabulary (a head's input gradient, [N, V]·[V, D] or its
 * swapped form): XNNPACK runs the whole of k for each tile of the output, so k-long rows of A
 * and k-long panels of B stream from memory again and again. In slices of K_SLICE both stay in
 * cache: 736 → 533 ms of CPU for [576, 49152]·[49152, 256], the column slices of A copied and the
 * row slices of B viewed in place. No operand longer than LONG_K is a kept weight (the head's
 * weight has the vocabulary as its columns), so losing XNNPACK's cached packing costs nothing.
 */
function longProduct(backend: BackendWasm, A: Info, B: Info, rows: number, k: number, p: number, out: Info): void {
  const mm = xnnMatMul(backend);
  const a2: Info = { ...A, shape: [rows, k] };
  const bOff = heapOffset(backend, B);
  const part = backend.makeOutput([rows, p], 'float32');
  try {
    for (let k0 = 0; k0 < k; k0 += K_SLICE) {
      const kc = Math.min(K_SLICE, k - k0);
      const as = sliceInfo(backend, a2, [0, k0], [rows, kc]);
      const bv = view(backend, bOff + k0 * p * 4, [kc, p]);
      const target = k0 === 0 ? out : part;
      mm(heapId(backend, as), shapeBytes([1, rows, kc]), 3, heapId(backend, bv), shapeBytes([1, kc, p]), 3,
        false, false, heapId(backend, target));
      dropView(backend, bv);
      backend.disposeData(as.dataId);
      if (k0 === 0) continue;
      // Views taken after the allocations above.
      const sum = backend.typedArrayFromHeap(out) as Float32Array;
      const add = backend.typedArrayFromHeap(part) as Float32Array;
      for (let i = 0; i < sum.length; i++) sum[i]! += add[i]!;
    }
  } finally {
    backend.disposeData(part.dataId);
  }
}

const batchMatMulKernel = wasmKernel(tf.BatchMatMul, ({ inputs, backend, attrs }) => {
  const { transposeA, transposeB } = attrs as unknown as tf.BatchMatMulAttrs;
  return fastMatMul(backend, inputs.a!, inputs.b!, transposeA, transposeB);
});

const ACTIVATIONS: Record<string, string> = {
  relu: tf.Relu, relu6: tf.Relu6, elu: tf.Elu, sigmoid: tf.Sigmoid, leakyrelu: tf.LeakyRelu, prelu: tf.Prelu,
};

const fusedMatMulKernel = wasmKernel(tf._FusedMatMul, ({ inputs, backend, attrs }) => {
  const { transposeA, transposeB, activation, leakyreluAlpha } = attrs as unknown as tf._FusedMatMulAttrs;
  const { a, b, bias, preluActivationWeights } = inputs;
  let y = fastMatMul(backend, a!, b!, transposeA, transposeB);
  const then = (next: Info) => {
    backend.disposeData(y.dataId);
    y = next;
  };
  if (bias) then(run(tf.Add, backend, { a: y, b: bias }));
  if (activation && activation !== 'linear') {
    const name = ACTIVATIONS[activation];
    if (!name) throw new Error(`fused matMul: unknown activation '${activation}'`);
    if (activation === 'prelu') then(run(name, backend, { x: y, alpha: preluActivationWeights! }));
    else if (activation === 'leakyrelu') then(run(name, backend, { x: y }, { alpha: leakyreluAlpha ?? 0.2 }));
    else then(run(name, backend, { x: y }));
  }
  return y;
});

// ---------------------------------------------------------------- slices that copy only their output

function sliceInfo(backend: BackendWasm, x: Info, begin: number[], size: number[]): Info {
  const out = backend.makeOutput(size, x.dtype);
  const total = prod(size);
  if (total === 0) return out;
  // Views taken after makeOutput: an allocation can grow the heap and detach older views.
  const src = backend.typedArrayFromHeap(x);
  const dst = backend.typedArrayFromHeap(out);
  const rank = x.shape.length;
  if (rank === 0) {
    dst[0] = src[0]!;
    return out;
  }
  const strides = tf.util.computeStrides(x.shape);
  // Merge the trailing dims that are taken whole into one contiguous run.
  let inner = rank - 1;
  while (inner > 0 && begin[inner] === 0 && size[inner] === x.shape[inner]) inner--;
  const run = prod(size.slice(inner));
  const coord = begin.slice(0, inner);
  for (let o = 0; o < total; o += run) {
    let s = begin[inner]! * (strides[inner] ?? 1);
    for (let d = 0; d < inner; d++) s += coord[d]! * strides[d]!;
    if (run > 16) dst.set(src.subarray(s, s + run), o);
    else for (let j = 0; j < run; j++) dst[o + j] = src[s + j]!;
    for (let d = inner - 1; d >= 0; d--) {
      if (++coord[d]! < begin[d]! + size[d]!) break;
      coord[d] = begin[d]!;
    }
  }
  return out;
}

function slice(backend: BackendWasm, x: Info, begin: number[], size: number[]): Info {
  if (x.dtype === 'string') {
    return stock('wasm', tf.Slice).kernelFunc({ inputs: { x }, backend, attrs: { begin, size } }) as Info;
  }
  return sliceInfo(backend, x, begin, size);
}

const sliceKernel = wasmKernel(tf.Slice, ({ inputs, backend, attrs }) => {
  const x = inputs.x!;
  const { begin, size } = attrs as unknown as tf.SliceAttrs;
  const [b, s] = tf.slice_util.parseSliceParams(x as tf.Tensor, begin, size);
  return slice(backend, x, b, s);
});

/** Slices of x along axis, of the given sizes, each keeping the axis. */
function splitAlong(backend: BackendWasm, x: Info, axis: number, sizes: number[]): Info[] {
  const begin = x.shape.map(() => 0);
  return sizes.map((s) => {
    const size = x.shape.slice();
    size[axis] = s;
    const out = slice(backend, x, begin.slice(), size);
    begin[axis]! += s;
    return out;
  });
}

const unpackKernel = wasmKernel(tf.Unpack, ({ inputs, backend, attrs }) => {
  const x = inputs.value!;
  let { axis } = attrs as unknown as tf.UnpackAttrs;
  if (axis < 0) axis += x.shape.length;
  const outShape = x.shape.filter((_, i) => i !== axis);
  const parts = splitAlong(backend, x, axis, new Array<number>(x.shape[axis]!).fill(1));
  return parts.map((p) => ({ ...p, shape: outShape }));
});

const splitVKernel = wasmKernel(tf.SplitV, ({ inputs, backend, attrs }) => {
  const x = inputs.x!;
  const { numOrSizeSplits, axis } = attrs as unknown as tf.SplitVAttrs;
  const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
  const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, ax);
  return splitAlong(backend, x, ax, sizes);
});

// ---------------------------------------------------------------- copies that need not copy

/**
 * Identity, and Cast to the same dtype, share the input's heap block (as the cpu backend does):
 * tfjs clones every tensor it saves for a gradient, and the Multiply gradient casts its other
 * input to float32, so a LoRA step made ~500 full copies. Tensor memory is never written after
 * its kernel returns, so sharing is safe; a shared weight also keeps its cached XNNPACK operator.
 */
function share(backend: BackendWasm, x: Info): Info {
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

const identityKernel = wasmKernel(tf.Identity, ({ inputs, backend, attrs }) => {
  const x = inputs.x!;
  if (x.dtype === 'string') return stock('wasm', tf.Identity).kernelFunc({ inputs, backend, attrs }) as Info;
  return share(backend, x);
});

const castKernel = wasmKernel(tf.Cast, ({ inputs, backend, attrs }) => {
  const x = inputs.x!;
  if (x.dtype === 'string' || x.dtype !== (attrs as unknown as tf.CastAttrs).dtype) {
    return stock('wasm', tf.Cast).kernelFunc({ inputs, backend, attrs }) as Info;
  }
  return share(backend, x);
});

// ---------------------------------------------------------------- gather and its gradient

const gatherKernel = wasmKernel(tf.GatherV2, ({ inputs, backend, attrs }) => {
    const { x, indices } = inputs as { x: Info; indices: Info };
  const { axis, batchDims } = attrs as unknown as tf.GatherV2Attrs;
  const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
  const info = tf.backend_util.segment_util.collectGatherOpShapeInfo(
    x as tf.Tensor, indices as tf.Tensor, ax, batchDims);
  const { batchSize, outerSize, dimSize, sliceSize } = info;
  let idx = backend.typedArrayFromHeap(indices);
  for (let i = 0; i < idx.length; i++) {
    const v = idx[i]!;
    if (!(v >= 0 && v < dimSize)) {
      throw new Error(`gather: index ${v} at position ${i} is outside [0, ${dimSize - 1}] for x [${x.shape}] axis ${ax}`);
    }
  }
  const out = backend.makeOutput(info.outputShape, x.dtype);
  if (prod(info.outputShape) === 0) return out;
  const n = idx.length / batchSize;
  // Views taken after makeOutput: an allocation can grow the heap and detach older views.
  idx = backend.typedArrayFromHeap(indices);
  const src = backend.typedArrayFromHeap(x);
  const dst = backend.typedArrayFromHeap(out);
  let o = 0;
  for (let b = 0; b < batchSize; b++) {
    for (let r = 0; r < outerSize; r++) {
      const rowBase = (b * outerSize + r) * dimSize;
      for (let i = 0; i < n; i++, o += sliceSize) {
        const s = (rowBase + idx[b * n + i]!) * sliceSize;
        if (sliceSize > 16) dst.set(src.subarray(s, s + sliceSize), o);
        else for (let j = 0; j < sliceSize; j++) dst[o + j] = src[s + j]!;
      }
    }
  }
  return out;
});

const unsortedSegmentSumKernel = wasmKernel(tf.UnsortedSegmentSum, ({ inputs, backend, attrs }) => {
    const { x, segmentIds } = inputs as { x: Info; segmentIds: Info };
  const { numSegments } = attrs as unknown as tf.UnsortedSegmentSumAttrs;
  const rows = prod(segmentIds.shape);
  const inner = rows === 0 ? 0 : prod(x.shape) / rows;
  const out = backend.makeOutput([numSegments, ...x.shape.slice(segmentIds.shape.length)], x.dtype);
  const dst = backend.typedArrayFromHeap(out);
  dst.fill(0);
  const src = backend.typedArrayFromHeap(x);
  const ids = backend.typedArrayFromHeap(segmentIds);
  for (let r = 0; r < rows; r++) {
    const id = ids[r]!;
    // Out-of-range ids are dropped, as in TensorFlow.
    if (id < 0 || id >= numSegments) continue;
    const s = r * inner;
    const d = id * inner;
    for (let j = 0; j < inner; j++) dst[d + j]! += src[s + j]!;
  }
  return out;
});

// ---------------------------------------------------------------- transposes in tiles

/** Tile edge: a 16×16 float32 tile is 1 KiB, so a tile's rows and columns both stay in L1. */
const TILE = 16;

/**
 * A transpose of the last two axes (any batch in front), in 16×16 tiles. The stock kernel walks
 * the output one element at a time with strided reads: [256, 49152] (a head's gradient) took 68 ms
 * of CPU and [49152, 256] 279 ms, against 29 and 41 here; the matMul kernel above transposes on
 * every flagged product. Other permutations go to the stock kernel.
 */
const transposeKernel = wasmKernel(tf.Transpose, ({ inputs, backend, attrs }) => {
  const x = inputs.x!;
  const { perm } = attrs as unknown as tf.TransposeAttrs;
  const r = perm.length;
  const swapsLastTwo = r >= 2 && perm[r - 1] === r - 2 && perm[r - 2] === r - 1 && perm.slice(0, -2).every((p, i) => p === i);
  if (!swapsLastTwo || x.dtype === 'string' || x.dtype === 'complex64') {
    return stock('wasm', tf.Transpose).kernelFunc({ inputs, backend, attrs }) as Info;
  }
  const [R, C] = x.shape.slice(-2) as [number, number];
  const out = backend.makeOutput([...x.shape.slice(0, -2), C, R], x.dtype);
  // Views taken after makeOutput: an allocation can grow the heap and detach older views.
  const src = backend.typedArrayFromHeap(x);
  const dst = backend.typedArrayFromHeap(out);
  for (let b = 0, n = prod(x.shape.slice(0, -2)); b < n; b++) transposeTiles(src, dst, b * R * C, R, C);
  return out;
});

function transposeTiles(src: tf.TypedArray, dst: tf.TypedArray, base: number, R: number, C: number): void {
  for (let i0 = 0; i0 < R; i0 += TILE) {
    const i1 = Math.min(i0 + TILE, R);
    for (let j0 = 0; j0 < C; j0 += TILE) {
      const j1 = Math.min(j0 + TILE, C);
      for (let i = i0; i < i1; i++) {
        const s = base + i * C;
        for (let j = j0; j < j1; j++) dst[base + j * R + i] = src[s + j]!;
      }
    }
  }
}

const WASM_KERNELS: tf.KernelConfig[] = [
  batchMatMulKernel, fusedMatMulKernel, sliceKernel, unpackKernel, splitVKernel, gatherKernel,
  unsortedSegmentSumKernel, identityKernel, castKernel, transposeKernel,
];

// ---------------------------------------------------------------- webgpu

interface WebGpuBackendLike {
  device: { limits: { maxStorageBuffersPerShaderStage: number } };
  disposeData(dataId: object): void;
}

/** Σ inputs in chunks of at most (storage buffers per stage − 1) inputs: the output takes one binding. */
const webgpuAddNKernel: tf.KernelConfig = {
  kernelName: tf.AddN,
  backendName: 'webgpu',
  kernelFunc: ({ inputs, backend, attrs }) => {
    const be = backend as unknown as WebGpuBackendLike;
    const sum = (ts: Info[]): Info => stock('webgpu', tf.AddN).kernelFunc({ inputs: ts as unknown as tf.NamedTensorInfoMap, backend, attrs }) as Info;
    const max = be.device.limits.maxStorageBuffersPerShaderStage - 1;
    let ts = Object.values(inputs) as Info[];
    const partials: Info[] = [];
    while (ts.length > max) {
      const next: Info[] = [];
      for (let i = 0; i < ts.length; i += max) next.push(sum(ts.slice(i, i + max)));
      partials.push(...next);
      ts = next;
    }
    const out = sum(ts);
    // The partial sums are ours to free (a one-input sum shares its input's buffer, counted).
    for (const t of partials) be.disposeData(t.dataId);
    return out;
  },
};

const WEBGPU_KERNELS: tf.KernelConfig[] = [webgpuAddNKernel];

// ---------------------------------------------------------------- molora's own kernels

/** Attributes of MoloraSplitHeads / MoloraMergeHeads (see ops.splitHeads). */
export interface HeadsAttrs {
  batch: number;
  kvHeads: number;
  /** Query heads per K/V head (1 for K). */
  groups: number;
  scale: number;
}

export const SPLIT_HEADS = 'MoloraSplitHeads';
export const MERGE_HEADS = 'MoloraMergeHeads';

/**
 * split: x[B·T, KV·G·d] → out[B·KV, T·G, d], each d-vector rotated by RoPE (+θ), times scale;
 * cos and sin are [B·T, 1, d] tables whose halves are equal (Rope.tables).
 * merge: the inverse layout change and rotation (−θ), times scale. Each is the other's gradient
 * (a scaled orthogonal map).
 */
function ropeHeads(x: Float32Array, cos: Float32Array, sin: Float32Array, out: Float32Array,
  merge: boolean, B: number, T: number, KV: number, G: number, d: number, scale: number): void {
  const half = d >> 1;
  const sign = merge ? -scale : scale;
  const HD = KV * G * d;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const row = b * T + t;
      const tab = row * d;
      for (let kv = 0; kv < KV; kv++) {
        for (let g = 0; g < G; g++) {
          const tokenMajor = row * HD + (kv * G + g) * d;
          const headMajor = (((b * KV + kv) * T + t) * G + g) * d;
          const i = merge ? headMajor : tokenMajor;
          const o = merge ? tokenMajor : headMajor;
          // rotate_half: (a, c) → (a·cos − c·sin, c·cos + a·sin) for the pair (j, j + d/2), whose
          // angles are equal (the tables are cat(angles, angles)).
          for (let j = 0; j < half; j++) {
            const a = x[i + j]!;
            const c = x[i + j + half]!;
            const cs = cos[tab + j]! * scale;
            const sn = sin[tab + j]! * sign;
            out[o + j] = a * cs - c * sn;
            out[o + j + half] = c * cs + a * sn;
          }
        }
      }
    }
  }
}

function headsPlan(merge: boolean) {
  return (shapes: number[][], attrs: tf.NamedAttrMap): JsPlan => {
    const { batch: B, kvHeads: KV, groups: G, scale } = attrs as unknown as HeadsAttrs;
    const [xs, cs, ss] = shapes as [number[], number[] | undefined, number[] | undefined];
    const d = merge ? xs[2]! : xs[1]! / (KV * G);
    const T = merge ? xs[1]! / G : xs[0]! / B;
    const name = merge ? 'mergeHeads' : 'splitHeads';
    if (!Number.isInteger(d) || !Number.isInteger(T) || (merge ? xs[0] !== B * KV : xs.length !== 2)) {
      throw new Error(`${name}: x [${xs}] does not fit batch ${B}, ${KV} K/V heads × ${G}`);
    }
    if (!cs || !ss || prod(cs) !== B * T * d || prod(ss) !== B * T * d) {
      throw new Error(`${name}: RoPE tables [${cs}] and [${ss}] are not [${B * T}, 1, ${d}]`);
    }
    return {
      shape: merge ? [B * T, KV * G * d] : [B * KV, T * G, d],
      compute: ([x, cos, sin], out) => ropeHeads(x!, cos!, sin!, out, merge, B, T, KV, G, d, scale),
    };
  };
}

interface JsPlan {
  shape: number[];
  compute: (inputs: Float32Array[], out: Float32Array) => void;
}

/** The cpu backend's tensor store and output maker (its typings are not re-exported by tfjs). */
interface CpuBackend {
  data: { get(dataId: object): { values?: unknown } };
  makeTensorInfo(shape: number[], dtype: 'float32', values: Float32Array): Info;
}

/**
 * A float32 kernel written in JS, for the backends whose tensors JS can address in place: one
 * pass where a chain of tfjs ops would each cost a launch, a pass over memory and, under a
 * gradient tape, 10-30 µs of bookkeeping. JS streams memory ~4x slower than wasm's kernels, so
 * this pays only for chains (RoPE: 0.35 ms against 0.9), never for a lone copy or product.
 * ops.ts falls back to stock ops on other backends.
 */
function jsKernels(kernelName: string, plan: (shapes: number[][], attrs: tf.NamedAttrMap) => JsPlan): tf.KernelConfig[] {
  // Inputs come as an array: tfjs's saveAllInputs (the gradient's way to keep them) needs one.
  const args = (inputs: tf.NamedTensorInfoMap) => {
    const ts = Object.values(inputs) as Info[];
    for (const t of ts) if (t.dtype !== 'float32') throw new Error(`${kernelName} needs float32, got ${t.dtype} [${t.shape}]`);
    return ts;
  };
  return [
    wasmKernel(kernelName, ({ inputs, backend, attrs }) => {
      const ts = args(inputs);
      const { shape, compute } = plan(ts.map((t) => t.shape), attrs);
      const out = backend.makeOutput(shape, 'float32');
      // Views taken after makeOutput: an allocation can grow the heap and detach older views.
      compute(ts.map((t) => backend.typedArrayFromHeap(t) as Float32Array), backend.typedArrayFromHeap(out) as Float32Array);
      return out;
    }),
    {
      kernelName,
      backendName: 'cpu',
      kernelFunc: ({ inputs, backend, attrs }) => {
        const be = backend as unknown as CpuBackend;
        const ts = args(inputs);
        const { shape, compute } = plan(ts.map((t) => t.shape), attrs ?? {});
        const out = new Float32Array(prod(shape));
        compute(ts.map((t) => be.data.get(t.dataId).values as Float32Array), out);
        return be.makeTensorInfo(shape, 'float32', out);
      },
    },
  ];
}

const MOLORA_KERNELS: tf.KernelConfig[] = [
  ...jsKernels(SPLIT_HEADS, headsPlan(false)),
  ...jsKernels(MERGE_HEADS, headsPlan(true)),
];

// ---------------------------------------------------------------- gradients

function transposeT(t: tf.Tensor): tf.Tensor {
  const perm = t.shape.map((_, i) => i);
  perm[perm.length - 1] = perm.length - 2;
  perm[perm.length - 2] = perm.length - 1;
  return tf.transpose(t, perm);
}

/** Sum a broadcast gradient back down to the input's shape (batch dims only). */
function reduceTo(g: tf.Tensor, shape: number[]): tf.Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  const lead = g.shape.length - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.shape.length - 2; i++) {
    if (i < lead || shape[i - lead] === 1) axes.push(i);
  }
  return tf.reshape(axes.length ? tf.sum(g, axes) : g, shape);
}

/** [..., M, K] -> [prod(...)*M, K]. */
function rows(t: tf.Tensor): tf.Tensor2D {
  return tf.reshape(t, [-1, t.shape[t.rank - 1]!]);
}

/**
 * C = op(A) op(B): dA = g op(B)ᵀ, or op(B) gᵀ when A is transposed; dB = op(A)ᵀ g, or gᵀ op(A)
 * when B is. Written with flags, one product each and no explicit transposes: the wasm kernel
 * above picks the cheapest way to materialise them, and on tfjs-node they are native.
 */
const batchMatMulGrad: tf.GradConfig = {
  kernelName: tf.BatchMatMul,
  inputsToSave: ['a', 'b'],
  gradFunc: (dy, saved, attrs) => {
    const [a, b] = saved as [tf.Tensor, tf.Tensor];
    const { transposeA: tA, transposeB: tB } = attrs as unknown as tf.BatchMatMulAttrs;
    const g = dy as tf.Tensor;
    const bShared = prod(b.shape.slice(0, -2)) === 1;
    return {
      a: () => reduceTo(tA ? tf.matMul(b, g, tB, true) : tf.matMul(g, b, false, !tB), a.shape),
      b: () => {
        // A weight shared over the batch: one 2-D product over all rows.
        if (bShared && a.rank > 2) {
          const opA = rows(tA ? transposeT(a) : a);
          return tf.reshape(tB ? tf.matMul(rows(g), opA, true, false) : tf.matMul(opA, rows(g), true, false), b.shape);
        }
        return reduceTo(tB ? tf.matMul(g, a, true, tA) : tf.matMul(a, g, !tA, false), b.shape);
      },
    };
  },
};

/**
 * x gathered along axis with batchDims: dx[b, o, idx[b, i], s] += dy[b, o, i, s], one segment
 * sum over the rows of dy for any axis and batchDims.
 */
const gatherGrad: tf.GradConfig = {
  kernelName: tf.GatherV2,
  inputsToSave: ['x', 'indices'],
  gradFunc: (dy, saved, attrs) => {
    const [x, indices] = saved as [tf.Tensor, tf.Tensor];
    const { axis, batchDims } = attrs as unknown as tf.GatherV2Attrs;
    return {
      x: () => {
        const ax = tf.util.parseAxisParam(axis, x.shape)[0]!;
        const bd = batchDims < 0 ? batchDims + indices.rank : batchDims;
        const batch = prod(x.shape.slice(0, bd));
        const outer = prod(x.shape.slice(bd, ax));
        const dim = x.shape[ax]!;
        const slice = prod(x.shape.slice(ax + 1));
        const n = indices.size / batch;
        const idx = tf.reshape(indices, [batch, 1, n]);
        const rowBase = tf.mul(tf.reshape(tf.range(0, batch * outer, 1, 'int32'), [batch, outer, 1]), tf.scalar(dim, 'int32'));
        const ids = tf.reshape(tf.add(rowBase, idx), [-1]);
        const seg = tf.unsortedSegmentSum(tf.reshape(dy as tf.Tensor, [-1, slice]), ids as tf.Tensor1D, batch * outer * dim);
        return tf.reshape(seg, x.shape);
      },
      indices: () => tf.zerosLike(indices),
    };
  },
};

/** values = x[..., indices]: dx scatters dvalues back; the indices output has no gradient. */
const topKGrad: tf.GradConfig = {
  kernelName: tf.TopK,
  inputsToSave: ['x'],
  outputsToSave: [false, true],
  gradFunc: (dys, saved) => {
    const [x, indices] = saved as [tf.Tensor, tf.Tensor];
    const dValues = (dys as tf.Tensor[])[0]!;
    return {
      x: () => {
        const n = x.shape[x.rank - 1]!;
        const k = indices.shape[indices.rank - 1]!;
        const rowsN = x.size / n;
        const base = tf.mul(tf.reshape(tf.range(0, rowsN, 1, 'int32'), [rowsN, 1]), tf.scalar(n, 'int32'));
        const ids = tf.reshape(tf.add(base, tf.reshape(indices, [rowsN, k])), [-1]);
        return tf.reshape(tf.unsortedSegmentSum(tf.reshape(dValues, [-1]), ids as tf.Tensor1D, x.size), x.shape);
      },
    };
  },
};

/** out = x[indices]: dx = scatter(indices, dy), which sums repeated indices. */
const gatherNdGrad: tf.GradConfig = {
  kernelName: tf.GatherNd,
  inputsToSave: ['params', 'indices'],
  gradFunc: (dy, saved) => {
    const [params, indices] = saved as [tf.Tensor, tf.Tensor];
    return {
      params: () => tf.scatterND(indices, dy as tf.Tensor, params.shape),
      indices: () => tf.zerosLike(indices),
    };
  },
};

/**
 * out[loc] = x[begin + loc * strides] over the dense slice shape: dx adds dy back at those
 * positions. The positions are computed in JS, one per element of dy.
 */
const stridedSliceGrad: tf.GradConfig = {
  kernelName: tf.StridedSlice,
  inputsToSave: ['x'],
  gradFunc: (dy, saved, attrs) => {
    const [x] = saved as [tf.Tensor];
    const a = attrs as unknown as tf.StridedSliceAttrs;
    return {
      x: () => {
        const info = tf.slice_util.sliceInfo(x.shape, a.begin, a.end, a.strides, a.beginMask, a.endMask,
          a.ellipsisMask, a.newAxisMask, a.shrinkAxisMask);
        // The dense slice shape (x's rank, before shrunk axes are dropped): dy in that layout.
        const shape = tf.slice_util.computeOutShape(info.begin, info.end, info.strides);
        const xStrides = [...tf.util.computeStrides(x.shape), 1];
        const ids = new Int32Array(prod(shape));
        const loc = shape.map(() => 0);
        for (let i = 0; i < ids.length; i++) {
          let flat = 0;
          for (let d = 0; d < shape.length; d++) flat += (info.begin[d]! + loc[d]! * info.strides[d]!) * xStrides[d]!;
          ids[i] = flat;
          for (let d = shape.length - 1; d >= 0 && ++loc[d]! === shape[d]; d--) loc[d] = 0;
        }
        const seg = tf.unsortedSegmentSum(tf.reshape(dy as tf.Tensor, [-1]), tf.tensor1d(ids, 'int32'), x.size);
        return tf.reshape(seg, x.shape);
      },
    };
  },
};

/** Split and merge are each other's gradient, with the same tables and scale. */
function headsGrad(kernelName: string, inverse: string): tf.GradConfig {
  return {
    kernelName,
    // Inputs [x, cos, sin] (an array, so saveAllInputs applies): the tables come back saved.
    saveAllInputs: true,
    gradFunc: (dy, saved, attrs) => ({
      0: () => tf.engine().runKernel(inverse, [dy as tf.Tensor, saved[1]!, saved[2]!] as unknown as tf.NamedTensorMap, attrs) as tf.Tensor,
    }),
  };
}

const GRADIENTS: tf.GradConfig[] = [batchMatMulGrad, gatherGrad, topKGrad, gatherNdGrad, stridedSliceGrad,
  headsGrad(SPLIT_HEADS, MERGE_HEADS), headsGrad(MERGE_HEADS, SPLIT_HEADS)];
