/**
 * Safetensors throughput on a 1 GiB checkpoint (16 F32 tensors of 64 MiB) written to a
 * temporary folder that is removed when the bench exits. Setup writes the file once
 * (streamed, one 64 MiB tensor alive at a time, atomic) and prints its write rate. The
 * benches read every tensor: `readTensor` into a fresh host Tensor per tensor (the path a
 * model load takes; it pays for allocating and faulting in fresh memory), and `readInto` into
 * one reused buffer (the copy alone). GB/s = 1.074 / (seconds per iteration). The file has
 * just been written, so reads come from the page cache: this measures the reader and memory
 * bandwidth, not the disk. Run with `deno bench -A bench/safetensors_bench.ts`.
 *
 * @module
 */
import { type SafetensorsEntry, SafetensorsFile, writeSafetensors } from "../lib/safetensors.ts";

const TENSORS = 16;
const ELEMENTS = 16 << 20; // 64 MiB of f32 each

const dir = await Deno.makeTempDir({ prefix: "fp4lab_st_bench_" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
const path = `${dir}/bench.safetensors`;

function entries(): Record<string, SafetensorsEntry> {
  return Object.fromEntries(
    Array.from({ length: TENSORS }, (_, t) => [`layers.${t}.weight`, {
      dtype: "F32",
      shape: [ELEMENTS / 4096, 4096],
      // Produced when the writer reaches the tensor: one 64 MiB buffer alive at a time.
      data: () => {
        const bits = new Uint32Array(ELEMENTS);
        for (let i = 0; i < ELEMENTS; i++) bits[i] = Math.imul(i + t, 2654435761) & 0xbfffffff;
        return bits;
      },
    }]),
  );
}

const t0 = performance.now();
await writeSafetensors(path, entries());
const seconds = (performance.now() - t0) / 1000;
console.log(
  `setup: wrote 1 GiB in ${seconds.toFixed(1)} s (${(1.074 / seconds).toFixed(2)} GB/s, ` +
    `including generating the data)`,
);

// Each bench runs once to warm up and 3 times measured: 4 GiB read per bench.
Deno.bench({
  name: "readTensor: 1 GiB into fresh host Tensors",
  group: "safetensors read 1 GiB",
  baseline: true,
  n: 3,
  warmup: 0,
  async fn() {
    using file = await SafetensorsFile.open(path);
    for (const name of file.names()) {
      const t = await file.readTensor(name);
      if (t.size !== ELEMENTS) throw new Error(`read ${t.size} elements of ${name}`);
    }
  },
});

const staging = new Uint8Array(ELEMENTS * 4).fill(0); // touched once, so its pages exist

Deno.bench({
  name: "readInto: 1 GiB into one reused 64 MiB buffer",
  group: "safetensors read 1 GiB",
  n: 3,
  warmup: 0,
  async fn() {
    using file = await SafetensorsFile.open(path);
    for (const name of file.names()) await file.readInto(name, staging);
  },
});
