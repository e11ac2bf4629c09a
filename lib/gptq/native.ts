/**
 * The native GPTQ solve (`fp4_gptq_solve`): the algorithm of lib/gptq/reference.ts with static
 * group scales, in f32 with an f64 Cholesky, on the CPU or CUDA backend, run nonblocking. The
 * element rounding is the native twin of lib/formats (cuda/src/formats.hpp), so the codes are
 * lib/formats codes. The CUDA solve reproduces the CPU solve's float operations in the same
 * order (same U, unfused products), so both give the same codes up to the division and
 * rounding of the f32 inputs; tests/gptq_layer_test.ts reports the fraction that differ.
 *
 * Inputs are host arrays or f32 Tensors on any device; data already on the solve's device is
 * used where it lies (a 14336 x 4096 W is 235 MB: host copies and PCIe transfers of it cost far
 * more than the CUDA solve itself). {@linkcode gptqSolveInPlace} keeps the outputs on the device
 * too.
 *
 * @module
 */
import { check, checkAsync, native } from "../../ffi/library.ts";
import { type Device, deviceId, requireDevice } from "../device.ts";
import { Tensor } from "../tensor.ts";
import { CODECS } from "../formats/native.ts";
import type { ElementName } from "../formats/spec.ts";

/** f32 data for the solve: a host array, or an f32 Tensor on any device. */
export type SolveInput = Float32Array | Tensor;

/** Inputs of {@linkcode gptqSolveNative} besides W and H. */
export interface NativeSolveOptions {
  /** Effective scale S (block scale x tensor scale) of every group, rows x groups, stored layout. */
  scales: SolveInput;
  /** Elements per group along the input dimension. */
  groupSize: number;
  /** The element format (symmetric): codes are its storage bits. */
  element: ElementName;
  /** Processing order (stored column of the p-th processed column); default stored order. */
  order?: Int32Array;
  /** Relative damping; default 0.01. */
  damp?: number;
  /** Lazy-update block size; default 128. */
  blockSize?: number;
  /** Damping increases (x10) after a failed factorization; default 4. */
  maxDampRetries?: number;
  /** Where to run; default W's device when W is a Tensor, else `"cpu"`. */
  device?: Device;
}

/** What a solve reports besides its outputs. */
export interface NativeSolveStats {
  /** Absolute damping used. */
  damp: number;
  /** trace((W - Q) H (W - Q)^T): CPU in f64; CUDA as sum H .* (D^T D), D^T D in f32, sum in f64. */
  proxyLoss: number;
  /** Seconds spent in the f64 factorization (host for cpu; cuSOLVER on the GPU for cuda). */
  factorSeconds: number;
  /** Seconds in the column loop and lazy updates. */
  loopSeconds: number;
}

/** Output of {@linkcode gptqSolveNative}; arrays in stored column order. */
export interface NativeSolveResult extends NativeSolveStats {
  /** Element codes (storage bits), rows x cols, one per byte. */
  codes: Uint8Array;
  /** Dequantized weights, rows x cols. */
  dequantized: Float32Array;
}

const H2D = 0, D2H = 1, D2D = 2;

function f32Size(name: string, x: SolveInput): number {
  if (!(x instanceof Tensor)) return x.length;
  if (x.dtype !== "f32") throw new Error(`${name} must be an f32 tensor, got ${x.dtype}`);
  return x.size;
}

/** Checks the problem's shapes and returns the element codec index. */
function validate(
  w: SolveInput,
  h: SolveInput,
  rows: number,
  cols: number,
  options: NativeSolveOptions,
): number {
  const gs = options.groupSize;
  const nw = f32Size("W", w), nh = f32Size("H", h), ns = f32Size("the scales", options.scales);
  if (nw !== rows * cols) throw new Error(`W has ${nw} elements, expected ${rows * cols}`);
  if (nh !== cols * cols) throw new Error(`H has ${nh} elements, expected ${cols * cols}`);
  if (!Number.isSafeInteger(gs) || gs < 1 || cols % gs !== 0) {
    throw new Error(`in-features ${cols} are not divisible by the group size ${gs}`);
  }
  if (ns !== rows * (cols / gs)) {
    throw new Error(`expected ${rows * (cols / gs)} group scales, got ${ns}`);
  }
  if (options.order && options.order.length !== cols) {
    throw new Error(`the order has ${options.order.length} entries, expected ${cols}`);
  }
  const codec = CODECS.indexOf(options.element);
  if (codec < 0) throw new Error(`unknown element format "${options.element}"`);
  return codec;
}

function hostPointer(a: Float32Array | Uint8Array): Deno.PointerValue {
  return Deno.UnsafePointer.of(a as BufferSource);
}

/** `x` on `device`: in place when it is there, else a copy pushed to `temps` for disposal. */
function placed(x: SolveInput, device: Device, temps: Tensor[]): Deno.PointerValue {
  if (x instanceof Tensor && x.device === device) return x.pointer();
  if (!(x instanceof Tensor) && device === "cpu") return hostPointer(x);
  const t = (x instanceof Tensor ? x : Tensor.from(x, [x.length])).to(device);
  temps.push(t);
  return t.pointer();
}

/** The host data of W on the host (shared when it is there; a download otherwise). */
function hostData(x: SolveInput): Float32Array {
  if (!(x instanceof Tensor)) return x;
  return (x.device === "cpu" ? x.data() : x.toArray()) as Float32Array;
}

/**
 * CUDA memory private to one solve. A Tensor's device allocation is initialised by an upload
 * from the host, which for W costs as much as the solve.
 */
function deviceAlloc(bytes: number, owned: Deno.PointerValue[]): Deno.PointerValue {
  const out = new BigUint64Array(1);
  check(native().fp4_alloc(deviceId("cuda"), BigInt(bytes), out), "fp4_alloc");
  const p = Deno.UnsafePointer.create(out[0]);
  owned.push(p);
  return p;
}

function copy(dst: Deno.PointerValue, src: Deno.PointerValue, bytes: number, kind: number): void {
  check(native().fp4_memcpy(deviceId("cuda"), dst, src, BigInt(bytes), kind), "fp4_memcpy");
}

/** Runs fp4_gptq_solve on pointers valid on `device`; `w` is overwritten with Q. */
async function solve(
  device: Device,
  w: Deno.PointerValue,
  h: Deno.PointerValue,
  scales: Deno.PointerValue,
  codes: Deno.PointerValue,
  rows: number,
  cols: number,
  codec: number,
  options: NativeSolveOptions,
): Promise<NativeSolveStats> {
  // Copied: the call runs on another thread while the caller's array could change.
  const order = options.order ? Int32Array.from(options.order) : null;
  const info = new Float64Array([NaN, NaN, NaN, NaN]);
  await checkAsync(
    native().fp4_gptq_solve(
      deviceId(device),
      w,
      h,
      BigInt(rows),
      BigInt(cols),
      scales,
      options.groupSize,
      codec,
      order,
      options.damp ?? 0.01,
      options.blockSize ?? 128,
      options.maxDampRetries ?? 4,
      codes,
      info,
    ),
    "fp4_gptq_solve",
    [order, info],
  );
  return { damp: info[0], proxyLoss: info[1], factorSeconds: info[2], loopSeconds: info[3] };
}

/**
 * Runs GPTQ on W (rows x cols) with Hessian H (cols x cols) natively; neither input is modified.
 * W, H and the scales may be host arrays or f32 Tensors on any device; on CUDA, W is copied
 * device to device when it is there already (else uploaded once), and only the codes and the
 * dequantized weights come back.
 *
 * @example
 * ```ts
 * import { gptqSolveNative } from "./native.ts";
 * const h = new Float32Array([2, 0, 0, 1]);
 * const r = await gptqSolveNative(new Float32Array([0.3, -0.7]), h, 1, 2, {
 *   scales: new Float32Array([0.125]), groupSize: 2, element: "int4",
 * });
 * console.assert(Math.abs(r.dequantized[1] + 0.75) < 1e-6 && r.codes[1] === 10);
 * ```
 */
export async function gptqSolveNative(
  w: SolveInput,
  h: SolveInput,
  rows: number,
  cols: number,
  options: NativeSolveOptions,
): Promise<NativeSolveResult> {
  const device = requireDevice(options.device ?? (w instanceof Tensor ? w.device : "cpu"));
  const codec = validate(w, h, rows, cols, options);
  const n = rows * cols;
  const temps: Tensor[] = [];
  const owned: Deno.PointerValue[] = [];
  try {
    const hp = placed(h, device, temps);
    const sp = placed(options.scales, device, temps);
    if (device === "cpu") {
      // The solve writes Q over W: a download is already a private copy.
      const dequantized = w instanceof Tensor && w.device !== "cpu"
        ? hostData(w)
        : hostData(w).slice();
      const codes = new Uint8Array(n).fill(0xff);
      const stats = await solve(
        device,
        hostPointer(dequantized),
        hp,
        sp,
        hostPointer(codes),
        rows,
        cols,
        codec,
        options,
      );
      return { codes, dequantized, ...stats };
    }
    const wd = deviceAlloc(4 * n, owned);
    // Not poisoned: that would be an upload as large as the output. The kernels write every
    // code (pinned by the in-place test, whose outputs are poisoned).
    const cd = deviceAlloc(n, owned);
    if (w instanceof Tensor && w.device === device) copy(wd, w.pointer(), 4 * n, D2D);
    else copy(wd, hostPointer(hostData(w)), 4 * n, H2D);
    const stats = await solve(device, wd, hp, sp, cd, rows, cols, codec, options);
    const dequantized = new Float32Array(n);
    const codes = new Uint8Array(n);
    copy(hostPointer(dequantized), wd, 4 * n, D2H);
    copy(hostPointer(codes), cd, n, D2H);
    return { codes, dequantized, ...stats };
  } finally {
    for (const t of temps) t.dispose();
    for (const p of owned) check(native().fp4_free(deviceId("cuda"), p), "fp4_free");
  }
}

/**
 * GPTQ with the outputs left where W lies: `w` (an f32 Tensor, rows x cols) is overwritten with
 * the dequantized weights and `codes` (a u8 Tensor of rows x cols on the same device) receives
 * the codes; nothing is copied when H and the scales are on that device too. This is the
 * device-resident form of {@linkcode gptqSolveNative} (clone W first to keep it).
 *
 * @example
 * ```ts
 * import { gptqSolveInPlace } from "./native.ts";
 * import { Tensor } from "../tensor.ts";
 * using w = Tensor.from(new Float32Array([0.3, -0.7]), [1, 2]);
 * using codes = Tensor.empty([2], "u8");
 * await gptqSolveInPlace(w, new Float32Array([2, 0, 0, 1]), codes, 1, 2, {
 *   scales: new Float32Array([0.125]), groupSize: 2, element: "int4",
 * });
 * console.assert(w.toArray()[1] === -0.75 && codes.toArray()[1] === 10);
 * ```
 */
export async function gptqSolveInPlace(
  w: Tensor,
  h: SolveInput,
  codes: Tensor,
  rows: number,
  cols: number,
  options: NativeSolveOptions,
): Promise<NativeSolveStats> {
  const device = w.device;
  if (options.device !== undefined && requireDevice(options.device) !== device) {
    throw new Error(`W is on ${device}, but the solve was asked to run on ${options.device}`);
  }
  const codec = validate(w, h, rows, cols, options);
  if (codes.dtype !== "u8" || codes.size !== rows * cols || codes.device !== device) {
    throw new Error(
      `codes must be a u8 tensor of ${rows * cols} elements on ${device}, got ${codes.dtype} ` +
        `x ${codes.size} on ${codes.device}`,
    );
  }
  const temps: Tensor[] = [];
  try {
    const hp = placed(h, device, temps);
    const sp = placed(options.scales, device, temps);
    return await solve(device, w.pointer(), hp, sp, codes.pointer(), rows, cols, codec, options);
  } finally {
    for (const t of temps) t.dispose();
  }
}

/**
 * The proxy loss trace((W - Q) H (W - Q)^T) on the native CPU backend (f64 sums, OpenMP over
 * rows): what {@linkcode gptqSolveNative} reports, for any W and Q, e.g. round to nearest. Equal
 * to lib/gptq/reference.ts `proxyLoss` up to summation order.
 *
 * @example
 * ```ts
 * import { proxyLossNative } from "./native.ts";
 * const l = await proxyLossNative(new Float32Array([1, 0]), new Float32Array(2), new Float32Array([2, 0, 0, 1]), 1, 2);
 * console.assert(l === 2);
 * ```
 */
export async function proxyLossNative(
  w: Float32Array,
  q: Float32Array,
  h: Float32Array,
  rows: number,
  cols: number,
): Promise<number> {
  if (w.length !== rows * cols || q.length !== rows * cols || h.length !== cols * cols) {
    throw new Error(
      `proxy loss: W ${w.length}, Q ${q.length} and H ${h.length} values do not fit [${rows}, ${cols}]`,
    );
  }
  const out = new Float64Array(1);
  await checkAsync(
    native().fp4_gptq_proxy_loss(w, q, h, BigInt(rows), BigInt(cols), out),
    "fp4_gptq_proxy_loss",
    [w, q, h, out],
  );
  return out[0];
}
