// CPU time per layer of the native GPTQ pieces: Hessian accumulation (128 x 512 tokens) and the
// MR-GPTQ solve (MXFP4, static scales, act-order), for the test model's layer shapes.
// Run: deno task build && deno bench -A bench/gptq_bench.ts
import { Hessian } from "../lib/gptq/hessian.ts";
import { quantizeLayer } from "../lib/gptq/layer.ts";
import { gptqSolveNative } from "../lib/gptq/native.ts";
import { gaussian, seededRandom } from "../lib/random.ts";

const g = gaussian(seededRandom(1));
const tokens = 128 * 512;

for (const [rows, cols] of [[512, 512], [1536, 512]]) {
  const x = Float32Array.from({ length: 8192 * cols }, () => g());
  const w = Float32Array.from({ length: rows * cols }, () => g() * 0.05);
  const hess = new Hessian(cols);
  for (let t = 0; t < 4096; t += 1024) {
    await hess.add(x.subarray(t * cols, (t + 1024) * cols), 1024);
  }
  const h = hess.matrix();
  const scales = new Float32Array(rows * (cols / 32)).fill(0.05);

  Deno.bench(`hessian ${tokens} tokens x ${cols}`, { group: `${rows}x${cols}` }, async () => {
    const acc = new Hessian(cols);
    for (let t = 0; t < tokens; t += 8192) await acc.add(x, 8192);
  });
  Deno.bench(`native solve ${rows}x${cols}`, { group: `${rows}x${cols}` }, async () => {
    await gptqSolveNative(w, h, rows, cols, { scales, groupSize: 32, element: "e2m1" });
  });
  Deno.bench(
    `quantizeLayer mr-gptq mxfp4 ${rows}x${cols}`,
    { group: `${rows}x${cols}` },
    async () => {
      await quantizeLayer(w, rows, cols, h, { format: "mxfp4", method: "mr-gptq" });
    },
  );
}
