// The decode-step ops of fp4lab/decode.h on fresh random inputs: the CPU twins against float64
// references, and, when a GPU is usable, every CUDA kernel against its CPU twin (f32 and bf16
// activations, f32 and bf16 caches, GQA, positions past 0). Outputs are poisoned (NaN bytes)
// before each native write.
import { assert } from "./assert.ts";
import { check, native } from "../ffi/library.ts";
import { cudaStatus, type Device, deviceId } from "../lib/device.ts";
import { abiDType, bf16ToF32, f32ToBf16 } from "../lib/dtype.ts";
import { Tensor } from "../lib/tensor.ts";

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

  { // rmsnorm: x f32 -> y act
    const rows = 3, dim = 70, eps = 1e-5;
    const x = Float32Array.from(randoms(rows * dim, 3));
    const w = hostOf(randoms(dim).map((v) => 1 + 0.2 * v), "bf16");
    const ref = new Float64Array(rows * dim);
    for (let r = 0; r < rows; r++) {
      let ss = 0;
      for (let d = 0; d < dim; d++) ss += x[r * dim + d] ** 2;
      const inv = 1 / Math.sqrt(ss / dim + eps);
      for (let d = 0; d < dim; d++) ref[r * dim + d] = bf16ToF32(w[d]) * x[r * dim + d] * inv;
    }
    out.push({
      name: "rmsnorm",
      ref,
      refBound: act === "bf16" ? 2 ** -8 : 1e-6,
      twinBound: act === "bf16" ? 2 ** -7 : 1e-6,
      run(device) {
        const y = poisoned(device, rows * dim, act);
        check(
          lib.fp4_dec_rmsnorm(
            deviceId(device),
            on(device, x).pointer(),
            on(device, w, "bf16").pointer(),
            2,
            y.pointer(),
            A,
            BigInt(rows),
            BigInt(dim),
            eps,
          ),
          "rmsnorm",
        );
        return valuesOf(y);
      },
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
  // rope + kv_store + attention at positions p0..p0+T-1 over a cache of ctx rows: a small
  // case, one past CUDA's 256-row attention tile with head_dim 128 (16-byte row loads), and an
  // odd head_dim.
  for (
    const [ctx, p0, T, heads, kvh, hd] of [
      [24, 9, 3, 4, 2, 16],
      [640, 300, 2, 4, 1, 128],
      [40, 30, 1, 2, 2, 96],
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
    for (let i = 0; i < T * width; i++) {
      kAll[p0 * width + i] = round(f(kNew)[i]);
      vAll[p0 * width + i] = round(f(vNew)[i]);
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
    const rows = 3, width = 1000;
    const lx = Float32Array.from(randoms(rows * width));
    lx[width + 17] = NaN;
    lx[2 * width + 400] = lx[2 * width + 600] = 5; // a tie: the first index wins
    const am = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let b = -1;
      for (let i = 0; i < width; i++) {
        const v = lx[r * width + i];
        if (!Number.isNaN(v) && (b < 0 || v > lx[r * width + b])) b = i;
      }
      am[r] = b;
    }
    out.push({
      name: "argmax",
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
