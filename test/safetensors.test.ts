import { readFileSync, writeFileSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bf16BitsToF32Bits, f16BitsToF32Bits, f32BitsToBf16Bits, f32BitsToF16Bits, f16ToF32, f32ToF16 } from '../src/base/dtype.js';
import { Rng } from '../src/base/rng.js';
import {
  encodeSafetensors,
  openSafetensors,
  SafetensorsError,
  writeSafetensors,
  type TensorToWrite,
} from '../src/base/safetensors.js';
import { FIXTURES, tempDir } from './helpers.js';

const tmp = tempDir('molora-st-');
afterAll(tmp.cleanup);
let fileCount = 0;

/** Write bytes to a fresh temp file and return its path. */
function tempFile(bytes: Uint8Array): string {
  const path = join(tmp.dir, `f${fileCount++}.safetensors`);
  writeFileSync(path, bytes);
  return path;
}

/** A safetensors file assembled by hand: any header (even invalid) and any data bytes. */
function rawFile(header: unknown, data: Uint8Array = new Uint8Array(0), headerLen?: bigint): Uint8Array {
  const json =
    header instanceof Uint8Array ? header : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, headerLen ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

const f32 = (bits: number) => new Float32Array(new Uint32Array([bits]).buffer)[0]!;
const bitsOf = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0]!;

/** The value of a half, computed from the IEEE definition rather than by bit surgery. */
function halfValue(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  if (exp === 0) return sign * mant * 2 ** -24;
  return sign * 2 ** (exp - 15) * (1 + mant / 1024);
}

describe('F16 and BF16', () => {
  it('decodes every half exactly, including subnormals, signed zeros, infinities and NaN', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const decoded = f16ToF32(all);
    // Collect mismatches rather than calling expect 65536 times: the report stays readable and fast.
    const wrong: string[] = [];
    for (let h = 0; h < 65536; h++) {
      const want = halfValue(h);
      const ok = Number.isNaN(want)
        ? Number.isNaN(decoded[h]!) && f32BitsToF16Bits(f16BitsToF32Bits(h)) === h // payload and sign survive
        : Object.is(decoded[h], want);
      if (!ok) wrong.push(`0x${h.toString(16)} -> ${decoded[h]}, want ${want}`);
    }
    expect(wrong).toEqual([]);
    expect(decoded[0x0001]).toBe(2 ** -24);
    expect(decoded[0x03ff]).toBe(1023 * 2 ** -24);
    expect(decoded[0x7bff]).toBe(65504);
    expect(decoded[0xfc00]).toBe(-Infinity);
    expect(Object.is(decoded[0x8000], -0)).toBe(true);
  });

  it('encodes every half back to itself, and rounds to nearest even between halves', () => {
    const values = f16ToF32(new Uint16Array(65536).map((_, i) => i));
    expect(Array.from(f32ToF16(values))).toEqual(Array.from({ length: 65536 }, (_, i) => i));
    // Between each pair of adjacent positive halves: the midpoint goes to the even one, and one
    // float32 step either side of it goes to the nearer one.
    const wrong: number[] = [];
    for (let h = 0; h < 0x7bff; h++) {
      const mid = (values[h]! + values[h + 1]!) / 2; // exact: halves carry 11 significant bits
      const even = h % 2 === 0 ? h : h + 1;
      if (f32BitsToF16Bits(bitsOf(mid)) !== even) wrong.push(h);
      if (f32BitsToF16Bits(bitsOf(mid) + 1) !== h + 1) wrong.push(h);
      if (mid !== 0 && f32BitsToF16Bits(bitsOf(mid) - 1) !== h) wrong.push(h);
    }
    expect(wrong).toEqual([]);
    expect(f32BitsToF16Bits(bitsOf(65520))).toBe(0x7c00); // ties to even: rounds up to inf
    expect(f32BitsToF16Bits(bitsOf(65519.99))).toBe(0x7bff);
    expect(f32BitsToF16Bits(bitsOf(1e10))).toBe(0x7c00);
    expect(f32BitsToF16Bits(bitsOf(-1e10))).toBe(0xfc00);
    expect(f32BitsToF16Bits(bitsOf(2 ** -25))).toBe(0); // half the smallest subnormal: tie to 0
    expect(f32BitsToF16Bits(bitsOf(-(2 ** -30)))).toBe(0x8000);
    expect(f32BitsToF16Bits(bitsOf(f32(0x00000001)))).toBe(0); // float32 subnormal
    expect(f32BitsToF16Bits(0x7f800001)).toBe(0x7e00); // payload only in dropped bits: still NaN
  });

  it('BF16 is the top half of a float32, rounded to nearest even', () => {
    const wrong: number[] = [];
    for (let b = 0; b < 65536; b++) {
      const bits = bf16BitsToF32Bits(b);
      if (bits !== (b << 16) >>> 0 || f32BitsToBf16Bits(bits) !== b) wrong.push(b);
      const isNaN = (b & 0x7f80) === 0x7f80 && (b & 0x7f) !== 0;
      if (isNaN || (b & 0x7fff) === 0x7f80) continue; // inf has no next value to round towards
      if (f32BitsToBf16Bits((bits | 0x8000) >>> 0) !== (b % 2 === 0 ? b : b + 1)) wrong.push(b);
      if (f32BitsToBf16Bits((bits | 0x8001) >>> 0) !== b + 1) wrong.push(b);
      if (f32BitsToBf16Bits((bits | 0x7fff) >>> 0) !== b) wrong.push(b);
    }
    expect(wrong).toEqual([]);
    expect(f32BitsToBf16Bits(bitsOf(1.00390625))).toBe(0x3f80); // 1 + 2^-8: tie, to even 1.0
    expect(f32BitsToBf16Bits(0x7f7f8000)).toBe(0x7f80); // past the largest finite: inf
    expect(f32BitsToBf16Bits(0x7f800001)).toBe(0x7fc0); // payload only in dropped bits: still NaN
    expect(f32BitsToBf16Bits(0xffc12345)).toBe(0xffc1);
  });
});

describe('writer', () => {
  it('lays out the header and data like the reference library (checked byte by byte)', () => {
    const bytes = encodeSafetensors(
      {
        b: { dtype: 'F32', shape: [2], data: new Float32Array([1, -2]) },
        a: { dtype: 'F32', shape: [1, 2], data: new Float32Array([0.5, 3]) },
        u: { dtype: 'U8', shape: [3], data: new Uint8Array([7, 8, 9]) },
        c: { dtype: 'F16', shape: [], data: new Float32Array([1]) },
        h: { dtype: 'BF16', shape: [1], data: new Float32Array([-2]) },
        i: { dtype: 'I64', shape: [2], data: new BigInt64Array([-1n, 2n ** 40n]) },
        j: { dtype: 'I32', shape: [1], data: new Int32Array([-3]) },
        z: { dtype: 'BOOL', shape: [0, 2], data: new Uint8Array(0) },
      },
      { format: 'pt' },
    );
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = Number(view.getBigUint64(0, true));
    expect(n % 8).toBe(0);
    const header = Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8');
    // Descending dtype order of the reference's enum (I64 > F32 > I32 > BF16 > F16 > U8 > BOOL),
    // then by name; __metadata__ first; compact JSON; spaces up to an 8-byte boundary.
    const want =
      '{"__metadata__":{"format":"pt"},' +
      '"i":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},' +
      '"a":{"dtype":"F32","shape":[1,2],"data_offsets":[16,24]},' +
      '"b":{"dtype":"F32","shape":[2],"data_offsets":[24,32]},' +
      '"j":{"dtype":"I32","shape":[1],"data_offsets":[32,36]},' +
      '"h":{"dtype":"BF16","shape":[1],"data_offsets":[36,38]},' +
      '"c":{"dtype":"F16","shape":[],"data_offsets":[38,40]},' +
      '"u":{"dtype":"U8","shape":[3],"data_offsets":[40,43]},' +
      '"z":{"dtype":"BOOL","shape":[0,2],"data_offsets":[43,43]}}';
    expect(header.trimEnd()).toBe(want);
    expect(header).toBe(want.padEnd(Math.ceil(want.length / 8) * 8, ' '));
    const d = 8 + n;
    expect(bytes.length).toBe(d + 43);
    expect(view.getBigInt64(d, true)).toBe(-1n);
    expect(view.getBigInt64(d + 8, true)).toBe(2n ** 40n);
    expect([view.getFloat32(d + 16, true), view.getFloat32(d + 20, true)]).toEqual([0.5, 3]);
    expect([view.getFloat32(d + 24, true), view.getFloat32(d + 28, true)]).toEqual([1, -2]);
    expect(view.getInt32(d + 32, true)).toBe(-3);
    expect(view.getUint16(d + 36, true)).toBe(0xc000); // bf16 -2
    expect(view.getUint16(d + 38, true)).toBe(0x3c00); // f16 1
    expect(Array.from(bytes.subarray(d + 40))).toEqual([7, 8, 9]);
  });

  it('writes no __metadata__ when none is given, and pads an empty header to 8 bytes', () => {
    const empty = encodeSafetensors({});
    expect(Array.from(empty.subarray(0, 8))).toEqual([8, 0, 0, 0, 0, 0, 0, 0]);
    expect(Buffer.from(empty.subarray(8)).toString()).toBe('{}      ');
    const one = encodeSafetensors({ x: { dtype: 'U8', shape: [1], data: new Uint8Array([1]) } });
    expect(Buffer.from(one).toString()).not.toContain('__metadata__');
  });

  it('orders names by UTF-8 bytes, as Rust does, not by UTF-16 units', () => {
    const t = (v: number): TensorToWrite => ({ dtype: 'U8', shape: [1], data: new Uint8Array([v]) });
    // U+E000 sorts before U+10000 in UTF-8 (EE.. < F0..) but after it in UTF-16 (E000 > D800).
    const bytes = encodeSafetensors({ '\u{10000}': t(2), '\u{E000}': t(1), 'é': t(0), '"q\\\n': t(3) });
    const file = openSafetensors(tempFile(bytes));
    expect([...file.tensors.values()].sort((a, b) => a.begin - b.begin).map((x) => x.name)).toEqual(['"q\\\n', 'é', '\u{E000}', '\u{10000}']);
    expect(Array.from(file.read('\u{E000}').data)).toEqual([1]);
  });

  it('round-trips every dtype through a file', () => {
    const rng = new Rng(7);
    const floats = Float32Array.from({ length: 60 }, () => rng.normal() * 100);
    const path = join(tmp.dir, 'roundtrip', 'x.safetensors');
    writeSafetensors(
      path,
      {
        f32: { dtype: 'F32', shape: [3, 4, 5], data: floats },
        f16: { dtype: 'F16', shape: [60], data: floats },
        bf16: { dtype: 'BF16', shape: [6, 10], data: floats },
        i32: { dtype: 'I32', shape: [3], data: new Int32Array([-(2 ** 31), 0, 2 ** 31 - 1]) },
        i64a: { dtype: 'I64', shape: [2], data: new Int32Array([-(2 ** 31), 5]) },
        i64b: { dtype: 'I64', shape: [1, 1], data: new BigInt64Array([-7n]) },
        u8: { dtype: 'U8', shape: [2], data: new Uint8Array([0, 255]) },
        mask: { dtype: 'BOOL', shape: [2], data: new Uint8Array([1, 0]) },
        scalar: { dtype: 'F32', shape: [], data: new Float32Array([42]) },
        empty: { dtype: 'F32', shape: [0, 7], data: new Float32Array(0) },
      },
      { format: 'pt', note: 'ünïcode ✓' },
    );
    const file = openSafetensors(path);
    expect(file.metadata).toEqual({ format: 'pt', note: 'ünïcode ✓' });
    expect(file.tensors.size).toBe(10);
    expect(file.read('f32')).toEqual({ dtype: 'F32', shape: [3, 4, 5], data: floats });
    expect(file.read('f16').data).toEqual(f16ToF32(f32ToF16(floats)));
    const bf = file.read('bf16').data as Float32Array;
    for (let i = 0; i < 60; i++) expect(Math.abs(bf[i]! - floats[i]!)).toBeLessThanOrEqual(Math.abs(floats[i]!) * 2 ** -8);
    expect(Array.from(file.read('i32').data)).toEqual([-(2 ** 31), 0, 2 ** 31 - 1]);
    expect(file.read('i64a')).toEqual({ dtype: 'I64', shape: [2], data: new Int32Array([-(2 ** 31), 5]) });
    expect(Array.from(file.read('i64b').data)).toEqual([-7]);
    expect(file.read('u8').data).toEqual(new Uint8Array([0, 255]));
    expect(file.read('mask')).toEqual({ dtype: 'BOOL', shape: [2], data: new Uint8Array([1, 0]) });
    expect(file.read('scalar')).toEqual({ dtype: 'F32', shape: [], data: new Float32Array([42]) });
    expect(file.read('empty')).toEqual({ dtype: 'F32', shape: [0, 7], data: new Float32Array(0) });
    // Encoding what was read gives back the same bytes (F16/BF16 values are exact by now).
    const again: Record<string, TensorToWrite> = {};
    for (const [name, info] of file.tensors) {
      const t = file.read(name);
      again[name] = { dtype: info.dtype as TensorToWrite['dtype'], shape: t.shape, data: t.data };
    }
    expect(Buffer.from(encodeSafetensors(again, file.metadata)).equals(readFileSync(path))).toBe(true);
  });

  it('refuses data that does not fit the dtype or shape, naming the tensor', () => {
    const bad = (t: TensorToWrite, re: RegExp, name = 'w') => {
      expect(() => writeSafetensors(join(tmp.dir, 'bad.safetensors'), { [name]: t })).toThrow(re);
      expect(() => encodeSafetensors({ [name]: t })).toThrow(SafetensorsError);
    };
    bad({ dtype: 'F32', shape: [2, 2], data: new Float32Array(3) }, /bad\.safetensors: tensor 'w': has 3 elements but shape \[2, 2\] needs 4/);
    bad({ dtype: 'F16', shape: [1], data: new Int32Array(1) }, /tensor 'w': F16 data must be a Float32Array, got Int32Array/);
    bad({ dtype: 'I32', shape: [1], data: new Float32Array(1) }, /must be an Int32Array/);
    bad({ dtype: 'F32', shape: [-1], data: new Float32Array(1) }, /shape \[-1\] is not a list of non-negative integers/);
    bad({ dtype: 'F64' as 'F32', shape: [1], data: new Float32Array(1) }, /cannot write dtype "F64"/);
    bad({ dtype: 'F32', shape: [1], data: new Float32Array(1) }, /tensor '__metadata__': the name is reserved/, '__metadata__');
    expect(() => encodeSafetensors({}, { format: 1 } as unknown as Record<string, string>)).toThrow(/__metadata__ entry 'format' is not a string/);
  });
});

/** A valid file with one tensor of each readable dtype, built by hand. */
function everyDtypeFile(): Uint8Array {
  const parts: [string, string, number[], Uint8Array][] = [
    ['f64', 'F64', [2], new Uint8Array(new Float64Array([1.5, -1e300]).buffer)],
    ['i64', 'I64', [2], new Uint8Array(new BigInt64Array([-5n, 2147483647n]).buffer)],
    ['i16', 'I16', [2], new Uint8Array(new Int16Array([-32768, 7]).buffer)],
    ['i8', 'I8', [2], new Uint8Array(new Int8Array([-128, 127]).buffer)],
    ['b', 'BOOL', [2], new Uint8Array([1, 0])],
  ];
  const header: Record<string, unknown> = {};
  let at = 0;
  for (const [name, dtype, shape, data] of parts) {
    header[name] = { dtype, shape, data_offsets: [at, at + data.length] };
    at += data.length;
  }
  return rawFile(header, Buffer.concat(parts.map((p) => p[3])));
}

describe('reference-written fixture', () => {
  // Written by the reference implementation: huggingface/safetensors v0.6.2, the Rust crate whose
  // serialize_to_file is what Python's safetensors.torch.save_file calls (the Python package
  // itself is not installable here), from raw little-endian bytes with metadata {format: pt}.
  const path = join(FIXTURES, 'safetensors', 'reference-writer.safetensors');

  it('reads every tensor to the values it was written with', () => {
    const file = openSafetensors(path);
    expect(file.metadata).toEqual({ format: 'pt' });
    expect(file.tensors.size).toBe(9);
    expect(file.tensors.get('position_ids')).toEqual({ name: 'position_ids', dtype: 'I64', shape: [2], begin: 0, end: 16 });
    expect(file.read('position_ids').data).toEqual(Int32Array.from([-1, 2147483647]));
    expect(file.read('model.embed_tokens.weight')).toEqual({ dtype: 'F32', shape: [2, 2], data: Float32Array.from([1.5, -2, 3.25, 0]) });
    expect(file.read('model.norm.weight')).toEqual({ dtype: 'F32', shape: [], data: Float32Array.from([0.125]) });
    const half = file.read('lm_head.weight').data as Float32Array;
    expect(Array.from(half.subarray(0, 5))).toEqual([1, -2, 65504, 2 ** -24, Infinity]);
    expect(Number.isNaN(half[5])).toBe(true);
    expect(file.read('layers.0.q.weight').data).toEqual(Float32Array.from([1, -0.5, 3.140625]));
    expect(file.read('counts').data).toEqual(Int32Array.from([7, -8]));
    expect(file.read('bytes').data).toEqual(Uint8Array.from([0, 255]));
    expect(file.read('h.0.attn.bias')).toEqual({ dtype: 'BOOL', shape: [1, 3], data: Uint8Array.from([1, 0, 1]) });
    expect(file.read('empty')).toEqual({ dtype: 'F32', shape: [0, 2], data: new Float32Array(0) });
  });

  it('re-encodes to the identical bytes', () => {
    const file = openSafetensors(path);
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, info] of file.tensors) {
      const t = file.read(name);
      tensors[name] = { dtype: info.dtype as TensorToWrite['dtype'], shape: t.shape, data: t.data };
    }
    expect(Buffer.from(encodeSafetensors(tensors, file.metadata)).equals(readFileSync(path))).toBe(true);
  });
});

describe('reader', () => {
  it('converts F64, I16, I8 and BOOL for the backend', () => {
    const file = openSafetensors(tempFile(everyDtypeFile()));
    expect(file.read('f64')).toEqual({ dtype: 'F64', shape: [2], data: new Float32Array([1.5, -Infinity]) });
    expect(file.read('i64').data).toEqual(new Int32Array([-5, 2147483647]));
    expect(file.read('i16').data).toEqual(new Int32Array([-32768, 7]));
    expect(file.read('i8').data).toEqual(new Int32Array([-128, 127]));
    expect(file.read('b').data).toEqual(new Uint8Array([1, 0]));
  });

  it('opens files holding dtypes it cannot decode, and refuses only reading those', () => {
    const path = tempFile(
      rawFile(
        {
          __metadata__: null,
          q: { dtype: 'F8_E4M3', shape: [2], data_offsets: [0, 2] },
          p: { dtype: 'F4', shape: [2, 2], data_offsets: [2, 4] },
          w: { dtype: 'U16', shape: [1], data_offsets: [4, 6] },
        },
        new Uint8Array(6),
      ),
    );
    const file = openSafetensors(path);
    expect(file.metadata).toEqual({}); // the reference reads a null __metadata__ as none
    expect(file.tensors.get('p')).toMatchObject({ dtype: 'F4', shape: [2, 2], begin: 2, end: 4 });
    expect(() => file.read('q')).toThrow(`${path}: tensor 'q': dtype F8_E4M3 cannot be decoded (molora reads F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)`);
    expect(() => file.read('w')).toThrow(/tensor 'w': dtype U16 cannot be decoded/);
  });

  it('keeps metadata keys that look like object internals', () => {
    const path = tempFile(rawFile('{"__metadata__":{"__proto__":"x","constructor":"y"}}'));
    const { metadata } = openSafetensors(path);
    expect(Object.keys(metadata)).toEqual(['__proto__', 'constructor']);
    expect(metadata['__proto__']).toBe('x');
    expect(Buffer.from(encodeSafetensors({}, metadata)).subarray(8).toString().trimEnd()).toBe('{"__metadata__":{"__proto__":"x","constructor":"y"}}');
  });

  it('refuses an I64 value outside int32, naming the tensor and the value', () => {
    const data = new Uint8Array(new BigInt64Array([1n, 2n ** 31n]).buffer);
    const path = tempFile(rawFile({ ids: { dtype: 'I64', shape: [2], data_offsets: [0, 16] } }, data));
    expect(() => openSafetensors(path).read('ids')).toThrow(`${path}: tensor 'ids': I64 value 2147483648 at index 1 does not fit in int32`);
  });

  it('reads lazily and notices when the file changed underneath', () => {
    const path = tempFile(encodeSafetensors({ w: { dtype: 'F32', shape: [1], data: new Float32Array([1]) } }));
    const file = openSafetensors(path);
    appendFileSync(path, 'x');
    expect(() => file.read('w')).toThrow(/tensor 'w': file changed on disk since it was opened/);
    expect(() => file.read('nope')).toThrow(/tensor 'nope': not in this file/);
  });

  const t4 = { dtype: 'F32', shape: [1], data_offsets: [0, 4] };
  const four = new Uint8Array(4);
  const cases: [string, () => Uint8Array, RegExp][] = [
    ['a file shorter than 8 bytes', () => new Uint8Array(5), /truncated: 5 bytes, less than the 8-byte header length/],
    ['an absurd header length', () => rawFile({}, four, 2n ** 62n), /header length 4611686018427387904 exceeds the 100000000-byte limit/],
    ['a header length past the end', () => rawFile({}, new Uint8Array(0), 100n), /header length 100 runs past the end of the 10-byte file/],
    ['a header that is not UTF-8', () => rawFile(Uint8Array.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d])), /header is not valid UTF-8/],
    ['a header that is not JSON', () => rawFile('{"a":'), /header is not valid JSON/],
    ['a header that is a JSON array', () => rawFile('[]'), /header is not a JSON object/],
    ['__metadata__ that is not an object', () => rawFile({ __metadata__: ['x'] }), /__metadata__ is not an object of strings/],
    ['__metadata__ with a non-string value', () => rawFile({ __metadata__: { n: 1 } }), /__metadata__ entry 'n' is not a string/],
    ['an entry that is not an object', () => rawFile({ w: 3 }), /tensor 'w': header entry is not an object/],
    ['an unknown dtype', () => rawFile({ w: { ...t4, dtype: 'f32' } }, four), /tensor 'w': unknown dtype "f32" \(the format defines F64, F32/],
    ['a missing dtype', () => rawFile({ w: { shape: [1], data_offsets: [0, 4] } }, four), /tensor 'w': unknown dtype undefined/],
    ['a prototype key as dtype', () => rawFile({ w: { ...t4, dtype: 'constructor' } }, four), /tensor 'w': unknown dtype "constructor"/],
    ['a sub-byte dtype that ends mid-byte', () => rawFile({ w: { dtype: 'F4', shape: [3], data_offsets: [0, 2] } }, new Uint8Array(2)), /tensor 'w': shape \[3\] of F4 is not a whole number of bytes/],
    ['a negative dimension', () => rawFile({ w: { ...t4, shape: [-1] } }, four), /tensor 'w': shape \[-1\] is not a list of non-negative integers/],
    ['a fractional dimension', () => rawFile({ w: { ...t4, shape: [1.5] } }, four), /tensor 'w': shape \[1.5\]/],
    ['a deeply nested shape', () => rawFile(`{"w":{"dtype":"F32","shape":${'['.repeat(200_000)}${']'.repeat(200_000)}}}`), /tensor 'w': shape (\[+\.\.\.|object) is not a list/],
    ['a shape that is not a list', () => rawFile({ w: { ...t4, shape: '1' } }, four), /tensor 'w': shape "1"/],
    ['one offset', () => rawFile({ w: { ...t4, data_offsets: [0] } }, four), /tensor 'w': data_offsets \[0\] is not a pair/],
    ['offsets that end before they begin', () => rawFile({ w: { ...t4, data_offsets: [4, 0] } }, four), /tensor 'w': data_offsets \[4, 0\] end before they begin/],
    ['offsets past the data', () => rawFile({ w: { ...t4, data_offsets: [0, 4] } }, new Uint8Array(3)), /tensor 'w': data_offsets \[0, 4\] run past the 3-byte data section/],
    ['a size that does not match the shape', () => rawFile({ w: { ...t4, shape: [2] } }, four), /tensor 'w': holds 4 bytes but shape \[2\] of F32 needs 8/],
    ['a shape whose product overflows', () => rawFile({ w: { ...t4, shape: [2 ** 40, 2 ** 40] } }, four), /needs more than 2\^53/],
    [
      'overlapping regions',
      () => rawFile({ a: { ...t4, shape: [2], data_offsets: [0, 8] }, b: { ...t4, data_offsets: [4, 8] } }, new Uint8Array(8)),
      /tensor 'b': bytes \[4, 8\) overlap tensor 'a' \[0, 8\)/,
    ],
    ['a gap between regions', () => rawFile({ a: t4, b: { ...t4, data_offsets: [8, 12] } }, new Uint8Array(12)), /tensor 'b': data bytes \[4, 8\) before it belong to no tensor/],
    ['bytes after the last tensor', () => rawFile({ a: t4 }, new Uint8Array(6)), /data section is 6 bytes but the tensors cover only 4/],
    ['a truncated data section', () => encodeSafetensors({ w: { dtype: 'F32', shape: [4], data: new Float32Array(4) } }).subarray(0, -1), /tensor 'w': data_offsets \[0, 16\] run past the 15-byte data section \(truncated file\?\)/],
  ];
  for (const [what, make, re] of cases) {
    it(`refuses ${what}, naming the file`, () => {
      const path = tempFile(make());
      let err: unknown;
      try {
        openSafetensors(path);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(SafetensorsError);
      expect((err as SafetensorsError).file).toBe(path);
      expect((err as Error).message.startsWith(`${path}: `)).toBe(true);
      expect((err as Error).message).toMatch(re);
    });
  }

  it('refuses a missing file', () => {
    expect(() => openSafetensors(join(tmp.dir, 'absent.safetensors'))).toThrow(/absent\.safetensors: cannot open \(ENOENT\)/);
  });

  it('survives random corruption: every damaged file decodes or throws SafetensorsError', () => {
    const rng = new Rng(1234);
    const good = Buffer.from(
      encodeSafetensors(
        {
          w: { dtype: 'F32', shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) },
          h: { dtype: 'F16', shape: [3], data: new Float32Array([1, -2, 0.5]) },
          b: { dtype: 'BF16', shape: [2], data: new Float32Array([1, 2]) },
          ids: { dtype: 'I64', shape: [2], data: new Int32Array([3, -4]) },
          m: { dtype: 'U8', shape: [2], data: new Uint8Array([1, 0]) },
        },
        { format: 'pt' },
      ),
    );
    const bases = [good, Buffer.from(everyDtypeFile())];
    const path = join(tmp.dir, 'fuzz.safetensors');
    let ok = 0;
    let refused = 0;
    for (let iter = 0; iter < 1500; iter++) {
      const base = bases[iter % 2]!;
      let bytes = Buffer.from(base);
      const kind = rng.int(4);
      if (kind === 0) {
        bytes = bytes.subarray(0, rng.int(bytes.length)); // truncation
      } else {
        // Flip 1-4 bytes in the length field, the header, or the data.
        const flips = 1 + rng.int(4);
        const headerEnd = 8 + Number(base.readBigUInt64LE(0));
        for (let f = 0; f < flips; f++) {
          const at = kind === 1 ? rng.int(8) : kind === 2 ? rng.int(headerEnd) : headerEnd + rng.int(bytes.length - headerEnd);
          bytes[at] = kind === 1 && rng.int(2) === 0 ? rng.int(256) : bytes[at]! ^ (1 << rng.int(8));
        }
      }
      writeFileSync(path, bytes);
      try {
        const file = openSafetensors(path);
        for (const name of file.tensors.keys()) file.read(name);
        ok++;
      } catch (err) {
        if (!(err instanceof SafetensorsError)) {
          throw new Error(`iteration ${iter}: ${String(err)} from bytes ${bytes.toString('hex')}`);
        }
        expect(err.message.startsWith(`${path}: `)).toBe(true);
        refused++;
      }
    }
    expect(ok).toBeGreaterThan(200);
    expect(refused).toBeGreaterThan(500);
  });
});
