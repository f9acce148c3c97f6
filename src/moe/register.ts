import { registerSparseFfn } from '../base/sparse-ffn.js';
import { buildMoEFFN, moeLosses, moeWeightCount, packedExpertTensors } from './checkpoint-layout.js';
import { MoEFFN } from './moe.js';

// Importing this module is what lets src/base load, count and export sparse MoE checkpoints.
registerSparseFfn({
  weightCount: (cfg) => moeWeightCount(cfg.moe!, cfg.hidden),
  reader(cfg, w, linear) {
    const losses = moeLosses(cfg)!;
    return (layer) => buildMoEFFN(cfg, w, layer, linear, losses);
  },
  packedTensors: (ffn) =>
    ffn instanceof MoEFFN && ffn.layout === 'packed'
      ? { tensors: () => packedExpertTensors(ffn), linears: ffn.experts.flatMap((e) => e.linears()) }
      : null,
});
