import { benchForward, type BenchForwardOptions } from '../bench/forward.js';
import { benchTrain, type BenchTrainOptions } from '../bench/train.js';

export async function runBenchForward(o: BenchForwardOptions & { json?: boolean }): Promise<void> {
  const r = benchForward(o);
  if (o.json) {
    process.stdout.write(JSON.stringify(r) + '\n');
    return;
  }
  process.stdout.write(
    [
      `backend: ${r.backend}`,
      `prefill: ${r.prefill_tokens_per_s.toFixed(0)} tokens/s (${r.prefill_ms.toFixed(1)} ms for ${o.batch}×${o.seq})`,
      `decode with KV cache: ${r.decode_cached_tokens_per_s.toFixed(1)} tokens/s`,
      `decode recomputing the prefix: ${r.decode_recompute_tokens_per_s.toFixed(1)} tokens/s`,
      `cache speed-up over ${o.newTokens} tokens: ${r.cache_speedup.toFixed(1)}×`,
    ].join('\n') + '\n',
  );
}

export async function runBenchTrain(o: BenchTrainOptions & { json?: boolean }): Promise<void> {
  const r = benchTrain(o);
  if (o.json) {
    process.stdout.write(JSON.stringify(r) + '\n');
    return;
  }
  process.stdout.write(
    [
      `backend: ${r.backend}`,
      `LoRA step: ${r.step_ms.toFixed(1)} ms median, ${r.tokens_per_s.toFixed(0)} tokens/s (${r.trainable_params} trainable parameters)`,
      `achieved ${r.achieved_gflops.toFixed(2)} GFLOP/s of matmul work; plain matMul on these shapes: ${r.matmul_gflops.toFixed(2)} GFLOP/s (${(100 * r.efficiency).toFixed(0)}%)`,
    ].join('\n') + '\n',
  );
}
