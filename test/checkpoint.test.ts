import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openCheckpoint } from '../src/base/checkpoint.js';
import { SafetensorsError, writeSafetensors, type TensorToWrite } from '../src/base/safetensors.js';
import { MODEL_FIXTURES, tempDir } from './helpers.js';

const tmp = tempDir('molora-ckpt-');
afterAll(tmp.cleanup);
let dirCount = 0;

function freshDir(): string {
  const dir = join(tmp.dir, `m${dirCount++}`);
  mkdirSync(dir);
  return dir;
}

const f32 = (...v: number[]): TensorToWrite => ({ dtype: 'F32', shape: [v.length], data: Float32Array.from(v) });

/** A two-shard folder: `a` and `b` in shard 1, `c` in shard 2, with the index listing them. */
function sharded(weightMap?: Record<string, string>): string {
  const dir = freshDir();
  writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), { a: f32(1, 2), b: f32(3) }, { format: 'pt' });
  writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), { c: f32(4, 5, 6) }, { format: 'pt' });
  const map = weightMap ?? { a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' };
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 24 }, weight_map: map }));
  return dir;
}

/** The SafetensorsError `fn` throws (failing the test if it throws anything else or nothing). */
function errorOf(fn: () => unknown): SafetensorsError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SafetensorsError);
    return err as SafetensorsError;
  }
  throw new Error('expected a SafetensorsError');
}

describe('openCheckpoint', () => {
  it('opens a single model.safetensors', () => {
    const dir = freshDir();
    writeSafetensors(join(dir, 'model.safetensors'), { w: f32(1, 2), ids: { dtype: 'I64', shape: [1], data: new Int32Array([9]) } });
    const ckpt = openCheckpoint(dir);
    expect(ckpt.dir).toBe(dir);
    expect(ckpt.keys().sort()).toEqual(['ids', 'w']);
    expect(ckpt.has('w')).toBe(true);
    expect(ckpt.has('nope')).toBe(false);
    expect(ckpt.fileOf('w')).toBe(join(dir, 'model.safetensors'));
    expect(ckpt.info('w')).toMatchObject({ name: 'w', dtype: 'F32', shape: [2] });
    expect(ckpt.read('w')).toEqual({ dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) });
    expect(ckpt.read('ids').data).toEqual(Int32Array.from([9]));
    expect(() => ckpt.read('nope')).toThrow(`${dir}: tensor 'nope': not in the checkpoint`);
    ckpt.close();
    expect(() => ckpt.read('w')).toThrow(/checkpoint was closed/);
  });

  it('opens shards through the index weight_map', () => {
    const dir = sharded();
    const ckpt = openCheckpoint(dir);
    expect(ckpt.keys()).toEqual(['a', 'b', 'c']);
    expect(ckpt.fileOf('b')).toBe(join(dir, 'model-00001-of-00002.safetensors'));
    expect(ckpt.fileOf('c')).toBe(join(dir, 'model-00002-of-00002.safetensors'));
    expect(Array.from(ckpt.read('b').data)).toEqual([3]);
    expect(Array.from(ckpt.read('c').data)).toEqual([4, 5, 6]);
    expect(ckpt.info('c').shape).toEqual([3]);
  });

  it('prefers model.safetensors when an index is there too, as transformers does', () => {
    const dir = sharded();
    writeSafetensors(join(dir, 'model.safetensors'), { only: f32(7) });
    expect(openCheckpoint(dir).keys()).toEqual(['only']);
  });

  it('opens the sharded fixture model', () => {
    const ckpt = openCheckpoint(join(MODEL_FIXTURES, 'llama-sharded'));
    const files = new Set(ckpt.keys().map((k) => ckpt.fileOf(k)));
    expect(files.size).toBe(2);
    for (const k of ckpt.keys()) expect(ckpt.read(k).data).toBeInstanceOf(Float32Array);
  });

  it('refuses a shard listed in the index that is missing', () => {
    const dir = sharded({ a: 'model-00001-of-00002.safetensors', z: 'model-00003-of-00003.safetensors' });
    const err = errorOf(() => openCheckpoint(dir));
    expect(err.file).toBe(join(dir, 'model.safetensors.index.json'));
    expect(err.tensor).toBe('z');
    expect(err.message).toMatch(/model\.safetensors\.index\.json: tensor 'z': weight_map names shard 'model-00003-of-00003\.safetensors', which is missing/);
  });

  it('refuses a weight_map entry whose shard lacks the tensor', () => {
    const dir = sharded({ a: 'model-00001-of-00002.safetensors', c: 'model-00001-of-00002.safetensors' });
    const err = errorOf(() => openCheckpoint(dir));
    expect(err.file).toBe(join(dir, 'model-00001-of-00002.safetensors'));
    expect(err.message).toMatch(/model-00001-of-00002\.safetensors: tensor 'c': is listed for this shard in model\.safetensors\.index\.json but the shard does not hold it/);
  });

  it('refuses a shard name that leaves the model folder', () => {
    const dir = sharded({ a: '../elsewhere.safetensors' });
    expect(() => openCheckpoint(dir)).toThrow(/tensor 'a': weight_map names shard '\.\.\/elsewhere\.safetensors', which is outside the model folder/);
  });

  it('refuses an index without a weight_map, or one that is not JSON', () => {
    const dir = freshDir();
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{"metadata": {}}');
    expect(() => openCheckpoint(dir)).toThrow(/model\.safetensors\.index\.json: has no "weight_map" object/);
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{"weight_map": ');
    expect(() => openCheckpoint(dir)).toThrow(/model\.safetensors\.index\.json: cannot read the shard index/);
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{"weight_map": {"a": 3}}');
    expect(() => openCheckpoint(dir)).toThrow(/tensor 'a': weight_map entry is not a file name/);
  });

  it('refuses pickle weights and says to convert them', () => {
    const dir = freshDir();
    writeFileSync(join(dir, 'config.json'), '{}');
    writeFileSync(join(dir, 'pytorch_model.bin'), 'PK\x03\x04 not loaded');
    const err = errorOf(() => openCheckpoint(dir));
    expect(err.file).toBe(dir);
    expect(err.message).toMatch(/has only pickle weights \(pytorch_model\.bin\), which molora refuses to load .*: convert them to safetensors/);
  });

  it('says when there is no weights file at all, or only stray safetensors', () => {
    const dir = freshDir();
    writeFileSync(join(dir, 'config.json'), '{}');
    expect(() => openCheckpoint(dir)).toThrow(`${dir}: no weights file: expected model.safetensors or model.safetensors.index.json`);
    writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), { a: f32(1) });
    expect(() => openCheckpoint(dir)).toThrow(/has model-00001-of-00002\.safetensors but neither model\.safetensors nor model\.safetensors\.index\.json/);
    expect(() => openCheckpoint(join(dir, 'absent'))).toThrow(/absent: is not a folder/);
  });

  it('passes on a damaged weights file as a SafetensorsError naming it', () => {
    const dir = freshDir();
    writeFileSync(join(dir, 'model.safetensors'), new Uint8Array([1, 2, 3]));
    const err = errorOf(() => openCheckpoint(dir));
    expect(err.file).toBe(join(dir, 'model.safetensors'));
    expect(err.message).toMatch(/truncated/);
  });
});
