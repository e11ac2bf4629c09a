// The decode step's FP4 products with their next op in one call (fp4_dec_gate_up_silu,
// fp4_dec_qkv_rope_kv_store, fp4_dec_gemv_add_rmsnorm): on fresh random weights, activations,
// caches, residual streams and positions, each equals fp4_gemm_segments (fp4_gemm) followed by
// fp4_dec_silu_mul, fp4_dec_rope_kv_store or fp4_dec_add_rmsnorm on the same device, bit for bit
// (outputs, the up half, both caches, the residual stream and the norm). On CUDA that compares the GEMV's
// paired-row epilogue with the plain GEMV and the elementwise kernels, including pair counts
// that are not a multiple of a block's 8, pairs that straddle heads, an out-of-range position,
// and a k past the batch-1 kernel's limit (where the call runs the two kernels). Outputs are
// poisoned before each native write.
import { seededRandom as rng } from "../lib/random.ts";
import { assertEquals, assertThrows } from "./assert.ts";
import { check, native, NativeError } from "../ffi/library.ts";
import { cudaStatus, type Device, deviceId } from "../lib/device.ts";
import { f32ToBf16 } from "../lib/dtype.ts";
import { Tensor } from "../lib/tensor.ts";

const seed = (Math.random() * 2 ** 32) >>> 0;
const rand = rng(seed);
const tag = `(seed ${seed})`;
const devices: Device[] = ["cpu", ...(cudaStatus().available ? ["cuda" as Device] : [])];
const BF16 = 2, F32 = 0;

type Format = 0 | 1; // mxfp4, nvfp4

/** Random FP4 weights [n, k] stacked from segments, with a tensor scale per segment. */
function stack(format: Format, n: number, k: number, segments: number) {
  const group = format === 0 ? 32 : 16;
  return {
    codes: new Uint8Array(n * k / 2).map(() => rand() * 256),
    // E8M0 2^-7 .. 2^8; E4M3 0x20 .. 0x5f.
    scales: new Uint8Array(n * k / group).map(() =>
      format === 0 ? 120 + rand() * 16 : 0x20 + rand() * 0x40
    ),
    tensorScales: Float32Array.from(
      { length: segments },
      () => format === 1 ? Math.fround(2 ** -(rand() * 6) * (1 + rand())) : 1,
    ),
  };
}

function randomX(k: number): Uint16Array {
  return new Uint16Array(k).map(() => f32ToBf16((rand() + rand() + rand() - 1.5) * 0.5));
}

function on(
  device: Device,
  host: Uint8Array | Uint16Array | Float32Array | Int32Array,
  dtype?: "bf16",
) {
  const t = Tensor.from(host, [host.length], dtype);
  return device === "cpu" ? t : t.to(device);
}

function poisoned(device: Device, n: number): Tensor {
  return on(device, new Uint16Array(n).fill(0x7fc0), "bf16");
}

for (const device of devices) {
  const dev = deviceId(device);
  Deno.test(`${device}: fp4_dec_gate_up_silu equals the product then SwiGLU, bit for bit`, () => {
    const lib = native();
    // half 29: the last block holds 5 pairs; k 49152 runs past the batch-1 kernel.
    for (const format of [0, 1] as Format[]) {
      for (const [half, k] of [[40, 96], [29, 256], [512, 4096], [8, 49152]]) {
        const w = stack(format, 2 * half, k, 2);
        using codes = on(device, w.codes), scales = on(device, w.scales);
        using x = on(device, randomX(k), "bf16");
        using fused = poisoned(device, 2 * half), plain = poisoned(device, 2 * half);
        check(
          lib.fp4_dec_gate_up_silu(
            dev,
            format,
            x.pointer(),
            codes.pointer(),
            scales.pointer(),
            w.tensorScales,
            fused.pointer(),
            BigInt(half),
            BigInt(k),
          ),
          "fp4_dec_gate_up_silu",
        );
        check(
          lib.fp4_gemm_segments(
            dev,
            format,
            x.pointer(),
            codes.pointer(),
            scales.pointer(),
            w.tensorScales,
            new BigInt64Array([BigInt(half), BigInt(2 * half)]),
            2,
            plain.pointer(),
            1n,
            BigInt(2 * half),
            BigInt(k),
          ),
          "fp4_gemm_segments",
        );
        const up = Deno.UnsafePointer.offset(plain.pointer()!, 2 * half);
        check(
          lib.fp4_dec_silu_mul(dev, plain.pointer(), up, plain.pointer(), BF16, BigInt(half)),
          "fp4_dec_silu_mul",
        );
        assertEquals(fused.toArray(), plain.toArray(), `format ${format} ${half}x${k} ${tag}`);
      }
    }
  });

  Deno.test(`${device}: fp4_dec_qkv_rope_kv_store equals the product then RoPE and the KV store, bit for bit`, () => {
    const lib = native();
    const ctx = 12;
    // [heads, kv_heads, head_dim, k]: Llama-3's head shape; half 9 (pairs straddle heads and
    // blocks); one head of each; k past the batch-1 kernel.
    const shapes = [[8, 2, 128, 512], [3, 1, 18, 96], [1, 1, 16, 64], [2, 1, 16, 49152]];
    for (const format of [0, 1] as Format[]) {
      for (const [heads, kvHeads, headDim, k] of shapes) {
        for (const cacheDtype of [F32, BF16]) {
          // The CPU refuses a position past the cache (another test); CUDA poisons q and k.
          for (const p of device === "cuda" ? [0, 7, ctx] : [0, 7]) {
            const n = (heads + 2 * kvHeads) * headDim, width = kvHeads * headDim;
            const w = stack(format, n, k, 3);
            using codes = on(device, w.codes), scales = on(device, w.scales);
            using x = on(device, randomX(k), "bf16");
            const half = headDim / 2;
            const cos = Float32Array.from({ length: ctx * half }, () => rand());
            const sin = Float32Array.from({ length: ctx * half }, () => rand());
            using cosT = on(device, cos), sinT = on(device, sin);
            using pos = on(device, new Int32Array([p]));
            const cacheHost = () =>
              cacheDtype === F32
                ? Float32Array.from({ length: ctx * width }, () => rand())
                : new Uint16Array(ctx * width).map(() => f32ToBf16(rand()));
            const kc0 = cacheHost(), vc0 = cacheHost();
            const cache = (h: Float32Array | Uint16Array) =>
              on(device, h.slice(), h instanceof Uint16Array ? "bf16" : undefined);
            using kc1 = cache(kc0), vc1 = cache(vc0), kc2 = cache(kc0), vc2 = cache(vc0);
            using fused = poisoned(device, n), plain = poisoned(device, n);
            check(
              lib.fp4_dec_qkv_rope_kv_store(
                dev,
                format,
                x.pointer(),
                codes.pointer(),
                scales.pointer(),
                w.tensorScales,
                fused.pointer(),
                cosT.pointer(),
                sinT.pointer(),
                pos.pointer(),
                BigInt(ctx),
                BigInt(heads),
                BigInt(kvHeads),
                BigInt(headDim),
                BigInt(k),
                kc1.pointer(),
                vc1.pointer(),
                cacheDtype,
              ),
              "fp4_dec_qkv_rope_kv_store",
            );
            const ends = [heads, heads + kvHeads, heads + 2 * kvHeads].map((h) =>
              BigInt(h * headDim)
            );
            check(
              lib.fp4_gemm_segments(
                dev,
                format,
                x.pointer(),
                codes.pointer(),
                scales.pointer(),
                w.tensorScales,
                new BigInt64Array(ends),
                3,
                plain.pointer(),
                1n,
                BigInt(n),
                BigInt(k),
              ),
              "fp4_gemm_segments",
            );
            const part = (rows: bigint) =>
              Deno.UnsafePointer.offset(plain.pointer()!, 2 * Number(rows));
            check(
              lib.fp4_dec_rope_kv_store(
                dev,
                plain.pointer(),
                part(ends[0]),
                part(ends[1]),
                BF16,
                cosT.pointer(),
                sinT.pointer(),
                pos.pointer(),
                BigInt(ctx),
                1n,
                BigInt(heads),
                BigInt(kvHeads),
                BigInt(headDim),
                kc2.pointer(),
                vc2.pointer(),
                cacheDtype,
              ),
              "fp4_dec_rope_kv_store",
            );
            const what =
              `format ${format} [${heads}, ${kvHeads}, ${headDim}] k ${k} cache ${cacheDtype} pos ${p} ${tag}`;
            assertEquals(fused.toArray(), plain.toArray(), `qkv: ${what}`);
            assertEquals(kc1.toArray(), kc2.toArray(), `k cache: ${what}`);
            assertEquals(vc1.toArray(), vc2.toArray(), `v cache: ${what}`);
          }
        }
      }
    }
  });
}

for (const device of devices) {
  const dev = deviceId(device);
  Deno.test(`${device}: fp4_dec_gemv_add_rmsnorm equals the product then the add and norm, bit for bit`, () => {
    const lib = native();
    // [n, k]: o and down at Llama-3-8B's width (the ring kernel and its last-block norm on
    // CUDA), a small ring shape, and shapes the kernel leaves to the two calls (k % 256, n % 4).
    const shapes = [[4096, 4096], [4096, 14336], [256, 512], [96, 64], [30, 256]];
    for (const format of [0, 1] as Format[]) {
      for (const [n, k] of shapes) {
        for (const normDtype of [F32, BF16]) {
          const w = stack(format, n, k, 1);
          using codes = on(device, w.codes), scales = on(device, w.scales);
          using x = on(device, randomX(k), "bf16");
          const hidden = Float32Array.from({ length: n }, () => 4 * (rand() - 0.5));
          const normW = Float32Array.from({ length: n }, () => 1 + 0.2 * (rand() - 0.5));
          using norm = normDtype === F32
            ? on(device, normW)
            : on(device, Uint16Array.from(normW, f32ToBf16), "bf16");
          using h1 = on(device, hidden.slice()), h2 = on(device, hidden.slice());
          using y1 = poisoned(device, n), y2 = poisoned(device, n);
          using o1 = poisoned(device, n), o2 = poisoned(device, n);
          using counter = on(device, new Int32Array(1));
          for (let rep = 0; rep < 2; rep++) { // twice: the counter is ready again
            check(
              lib.fp4_dec_gemv_add_rmsnorm(
                dev,
                format,
                x.pointer(),
                codes.pointer(),
                scales.pointer(),
                w.tensorScales[0],
                y1.pointer(),
                BigInt(n),
                BigInt(k),
                h1.pointer(),
                norm.pointer(),
                normDtype,
                o1.pointer(),
                1e-5,
                counter.pointer(),
              ),
              "fp4_dec_gemv_add_rmsnorm",
            );
            check(
              lib.fp4_gemm(
                dev,
                format,
                x.pointer(),
                codes.pointer(),
                scales.pointer(),
                w.tensorScales[0],
                y2.pointer(),
                1n,
                BigInt(n),
                BigInt(k),
              ),
              "fp4_gemm",
            );
            check(
              lib.fp4_dec_add_rmsnorm(
                dev,
                h2.pointer(),
                y2.pointer(),
                BF16,
                norm.pointer(),
                normDtype,
                o2.pointer(),
                BF16,
                1n,
                BigInt(n),
                1e-5,
              ),
              "fp4_dec_add_rmsnorm",
            );
            const what = `format ${format} ${n}x${k} norm ${normDtype} call ${rep} ${tag}`;
            assertEquals(y1.toArray(), y2.toArray(), `y: ${what}`);
            assertEquals(h1.toArray(), h2.toArray(), `hidden: ${what}`);
            assertEquals(o1.toArray(), o2.toArray(), `out: ${what}`);
            assertEquals(counter.toArray(), new Int32Array(1), `counter: ${what}`);
          }
        }
      }
    }
  });
}

Deno.test("the fused decode products reject bad input with Errors that name the problem", () => {
  const lib = native();
  const buf = new Uint8Array(1 << 16);
  const p = Deno.UnsafePointer.of(buf);
  const ts = new Float32Array([1, 1, 1]);
  const silu = (format: number, half: number, k: number, device = 0, x = p) =>
    check(
      lib.fp4_dec_gate_up_silu(device, format, x, p, p, ts, p, BigInt(half), BigInt(k)),
      "silu",
    );
  assertThrows(() => silu(0, 0, 64), NativeError, "half = 0");
  assertThrows(() => silu(0, 8, 48), NativeError, "not a multiple of the MXFP4 group size");
  assertThrows(() => silu(2, 8, 64), NativeError, "format 2");
  assertThrows(() => silu(0, 8, 64, 7), NativeError, "unknown device id 7");
  assertThrows(() => silu(0, 8, 64, 0, null), NativeError, "null pointer");
  assertThrows(
    () =>
      check(lib.fp4_dec_gate_up_silu(0, 1, p, p, p, new Float32Array([1, NaN]), p, 8n, 64n), "s"),
    NativeError,
    "tensor scale must be finite",
  );

  const pos = new Int32Array([4]);
  const qkv = (
    o: { headDim?: number; ctx?: number; cacheDtype?: number; cos?: Deno.PointerValue },
  ) =>
    check(
      lib.fp4_dec_qkv_rope_kv_store(
        0,
        0,
        p,
        p,
        p,
        ts,
        p,
        o.cos === undefined ? p : o.cos,
        p,
        Deno.UnsafePointer.of(pos),
        BigInt(o.ctx ?? 8),
        2n,
        1n,
        BigInt(o.headDim ?? 16),
        64n,
        p,
        p,
        o.cacheDtype ?? 0,
      ),
      "qkv",
    );
  assertThrows(() => qkv({ headDim: 15 }), NativeError, "must be even");
  assertThrows(() => qkv({ cacheDtype: 5 }), NativeError, "cache dtype 5");
  assertThrows(() => qkv({ cos: null }), NativeError, "null pointer");
  // A position past the cache: an Error, and the output keeps what it held.
  const out = new Uint16Array(64).fill(0x1234);
  assertThrows(
    () =>
      check(
        lib.fp4_dec_qkv_rope_kv_store(
          0,
          0,
          p,
          p,
          p,
          ts,
          Deno.UnsafePointer.of(out),
          p,
          p,
          Deno.UnsafePointer.of(pos),
          4n,
          2n,
          1n,
          16n,
          64n,
          p,
          p,
          0,
        ),
        "qkv",
      ),
    NativeError,
    "position 4 does not fit a cache of 4 rows",
  );
  assertEquals(out, new Uint16Array(64).fill(0x1234));

  const addNorm = (o: { wDtype?: number; hidden?: Deno.PointerValue; k?: number }) =>
    check(
      lib.fp4_dec_gemv_add_rmsnorm(
        0,
        0,
        p,
        p,
        p,
        1,
        p,
        64n,
        BigInt(o.k ?? 64),
        o.hidden === undefined ? p : o.hidden,
        p,
        o.wDtype ?? 2,
        p,
        1e-5,
        p,
      ),
      "addNorm",
    );
  assertThrows(() => addNorm({ wDtype: 1 }), NativeError, "norm weight dtype 1");
  assertThrows(() => addNorm({ hidden: null }), NativeError, "null pointer");
  assertThrows(() => addNorm({ k: 40 }), NativeError, "not a multiple of the MXFP4 group size");
});
