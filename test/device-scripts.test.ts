import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';

// scripts/device/summarize.py turns the GPU machine's runs into the figures issue 10 reports; a
// wrong grouping there would misreport a ratio, so its arithmetic is checked on made-up runs.
const DIR = join(import.meta.dirname, '..', 'scripts', 'device');
const SUMMARIZE = join(DIR, 'summarize.py');
const tmp = tempDir();
afterAll(() => tmp.cleanup());

const SHAPE = { layers: 30, hidden: 576, heads: 9, kvHeads: 3, ffn: 1536, vocab: 49152 };
const SHAPE_FLAGS = '--layers 30 --hidden 576 --heads 9 --kv-heads 3 --ffn 1536 --vocab 49152';

function record(name: string, stdout: object | null, args: string, rc = 0, gpuSamples = ''): string {
  const out = join(tmp.dir, `${name}.out`);
  const gpu = join(tmp.dir, `${name}.gpu`);
  writeFileSync(out, stdout ? `some log line\n${JSON.stringify(stdout)}\n` : '');
  writeFileSync(join(tmp.dir, `${name}.err`), 'RuntimeError: out of memory\n');
  writeFileSync(gpu, gpuSamples);
  return execFileSync('python3', [SUMMARIZE, 'record', '--name', name, '--rc', String(rc), '--limit', '90', '--stdout', out,
    '--stderr', join(tmp.dir, `${name}.err`), '--gpu-samples', gpu, '--gpu-base', '500', '--args', args], { encoding: 'utf8' });
}

describe('scripts/device/summarize.py', () => {
  it('records a run with its JSON line, exit status, flags and nvidia-smi peak above the idle reading', () => {
    const line = JSON.parse(record('peer-float32-A', { peer: 'pytorch-2.11', dtype: 'float32', tokens_per_s: 1000, step_ms: 2048 }, `x.py ${SHAPE_FLAGS} --batch 8 --seq 256`, 0, '600\n2500\n900\n'));
    expect(line).toMatchObject({ run: 'peer-float32-A', rc: 0, tokens_per_s: 1000, ...SHAPE, batch: 8, seq: 256, peak_gpu_smi_mib: 2000 });
    const failed = JSON.parse(record('peft-bfloat16-B', null, 'y.py', 1));
    expect(failed).toMatchObject({ run: 'peft-bfloat16-B', rc: 1, error: 'RuntimeError: out of memory' });
  });

  it('puts each run against PEFT float32 on its own shape and batch, and states the two goals', () => {
    const runs = [
      record('wasm-ref-A-small', { ...SHAPE, batch: 2, seq: 128, backend: 'wasm', tokens_per_s: 40, step_ms: 6400, peak_heap_mib: 900 }, ''),
      record('molora-webgpu-A', { ...SHAPE, batch: 8, seq: 256, backend: 'webgpu', tokens_per_s: 3000, step_ms: 683, peak_gpu_buffers_mib: 4000 }, '', 0, '3000\n7000\n'),
      record('molora-webgpu-A-small', { ...SHAPE, batch: 2, seq: 128, backend: 'webgpu', tokens_per_s: 1000, step_ms: 256 }, ''),
      record('peft-float32-A', { peer: 'peft-0.21', dtype: 'float32', ...SHAPE, batch: 8, seq: 256, tokens_per_s: 12000, step_ms: 170, peak_gpu_mib: 3000 }, ''),
    ].join('');
    writeFileSync(join(tmp.dir, 'results.jsonl'), runs + '{"run":"molora-webgpu-B","skipped":"out of time (40s left, needs 120s)"}\n');
    writeFileSync(join(tmp.dir, 'parity.json'), JSON.stringify({ backend: 'webgpu', tolerance: 1e-4, pass: true, fixtures: [{ name: 'gpt2', pass: true, cases: [{ case: 0, positions: 14, max_abs_diff: 3e-6, pass: true }] }] }));
    writeFileSync(join(tmp.dir, 'env.txt'), '== Dawn adapter\n{"adapter":{"vendor":"nvidia","architecture":"hopper","description":"NVIDIA H100","software":false}}\n');
    writeFileSync(join(tmp.dir, 'check.txt'), 'numpy float64 reference: max |Δ logprob| = 6.70e-06 over 50 tokens\nOK\nexit status 0\n');
    const table = execFileSync('python3', [SUMMARIZE, 'table', '--results', join(tmp.dir, 'results.jsonl'), '--parity', join(tmp.dir, 'parity.json'),
      '--env', join(tmp.dir, 'env.txt'), '--check', join(tmp.dir, 'check.txt'), '--backend', 'webgpu'], { encoding: 'utf8' });
    expect(table).toContain('Dawn adapter: nvidia hopper (NVIDIA H100)');
    expect(table).toContain('parity on webgpu: 1 cases of 1 fixtures, worst max |Δ| 3.00e-06 against 0.0001: PASS');
    expect(table).toContain('check_tiny_llama.py: numpy float64 reference: max |Δ logprob| = 6.70e-06 over 50 tokens | OK | exit status 0');
    expect(table).toMatch(/\| molora-webgpu-A \| molora webgpu \| nvidia hopper \(NVIDIA H100\) \| float32 \| 30L d576 9\/3h F1536 V49152, 8×256 \| 3000 \| 683\.0 \| 0\.25 \| 6500 \| 4000 \(buffers\) \|/);
    expect(table).toContain('| molora-webgpu-B | | | | ? | – | – | – | – | – | out of time (40s left, needs 120s) |');
    expect(table).toContain('- molora webgpu ÷ PEFT float32 (30L d576 9/3h F1536 V49152, 8×256): 0.25× (goal ≥ 0.25×)');
    expect(table).toContain('- molora webgpu ÷ molora wasm, same shape and batch (30L d576 9/3h F1536 V49152, 2×128): 25.0× (goal ≥ 20×)');
  });

  it('run.sh and build.sh parse', () => {
    for (const f of ['run.sh', 'build.sh']) execFileSync('bash', ['-n', join(DIR, f)]);
    expect(readFileSync(join(DIR, 'run.sh'), 'utf8')).toContain('DEVICE_BUDGET_S');
  });
});
