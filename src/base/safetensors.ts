import { closeSync, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { endianness } from 'node:os';
import { writeFileAtomic } from './atomic.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './dtype.js';

/**
 * The safetensors format: an 8-byte little-endian u64 N, N bytes of JSON header, then the raw
 * little-endian tensor data. Reader and writer follow the reference implementation
 * (huggingface/safetensors): the same checks on read, the same bytes on write.
 */

/** The dtypes molora decodes (to float32, int32 or uint8). */
export type DecodableDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';
/** Every dtype the reference format defines: a file may hold any, molora only decodes some. */
export type Dtype =
  | DecodableDtype
  | 'U16' | 'U32' | 'U64' | 'C64'
  | 'F8_E5M2' | 'F8_E4M3' | 'F8_E8M0' | 'F8_E4M3FNUZ' | 'F8_E5M2FNUZ'
  | 'F6_E2M3' | 'F6_E3M2' | 'F4';

const DTYPE_BITS: Record<Dtype, number> = {
  F64: 64, F32: 32, F16: 16, BF16: 16, I64: 64, I32: 32, I16: 16, I8: 8, U8: 8, BOOL: 8,
  U16: 16, U32: 32, U64: 64, C64: 64,
  F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8, F8_E4M3FNUZ: 8, F8_E5M2FNUZ: 8,
  F6_E2M3: 6, F6_E3M2: 6, F4: 4,
};

/**
 * The reference writer lays tensors out by descending position in its Dtype enum (its
 * "alignment order"), then by name. Only the relative order of these positions matters.
 */
const DTYPE_ORDER: Record<TensorToWrite['dtype'], number> = { BOOL: 0, U8: 1, F16: 2, BF16: 3, I32: 4, F32: 5, I64: 6 };

/** The reference reader refuses headers above this size; so do we, before allocating. */
const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Byte offsets relative to the start of the data section (just past the header). */
  begin: number;
  end: number;
}

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';

  constructor(
    readonly file: string,
    detail: string,
    readonly tensor?: string,
  ) {
    super(tensor === undefined ? `${file}: ${detail}` : `${file}: tensor '${tensor}': ${detail}`);
  }
}

export interface SafetensorsFile {
  path: string;
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
  /**
   * Decode one tensor: floats -> Float32Array (F16/BF16/F64 converted), integers -> Int32Array
   * (I64 checked for int32 overflow), U8/BOOL -> Uint8Array.
   */
  read(name: string): { dtype: Dtype; shape: number[]; data: Float32Array | Int32Array | Uint8Array };
}

export interface TensorToWrite {
  dtype: 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'U8' | 'BOOL';
  shape: number[];
  data: Float32Array | Int32Array | Uint8Array | BigInt64Array;
}

/** A header value for an error message: short, and safe on hostile input (deep nesting, huge arrays). */
function show(v: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(v);
  } catch {
    text = undefined;
  }
  if (text === undefined) return String(typeof v);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isDtype(v: unknown): v is Dtype {
  return typeof v === 'string' && Object.hasOwn(DTYPE_BITS, v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Product of a shape, or undefined once it passes 2^53 (no real tensor is that large). */
function numel(shape: number[]): number | undefined {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (n > Number.MAX_SAFE_INTEGER) return undefined;
  }
  return n;
}

/** Validate a parsed header against a data section of `dataBytes` bytes. */
function parseHeader(
  file: string,
  bytes: Uint8Array,
  dataBytes: number,
): { metadata: Record<string, string>; tensors: Map<string, TensorInfo> } {
  const json = headerJson(file, bytes);
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      // The reference reads null as "no metadata".
      if (entry !== null) metadata = headerMetadata(file, entry);
      continue;
    }
    tensors.set(name, tensorEntry(file, name, entry, dataBytes));
  }
  checkTiling(file, tensors, dataBytes);
  return { metadata, tensors };
}

/** The header bytes as a JSON object. */
function headerJson(file: string, bytes: Uint8Array): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw new SafetensorsError(file, 'header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new SafetensorsError(file, `header is not valid JSON (${(err as Error).message})`);
  }
  if (!isRecord(json)) throw new SafetensorsError(file, 'header is not a JSON object');
  return json;
}

function headerMetadata(file: string, entry: unknown): Record<string, string> {
  if (!isRecord(entry)) throw new SafetensorsError(file, '__metadata__ is not an object of strings');
  const out: [string, string][] = [];
  for (const [k, v] of Object.entries(entry)) {
    if (typeof v !== 'string') throw new SafetensorsError(file, `__metadata__ entry '${k}' is not a string`);
    out.push([k, v]);
  }
  // fromEntries defines keys (even "__proto__") rather than assigning them.
  return Object.fromEntries(out);
}

/** One tensor's entry, checked: a known dtype, a shape, offsets inside the data whose length the shape needs. */
function tensorEntry(file: string, name: string, entry: unknown, dataBytes: number): TensorInfo {
  if (!isRecord(entry)) throw new SafetensorsError(file, 'header entry is not an object', name);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isDtype(dtype)) {
    throw new SafetensorsError(file, `unknown dtype ${show(dtype)} (the format defines ${Object.keys(DTYPE_BITS).join(', ')})`, name);
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw new SafetensorsError(file, `shape ${show(shape)} is not a list of non-negative integers`, name);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    throw new SafetensorsError(file, `data_offsets ${show(offsets)} is not a pair of non-negative integers`, name);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) throw new SafetensorsError(file, `data_offsets [${begin}, ${end}] end before they begin`, name);
  if (end > dataBytes) {
    throw new SafetensorsError(file, `data_offsets [${begin}, ${end}] run past the ${dataBytes}-byte data section (truncated file?)`, name);
  }
  const n = numel(shape);
  const bits = n === undefined ? undefined : n * DTYPE_BITS[dtype];
  if (bits !== undefined && bits % 8 !== 0) {
    throw new SafetensorsError(file, `shape [${shape.join(', ')}] of ${dtype} is not a whole number of bytes`, name);
  }
  const want = bits === undefined || bits > Number.MAX_SAFE_INTEGER ? undefined : bits / 8;
  if (want !== end - begin) {
    throw new SafetensorsError(file, `holds ${end - begin} bytes but shape [${shape.join(', ')}] of ${dtype} needs ${want ?? 'more than 2^53'}`, name);
  }
  return { name, dtype, shape: shape.slice(), begin, end };
}

/**
 * Like the reference reader: the regions must tile the data section exactly, with no overlap,
 * no gap and nothing after the last tensor.
 */
function checkTiling(file: string, tensors: Map<string, TensorInfo>, dataBytes: number): void {
  const regions = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  let prev: TensorInfo | undefined;
  for (const t of regions) {
    if (t.begin < at) {
      throw new SafetensorsError(file, `bytes [${t.begin}, ${t.end}) overlap tensor '${prev!.name}' [${prev!.begin}, ${prev!.end})`, t.name);
    }
    if (t.begin > at) throw new SafetensorsError(file, `data bytes [${at}, ${t.begin}) before it belong to no tensor`, t.name);
    at = t.end;
    prev = t;
  }
  if (at !== dataBytes) {
    throw new SafetensorsError(file, `data section is ${dataBytes} bytes but the tensors cover only ${at}`);
  }
}

/** Read exactly `dst.length` bytes at `position`, or fail naming the file as truncated. */
function readExactly(file: string, fd: number, dst: Uint8Array, position: number): void {
  let done = 0;
  while (done < dst.length) {
    // At most 1 GiB per call: a single read() of more than 2 GiB is refused or cut short.
    const got = readSync(fd, dst, done, Math.min(dst.length - done, 2 ** 30), position + done);
    if (got === 0) throw new SafetensorsError(file, `truncated: wanted ${dst.length} bytes at offset ${position}, file ends after ${done}`);
    done += got;
  }
}

function openFd(file: string): number {
  try {
    return openSync(file, 'r');
  } catch (err) {
    throw new SafetensorsError(file, `cannot open (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** Same file, same content as when the header was read: the offsets still apply. */
function sameFile(a: Stats, b: Stats): boolean {
  return a.ino === b.ino && a.dev === b.dev && a.size === b.size && a.mtimeMs === b.mtimeMs;
}

/** Turn a tensor's raw bytes into what the backend can hold; refuses dtypes it cannot. */
function decode(file: string, info: TensorInfo, buf: ArrayBuffer): Float32Array | Int32Array | Uint8Array {
  switch (info.dtype) {
    case 'F32':
      return new Float32Array(buf);
    case 'F16':
      return f16ToF32(new Uint16Array(buf));
    case 'BF16':
      return bf16ToF32(new Uint16Array(buf));
    case 'F64':
      return Float32Array.from(new Float64Array(buf));
    case 'I32':
      return new Int32Array(buf);
    case 'I16':
      return Int32Array.from(new Int16Array(buf));
    case 'I8':
      return Int32Array.from(new Int8Array(buf));
    case 'I64': {
      // Read the halves: int32 is all the backend has, so anything wider must be refused, not wrapped.
      const words = new Int32Array(buf);
      const out = new Int32Array(words.length / 2);
      for (let i = 0; i < out.length; i++) {
        const lo = words[2 * i]!;
        const hi = words[2 * i + 1]!;
        if (hi !== lo >> 31) {
          const value = new BigInt64Array(buf, 8 * i, 1)[0]!;
          throw new SafetensorsError(file, `I64 value ${value} at index ${i} does not fit in int32`, info.name);
        }
        out[i] = lo;
      }
      return out;
    }
    case 'U8':
    case 'BOOL':
      return new Uint8Array(buf);
    default:
      throw new SafetensorsError(file, `dtype ${info.dtype} cannot be decoded (molora reads F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)`, info.name);
  }
}

/**
 * Open a .safetensors file: read and fully validate its header now, read tensor data only when
 * asked (positioned reads), so a big checkpoint never sits in memory whole.
 */
export function openSafetensors(path: string): SafetensorsFile {
  if (endianness() !== 'LE') throw new SafetensorsError(path, 'safetensors data is little-endian; this host is big-endian');
  const fd = openFd(path);
  let stats: Stats;
  let parsed: ReturnType<typeof parseHeader>;
  let dataStart: number;
  try {
    stats = fstatSync(fd);
    if (!stats.isFile()) throw new SafetensorsError(path, 'not a regular file');
    if (stats.size < 8) throw new SafetensorsError(path, `truncated: ${stats.size} bytes, less than the 8-byte header length`);
    const lenBytes = new Uint8Array(8);
    readExactly(path, fd, lenBytes, 0);
    const n = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (n > BigInt(MAX_HEADER_BYTES)) throw new SafetensorsError(path, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit (not a safetensors file?)`);
    const headerBytes = Number(n);
    if (8 + headerBytes > stats.size) {
      throw new SafetensorsError(path, `header length ${headerBytes} runs past the end of the ${stats.size}-byte file (truncated?)`);
    }
    const header = new Uint8Array(headerBytes);
    readExactly(path, fd, header, 8);
    parsed = parseHeader(path, header, stats.size - 8 - headerBytes);
    dataStart = 8 + headerBytes;
  } finally {
    closeSync(fd);
  }

  return {
    path,
    metadata: parsed.metadata,
    tensors: parsed.tensors,
    read(name) {
      const info = parsed.tensors.get(name);
      if (!info) throw new SafetensorsError(path, 'not in this file', name);
      // A fresh descriptor per read: callers keep these objects around without closing them.
      const fd = openFd(path);
      try {
        if (!sameFile(fstatSync(fd), stats)) throw new SafetensorsError(path, 'file changed on disk since it was opened', name);
        let buf: ArrayBuffer;
        try {
          buf = new ArrayBuffer(info.end - info.begin);
        } catch {
          throw new SafetensorsError(path, `${info.end - info.begin} bytes are more than this process can allocate`, name);
        }
        readExactly(path, fd, new Uint8Array(buf), dataStart + info.begin);
        return { dtype: info.dtype, shape: info.shape.slice(), data: decode(path, info, buf) };
      } finally {
        closeSync(fd);
      }
    },
  };
}

const WRITE_DTYPES = ['F32', 'F16', 'BF16', 'I32', 'I64', 'U8', 'BOOL'] as const;

/** The raw little-endian bytes of one tensor, after checking its data fits its dtype and shape. */
function tensorBytes(file: string, name: string, t: TensorToWrite): Uint8Array {
  if (!(WRITE_DTYPES as readonly string[]).includes(t.dtype)) {
    throw new SafetensorsError(file, `cannot write dtype ${show(t.dtype)} (writable: ${WRITE_DTYPES.join(', ')})`, name);
  }
  if (!Array.isArray(t.shape) || !t.shape.every(isCount)) {
    throw new SafetensorsError(file, `shape ${show(t.shape)} is not a list of non-negative integers`, name);
  }
  const n = numel(t.shape);
  if (n !== t.data.length) {
    throw new SafetensorsError(file, `has ${t.data.length} elements but shape [${t.shape.join(', ')}] needs ${n ?? 'more than 2^53'}`, name);
  }
  const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const { data } = t;
  const wrongData = () =>
    new SafetensorsError(file, `${t.dtype} data must be ${t.dtype === 'I64' ? 'a BigInt64Array or Int32Array' : t.dtype === 'I32' ? 'an Int32Array' : t.dtype === 'U8' || t.dtype === 'BOOL' ? 'a Uint8Array' : 'a Float32Array'}, got ${data.constructor.name}`, name);
  switch (t.dtype) {
    case 'F32':
      if (!(data instanceof Float32Array)) throw wrongData();
      return bytesOf(data);
    case 'F16':
      if (!(data instanceof Float32Array)) throw wrongData();
      return bytesOf(f32ToF16(data));
    case 'BF16':
      if (!(data instanceof Float32Array)) throw wrongData();
      return bytesOf(f32ToBf16(data));
    case 'I32':
      if (!(data instanceof Int32Array)) throw wrongData();
      return bytesOf(data);
    case 'I64': {
      if (data instanceof BigInt64Array) return bytesOf(data);
      if (!(data instanceof Int32Array)) throw wrongData();
      // Sign-extend each int32 into a little-endian (low word, high word) pair.
      const words = new Int32Array(2 * data.length);
      for (let i = 0; i < data.length; i++) {
        words[2 * i] = data[i]!;
        words[2 * i + 1] = data[i]! >> 31;
      }
      return bytesOf(words);
    }
    case 'U8':
    case 'BOOL':
      if (!(data instanceof Uint8Array)) throw wrongData();
      return bytesOf(data);
  }
}

/** Rust orders names by UTF-8 bytes; JS `<` compares UTF-16 units, which differs past U+FFFF. */
function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function encode(file: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Uint8Array {
  if (metadata !== undefined) {
    if (!isRecord(metadata)) throw new SafetensorsError(file, '__metadata__ must be an object of strings');
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new SafetensorsError(file, `__metadata__ entry '${k}' is not a string`);
    }
  }
  const entries = Object.entries(tensors).map(([name, t]) => {
    if (name === '__metadata__') throw new SafetensorsError(file, 'the name is reserved for the metadata block', name);
    return { name, t, bytes: tensorBytes(file, name, t) };
  });
  entries.sort((a, b) => DTYPE_ORDER[b.t.dtype] - DTYPE_ORDER[a.t.dtype] || compareUtf8(a.name, b.name));

  // Written by hand rather than with JSON.stringify on an object, so the key order is exactly
  // the reference's: __metadata__ first, then tensors in data order, fields dtype/shape/data_offsets.
  const parts: string[] = [];
  if (metadata !== undefined) parts.push(`"__metadata__":${JSON.stringify(metadata)}`);
  let offset = 0;
  for (const { name, t, bytes } of entries) {
    parts.push(`${JSON.stringify(name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${offset + bytes.length}]}`);
    offset += bytes.length;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  // Pad with spaces so the data section starts 8-byte aligned.
  const headerLen = Math.ceil(json.length / 8) * 8;

  const out = new Uint8Array(8 + headerLen + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  let at = 8 + headerLen;
  for (const { bytes } of entries) {
    out.set(bytes, at);
    at += bytes.length;
  }
  return out;
}

/** The bytes of a safetensors file holding `tensors`, identical to what the reference library writes. */
export function encodeSafetensors(tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Uint8Array {
  return encode('(in-memory safetensors)', tensors, metadata);
}

/** Write a safetensors file atomically (readers see the old file or the new, never half). */
export function writeSafetensors(path: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): void {
  writeFileAtomic(path, encode(path, tensors, metadata));
}
