// The decode-step ops of fp4lab/decode.h (the fused ones included) on fresh random inputs: the
// CPU twins against float64 references, and, when a GPU is usable, every CUDA kernel against
// its CPU twin (f32 and bf16 activations, f32 and bf16 caches, GQA, positions past 0). Outputs
// are poisoned (NaN bytes) before each native write.
import { assert, assertEquals } from "./assert.ts";
import { check, native } from "../ffi/library.ts";
import { cudaStatus, type Device, deviceId } from "../lib/device.ts";
import { abiDType, bf16ToF32, f32ToBf16 } from "../lib/dtype.ts";
import { Tensor } from "../lib/tensor.ts";
import { DecodeEngine } from "../lib/generate/mod.ts";
import { LlamaModel, parseLlamaConfig } from "../lib/model/mod.ts";

const seed = (Math.random() * 2 ** 31) >>> 0;
console.log(`generate_decode_ops_test seed ${seed}`);
let state = seed;
function rand(): number {
  state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
  return state / 2 ** 32 * 2 - 1;
}

type Act = "f32" | "bf16";
function hostOf(values: number[] | Float32Array, dtype: Act): Float32Array | Uint16Array {
  return dtype === "f32" ? Float32Array.from(values) : Uint16Array.from(values, f32ToBf16);
}
function valuesOf(t: Tensor): Float32Array {
  const a = t.toArray();
  return a instanceof Float32Array ? a : Float32Array.from(a as Uint16Array, bf16ToF32);
}
function randoms(n: number, s = 1): number[] {
  return Array.from({ length: n }, () => rand() * s);
}

interface Case {
  name: string;
  // Runs the op on `device` and returns its outputs as f32 values.
  run(device: Device): Float32Array;
  // float64 reference of the CPU result, or null when the op is checked by CUDA twin only.
  ref: Float64Array | null;
  // Allowed |cpu - ref| and |cuda - cpu| relative to max |ref| (or |cpu|).
  refBound: number;
  twinBound: number;
}

function on(device: Device, host: Float32Array | Uint16Array | Int32Array, dtype?: "bf16"): Tensor {
  const t = Tensor.from(host, [host.length], dtype);
  return device === "cpu" ? t : t.to(device);
}
function poisoned(device: Device, n: number, dtype: Act | "i32"): Tensor {
  return Tensor.empty([n], dtype, device);
}

function cases(act: Act, cacheDt: Act): Case[] {
  const out: Case[] = [];
  const lib = native();
  const A = abiDType(act), C = abiDType(cacheDt);
  const q = (n: number, s = 1) => hostOf(randoms(n, s), act);
  const f = (h: Float32Array | Uint16Array) =>
    h instanceof Float32Array ? Float64Array.from(h) : Float64Array.from(h, bf16ToF32);

  // rmsnorm (x f32 -> y act) and add_rmsnorm (x += r, then the same norm; x and y both
  // checked): an odd dim (CUDA's element path), Llama-3-8B's hidden size (the vector path, one
  // row as a decode step has) and a dim past the vector path's limit.
  for (const [rows, dim] of [[3, 70], [1, 4096], [2, 8200]]) {
    const eps = 1e-5;
    const x = Float32Array.from(randoms(rows * dim, 3));
    const r = q(rows * dim, 2);
    const w = hostOf(randoms(dim).map((v) => 1 + 0.2 * v), "bf16");
    const normRef = (xs: Float64Array) => {
      const ref = new Float64Array(rows * dim);
      for (let i = 0; i < rows; i++) {
        let ss = 0;
        for (let d = 0; d < dim; d++) ss += xs[i * dim + d] ** 2;
        const inv = 1 / Math.sqrt(ss / dim + eps);
        for (let d = 0; d < dim; d++) ref[i * dim + d] = bf16ToF32(w[d]) * xs[i * dim + d] * inv;
      }
      return ref;
    };
    const rf = f(r);
    const sum = Float64Array.from(x, (v, i) => v + rf[i]);
    const bf = act === "bf16" ? "bf16" as const : undefined;
    const norm = (device: Device, add: boolean) => {
      const xd = on(device, x.slice()), y = poisoned(device, rows * dim, act);
      const dev = deviceId(device);
      const w_ = on(device, w, "bf16").pointer();
      check(
        add
          ? lib.fp4_dec_add_rmsnorm(
            dev,
            xd.pointer(),
            on(device, r, bf).pointer(),
            A,
            w_,
            2,
            y.pointer(),
            A,
            BigInt(rows),
            BigInt(dim),
            eps,
          )
          : lib.fp4_dec_rmsnorm(
            dev,
            xd.pointer(),
            w_,
            2,
            y.pointer(),
            A,
            BigInt(rows),
            BigInt(dim),
            eps,
          ),
        add ? "add_rmsnorm" : "rmsnorm",
      );
      return { x: valuesOf(xd), y: valuesOf(y) };
    };
    const yBounds = {
      refBound: act === "bf16" ? 2 ** -8 : 1e-6,
      twinBound: act === "bf16" ? 2 ** -7 : 1e-6,
    };
    out.push({
      name: `rmsnorm ${rows}x${dim}`,
      ref: normRef(Float64Array.from(x)),
      ...yBounds,
      run: (device) => norm(device, false).y,
    });
    out.push({
      name: `add_rmsnorm ${rows}x${dim} (y)`,
      ref: normRef(sum),
      ...yBounds,
      run: (device) => norm(device, true).y,
    });
    out.push({
      name: `add_rmsnorm ${rows}x${dim} (x + r)`,
      ref: sum,
      refBound: 2 ** -23,
      twinBound: 0,
      run: (device) => norm(device, true).x,
    });
  }
  { // linear: x act [rows, in] x w bf16 [out, in] -> y f32 (and act)
    for (const [rows, o, i] of [[1, 37, 64], [5, 19, 40], [2, 8, 13]]) {
      const x = q(rows * i), w = hostOf(randoms(o * i), "bf16");
      const ref = new Float64Array(rows * o);
      const xf = f(x), wf = f(w);
      for (let r = 0; r < rows; r++) {
        for (let n = 0; n < o; n++) {
          let s = 0;
          for (let k = 0; k < i; k++) s += xf[r * i + k] * wf[n * i + k];
          ref[r * o + n] = s;
        }
      }
      for (const yDt of ["f32", act] as const) {
        out.push({
          name: `linear ${rows}x${o}x${i} -> ${yDt}`,
          ref,
          refBound: yDt === "bf16" ? 2 ** -7 : 1e-5,
          twinBound: yDt === "bf16" ? 2 ** -7 : 1e-5,
          run(device) {
            const y = poisoned(device, rows * o, yDt);
            check(
              lib.fp4_dec_linear(
                deviceId(device),
                on(device, x, act === "bf16" ? "bf16" : undefined).pointer(),
                A,
                on(device, w, "bf16").pointer(),
                2,
                y.pointer(),
                abiDType(yDt),
                BigInt(rows),
                BigInt(o),
                BigInt(i),
              ),
              "linear",
            );
            return valuesOf(y);
          },
        });
      }
    }
  }
  // rope + kv_store (apart and fused) + attention at positions p0..p0+T-1 over a cache of ctx
  // rows: a small case with more cache splits than rows, grouped queries (GQA groups of 4 and
  // 2, plain multi-head), Llama-3-8B's heads at position 700, head_dim 16, 64, 96, 98 (lanes
  // holding dims past head_dim), 128 (CUDA's vector row loads with a bf16 cache) and 256.
  for (
    const [ctx, p0, T, heads, kvh, hd] of [
      [24, 9, 3, 4, 2, 16],
      [640, 300, 2, 4, 1, 128],
      [40, 30, 1, 2, 2, 96],
      [1024, 700, 1, 32, 8, 128],
      [300, 150, 2, 8, 2, 64],
      [64, 40, 1, 4, 4, 256],
      [50, 20, 2, 6, 3, 98],
    ]
  ) {
    const half = hd / 2;
    const cos = new Float32Array(ctx * half), sin = new Float32Array(ctx * half);
    for (let p = 0; p < ctx; p++) {
      for (let j = 0; j < half; j++) {
        cos[p * half + j] = Math.cos(p * 0.3 ** (j / 4));
        sin[p * half + j] = Math.sin(p * 0.3 ** (j / 4));
      }
    }
    const xq = q(T * heads * hd, 2);
    const xf = f(xq);
    const ropeRef = new Float64Array(xf.length);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < heads; h++) {
        for (let j = 0; j < half; j++) {
          const b = (t * heads + h) * hd,
            c = cos[(p0 + t) * half + j],
            s = sin[(p0 + t) * half + j];
          ropeRef[b + j] = xf[b + j] * c - xf[b + j + half] * s;
          ropeRef[b + j + half] = xf[b + j + half] * c + xf[b + j] * s;
        }
      }
    }
    const bf = act === "bf16" ? "bf16" as const : undefined;
    out.push({
      name: `rope (head_dim ${hd})`,
      ref: ropeRef,
      refBound: act === "bf16" ? 2 ** -8 : 1e-6,
      twinBound: act === "bf16" ? 2 ** -7 : 1e-6,
      run(device) {
        const x = on(device, xq.slice(), bf);
        check(
          lib.fp4_dec_rope(
            deviceId(device),
            x.pointer(),
            A,
            on(device, cos).pointer(),
            on(device, sin).pointer(),
            on(device, new Int32Array([p0])).pointer(),
            BigInt(ctx),
            BigInt(T),
            BigInt(heads),
            BigInt(hd),
          ),
          "rope",
        );
        return valuesOf(x);
      },
    });
    // Cache rows 0..p0-1 pre-filled; rows p0..p0+T-1 written by kv_store from new k, v.
    const width = kvh * hd;
    const kOld = hostOf(randoms(ctx * width), cacheDt),
      vOld = hostOf(randoms(ctx * width), cacheDt);
    const kNew = q(T * width), vNew = q(T * width);
    const kAll = f(kOld), vAll = f(vOld);
    const round = (v: number) => cacheDt === "bf16" ? bf16ToF32(f32ToBf16(v)) : Math.fround(v);
    const kNewF = f(kNew), vNewF = f(vNew);
    for (let i = 0; i < T * width; i++) {
      kAll[p0 * width + i] = round(kNewF[i]);
      vAll[p0 * width + i] = round(vNewF[i]);
    }
    const qf = f(xq), scale = 1 / Math.sqrt(hd);
    const attRef = new Float64Array(T * heads * hd);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < heads; h++) {
        const g = Math.floor(h / (heads / kvh));
        const sc: number[] = [];
        for (let s = 0; s <= p0 + t; s++) {
          let dot = 0;
          for (let d = 0; d < hd; d++) {
            dot += qf[(t * heads + h) * hd + d] * kAll[s * width + g * hd + d];
          }
          sc.push(dot * scale);
        }
        const m = Math.max(...sc);
        const e = sc.map((v) => Math.exp(v - m));
        const z = e.reduce((a, b) => a + b, 0);
        for (let d = 0; d < hd; d++) {
          let acc = 0;
          for (let s = 0; s <= p0 + t; s++) acc += e[s] / z * vAll[s * width + g * hd + d];
          attRef[(t * heads + h) * hd + d] = acc;
        }
      }
    }
    out.push({
      name: `kv_store + attention (${cacheDt} cache, ${p0 + T} rows, head_dim ${hd})`,
      ref: attRef,
      refBound: act === "bf16" ? 2 ** -7 : 1e-5,
      twinBound: act === "bf16" ? 2 ** -7 : 1e-5,
      run(device) {
        const dev = deviceId(device);
        const cbf = cacheDt === "bf16" ? "bf16" as const : undefined;
        const kc = on(device, kOld.slice(), cbf), vc = on(device, vOld.slice(), cbf);
        const pos = on(device, new Int32Array([p0]));
        check(
          lib.fp4_dec_kv_store(
            dev,
            on(device, kNew, bf).pointer(),
            A,
            kc.pointer(),
            C,
            pos.pointer(),
            BigInt(ctx),
            BigInt(T),
            BigInt(width),
          ),
          "kv_store",
        );
        check(
          lib.fp4_dec_kv_store(
            dev,
            on(device, vNew, bf).pointer(),
            A,
            vc.pointer(),
            C,
            pos.pointer(),
            BigInt(ctx),
            BigInt(T),
            BigInt(width),
          ),
          "kv_store",
        );
        const o = poisoned(device, T * heads * hd, act);
        check(
          lib.fp4_dec_attention(
            dev,
            on(device, xq, bf).pointer(),
            A,
            kc.pointer(),
            vc.pointer(),
            C,
            o.pointer(),
            A,
            pos.pointer(),
            BigInt(ctx),
            BigInt(T),
            BigInt(heads),
            BigInt(kvh),
            BigInt(hd),
            scale,
          ),
          "attention",
        );
        return valuesOf(o);
      },
    });
    // The fused call: q and k rotated in place, the rotated k and v at rows p0.. of the caches.
    const kq = q(T * width);
    const kRot = new Float64Array(T * width);
    const kqf = f(kq);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < kvh; h++) {
        for (let j = 0; j < half; j++) {
          const b = (t * kvh + h) * hd,
            c = cos[(p0 + t) * half + j],
            s = sin[(p0 + t) * half + j];
          kRot[b + j] = kqf[b + j] * c - kqf[b + j + half] * s;
          kRot[b + j + half] = kqf[b + j + half] * c + kqf[b + j] * s;
        }
      }
    }
    const kCacheRef = f(kOld), vCacheRef = f(vOld);
    kCacheRef.set(kRot, p0 * width);
    vCacheRef.set(vNewF, p0 * width);
    const fusedRef = new Float64Array(ropeRef.length + kRot.length + 2 * ctx * width);
    fusedRef.set(ropeRef);
    fusedRef.set(kRot, ropeRef.length);
    fusedRef.set(kCacheRef, ropeRef.length + kRot.length);
    fusedRef.set(vCacheRef, ropeRef.length + kRot.length + ctx * width);
    out.push({
      name: `rope_kv_store (${cacheDt} cache, head_dim ${hd})`,
      ref: fusedRef,
      // Unrounded references: the rows stored in a bf16 cache are off by its rounding.
      refBound: act === "bf16" || cacheDt === "bf16" ? 2 ** -8 : 1e-6,
      // The same f32 expressions on both sides (no contraction into FMAs).
      twinBound: 0,
      run(device) {
        const cbf = cacheDt === "bf16" ? "bf16" as const : undefined;
        const xq_ = on(device, xq.slice(), bf), xk = on(device, kq.slice(), bf);
        const kc = on(device, kOld.slice(), cbf), vc = on(device, vOld.slice(), cbf);
        check(
          lib.fp4_dec_rope_kv_store(
            deviceId(device),
            xq_.pointer(),
            xk.pointer(),
            on(device, vNew, bf).pointer(),
            A,
            on(device, cos).pointer(),
            on(device, sin).pointer(),
            on(device, new Int32Array([p0])).pointer(),
            BigInt(ctx),
            BigInt(T),
            BigInt(heads),
            BigInt(kvh),
            BigInt(hd),
            kc.pointer(),
            vc.pointer(),
            C,
          ),
          "rope_kv_store",
        );
        const all = [xq_, xk, kc, vc].map(valuesOf);
        const res = new Float32Array(all.reduce((a, v) => a + v.length, 0));
        let o = 0;
        for (const v of all) {
          res.set(v, o);
          o += v.length;
        }
        return res;
      },
    });
  }
  { // silu_mul, add, embedding, argmax
    const n = 301;
    const g = q(n, 4), u = q(n, 2);
    const gf = f(g), uf = f(u);
    const bf = act === "bf16" ? "bf16" as const : undefined;
    out.push({
      name: "silu_mul",
      ref: Float64Array.from(gf, (v, i) => v / (1 + Math.exp(-v)) * uf[i]),
      refBound: act === "bf16" ? 2 ** -8 : 1e-6,
      twinBound: act === "bf16" ? 2 ** -7 : 1e-6,
      run(device) {
        const o = poisoned(device, n, act);
        check(
          lib.fp4_dec_silu_mul(
            deviceId(device),
            on(device, g, bf).pointer(),
            on(device, u, bf).pointer(),
            o.pointer(),
            A,
            BigInt(n),
          ),
          "silu_mul",
        );
        return valuesOf(o);
      },
    });
    const y0 = Float32Array.from(randoms(n));
    out.push({
      name: "add",
      ref: Float64Array.from(y0, (v, i) => v + uf[i]),
      refBound: 1e-6,
      twinBound: 0,
      run(device) {
        const y = on(device, y0.slice());
        check(
          lib.fp4_dec_add(deviceId(device), y.pointer(), on(device, u, bf).pointer(), A, BigInt(n)),
          "add",
        );
        return valuesOf(y);
      },
    });
    const vocab = 29, dim = 12, ids = new Int32Array([5, 0, 28, 5]);
    const table = hostOf(randoms(vocab * dim), "bf16");
    const tf = f(table);
    out.push({
      name: "embedding",
      ref: Float64Array.from(
        { length: ids.length * dim },
        (_, i) => tf[ids[Math.floor(i / dim)] * dim + i % dim],
      ),
      refBound: 0,
      twinBound: 0,
      run(device) {
        const y = poisoned(device, ids.length * dim, "f32");
        check(
          lib.fp4_dec_embedding(
            deviceId(device),
            on(device, ids).pointer(),
            on(device, table, "bf16").pointer(),
            2,
            y.pointer(),
            BigInt(ids.length),
            BigInt(vocab),
            BigInt(dim),
          ),
          "embedding",
        );
        return valuesOf(y);
      },
    });
    // A row per CUDA block stride pattern: the vector path (width % 4 == 0), the element path,
    // and the Llama-3 vocabulary with the winner near the end; NaNs and ties planted.
    for (const [rows, width] of [[3, 1000], [2, 1001], [1, 128256]]) {
      const lx = Float32Array.from(randoms(rows * width));
      lx[Math.min(rows - 1, 1) * width + 17] = NaN;
      const r = rows - 1;
      lx[r * width + Math.floor(width * 0.4)] = lx[r * width + width - 3] = 5; // the first wins
      const am = new Float64Array(rows);
      for (let i = 0; i < rows; i++) {
        let b = -1;
        for (let j = 0; j < width; j++) {
          const v = lx[i * width + j];
          if (!Number.isNaN(v) && (b < 0 || v > lx[i * width + b])) b = j;
        }
        am[i] = b;
      }
      out.push({
        name: `argmax ${rows}x${width}`,
        ref: am,
        refBound: 0,
        twinBound: 0,
        run(device) {
          const o = poisoned(device, rows, "i32");
          check(
            lib.fp4_dec_argmax(
              deviceId(device),
              on(device, lx).pointer(),
              BigInt(rows),
              BigInt(width),
              o.pointer(),
            ),
            "argmax",
          );
          return Float32Array.from(o.toArray() as Int32Array);
        },
      });
    }
  }
  return out;
}

function compare(name: string, got: Float32Array, want: ArrayLike<number>, bound: number): void {
  let scale = 0, err = 0, at = -1;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= err)) {
      err = e;
      at = i;
    }
  }
  assert(
    got.length === want.length && err <= bound * Math.max(scale, 1e-30),
    `seed ${seed} ${name}: error ${err} at ${at} (${got[at]} vs ${want[at]}) > ${bound} * ${scale}`,
  );
}

for (const act of ["f32", "bf16"] as const) {
  for (const cacheDt of ["f32", "bf16"] as const) {
    Deno.test(`decode ops (${act} activations, ${cacheDt} cache): CPU twins match float64 references`, () => {
      for (const c of cases(act, cacheDt)) compare(c.name, c.run("cpu"), c.ref!, c.refBound);
    });
    Deno.test({
      name: `decode ops (${act} activations, ${cacheDt} cache): CUDA kernels match their CPU twins`,
      ignore: !cudaStatus().available,
      fn() {
        for (const c of cases(act, cacheDt)) {
          const cpu = c.run("cpu");
          compare(`${c.name} (cuda vs cpu)`, c.run("cuda"), cpu, c.twinBound);
        }
      },
    });
  }
}

Deno.test("decode ops reject bad positions and dtypes on the CPU", () => {
  const lib = native();
  const cache = new Float32Array(8), x = new Float32Array(4);
  const p = (v: number) => Deno.UnsafePointer.of(new Int32Array([v]));
  const store = (pos: Deno.PointerValue, dt: number) =>
    lib.fp4_dec_kv_store(
      0,
      Deno.UnsafePointer.of(x),
      0,
      Deno.UnsafePointer.of(cache),
      dt,
      pos,
      4n,
      2n,
      2n,
    );
  assert(store(p(3), 0) !== 0, "positions 3..4 in a 4-row cache must fail");
  assert(store(p(-1), 0) !== 0, "a negative position must fail");
  assert(store(p(1), 7) !== 0, "cache dtype i64 must fail");
  assert(store(p(2), 0) === 0);
});

// The fused add + norm is the unfused pair exactly (same adds, same reduction order) on every
// device, on both of CUDA's paths (element and vector).
for (const device of ["cpu", "cuda"] as const) {
  Deno.test({
    name: `add_rmsnorm equals add then rmsnorm bit for bit (${device})`,
    ignore: device === "cuda" && !cudaStatus().available,
    fn() {
      const lib = native();
      const dev = deviceId(device);
      for (const [rows, dim] of [[3, 70], [1, 4096]]) {
        const x = Float32Array.from(randoms(rows * dim, 3));
        const r = Uint16Array.from(randoms(rows * dim, 2), f32ToBf16);
        const w = Uint16Array.from(randoms(dim), (v) => f32ToBf16(1 + 0.2 * v));
        const rd = on(device, r, "bf16"), wd = on(device, w, "bf16");
        const x1 = on(device, x.slice()), y1 = poisoned(device, rows * dim, "bf16");
        const x2 = on(device, x.slice()), y2 = poisoned(device, rows * dim, "bf16");
        const R = BigInt(rows), D = BigInt(dim);
        check(
          lib.fp4_dec_add_rmsnorm(
            dev,
            x1.pointer(),
            rd.pointer(),
            2,
            wd.pointer(),
            2,
            y1.pointer(),
            2,
            R,
            D,
            1e-5,
          ),
          "add_rmsnorm",
        );
        check(lib.fp4_dec_add(dev, x2.pointer(), rd.pointer(), 2, BigInt(rows * dim)), "add");
        check(
          lib.fp4_dec_rmsnorm(dev, x2.pointer(), wd.pointer(), 2, y2.pointer(), 2, R, D, 1e-5),
          "rmsnorm",
        );
        assertEquals(x1.toArray(), x2.toArray(), `seed ${seed} ${rows}x${dim}: x`);
        assertEquals(y1.toArray(), y2.toArray(), `seed ${seed} ${rows}x${dim}: y`);
      }
    },
  });
}

// The fused ops in the engine's decode step, at Llama-3's head shape (head_dim 128, GQA groups
// of 4): teacher-forced on the same tokens, CUDA (bf16 activations and cache, graph-replayed
// steps) stays within 5e-2 of the logits' scale of the CPU engine (f32), the bound the
// brown-llama-29m test states for 8 layers of bf16 rounding; a 40-token prompt, then 60 steps.
Deno.test({
  name: "decode step with the fused ops: CUDA engine logits match the CPU engine's",
  ignore: !cudaStatus().available,
  async fn() {
    const model = LlamaModel.random(
      parseLlamaConfig({
        model_type: "llama",
        hidden_size: 512,
        intermediate_size: 1024,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 1,
        vocab_size: 300,
        rope_theta: 10000,
        max_position_embeddings: 128,
      }),
      { seed: seed + 5, dtype: "bf16", std: 0.05 },
    );
    using cpu = DecodeEngine.create(model, { contextLength: 128 });
    using gpu = DecodeEngine.create(model, { device: "cuda", contextLength: 128 });
    const prompt = Int32Array.from({ length: 40 }, () => Math.floor((rand() + 1) * 150));
    await cpu.forward(prompt);
    await gpu.forward(prompt);
    for (let step = 0; step < 60; step++) {
      const a = gpu.logits(), b = cpu.logits();
      let err = 0, scale = 0;
      for (let i = 0; i < a.length; i++) {
        err = Math.max(err, Math.abs(a[i] - b[i]));
        scale = Math.max(scale, Math.abs(b[i]));
      }
      assert(err <= 5e-2 * scale, `seed ${seed} step ${step}: |dlogit| ${err} > 5e-2 * ${scale}`);
      const t = cpu.argmax();
      await cpu.forward(new Int32Array([t]));
      await gpu.forward(new Int32Array([t]));
    }
  },
});
