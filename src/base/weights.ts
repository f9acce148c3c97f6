import * as tf from '@tensorflow/tfjs';
import type { Checkpoint } from './checkpoint.js';

export class WeightError extends Error {}

/** Where an architecture builder gets its frozen tensors from: a checkpoint, or fresh init. */
export interface WeightSource {
  has(key: string): boolean;
  /** The tensor stored under `key`, checked against the shape the config implies. */
  get(key: string, shape: number[]): tf.Tensor;
  /** The same values on the host (to cut a table into blocks before any of it reaches a GPU). */
  read(key: string, shape: number[]): Float32Array;
}

/**
 * Reads tensors out of a checkpoint with the checks a loader owes its user: a missing tensor or
 * a wrong shape is an error naming the file and the tensor; keys nobody asked for are reported.
 */
export class CheckpointWeights implements WeightSource {
  private readonly used = new Set<string>();

  constructor(readonly ckpt: Checkpoint) {}

  has(key: string): boolean {
    return this.ckpt.has(key);
  }

  get(key: string, shape: number[]): tf.Tensor {
    return tf.tensor(this.read(key, shape), shape, 'float32');
  }

  read(key: string, shape: number[]): Float32Array {
    if (!this.ckpt.has(key)) {
      throw new WeightError(`${this.ckpt.dir}: tensor '${key}' is required by config.json but missing from the checkpoint`);
    }
    const t = this.ckpt.read(key);
    if (t.shape.length !== shape.length || t.shape.some((d: number, i: number) => d !== shape[i])) {
      throw new WeightError(
        `${this.ckpt.fileOf(key)}: tensor '${key}' has shape [${t.shape}], config.json implies [${shape}]`,
      );
    }
    if (!(t.data instanceof Float32Array)) {
      throw new WeightError(`${this.ckpt.fileOf(key)}: tensor '${key}' has dtype ${t.dtype}, expected a float type`);
    }
    this.used.add(key);
    return t.data;
  }

  /** Keys in the checkpoint that the model did not read (buffers and unknown extras). */
  unused(): string[] {
    return this.ckpt.keys().filter((k: string) => !this.used.has(k));
  }
}
