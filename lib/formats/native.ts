/**
 * The number formats on a device: the native (C++ CPU or CUDA) twins of `quantize`,
 * `dequantize`, `hadamard` and the element encoders of lib/formats, working on
 * {@linkcode Tensor}s. They produce the same bits as the TypeScript reference (tested bit for
 * bit in tests/formats_native_test.ts), much faster.
 *
 * @module
 */
import { check, checkAsync, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";
import { abiDType, type DType } from "../dtype.ts";
import { Tensor } from "../tensor.ts";
import type { HadamardOptions } from "./hadamard.ts";
import { seedKey } from "./philox.ts";
import { type GroupScaleChoice, groupScalesOf, type Quantized } from "./quantize.ts";
import { type QuantSpec, resolveSpec, type SpecInput } from "./spec.ts";

/** Names of the native codecs: element formats, the unsigned scale minifloats, E8M0 roundings. */
export type CodecName =
  | "e2m1"
  | "e2m3"
  | "e3m2"
  | "e4m3"
  | "e5m2"
  | "ue4m3"
  | "ue5m3"
  | "int4"
  | "int8"
  | "uint4"
  | "uint8"
  | "mxint8"
  | "e8m0:floor"
  | "e8m0:ceil"
  | "e8m0:rne";

/** Codec codes of `cuda/include/fp4lab/formats.h` (`FP4_CODEC_*`), in order. */
export const CODECS: readonly CodecName[] = [
  "e2m1",
  "e2m3",
  "e3m2",
  "e4m3",
  "e5m2",
  "ue4m3",
  "ue5m3",
  "int4",
  "int8",
  "uint4",
  "uint8",
  "mxint8",
  "e8m0:floor",
  "e8m0:ceil",
  "e8m0:rne",
];

const SCALE_CODES = ["e8m0", "e4m3", "ue5m3", "f32", "bf16", "f16"];
const RULE_CODES = ["ocp", "ceil", "round", "mr-gptq", "absmax", "minmax"];

/** Size in bytes of `fp4_quant_spec`. */
export const QUANT_SPEC_BYTES = 56;

/**
 * Packs a spec into the `fp4_quant_spec` struct of the C ABI (little-endian, 56 bytes).
 *
 * @example
 * ```ts
 * import { packSpec } from "./native.ts";
 * import { resolveSpec } from "./spec.ts";
 * const b = packSpec(resolveSpec("nvfp4"));
 * console.assert(b.length === 56 && new DataView(b.buffer).getInt32(8, true) === 16);
 * ```
 */
export function packSpec(spec: QuantSpec): Uint8Array<ArrayBuffer> {
  const buf = new Uint8Array(QUANT_SPEC_BYTES);
  const v = new DataView(buf.buffer);
  const g = spec.groupSize === "channel" ? -1 : spec.groupSize === "tensor" ? -2 : spec.groupSize;
  v.setInt32(0, CODECS.indexOf(spec.element), true);
  v.setInt32(4, SCALE_CODES.indexOf(spec.scaleFormat), true);
  v.setInt32(8, g, true);
  v.setInt32(12, RULE_CODES.indexOf(spec.scaleRule), true);
  const ts = spec.tensorScale;
  v.setInt32(16, ts === "amax" ? 1 : typeof ts === "number" ? 2 : 0, true);
  v.setInt32(20, spec.rounding === "stochastic" ? 1 : 0, true);
  v.setInt32(24, spec.mse ? spec.mse.candidates : 0, true);
  v.setFloat32(28, typeof ts === "number" ? ts : 0, true);
  v.setFloat64(32, spec.mse ? spec.mse.minShrink : 0, true);
  v.setFloat64(40, spec.mse ? spec.mse.norm : 0, true);
  v.setBigUint64(48, spec.seed, true);
  return buf;
}

/** A quantized tensor whose parts live on a device (see {@linkcode Quantized} for the layout). */
export interface DeviceQuantized {
  /** The resolved spec. */
  readonly spec: QuantSpec;
  /** [rows, cols] of the original tensor. */
  readonly shape: readonly [number, number];
  /** Packed codes (u8). */
  readonly codes: Tensor;
  /** Raw scale bits (u8, little-endian). */
  readonly scales: Tensor;
  /** [rows, groups per row], or [1, 1] for a tensor-wide group. */
  readonly scaleShape: readonly [number, number];
  /** Zero points (u8) of asymmetric elements, else null. */
  readonly zeros: Tensor | null;
  /** The float32 tensor scale as a one-element f32 tensor, else null. */
  readonly tensorScale: Tensor | null;
}

function matrixShape(x: Tensor, what: string): [number, number] {
  if (x.shape.length < 1) throw new Error(`${what}: a tensor of rank >= 1 is needed`);
  const cols = x.shape[x.shape.length - 1];
  const rows = cols === 0 ? 0 : x.size / cols;
  if (x.dtype !== "f32" && x.dtype !== "bf16") {
    throw new Error(`${what}: dtype must be f32 or bf16, got ${x.dtype}`);
  }
  return [rows, cols];
}

// Bytes of the codes, scales and zero points of quantizing [rows, cols] with a packed spec.
function quantSizes(
  packed: Uint8Array,
  rows: number,
  cols: number,
): [number, number, number] {
  const out = new BigUint64Array(3);
  const lib = native();
  const status = lib.fp4_quant_sizes(
    packed,
    BigInt(rows),
    BigInt(cols),
    out.subarray(0, 1),
    out.subarray(1, 2),
    out.subarray(2, 3),
  );
  check(status, "fp4_quant_sizes");
  return [Number(out[0]), Number(out[1]), Number(out[2])];
}

async function onDevice<T>(device: Device, x: Tensor, f: (xd: Tensor) => Promise<T>): Promise<T> {
  requireDevice(device);
  const xd = x.to(device);
  try {
    return await f(xd);
  } finally {
    if (xd !== x) xd.dispose();
  }
}

function ptr(t: Tensor | null): Deno.PointerValue {
  return t ? t.pointer() : null;
}

/**
 * Quantizes `x` (f32 or bf16, shape [..., cols]: rows are all leading dimensions) on `device`
 * to `spec`; the outputs live on that device. Throws like {@linkcode quantize} of
 * lib/formats (non-finite input names the first bad (row, col)).
 *
 * @example
 * ```ts
 * import { quantizeOn } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using x = Tensor.from(new Float32Array(32).map((_, i) => i - 16), [2, 16]);
 * const q = await quantizeOn("cpu", x, "nvfp4");
 * console.assert(q.codes.size === 16 && q.scales.size === 2);
 * ```
 */
export function quantizeOn(
  device: Device,
  x: Tensor,
  spec: SpecInput | QuantSpec,
): Promise<DeviceQuantized> {
  return quantizeImpl(device, x, resolveSpec(spec), null);
}

/**
 * Rotates `x` by the block Hadamard transform of {@linkcode hadamard} (f32 result, not
 * materialized) and quantizes it, in one fused pass on CUDA: equal to
 * `quantize(hadamard(x, shape, opts), shape, spec)` bit for bit.
 *
 * @example
 * ```ts
 * import { rotateQuantizeOn } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using x = Tensor.from(new Float32Array(256).map(() => Math.random() - 0.5), [2, 128]);
 * const q = await rotateQuantizeOn("cpu", x, { block: 128 }, "mxfp4");
 * console.assert(q.codes.size === 128);
 * ```
 */
export function rotateQuantizeOn(
  device: Device,
  x: Tensor,
  opts: HadamardOptions,
  spec: SpecInput | QuantSpec,
): Promise<DeviceQuantized> {
  return quantizeImpl(device, x, resolveSpec(spec), opts);
}

/**
 * Fake quantization on `device`: `x` (f32 or bf16, [rows, cols]) rotated by the block Hadamard
 * transform of `rotation` (none when null), quantized to `spec` and dequantized to `outDtype`, in
 * one native call that on CUDA only enqueues work (the W4A4 input transform of the decode engine,
 * `fp4_fake_quantize`). Equal bit for bit to {@linkcode rotateQuantizeOn} (or
 * {@linkcode quantizeOn}) followed by {@linkcode dequantizeOn}; returns the output and the
 * quantized parts. On CUDA, non-finite inputs give unspecified values instead of an Error.
 *
 * @example
 * ```ts
 * import { disposeQuantized, fakeQuantizeOn } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using x = Tensor.from(new Float32Array([1, 2, 3, 6.5]), [1, 4]);
 * const { y, q } = fakeQuantizeOn("cpu", x, "mxfp4:g4", null);
 * console.assert(y.toArray().join() === "1,2,3,6");
 * y.dispose();
 * disposeQuantized(q);
 * ```
 */
export function fakeQuantizeOn(
  device: Device,
  x: Tensor,
  spec: SpecInput | QuantSpec,
  rotation: HadamardOptions | null,
  outDtype: "f32" | "bf16" = "f32",
): { y: Tensor; q: DeviceQuantized } {
  requireDevice(device);
  if (x.device !== device) throw new Error(`fakeQuantizeOn: x is on ${x.device}, not ${device}`);
  if (x.dtype !== "f32" && x.dtype !== "bf16") {
    throw new Error(`fakeQuantizeOn: x must be f32 or bf16, got ${x.dtype}`);
  }
  const cols = x.shape[x.shape.length - 1] ?? 0;
  const rows = cols ? x.size / cols : 0;
  const resolved = resolveSpec(spec);
  const seed = rotation?.seed === undefined ? null : BigInt(rotation.seed);
  if (seed !== null) seedKey(seed);
  const q = emptyQuantized(device, resolved, rows, cols);
  const y = Tensor.empty([rows, cols], outDtype, device);
  const p = (t: Tensor | null) => t ? t.pointer() : null;
  try {
    check(
      native().fp4_fake_quantize(
        deviceId(device),
        packSpec(resolved),
        abiDType(x.dtype),
        x.pointer(),
        BigInt(rows),
        BigInt(cols),
        rotation?.block ?? 0,
        seed === null ? 0 : 1,
        seed ?? 0n,
        q.codes.pointer(),
        q.scales.pointer(),
        p(q.zeros),
        p(q.tensorScale),
        abiDType(outDtype),
        y.pointer(),
      ),
      "fp4_fake_quantize",
    );
  } catch (e) {
    y.dispose();
    disposeQuantized(q);
    throw e;
  }
  return { y, q };
}

/**
 * Uninitialised (poisoned) outputs of quantizing `[rows, cols]` with `spec` on `device`: codes,
 * scales, zero points (asymmetric elements) and the tensor scale (specs that have one), as
 * `fp4_quantize` and `fp4_rotate_quantize` write them. Free with {@linkcode disposeQuantized}.
 *
 * @example
 * ```ts
 * import { disposeQuantized, emptyQuantized } from "./native.ts";
 * const q = emptyQuantized("cpu", "nvfp4", 2, 32);
 * console.assert(q.codes.size === 32 && q.scales.size === 4 && q.tensorScale !== null);
 * disposeQuantized(q);
 * ```
 */
export function emptyQuantized(
  device: Device,
  spec: SpecInput | QuantSpec,
  rows: number,
  cols: number,
): DeviceQuantized {
  const s = resolveSpec(spec);
  const [nc, ns, nz] = quantSizes(packSpec(s), rows, cols);
  const codes = Tensor.empty([nc], "u8", device);
  const scales = Tensor.empty([ns], "u8", device);
  const zeros = nz > 0 ? Tensor.empty([nz], "u8", device) : null;
  const tensorScale = s.tensorScale !== "none" || s.scaleRule === "mr-gptq"
    ? Tensor.empty([1], "f32", device)
    : null;
  const g = s.groupSize;
  const scaleShape: [number, number] = g === "tensor"
    ? [1, 1]
    : g === "channel"
    ? [rows, 1]
    : [rows, cols / g];
  return Object.freeze({
    spec: s,
    shape: Object.freeze([rows, cols] as [number, number]),
    codes,
    scales,
    scaleShape: Object.freeze(scaleShape),
    zeros,
    tensorScale,
  });
}

async function quantizeImpl(
  device: Device,
  x: Tensor,
  s: QuantSpec,
  rotate: HadamardOptions | null,
): Promise<DeviceQuantized> {
  const what = rotate ? "rotateQuantizeOn" : "quantizeOn";
  const [rows, cols] = matrixShape(x, what);
  if (rows * cols === 0) throw new Error(`${what}: empty tensor [${rows}, ${cols}]`);
  if (typeof s.groupSize === "number" && cols % s.groupSize !== 0) {
    throw new Error(`${what}: group size ${s.groupSize} does not divide the ${cols} columns`);
  }
  const packed = packSpec(s);
  const q = emptyQuantized(device, s, rows, cols);
  const { codes, scales, zeros, tensorScale } = q;
  try {
    await onDevice(device, x, async (xd) => {
      const lib = native();
      if (rotate) {
        const seed = rotate.seed === undefined ? null : BigInt(rotate.seed);
        if (seed !== null) seedKey(seed);
        await checkAsync(
          lib.fp4_rotate_quantize(
            deviceId(device),
            packed,
            abiDType(xd.dtype),
            xd.pointer(),
            BigInt(rows),
            BigInt(cols),
            rotate.block,
            seed === null ? 0 : 1,
            seed ?? 0n,
            codes.pointer(),
            scales.pointer(),
            ptr(zeros),
            ptr(tensorScale),
          ),
          "fp4_rotate_quantize",
          [packed, xd, codes, scales, zeros, tensorScale],
        );
      } else {
        await checkAsync(
          lib.fp4_quantize(
            deviceId(device),
            packed,
            abiDType(xd.dtype),
            xd.pointer(),
            BigInt(rows),
            BigInt(cols),
            codes.pointer(),
            scales.pointer(),
            ptr(zeros),
            ptr(tensorScale),
          ),
          "fp4_quantize",
          [packed, xd, codes, scales, zeros, tensorScale],
        );
      }
    });
  } catch (e) {
    disposeQuantized(q);
    throw e;
  }
  return q;
}

/**
 * Dequantizes on `device` (where the parts of `q` are moved if needed) to an f32 or bf16
 * tensor of shape [rows, cols]; equal to lib/formats `dequantize` (bf16: its values rounded).
 *
 * @example
 * ```ts
 * import { dequantizeOn, quantizeOn } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using x = Tensor.from(new Float32Array([1, 2, 3, 6]), [1, 4]);
 * using y = await dequantizeOn("cpu", await quantizeOn("cpu", x, "mxfp4:g4"));
 * console.assert(y.toArray().join() === "1,2,3,6");
 * ```
 */
export async function dequantizeOn(
  device: Device,
  q: DeviceQuantized | Quantized,
  outDtype: "f32" | "bf16" = "f32",
): Promise<Tensor> {
  requireDevice(device);
  const [rows, cols] = q.shape;
  const host = (a: Uint8Array): Tensor => Tensor.from(a, [a.length], "u8");
  const parts = "spec" in q && q.codes instanceof Tensor
    ? [q.codes, q.scales, q.zeros, q.tensorScale] as (Tensor | null)[]
    : [
      host((q as Quantized).codes),
      host((q as Quantized).scales),
      (q as Quantized).zeros ? host((q as Quantized).zeros!) : null,
      (q as Quantized).tensorScale === null
        ? null
        : Tensor.from(new Float32Array([(q as Quantized).tensorScale!]), [1]),
    ];
  const moved = parts.map((t) => t?.to(device) ?? null);
  const out = Tensor.empty([rows, cols], outDtype, device);
  try {
    await checkAsync(
      native().fp4_dequantize(
        deviceId(device),
        packSpec(q.spec),
        ptr(moved[0]),
        ptr(moved[1]),
        ptr(moved[2]),
        ptr(moved[3]),
        BigInt(rows),
        BigInt(cols),
        abiDType(outDtype),
        out.pointer(),
      ),
      "fp4_dequantize",
      [moved, out],
    );
  } catch (e) {
    out.dispose();
    throw e;
  } finally {
    moved.forEach((t, i) => {
      if (t && t !== parts[i]) t.dispose();
    });
  }
  return out;
}

/** Options of {@linkcode hadamardOn}. */
export interface HadamardOnOptions extends HadamardOptions {
  /** Apply the inverse rotation. */
  inverse?: boolean;
  /** Output dtype (default: the input's). */
  outDtype?: "f32" | "bf16";
}

/**
 * Block Hadamard rotation of `x` (f32 or bf16, [..., cols]) on `device`, equal bit for bit to
 * {@linkcode hadamard} / `inverseHadamard` of lib/formats (computed in f32; a bf16 output is
 * the f32 result rounded to nearest even).
 *
 * @example
 * ```ts
 * import { hadamardOn } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using x = Tensor.from(new Float32Array([1, 1, 1, 1]), [1, 4]);
 * using y = await hadamardOn("cpu", x, { block: 4 });
 * console.assert(y.toArray().join() === "2,0,0,0");
 * ```
 */
export async function hadamardOn(
  device: Device,
  x: Tensor,
  opts: HadamardOnOptions,
): Promise<Tensor> {
  const [rows, cols] = matrixShape(x, "hadamardOn");
  const outDtype: DType = opts.outDtype ?? x.dtype;
  const seed = opts.seed === undefined ? null : BigInt(opts.seed);
  if (seed !== null) seedKey(seed);
  const out = Tensor.empty(x.shape, outDtype, device);
  try {
    await onDevice(device, x, (xd) =>
      checkAsync(
        native().fp4_hadamard(
          deviceId(device),
          abiDType(xd.dtype),
          xd.pointer(),
          abiDType(outDtype),
          out.pointer(),
          BigInt(rows),
          BigInt(cols),
          opts.block,
          opts.inverse ? 1 : 0,
          seed === null ? 0 : 1,
          seed ?? 0n,
        ),
        "fp4_hadamard",
        [xd, out],
      ));
  } catch (e) {
    out.dispose();
    throw e;
  }
  return out;
}

/**
 * Native element encoding of a Float32Array (storage bits, one byte each) on `device`;
 * stochastic when `random` (one uniform 32-bit word per element) is given.
 *
 * @example
 * ```ts
 * import { encodeOn } from "./native.ts";
 * const c = await encodeOn("cpu", "e2m1", new Float32Array([2.5, -100]));
 * console.assert(c[0] === 0x4 && c[1] === 0xf);
 * ```
 */
export async function encodeOn(
  device: Device,
  codec: CodecName,
  x: Float32Array,
  random?: Uint32Array,
): Promise<Uint8Array> {
  const code = CODECS.indexOf(codec);
  if (code < 0) throw new Error(`unknown codec "${codec}"; expected one of ${CODECS.join(", ")}`);
  if (random && random.length !== x.length) {
    throw new Error(`encodeOn: ${random.length} random words for ${x.length} values`);
  }
  requireDevice(device);
  using xd = Tensor.from(x, [x.length]).to(device);
  using rd = random
    ? Tensor.from(new Int32Array(random.buffer, random.byteOffset, random.length), [random.length])
      .to(device)
    : null;
  using out = Tensor.empty([x.length], "u8", device);
  await checkAsync(
    native().fp4_encode(
      deviceId(device),
      code,
      xd.pointer(),
      BigInt(x.length),
      ptr(rd),
      out.pointer(),
    ),
    "fp4_encode",
    [xd, rd, out],
  );
  return (out.toArray() as Uint8Array).slice();
}

/**
 * Native decoding of storage bits (one byte each) to float32 values on `device`.
 *
 * @example
 * ```ts
 * import { decodeOn } from "./native.ts";
 * console.assert((await decodeOn("cpu", "e4m3", new Uint8Array([0x7e])))[0] === 448);
 * ```
 */
export async function decodeOn(
  device: Device,
  codec: CodecName,
  codes: Uint8Array,
): Promise<Float32Array> {
  const code = CODECS.indexOf(codec);
  if (code < 0) throw new Error(`unknown codec "${codec}"; expected one of ${CODECS.join(", ")}`);
  requireDevice(device);
  using cd = Tensor.from(codes, [codes.length], "u8").to(device);
  using out = Tensor.empty([codes.length], "f32", device);
  await checkAsync(
    native().fp4_decode(deviceId(device), code, cd.pointer(), BigInt(codes.length), out.pointer()),
    "fp4_decode",
    [cd, out],
  );
  return (out.toArray() as Float32Array).slice();
}

/**
 * A host {@linkcode Quantized} (the lib/formats representation) of a device result; the
 * device tensors are left alone.
 *
 * @example
 * ```ts
 * import { quantizeOn, toQuantized } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using x = Tensor.from(new Float32Array(32).fill(3), [1, 32]);
 * console.assert(toQuantized(await quantizeOn("cpu", x, "mxfp4")).scales[0] === 126);
 * ```
 */
export function toQuantized(q: DeviceQuantized): Quantized {
  return Object.freeze({
    spec: q.spec,
    shape: q.shape,
    codes: (q.codes.toArray() as Uint8Array).slice(),
    scales: (q.scales.toArray() as Uint8Array).slice(),
    scaleShape: q.scaleShape,
    zeros: q.zeros ? (q.zeros.toArray() as Uint8Array).slice() : null,
    tensorScale: q.tensorScale ? (q.tensorScale.toArray() as Float32Array)[0] : null,
  });
}

/**
 * Frees the device tensors of a {@linkcode DeviceQuantized}.
 *
 * @example
 * ```ts
 * import { disposeQuantized, quantizeOn } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using x = Tensor.from(new Float32Array(16).fill(1), [1, 16]);
 * const q = await quantizeOn("cpu", x, "nvfp4");
 * disposeQuantized(q);
 * console.assert(q.codes.disposed);
 * ```
 */
export function disposeQuantized(q: DeviceQuantized): void {
  for (const t of [q.codes, q.scales, q.zeros, q.tensorScale]) t?.dispose();
}

/**
 * {@linkcode quantize} of lib/formats for a {@linkcode Tensor} (f32 or bf16, on any device):
 * runs natively where the tensor lives and returns the host {@linkcode Quantized}.
 *
 * @example
 * ```ts
 * import { quantizeTensor } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using x = Tensor.from(new Float32Array([1, 2, 3, 6]), [1, 4]);
 * console.assert((await quantizeTensor(x, "mxfp4:g4")).codes.length === 2);
 * ```
 */
export async function quantizeTensor(x: Tensor, spec: SpecInput | QuantSpec): Promise<Quantized> {
  const q = await quantizeOn(x.device, x, spec);
  try {
    return toQuantized(q);
  } finally {
    disposeQuantized(q);
  }
}

/**
 * {@linkcode chooseGroupScales} of lib/formats on a native backend (the CPU's OpenMP by
 * default, or `device`): the same scale bits, tensor scale and effective scales, bit for bit
 * (the native quantizers are the TS reference's tested twins), for symmetric specs without a
 * tensor-scale override. The MSE scale search costs a hundred trial quantizations per group,
 * which the TS reference runs slowly.
 *
 * @example
 * ```ts
 * import { chooseGroupScalesNative } from "./native.ts";
 * const c = await chooseGroupScalesNative(new Float32Array(32).fill(3), 1, 32, "mxfp4");
 * console.assert(c.scales[0] === 126 && c.effective[0] === 0.5);
 * ```
 */
export async function chooseGroupScalesNative(
  x: Float32Array,
  rows: number,
  cols: number,
  spec: SpecInput | QuantSpec,
  device: Device = "cpu",
): Promise<GroupScaleChoice> {
  using t = Tensor.from(x, [rows, cols]);
  if (device === "cpu") return groupScalesOf(await quantizeTensor(t, spec));
  using d = t.to(device);
  return groupScalesOf(await quantizeTensor(d, spec));
}
