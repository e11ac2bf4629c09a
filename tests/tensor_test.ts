import { assert, assertEquals, assertThrows } from "./assert.ts";
import { check, native } from "../ffi/library.ts";
import { cudaStatus, type Device, deviceId } from "../lib/device.ts";
import { Tensor } from "../lib/tensor.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, fromFloat32, toFloat32 } from "../lib/dtype.ts";

const devices: Device[] = cudaStatus().available ? ["cpu", "cuda"] : ["cpu"];

for (const device of devices) {
  Deno.test(`${device}: host -> device -> host copies are exact for every dtype`, () => {
    const n = 1000 + Math.floor(Math.random() * 1000);
    const cases = [
      Tensor.from(new Float32Array(n).map(() => Math.random() - 0.5), [n]),
      Tensor.from(new Uint16Array(n).map(() => Math.random() * 65536), [n], "bf16"),
      Tensor.from(new Uint16Array(n).map(() => Math.random() * 65536), [n], "f16"),
      Tensor.from(new Uint8Array(n).map(() => Math.random() * 256), [n]),
      Tensor.from(new Int32Array(n).map(() => (Math.random() - 0.5) * 2 ** 31), [n]),
    ];
    for (const t of cases) {
      using d = t.to(device);
      assertEquals(d.device, device);
      const back = d.toArray();
      assertEquals(back, t.data(), `${t.dtype} round trip`);
    }
  });

  Deno.test(`${device}: cast f32 -> bf16 rounds to nearest even like the TS codec, bf16 -> f32 is exact`, () => {
    const n = 4096 + Math.floor(Math.random() * 4096);
    // Wide magnitudes, and exact ties between two bf16 values (low 16 bits 0x8000).
    const x = new Float32Array(n).map((_, i) => {
      const v = (Math.random() - 0.5) * 2 ** (Math.random() * 40 - 20);
      if (i % 7) return v;
      const u = new Uint32Array(new Float32Array([v]).buffer);
      u[0] = (u[0] & 0xffff0000) | 0x8000;
      return new Float32Array(u.buffer)[0];
    });
    using t = Tensor.from(x, [n]).to(device);
    using b = t.cast("bf16");
    assertEquals(b.dtype, "bf16");
    const bits = Uint16Array.from(x, f32ToBf16);
    assertEquals(b.toArray(), bits, "f32 -> bf16");
    using back = b.cast("f32");
    assertEquals(back.toArray(), Float32Array.from(bits, bf16ToF32), "bf16 -> f32");
    assert(t.cast("f32") === t, "same dtype: no copy");
    using ints = Tensor.from(new Int32Array(2), [2]).to(device);
    assertThrows(() => ints.cast("f32"), Error, "i32");
  });

  Deno.test(`${device}: native sum of random data matches float64 within 1e-12 relative`, () => {
    const n = 1 << 16;
    const x = new Float32Array(n).map(() => Math.random() * 2 - 1);
    using t = Tensor.from(x, [n]).to(device);
    const out = new Float64Array(1).fill(NaN);
    check(native().fp4_sum_f32(deviceId(device), t.pointer(), BigInt(n), out), "fp4_sum_f32");
    let ref = 0;
    for (const v of x) ref += v;
    const scale = x.reduce((a, b) => a + Math.abs(b), 0);
    assert(Math.abs(out[0] - ref) <= 1e-12 * scale, `${out[0]} vs ${ref}`);
  });

  Deno.test(`${device}: empty() poisons memory so unwritten outputs show`, () => {
    using t = Tensor.empty([8], "f32", device);
    assert((t.toArray() as Float32Array).every(Number.isNaN));
  });
}

Deno.test("disposed tensors refuse use; dispose is idempotent", () => {
  const t = Tensor.from(new Float32Array(4), [4]);
  t.dispose();
  t.dispose();
  assertThrows(() => t.data(), Error, "after dispose");
});

Deno.test("shape and array length must agree; shapes must be non-negative integers", () => {
  assertThrows(() => Tensor.from(new Float32Array(5), [2, 3]), Error, "needs 6 elements");
  assertThrows(() => Tensor.from(new Float32Array(0), [-1]), Error, "invalid shape");
  assertThrows(() => Tensor.from(new Float32Array(2), [2], "i32"), Error, "cannot hold");
});

Deno.test("reshape keeps the data and checks the element count", () => {
  const t = Tensor.from(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]);
  assertEquals(t.reshape([3, 2]).data(), t.data());
  assertThrows(() => t.reshape([4, 2]), Error, "cannot reshape");
});

Deno.test("bf16 and f16 conversions round to nearest even and invert exactly", () => {
  for (let bits = 0; bits < 65536; bits++) {
    const b = bf16ToF32(bits);
    if (!Number.isNaN(b)) assertEquals(f32ToBf16(b), bits, `bf16 ${bits}`);
    const h = f16ToF32(bits);
    if (!Number.isNaN(h)) assertEquals(f32ToF16(h), bits, `f16 ${bits}`);
  }
  // Exactly halfway between two bf16 values: ties go to the even mantissa.
  assertEquals(f32ToBf16(1 + 2 ** -8), 0x3f80);
  assertEquals(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82);
  assertEquals(f32ToF16(1 + 2 ** -11), 0x3c00);
  assertEquals(f32ToF16(1 + 3 * 2 ** -11), 0x3c02);
  assertEquals(f32ToF16(65520), 0x7c00); // rounds past the largest finite half: infinity
  assertEquals(f32ToF16(2 ** -25), 0x0000); // halfway to the smallest subnormal: even (zero)
  assertEquals(f32ToF16(3 * 2 ** -25), 0x0002);
  const x = new Float32Array(1000).map(() => (Math.random() - 0.5) * 1e4);
  const back = toFloat32(fromFloat32(x, "bf16"), "bf16");
  x.forEach((v, i) => assert(Math.abs(back[i] - v) <= Math.abs(v) * 2 ** -8));
});
