// fp4_fake_quantize (the engine's W4A4 input transform in one call) against the checked calls it
// chains: (rotate+)quantize then dequantize, codes, scales, tensor scale and output bit for bit,
// on fresh random inputs with outliers, on every device.
import { assertEquals, assertThrows } from "./assert.ts";
import { cudaStatus, type Device } from "../lib/device.ts";
import {
  dequantizeOn,
  disposeQuantized,
  fakeQuantizeOn,
  quantizeOn,
  rotateQuantizeOn,
} from "../lib/formats/native.ts";
import type { HadamardOptions } from "../lib/formats/hadamard.ts";
import { Tensor } from "../lib/tensor.ts";

const devices: Device[] = cudaStatus().available ? ["cpu", "cuda"] : ["cpu"];

function randomInput(rows: number, cols: number): Float32Array {
  return new Float32Array(rows * cols).map(() => {
    const g = Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
    return Math.random() < 0.01 ? g * 50 : g;
  });
}

const cases: [string, HadamardOptions | null][] = [
  ["nvfp4", null],
  ["nvfp4", { block: 16 }],
  ["mxfp4", { block: 32 }],
  ["mxfp4", { block: 128, seed: 7 }],
  ["nvfp4", { block: 128 }],
  ["int4:g16", { block: 64 }],
  // The W4A4 recipe's NVFP4 activations: block scales from an MSE search (generic kernels).
  ["nvfp4:mse=16,0.6,2", null],
  ["nvfp4:mse=16,0.6,2", { block: 16 }],
];

for (const device of devices) {
  for (const [spec, rotation] of cases) {
    for (const dtype of ["f32", "bf16"] as const) {
      Deno.test(`${device}: fake quantize ${spec} rotation ${rotation?.block ?? 0} (${dtype}) equals quantize + dequantize`, async () => {
        const rows = 3 + Math.floor(Math.random() * 40), cols = 256;
        using host = Tensor.from(randomInput(rows, cols), [rows, cols]);
        using x = host.cast(dtype).to(device);
        const ref = rotation
          ? await rotateQuantizeOn(device, x, rotation, spec)
          : await quantizeOn(device, x, spec);
        using yRef = await dequantizeOn(device, ref, dtype);
        const { y, q } = fakeQuantizeOn(device, x, spec, rotation, dtype);
        try {
          assertEquals(q.codes.toArray(), ref.codes.toArray(), "codes");
          assertEquals(q.scales.toArray(), ref.scales.toArray(), "scales");
          assertEquals(q.tensorScale?.toArray(), ref.tensorScale?.toArray(), "tensor scale");
          assertEquals(y.toArray(), yRef.toArray(), "output");
        } finally {
          y.dispose();
          disposeQuantized(q);
          disposeQuantized(ref);
        }
      });
    }
  }

  Deno.test(`${device}: fake quantize rejects bad shapes and dtypes with clear Errors`, () => {
    using x = Tensor.from(new Float32Array(48), [2, 24]).to(device);
    assertThrows(() => fakeQuantizeOn(device, x, "nvfp4", { block: 16 }), Error, "24");
    using i = Tensor.from(new Int32Array(32), [2, 16]).to(device);
    assertThrows(() => fakeQuantizeOn(device, i, "nvfp4", null), Error, "f32 or bf16");
  });
}
