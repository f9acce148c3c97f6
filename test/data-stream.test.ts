import { createWriteStream, statSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, expect, it } from 'vitest';
import { loadDataset } from '../src/data/dataset.js';
import { byteEncoder } from './fixtures/csv/byte-encoder.js';
import { tempDir } from './helpers.js';

const tmp = tempDir('molora-stream-');
afterAll(tmp.cleanup);

// A full collection before each heap reading, so it measures live data rather than garbage.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const MB = 1 << 20;

/** Writes ~`bytes` of CSV; returns the row count and the UTF-8 bytes of all texts. */
async function writeCsv(path: string, bytes: number): Promise<{ rows: number; textBytes: number }> {
  const out = createWriteStream(path);
  out.write('\ufeffid,text\r\n');
  const filler = 'Ünïcødé, "quoted" text with commas\r\nand line breaks — 日本語 '.repeat(6);
  let rows = 0;
  let textBytes = 0;
  let written = 0;
  while (written < bytes) {
    const text = `${rows} ${filler}`;
    const line = `${rows},"${text.replaceAll('"', '""')}"\r\n`;
    textBytes += Buffer.byteLength(text);
    written += Buffer.byteLength(line);
    rows++;
    if (!out.write(line)) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
  return { rows, textBytes };
}

it('streams a 50 MB CSV with bounded heap', async () => {
  const path = join(tmp.dir, 'big.csv');
  const { rows, textBytes } = await writeCsv(path, 50 * MB);
  const size = statSync(path).size;

  gc();
  const base = process.memoryUsage();
  let peakHeap = 0;
  let peakBuffers = 0;
  let nextSample = 0;
  const { train, stats } = await loadDataset({
    path,
    encoder: byteEncoder,
    tokenizerId: 'bytes',
    seqLen: 256,
    seed: 0,
    onProgress: (read) => {
      if (read < nextSample) return;
      nextSample = read + 5 * MB;
      gc();
      const m = process.memoryUsage();
      peakHeap = Math.max(peakHeap, m.heapUsed - base.heapUsed);
      peakBuffers = Math.max(peakBuffers, m.arrayBuffers - base.arrayBuffers);
    },
  });

  expect(stats).toMatchObject({ rowsRead: rows, examples: rows, emptySkipped: 0, badRowsSkipped: 0 });
  expect(train.tokenCount).toBe(textBytes + 2 * rows);
  // Live JS heap is about one batch (a 1 MiB chunk, decoded and parsed), whatever the file size.
  expect(size).toBeGreaterThan(50 * MB);
  expect(peakHeap).toBeLessThan(16 * MB);
  // Off-heap memory is the token store itself (2 bytes a token, ×1.5 growth slack) plus a few chunks.
  expect(peakBuffers).toBeLessThan(train.tokenCount * 2 * 1.5 + 16 * MB);
}, 60_000);
