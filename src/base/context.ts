import type * as tf from '@tensorflow/tfjs';
import type { Rng } from './rng.js';

/**
 * What one forward pass carries down to plug-ins (adapters, gates, routers): the batch layout,
 * whether it trains, which tokens are real, and a place to leave auxiliary losses.
 */
export interface ForwardContext {
  batch: number;
  seq: number;
  training: boolean;
  /** [B*T, 1] float: 1 for real tokens, 0 for padding. */
  tokenMask: tf.Tensor2D;
  /** The same mask on the host, [B*T] (plans that need it must not read a GPU tensor back mid-pass). */
  realTokens: Float32Array;
  /** Auxiliary losses (gate balance, router losses) added by plug-ins during the pass. */
  aux: { name: string; value: tf.Scalar }[];
  /** Randomness for dropout and noisy routing; null means deterministic. */
  rng: Rng | null;
  /** The base alone: linear hooks (adapters, gates) and input hooks stay off (a router's reading pass). */
  plain?: boolean;
}
