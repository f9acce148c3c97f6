import * as tf from '@tensorflow/tfjs';
import { heapUsage } from '../base/memory.js';

const MiB = 2 ** 20;

/** The memory figures `bench train --json` reports. */
export interface PeakMemory {
  /**
   * The process's peak resident set (getrusage's ru_maxrss): its high-water mark since it
   * started, so it covers the model build and the matMul probe as well as the steps.
   */
  peak_rss_mib: number;
  /** The wasm heap's size; wasm memory only grows, so this is its peak. null off wasm. */
  peak_heap_mib: number | null;
  /**
   * GPU buffers the backend holds, free pooled ones included (tfjs-backend-webgpu's
   * numBytesAllocatedInGPU), the largest of the samples taken. null where the backend reports none.
   */
  peak_gpu_buffers_mib: number | null;
  /** Why a figure above is null. */
  memory_note?: string;
}

/** The webgpu backend's allocated-buffer bytes from tf.memory(), or null where it has none. */
export function gpuBufferBytes(info: tf.MemoryInfo): number | null {
  const n = (info as tf.MemoryInfo & { numBytesAllocatedInGPU?: unknown }).numBytesAllocatedInGPU;
  return typeof n === 'number' ? n : null;
}

/**
 * Peak memory over a benchmark. The RSS and wasm-heap peaks are kept by the OS and by wasm's
 * grow-only memory; GPU buffers are sampled, so call sample() where they peak (after each step,
 * before anything is disposed).
 */
export class PeakMemorySampler {
  private gpu: number | null = null;

  sample(): void {
    const bytes = gpuBufferBytes(tf.memory());
    if (bytes !== null) this.gpu = Math.max(this.gpu ?? 0, bytes);
  }

  result(): PeakMemory {
    this.sample();
    const backend = tf.getBackend();
    const heap = heapUsage().heapBytes;
    const notes = [
      heap === null ? `no wasm heap on the ${backend} backend` : '',
      this.gpu === null ? `the ${backend} backend reports no GPU buffers` : '',
    ].filter(Boolean);
    return {
      peak_rss_mib: process.resourceUsage().maxRSS / 1024,
      peak_heap_mib: heap === null ? null : heap / MiB,
      peak_gpu_buffers_mib: this.gpu === null ? null : this.gpu / MiB,
      ...(notes.length ? { memory_note: notes.join('; ') } : {}),
    };
  }
}
