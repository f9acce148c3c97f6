import { appendFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { METRICS_FILE, MetricsLog, readMetrics } from '../src/train/metrics.js';
import { Progress, fmtDuration } from '../src/train/progress.js';

describe('metrics.jsonl', () => {
  it('a fresh run starts it empty; a resumed run keeps only the steps up to its checkpoint', () => {
    const dir = mkdtempSync(join(tmpdir(), 'molora-metrics-'));
    writeFileSync(join(dir, METRICS_FILE), '{"step": 99, "loss": 1}\n');
    const log = new MetricsLog(dir, null);
    expect(readFileSync(log.path, 'utf8')).toBe('');
    for (let step = 1; step <= 6; step++) {
      log.write({ step, loss: 1 / step, lr: 0.1, grad_norm: 2, tokens_per_s: 100 });
      if (step % 3 === 0) log.write({ step, val_loss: 0.5, perplexity: Math.exp(0.5) });
    }
    appendFileSync(log.path, '{"step": 7, "lo'); // torn by a crash mid-write

    const resumed = new MetricsLog(dir, 3);
    resumed.write({ step: 4, loss: 0.25, lr: 0.1, grad_norm: 2, tokens_per_s: 100 });
    const entries = readMetrics(resumed.path);
    expect(entries.map((e) => [e.step, 'val_loss' in e])).toEqual([
      [1, false],
      [2, false],
      [3, false],
      [3, true],
      [4, false],
    ]);
    expect(readFileSync(resumed.path, 'utf8').split('\n').every((l) => l === '' || JSON.parse(l))).toBe(true);
  });
});

class Capture extends Writable {
  text = '';
  isTTY = false;
  override _write(chunk: Buffer, _enc: string, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

describe('progress', () => {
  it('off a TTY prints plain lines every N steps and at the end; messages always', () => {
    const out = new Capture();
    const p = new Progress({ total: 10, start: 2, stream: out as unknown as NodeJS.WriteStream, everySteps: 4, everySeconds: 3600 });
    for (let step = 3; step <= 10; step++) p.update({ step, loss: 2 / step, lr: 3e-4, tokens: step === 3 ? 2000 : 1000, seconds: 1 });
    p.log('eval step 10 | val_loss 0.1000');
    p.stop();
    const lines = out.text.trim().split('\n');
    expect(lines.map((l) => l.split(' |')[0])).toEqual(['step 6/10', 'step 10/10', 'eval step 10 | val_loss 0.1000'.split(' |')[0]]);
    expect(lines[0]).toMatch(/^step 6\/10 \| loss 0\.3333 \| lr 3\.00e-4 \| 1729 tok\/s \| ETA \d+s$/);
  });

  it('on a TTY draws a bar with step, loss, lr and tok/s, and prints messages above it', () => {
    const out = new Capture();
    out.isTTY = true;
    const p = new Progress({ total: 10, start: 0, stream: out as unknown as NodeJS.WriteStream });
    p.update({ step: 3, loss: 0.5, lr: 1e-3, tokens: 500, seconds: 0.5 });
    p.log('eval step 3 | val_loss 0.4000');
    p.stop();
    expect(out.text).toContain('eval step 3 | val_loss 0.4000\n');
    const last = out.text.slice(out.text.lastIndexOf('eval step 3'));
    expect(last).toMatch(/ 3\/10 \| loss 0\.5000 \| lr 1\.00e-3 \| 1000 tok\/s \| ETA /);
  });

  it('off prints no progress', () => {
    const out = new Capture();
    const p = new Progress({ total: 3, start: 0, mode: 'off', stream: out as unknown as NodeJS.WriteStream });
    p.update({ step: 3, loss: 1, lr: 1, tokens: 1, seconds: 1 });
    p.stop();
    expect(out.text).toBe('');
  });

  it('formats durations', () => {
    expect([5, 65, 3725, Infinity].map(fmtDuration)).toEqual(['5s', '1m05s', '1h02m', '-']);
  });
});
