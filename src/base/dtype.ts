/**
 * Exact conversions between float32 and the 16-bit float formats found in checkpoints.
 * Everything works on bit patterns (Uint16Array / Uint32Array views) so NaN payloads survive a
 * decode → encode round trip: JS numbers would canonicalise them.
 */

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);

/** float32 bit pattern of one IEEE half-precision bit pattern (exact: every half is a float32). */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp - 15 + 127) << 23) | (mant << 13)) >>> 0;
  // Zero or subnormal: mant · 2^-24 is exact in float32, so let the FPU normalise it.
  scratch[0] = mant * 2 ** -24;
  return (sign | scratchBits[0]!) >>> 0;
}

/** Half-precision bit pattern of a float32 bit pattern, rounding to nearest even. */
export function f32BitsToF16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) {
    if (mant === 0) return sign | 0x7c00;
    // Keep the top payload bits; a payload only in the dropped bits must still read as NaN.
    return sign | 0x7c00 | (mant >>> 13 || 0x200);
  }
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Below half's normal range: becomes a subnormal (or zero) with the implicit bit made explicit.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1) !== 0)) half++;
    return sign | half; // a carry lands in the exponent field, which is the right answer
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++; // a carry past 0x7bff gives inf
  return sign | h;
}

/** bfloat16 is the top half of a float32, so decoding is a shift. */
export function bf16BitsToF32Bits(b: number): number {
  return (b << 16) >>> 0;
}

/** bfloat16 bit pattern of a float32 bit pattern, rounding to nearest even. */
export function f32BitsToBf16Bits(x: number): number {
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
    const top = x >>> 16;
    return (top & 0x7f) !== 0 ? top : top | 0x40;
  }
  return (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
}

let f16Table: Uint32Array | undefined;

/** Lookup table of all 65536 halves: decoding a big tensor is then one load per element. */
function f16ToF32Table(): Uint32Array {
  if (!f16Table) {
    f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32Bits(h);
  }
  return f16Table;
}

/** Decode half-precision bit patterns to float32. */
export function f16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  const table = f16ToF32Table();
  for (let i = 0; i < src.length; i++) bits[i] = table[src[i]!]!;
  return out;
}

/** Decode bfloat16 bit patterns to float32. */
export function bf16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = src[i]! << 16;
  return out;
}

/** Encode float32 values as half-precision bit patterns (round to nearest even). */
export function f32ToF16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = f32BitsToF16Bits(bits[i]!);
  return out;
}

/** Encode float32 values as bfloat16 bit patterns (round to nearest even). */
export function f32ToBf16(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = f32BitsToBf16Bits(bits[i]!);
  return out;
}
