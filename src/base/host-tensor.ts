/** A weight copied to the host in checkpoint orientation, as an export writes it. */
export interface HostTensor {
  shape: number[];
  data: Float32Array;
}
