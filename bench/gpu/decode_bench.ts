/**
 * GPU benchmark of end-to-end decoding (issue 6): a Llama-3-8B-shaped model (hidden 4096, MLP
 * 14336, 32 layers, 32 heads, 8 KV heads, vocab 128256) with random weights, run by our
 * DecodeEngine three ways on the same run: BF16 weights (dense products through cuBLAS), MXFP4
 * and NVFP4 weights (our W4A16 kernels; the LM head stays BF16 in all three). Batch 1, greedy:
 * a 16-token prompt, then 128 decode steps, each choosing its token two ways (`loop`): on the
 * device, feeding the next step without a host round trip and copying the tokens back 16 at a
 * time (`device`: DecodeEngine.greedy, what generation does), or with the argmax copied to the
 * host after every step and the next step's input copied back (`host`: forward + argmax). Each
 * configuration runs once to warm up (the graph is recorded there), then is timed `--repeats`
 * times (the median is reported); with and without CUDA graphs, and with q/k/v and gate/up fused
 * into one product each (the engine's default) or not (`fused`; the unfused runs with graphs
 * only), and for FP4 with those products' RoPE/KV store and SwiGLU in their kernel or not
 * (`epilogues`, the engine's default on; `--epilogues on,off` runs both). Both BF16 baselines are
 * reported: FP4 against BF16 with the same fusion (`vsBf16`) and against the
 * unfused BF16 path (`vsBf16Unfused`).
 *
 * Reported per configuration: prefill and decode tokens/s, decode ms/token, the ratio to our
 * BF16 path (goal: FP4 >= 2.5x), the device memory the engine holds (weights + KV cache +
 * scratch, from cudaMemGetInfo before and after), and the checkpoint size the weights imply
 * (tensor bytes; safetensors adds only its header). Then the step's ops one by one, eagerly and
 * inside a recorded graph (the cost each adds to a replayed step). `--torch FILE` adds the
 * PyTorch reference written by bench/gpu/decode_torch_baseline.py.
 *
 * Usage: deno run -A bench/gpu/decode_bench.ts --out DIR [--layers N] [--tokens N]
 *   [--formats bf16,mxfp4,nvfp4] [--fuse on,off] [--epilogues on,off] [--loop device,host]
 *   [--graphs-only] [--op-launches N] [--repeats N] [--torch FILE]
 * (few layers, tokens and op launches make a short run to profile under ncu; --op-launches 0
 * skips the per-op figures).
 * Writes DIR/decode.json (device, date, commit, figures) and prints a table last. Each run
 * records a digest of its greedy tokens, so runs of separate processes (another library setting,
 * another kernel choice) can be checked for the same tokens. The decode kernels' programmatic
 * dependent launch follows $FP4LAB_PDL (recorded as `pdl`), the batch-1 GEMV's ring depth and
 * blocks per SM $FP4LAB_GEMV_RING (`gemvRing`).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { check, native } from "../../ffi/library.ts";
import { cudaMemory, cudaStatus } from "../../lib/device.ts";
import { DecodeEngine } from "../../lib/generate/engine.ts";
import {
  fp4GroupSize,
  type Fp4WeightFormat,
  type Fp4Weights,
} from "../../lib/kernels/fp4_linear.ts";
import { llamaWeightShapes } from "../../lib/model/llama.ts";
import { llama8b, xorshift } from "./llama8b.ts";
import { Tensor } from "../../lib/tensor.ts";
import { formatTable } from "../../lib/cli/table.ts";
import { gitCommit } from "../../lib/pipeline/manifest.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "bench/results/tmp" },
    layers: { type: "string", default: "32" },
    tokens: { type: "string", default: "128" },
    formats: { type: "string", default: "bf16,mxfp4,nvfp4" },
    fuse: { type: "string", default: "on,off" },
    epilogues: { type: "string", default: "on" },
    "graphs-only": { type: "boolean", default: false },
    "op-launches": { type: "string", default: "200" },
    repeats: { type: "string", default: "1" },
    loop: { type: "string", default: "device,host" },
    torch: { type: "string" },
  },
});

const status = cudaStatus();
if (!status.available) {
  console.error(`decode_bench needs a GPU: ${status.reason}`);
  Deno.exit(1);
}
const LAYERS = Number(args.layers), TOKENS = Number(args.tokens), PROMPT = 16, CONTEXT = 1024;
const REPEATS = Number(args.repeats);
if (!Number.isInteger(REPEATS) || REPEATS < 1) {
  console.error(`--repeats must be a positive integer, got ${args.repeats}`);
  Deno.exit(1);
}

console.log(`building the ${LAYERS}-layer model's host weights ...`);
const model = llama8b(LAYERS);
const config = model.config;

function randomBytes(n: number, seed: number, map: (r: number) => number): Uint8Array {
  const next = xorshift(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = map(next());
  return out;
}

/**
 * Random FP4 weights of every quantizable linear, on the host (one array per shape); the engine
 * makes its own device copies (stacked where it fuses), so its memory figure counts them.
 */
function fp4Weights(format: Fp4WeightFormat): Map<string, Fp4Weights> {
  const group = fp4GroupSize(format);
  const host = new Map<string, [Uint8Array, Uint8Array]>();
  const out = new Map<string, Fp4Weights>();
  for (const name of model.linearNames()) {
    if (name === "lm_head") continue;
    const [n, k] = model.weight(`${name}.weight`).shape;
    const key = `${n}x${k}`;
    let h = host.get(key);
    if (!h) {
      // Scales near what a quantizer gives these weights: amax/6 ~ 2^-8 (E8M0 119 .. 122; E4M3
      // 0x30 .. 0x3f with a tensor scale of 2^-10).
      h = [
        randomBytes(n * k / 2, host.size + 11, (r) => r & 0xff),
        randomBytes(
          n * k / group,
          host.size + 21,
          (r) => format === "mxfp4" ? 119 + (r & 3) : 0x30 + (r & 15),
        ),
      ];
      host.set(key, h);
    }
    out.set(name, {
      codes: Tensor.from(h[0], [h[0].length]),
      scales: Tensor.from(h[1], [h[1].length]),
      tensorScale: format === "nvfp4" ? 2 ** -10 : undefined,
      format,
      n,
      k,
    });
  }
  return out;
}

function checkpointBytes(format: Fp4WeightFormat | "bf16"): number {
  let bytes = 0;
  for (const [name, shape] of llamaWeightShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const linear = shape.length === 2 && name !== "lm_head.weight" &&
      name !== "model.embed_tokens.weight";
    if (format === "bf16" || !linear) bytes += 2 * n;
    else bytes += n / 2 + n / fp4GroupSize(format) + (format === "nvfp4" ? 4 : 0);
  }
  return bytes;
}

interface Run {
  weights: string;
  graphs: boolean;
  /** q/k/v and gate/up as one product each. */
  fused: boolean;
  /** FP4 q/k/v and gate/up products finished with RoPE/KV store and SwiGLU in their kernel. */
  epilogues: boolean;
  /** Where each step's token is chosen and fed to the next step (module doc). */
  loop: Loop;
  prefillTokS: number;
  decodeTokS: number;
  msPerToken: number;
  engineBytes: number;
  checkpointBytes: number;
  /** Decode tokens/s over BF16's with the same graphs and fusion. */
  vsBf16: number | null;
  /** Over the unfused BF16 path's with the same graphs (unfused runs: graphs only). */
  vsBf16Unfused: number | null;
  /** Whether the greedy tokens equal those of the same weights' first (graph-replayed) run. */
  sameTokens: boolean;
  /** FNV-1a (32 bits, hex) of the greedy tokens: equal digests across processes, same tokens. */
  tokensDigest: string;
}

function digest(tokens: Int32Array): string {
  let h = 0x811c9dc5;
  for (const b of new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength)) {
    h = Math.imul(h ^ b, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}

type Loop = "device" | "host";
type Timed = Awaited<ReturnType<typeof timeDecode>>;
const GREEDY_CHUNK = 16;

async function timeDecode(engine: DecodeEngine, prompt: Int32Array, loop: Loop) {
  engine.reset();
  const tokens = new Int32Array(TOKENS + 1);
  const t0 = performance.now();
  await engine.forward(prompt);
  if (loop === "device") {
    let i = 0, t1 = 0;
    for await (const t of engine.greedy(TOKENS + 1, GREEDY_CHUNK)) {
      tokens[i++] = t;
      if (i === 1) t1 = performance.now();
    }
    return { prefillMs: t1 - t0, decodeMs: performance.now() - t1, tokens };
  }
  let t = tokens[0] = engine.argmax();
  const t1 = performance.now();
  for (let i = 0; i < TOKENS; i++) {
    await engine.forward(new Int32Array([t]));
    t = tokens[i + 1] = engine.argmax();
  }
  const t2 = performance.now();
  return { prefillMs: t1 - t0, decodeMs: t2 - t1, tokens };
}

const prompt = Int32Array.from({ length: PROMPT }, (_, i) => (i * 7919) % config.vocabSize);
const runs: Run[] = [];
const formats = args.formats!.split(",") as ("bf16" | Fp4WeightFormat)[];
const fuses = args.fuse!.split(",").map((f) => f === "on");
const epilogueList = args.epilogues!.split(",").map((f) => f === "on");
const loops = args.loop!.split(",") as Loop[];
if (loops.some((l) => l !== "device" && l !== "host")) {
  console.error(`--loop must list device and/or host, got ${args.loop}`);
  Deno.exit(1);
}
for (const format of formats) {
  console.log(`--- ${format}: loading`);
  const before = cudaMemory();
  const quantized = format === "bf16" ? new Map<string, Fp4Weights>() : fp4Weights(format);
  let firstTokens: Int32Array | null = null;
  // BF16 runs have no epilogues to switch (their products go through cuBLAS).
  const epis = format === "bf16" ? [false] : epilogueList;
  const configs = fuses.flatMap((fused, i) =>
    (args["graphs-only"] || i > 0 ? [true] : [true, false]).flatMap((graphs) =>
      (fused ? epis : [false]).map((epilogues) => ({ fused, graphs, epilogues }))
    )
  );
  for (const { fused, graphs, epilogues } of configs) {
    const engine = DecodeEngine.create(model, {
      device: "cuda",
      contextLength: CONTEXT,
      quantized,
      graphs,
      fuse: fused,
      epilogues,
    });
    try {
      const engineBytes = before.free - cudaMemory().free;
      for (const loop of loops) {
        await timeDecode(engine, prompt, loop);
        const timed: Timed[] = [];
        for (let r = 0; r < REPEATS; r++) timed.push(await timeDecode(engine, prompt, loop));
        const median = (f: (t: Timed) => number) =>
          timed.map(f).sort((a, b) => a - b)[(REPEATS - 1) >> 1];
        const prefillMs = median((t) => t.prefillMs), decodeMs = median((t) => t.decodeMs);
        const tokens = timed[0].tokens;
        firstTokens ??= tokens;
        const run: Run = {
          weights: format,
          graphs,
          fused,
          epilogues,
          loop,
          prefillTokS: PROMPT / (prefillMs / 1000),
          decodeTokS: TOKENS / (decodeMs / 1000),
          msPerToken: decodeMs / TOKENS,
          engineBytes,
          checkpointBytes: checkpointBytes(format),
          vsBf16: null,
          vsBf16Unfused: null,
          sameTokens: timed.every(({ tokens }) => tokens.every((t, i) => t === firstTokens![i])),
          tokensDigest: digest(tokens),
        };
        const bf16 = (f: boolean) =>
          runs.find((r) =>
            r.weights === "bf16" && r.graphs === graphs && r.fused === f && r.loop === loop
          );
        const base = bf16(fused), unfused = bf16(false);
        if (base) run.vsBf16 = run.decodeTokS / base.decodeTokS;
        if (unfused) run.vsBf16Unfused = run.decodeTokS / unfused.decodeTokS;
        runs.push(run);
        console.log(
          `${format} graphs=${graphs} fused=${fused} epilogues=${epilogues} loop=${loop}: decode ${
            run.decodeTokS.toFixed(1)
          } tok/s (${run.msPerToken.toFixed(2)} ms/token), prefill ${
            run.prefillTokS.toFixed(0)
          } tok/s, engine ${(engineBytes / 2 ** 30).toFixed(2)} GiB, tokens ${
            run.sameTokens ? "same" : "DIFFER"
          } (${run.tokensDigest})`,
        );
      }
    } finally {
      engine.dispose();
    }
  }
  for (const w of quantized.values()) {
    w.codes.dispose();
    w.scales.dispose();
  }
}

/**
 * Per-op cost of one decode step's kernels at the model's shapes (position 144, as at the end of
 * the timed runs; attention also at 1000): each op launched N times (--op-launches, 200)
 * eagerly, then one synchronize (`eager`: microseconds per launch, with the launch's host
 * cost), and the same N launches recorded as one CUDA graph and replayed (`graph`: what the op adds to a replayed
 * step, launch gaps included; consecutive launches of our decode kernels overlap through PDL as
 * they do in the step). `layer_nvfp4` is one layer's sequence of launches.
 */
function opBreakdown(): { eager: Record<string, number>; graph: Record<string, number> } {
  const lib = native();
  const CUDA = 1, BF16 = 2, F32 = 0;
  const h = config.hiddenSize, m = config.intermediateSize, hd = config.headDim;
  const heads = config.numHeads, kvh = config.numKvHeads, V = config.vocabSize;
  const T = (shape: number[], dtype: "bf16" | "f32" | "i32" | "u8") =>
    Tensor.zeros(shape, dtype, "cuda");
  using x = T([m], "bf16");
  using y = T([V], "f32");
  using hidden = T([h], "f32");
  using normW = T([h], "bf16");
  using q = T([heads * hd], "bf16");
  using k = T([kvh * hd], "bf16");
  using v = T([kvh * hd], "bf16");
  using kc = T([CONTEXT, kvh * hd], "bf16");
  using vc = T([CONTEXT, kvh * hd], "bf16");
  using att = T([heads * hd], "bf16");
  using cos = T([CONTEXT * hd / 2], "f32");
  using sin = T([CONTEXT * hd / 2], "f32");
  using pos = Tensor.from(new Int32Array([144]), [1]).to("cuda");
  using pos1000 = Tensor.from(new Int32Array([1000]), [1]).to("cuda");
  using head = T([V, h], "bf16");
  using last = T([1], "i32");
  // Room for the stacked gate/up weights (2m x h).
  using codes = T([m * h], "u8");
  using scales = T([m * h / 8], "u8");
  const gemv = (format: number, n: number, k = h) =>
    lib.fp4_gemm(
      CUDA,
      format,
      x.pointer(),
      codes.pointer(),
      scales.pointer(),
      1,
      y.pointer(),
      1n,
      BigInt(n),
      BigInt(k),
    );
  // One launch over row segments (fused q/k/v, gate/up), each with its own tensor scale.
  const gemvSegments = (format: number, rows: number[]) => {
    const ends = new BigInt64Array(rows.length);
    rows.reduce((a, r, i) => (ends[i] = BigInt(a + r), a + r), 0);
    return lib.fp4_gemm_segments(
      CUDA,
      format,
      x.pointer(),
      codes.pointer(),
      scales.pointer(),
      new Float32Array(rows.length).fill(1),
      ends,
      rows.length,
      y.pointer(),
      1n,
      ends[rows.length - 1],
      BigInt(h),
    );
  };
  const qkvRows = [heads * hd, kvh * hd, kvh * hd], gateUpRows = [m, m];
  // The same products with their next op in the call (the engine's `epilogues`).
  const qkvRope = (format: number) =>
    lib.fp4_dec_qkv_rope_kv_store(
      CUDA,
      format,
      x.pointer(),
      codes.pointer(),
      scales.pointer(),
      new Float32Array(3).fill(1),
      y.pointer(),
      cos.pointer(),
      sin.pointer(),
      pos.pointer(),
      BigInt(CONTEXT),
      BigInt(heads),
      BigInt(kvh),
      BigInt(hd),
      BigInt(h),
      kc.pointer(),
      vc.pointer(),
      BF16,
    );
  // The o (k = h) or down (k = m) product with the residual add and norm after it.
  using counter = T([1], "i32");
  const gemvAddNorm = (format: number, k: number) =>
    lib.fp4_dec_gemv_add_rmsnorm(
      CUDA,
      format,
      x.pointer(),
      codes.pointer(),
      scales.pointer(),
      1,
      att.pointer(),
      BigInt(h),
      BigInt(k),
      hidden.pointer(),
      normW.pointer(),
      BF16,
      q.pointer(),
      1e-5,
      counter.pointer(),
    );
  const gateUpSilu = (format: number) =>
    lib.fp4_dec_gate_up_silu(
      CUDA,
      format,
      x.pointer(),
      codes.pointer(),
      scales.pointer(),
      new Float32Array(2).fill(1),
      y.pointer(),
      BigInt(m),
      BigInt(h),
    );
  const attention = (p: Tensor) =>
    lib.fp4_dec_attention(
      CUDA,
      q.pointer(),
      BF16,
      kc.pointer(),
      vc.pointer(),
      BF16,
      att.pointer(),
      BF16,
      p.pointer(),
      BigInt(CONTEXT),
      1n,
      BigInt(heads),
      BigInt(kvh),
      BigInt(hd),
      1 / Math.sqrt(hd),
    );
  const ops: Record<string, () => number> = {
    rmsnorm: () =>
      lib.fp4_dec_rmsnorm(
        CUDA,
        hidden.pointer(),
        normW.pointer(),
        BF16,
        x.pointer(),
        BF16,
        1n,
        BigInt(h),
        1e-5,
      ),
    add_rmsnorm: () =>
      lib.fp4_dec_add_rmsnorm(
        CUDA,
        hidden.pointer(),
        att.pointer(),
        BF16,
        normW.pointer(),
        BF16,
        x.pointer(),
        BF16,
        1n,
        BigInt(h),
        1e-5,
      ),
    rope_q: () =>
      lib.fp4_dec_rope(
        CUDA,
        q.pointer(),
        BF16,
        cos.pointer(),
        sin.pointer(),
        pos.pointer(),
        BigInt(CONTEXT),
        1n,
        BigInt(heads),
        BigInt(hd),
      ),
    kv_store: () =>
      lib.fp4_dec_kv_store(
        CUDA,
        k.pointer(),
        BF16,
        kc.pointer(),
        BF16,
        pos.pointer(),
        BigInt(CONTEXT),
        1n,
        BigInt(kvh * hd),
      ),
    rope_kv_store: () =>
      lib.fp4_dec_rope_kv_store(
        CUDA,
        q.pointer(),
        k.pointer(),
        v.pointer(),
        BF16,
        cos.pointer(),
        sin.pointer(),
        pos.pointer(),
        BigInt(CONTEXT),
        1n,
        BigInt(heads),
        BigInt(kvh),
        BigInt(hd),
        kc.pointer(),
        vc.pointer(),
        BF16,
      ),
    attention: () => attention(pos),
    attention_pos1000: () => attention(pos1000),
    silu_mul: () =>
      lib.fp4_dec_silu_mul(CUDA, x.pointer(), x.pointer(), x.pointer(), BF16, BigInt(m)),
    add: () => lib.fp4_dec_add(CUDA, hidden.pointer(), x.pointer(), BF16, BigInt(h)),
    lm_head_f32: () =>
      lib.fp4_dec_linear(
        CUDA,
        x.pointer(),
        BF16,
        head.pointer(),
        BF16,
        y.pointer(),
        F32,
        1n,
        BigInt(V),
        BigInt(h),
      ),
    argmax: () => lib.fp4_dec_argmax(CUDA, y.pointer(), 1n, BigInt(V), last.pointer()),
    gemv_nvfp4_14336x4096: () => gemv(1, m),
    gemv_nvfp4_4096x4096: () => gemv(1, h),
    gemv_nvfp4_1024x4096: () => gemv(1, kvh * hd),
    gemv_mxfp4_14336x4096: () => gemv(0, m),
    gemv_mxfp4_4096x4096: () => gemv(0, h),
    gemv_mxfp4_1024x4096: () => gemv(0, kvh * hd),
    gemv_nvfp4_qkv_6144x4096: () => gemvSegments(1, qkvRows),
    gemv_nvfp4_gateup_28672x4096: () => gemvSegments(1, gateUpRows),
    gemv_mxfp4_qkv_6144x4096: () => gemvSegments(0, qkvRows),
    gemv_mxfp4_gateup_28672x4096: () => gemvSegments(0, gateUpRows),
    o_add_rmsnorm_nvfp4: () => gemvAddNorm(1, h),
    down_add_rmsnorm_nvfp4: () => gemvAddNorm(1, m),
    o_add_rmsnorm_mxfp4: () => gemvAddNorm(0, h),
    down_add_rmsnorm_mxfp4: () => gemvAddNorm(0, m),
    qkv_rope_kv_store_nvfp4: () => qkvRope(1),
    gate_up_silu_nvfp4: () => gateUpSilu(1),
    qkv_rope_kv_store_mxfp4: () => qkvRope(0),
    gate_up_silu_mxfp4: () => gateUpSilu(0),
  };
  // One NVFP4 layer's launches in the step's order (every GEMV reading the same weight buffer):
  // against the sum of its ops, the cost of the switches between kernels of different kinds.
  const layer = [
    ops.add_rmsnorm,
    () => gemv(1, heads * hd),
    () => gemv(1, kvh * hd),
    () => gemv(1, kvh * hd),
    ops.rope_kv_store,
    ops.attention,
    () => gemv(1, h),
    ops.add_rmsnorm,
    () => gemv(1, m),
    () => gemv(1, m),
    ops.silu_mul,
    () => gemv(1, h, m),
  ];
  // The same with the fused products (9 launches).
  const fusedLayer = [
    ops.add_rmsnorm,
    () => gemvSegments(1, qkvRows),
    ops.rope_kv_store,
    ops.attention,
    () => gemv(1, h),
    ops.add_rmsnorm,
    () => gemvSegments(1, gateUpRows),
    ops.silu_mul,
    () => gemv(1, h, m),
  ];
  // And with each product's next op in its call (5 launches).
  const epilogueLayer = [
    ops.qkv_rope_kv_store_nvfp4,
    ops.attention,
    ops.o_add_rmsnorm_nvfp4,
    ops.gate_up_silu_nvfp4,
    ops.down_add_rmsnorm_nvfp4,
  ];
  const sequence = (list: (() => number)[]) => () => {
    for (const op of list) {
      const st = op();
      if (st !== 0) return st;
    }
    return 0;
  };
  ops.layer_nvfp4 = sequence(layer);
  ops.layer_nvfp4_fused = sequence(fusedLayer);
  ops.layer_nvfp4_epilogues = sequence(epilogueLayer);
  const N = Number(args["op-launches"]);
  const eager: Record<string, number> = {}, graph: Record<string, number> = {};
  const sync = () => check(lib.fp4_synchronize(CUDA), "fp4_synchronize");
  for (const [name, op] of Object.entries(ops)) {
    check(op(), name);
    sync();
    let t0 = performance.now();
    for (let i = 0; i < N; i++) check(op(), name);
    sync();
    eager[name] = (performance.now() - t0) * 1000 / N;
    check(lib.fp4_graph_begin(CUDA), "fp4_graph_begin");
    for (let i = 0; i < N; i++) check(op(), name);
    const out = new BigUint64Array(1);
    check(lib.fp4_graph_end(CUDA, out), "fp4_graph_end");
    const g = Deno.UnsafePointer.create(out[0]);
    check(lib.fp4_graph_launch(CUDA, g), "fp4_graph_launch");
    sync();
    const REPLAYS = 5;
    t0 = performance.now();
    for (let r = 0; r < REPLAYS; r++) check(lib.fp4_graph_launch(CUDA, g), "fp4_graph_launch");
    sync();
    graph[name] = (performance.now() - t0) * 1000 / (N * REPLAYS);
    check(lib.fp4_graph_destroy(CUDA, g), "fp4_graph_destroy");
  }
  return { eager, graph };
}

// --op-launches 0 skips the per-op figures (a sweep of library settings needs only the steps).
const ops = Number(args["op-launches"]) > 0 ? opBreakdown() : { eager: {}, graph: {} };
const round1 = (_k: string, v: unknown) => typeof v === "number" ? Number(v.toFixed(2)) : v;
console.log(`per-op µs, eager: ${JSON.stringify(ops.eager, round1)}`);
console.log(`per-op µs, in a graph: ${JSON.stringify(ops.graph, round1)}`);

let torch: Record<string, unknown> | null = null;
if (args.torch) {
  try {
    torch = JSON.parse(await Deno.readTextFile(args.torch));
  } catch (e) {
    console.error(`no PyTorch reference read from ${args.torch}: ${(e as Error).message}`);
  }
}

const result = {
  bench: "decode",
  device: status.name,
  date: new Date().toISOString(),
  // The GPU machine's copy may sit inside another checkout: the commit the caller names wins.
  commit: Deno.env.get("GIT_COMMIT") ?? (await gitCommit()) ?? "unknown",
  model: { ...config, rope: undefined, note: "random weights, Llama-3-8B shapes" },
  promptTokens: PROMPT,
  decodeTokens: TOKENS,
  contextLength: CONTEXT,
  goal: "FP4 decode tokens/s >= 2.5x our BF16 path (batch 1)",
  pdl: Deno.env.get("FP4LAB_PDL") ?? "on",
  gemvRing: Deno.env.get("FP4LAB_GEMV_RING") ?? "default",
  runs,
  opMicroseconds: ops.eager,
  opGraphMicroseconds: ops.graph,
  torch,
};
await Deno.mkdir(args.out!, { recursive: true });
await Deno.writeTextFile(`${args.out}/decode.json`, JSON.stringify(result, null, 2) + "\n");
console.log(formatTable(
  [
    "weights",
    "graphs",
    "fused",
    "epilogues",
    "loop",
    "decode tok/s",
    "ms/token",
    "vs bf16 (same fusion)",
    "vs unfused bf16",
    "prefill tok/s",
    "engine GiB",
    "checkpoint GiB",
  ],
  runs.map((r) => [
    r.weights,
    String(r.graphs),
    String(r.fused),
    String(r.epilogues),
    r.loop,
    r.decodeTokS.toFixed(1),
    r.msPerToken.toFixed(2),
    r.vsBf16 === null ? "-" : r.vsBf16.toFixed(2),
    r.vsBf16Unfused === null ? "-" : r.vsBf16Unfused.toFixed(2),
    r.prefillTokS.toFixed(0),
    (r.engineBytes / 2 ** 30).toFixed(2),
    (r.checkpointBytes / 2 ** 30).toFixed(2),
  ]),
));
if (torch) console.log(`PyTorch reference: ${JSON.stringify(torch)}`);
