/**
 * `deno task quantize`: quantize a Llama checkpoint to FP4 (or any lib/formats preset) with
 * RTN, GPTQ or MR-GPTQ, sequentially block by block over calibration windows, optionally
 * evaluate it, and export it with a manifest of the run.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { requireDevice } from "../device.ts";
import { DecodeEngine } from "../generate/engine.ts";
import { resolveSpec } from "../formats/spec.ts";
import type { GptqMethod } from "../gptq/layer.ts";
import { LlamaModel } from "../model/llama.ts";
import { perplexity, WINDOW_TOKENS } from "../model/perplexity.ts";
import { HfTokenizer } from "../model/tokenizer.ts";
import { testModelDir } from "../paths.ts";
import { calibrationWindows, DEFAULT_CALIBRATION_WINDOWS } from "../pipeline/calibrate.ts";
import { exportQuantized } from "../pipeline/export.ts";
import {
  digestFiles,
  gitCommit,
  type Manifest,
  MANIFEST_VERSION,
  modelFiles,
  sha256File,
  TOOL,
  writeManifest,
} from "../pipeline/manifest.ts";
import {
  type ActScale,
  engineInputsOf,
  METHODS,
  type QuantizedModel,
  quantizeModel,
} from "../pipeline/quantize_model.ts";
import { type CalibrationObjective, OBJECTIVES } from "../pipeline/objective.ts";
import { formatTable, Progress } from "./table.ts";

const HELP = `deno task quantize --out DIR [options]

Quantizes the linear layers of a Llama-family checkpoint block by block (calibrate, quantize,
propagate through the quantized block), optionally evaluates perplexity, and writes the
quantized checkpoint (model.safetensors + config.json with quantization_config + tokenizer
files + manifest.json; layout in docs/CHECKPOINT.md).

Options:
  --model DIR        model folder [default: the shared test model brown-llama-29m]
  --out DIR          output folder (refused if it exists, unless --force)
  --format PRESET    weight format: nvfp4, mxfp4, int4:g128, int8, fp8, ... (docs/FORMATS.md)
                     [default: nvfp4]
  --method NAME      rtn | gptq | mr-gptq [default: mr-gptq]
  --act-format P     also quantize the inputs of every quantized linear online (W4A4 etc.);
                     nvfp4:mse=4,2,2 / mxfp4:mse=2,3,2 pick each block's scale by squared error
                     among the format's rule and larger ones (the W4A4 recipe below)
  --act-scale MODE   dynamic | static: the activation tensor scale of formats that have one
                     (nvfp4): from each call's input, or one per layer calibrated on the
                     calibration windows (the largest any window needs; the quantizer then
                     reads each input once; stored as <module>.input_tensor_scale)
                     [default: dynamic]
  --hadamard N       block Hadamard rotation size, 0 = none [default for mr-gptq: 16 for
                     nvfp4 and mxfp4, the group size for other formats; 0 for rtn and gptq]
  --calib FILE       calibration text [default: calib.txt in the model folder]
  --nsamples N       calibration windows of ${WINDOW_TOKENS} tokens [default: ${DEFAULT_CALIBRATION_WINDOWS}]
                     (0: none, rtn only; RTN then reports no proxy loss)
  --device NAME      cpu | cuda: where the block forward passes, Hessians, GPTQ solves and
                     --eval run [default: cpu]
  --seed N           seed recorded in the manifest (stochastic-rounding presets take seed=N
                     inside the preset) [default: 0]
  --damp X           relative GPTQ damping [default: 0.01]
  --objective NAME   what GPTQ minimises per layer (lib/pipeline/objective.ts): weights
                     (||(W - Q) X||), act (||(W - Q) X~||, X~ the rotated, activation-quantized
                     inputs the FP4 GEMM sees), output (||W X - Q X~||), teacher (||W X_fp -
                     Q X~||, X_fp from the full-precision model: GPTAQ); teacher runs on
                     the CPU only [default: weights]
  --eval             evaluate the quantized model's perplexity before exporting
  --data FILE        evaluation text [default: valid.txt in the model folder]
  --eval-windows N   evaluate only the first N windows
  --force            replace an existing --out folder
  --json             print a machine-readable result as the last line
  -h, --help         show this help

W4A4 recipe (what it closes of the RTN gap on brown-llama-29m: bench/notes/accuracy.md):
  --method mr-gptq --objective output --format nvfp4 --hadamard 64 --act-format nvfp4:mse=8,2,2
  --method mr-gptq --objective output --format mxfp4 --act-format mxfp4:mse=2,3,2
`;

/** Options of {@linkcode runQuantize} (the CLI's, resolved). */
export interface QuantizeRunOptions {
  /** Model folder. */
  model: string;
  /** Output folder (null: do not export). */
  out: string | null;
  /** Weight preset. */
  format: string;
  /** Method. */
  method: GptqMethod;
  /** Activation preset or null. */
  actFormat: string | null;
  /** Activation tensor scales: per call, or calibrated per layer. */
  actScale: ActScale;
  /** Hadamard block size, or null for the method's default. */
  hadamard: number | null;
  /** Calibration text. */
  calib: string;
  /** Calibration windows. */
  nsamples: number;
  /** Device of the whole pipeline (forward passes, Hessians, solves, evaluation). */
  device: string;
  /** Recorded seed. */
  seed: number;
  /** Relative damping, or null for the default. */
  damp: number | null;
  /** Per-layer objective, or null for the default. */
  objective: CalibrationObjective | null;
  /** Evaluate after quantizing. */
  eval: boolean;
  /** Evaluation text. */
  data: string;
  /** Evaluated windows (null: all). */
  evalWindows: number | null;
  /** Replace an existing output folder. */
  force: boolean;
}

/** What a quantize run reports (the `--json` line). */
export interface QuantizeRunResult {
  /** The resolved options. */
  options: QuantizeRunOptions;
  /** The stored weight spec, one line. */
  spec: string;
  /** Hadamard block size used. */
  hadamard: number;
  /** The per-layer objective GPTQ minimised. */
  objective: CalibrationObjective;
  /** Calibration windows used. */
  calibrationWindows: number;
  /** Proxy loss per quantized layer (NaN shown as null in JSON: RTN without calibration). */
  proxyLoss: Record<string, number>;
  /** Sum of the proxy losses. */
  proxyLossSum: number;
  /** Perplexity of the quantized model (with --eval). */
  ppl: number | null;
  /** Evaluated windows (with --eval). */
  evalWindows: number | null;
  /** Seconds per stage. */
  timings: Record<string, number>;
  /** sha256 of the files written (by name). */
  outputs: Record<string, string>;
}

function positiveInt(v: string | undefined, flag: string, min = 1): number | null {
  if (v === undefined) return null;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw new Error(`${flag} must be an integer >= ${min}, got "${v}"`);
  }
  return n;
}

/**
 * Resolves CLI arguments to {@linkcode QuantizeRunOptions} (defaults filled in); throws on
 * bad values.
 *
 * @example
 * ```ts
 * import { parseQuantizeArgs } from "./quantize.ts";
 * const o = parseQuantizeArgs(["--model", "/m", "--out", "/o", "--method", "rtn"]);
 * console.assert(o.format === "nvfp4" && o.calib === "/m/calib.txt" && o.hadamard === null);
 * ```
 */
export function parseQuantizeArgs(
  args: string[],
): QuantizeRunOptions & { help: boolean; json: boolean } {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      out: { type: "string" },
      format: { type: "string", default: "nvfp4" },
      method: { type: "string", default: "mr-gptq" },
      "act-format": { type: "string" },
      "act-scale": { type: "string", default: "dynamic" },
      hadamard: { type: "string" },
      calib: { type: "string" },
      nsamples: { type: "string" },
      device: { type: "string", default: "cpu" },
      seed: { type: "string", default: "0" },
      damp: { type: "string" },
      objective: { type: "string" },
      eval: { type: "boolean", default: false },
      data: { type: "string" },
      "eval-windows": { type: "string" },
      force: { type: "boolean", default: false },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  const help = values.help;
  const model = values.model ?? (help ? "" : testModelDir());
  const method = values.method as GptqMethod;
  if (!METHODS.includes(method)) {
    throw new Error(`--method must be one of ${METHODS.join(", ")}, got "${values.method}"`);
  }
  const actScale = values["act-scale"] as ActScale;
  if (actScale !== "dynamic" && actScale !== "static") {
    throw new Error(`--act-scale must be dynamic or static, got "${values["act-scale"]}"`);
  }
  const damp = values.damp === undefined ? null : Number(values.damp);
  if (damp !== null && !(damp > 0 && Number.isFinite(damp))) {
    throw new Error(`--damp must be a positive number, got "${values.damp}"`);
  }
  const objective = (values.objective ?? null) as CalibrationObjective | null;
  if (objective !== null && !OBJECTIVES.includes(objective)) {
    throw new Error(
      `--objective must be one of ${OBJECTIVES.join(", ")}, got "${values.objective}"`,
    );
  }
  return {
    help,
    json: values.json,
    model,
    out: values.out ?? null,
    format: values.format,
    method,
    actFormat: values["act-format"] ?? null,
    actScale,
    hadamard: positiveInt(values.hadamard, "--hadamard", 0),
    calib: values.calib ?? `${model}/calib.txt`,
    nsamples: positiveInt(values.nsamples, "--nsamples", 0) ?? DEFAULT_CALIBRATION_WINDOWS,
    device: values.device,
    seed: positiveInt(values.seed, "--seed", 0)!,
    damp,
    objective,
    eval: values.eval,
    data: values.data ?? `${model}/valid.txt`,
    evalWindows: positiveInt(values["eval-windows"], "--eval-windows"),
    force: values.force,
  };
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`cannot read the ${what} ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * The summary table of a quantized model: proxy loss per layer and seconds, one row per block.
 *
 * @example
 * ```ts
 * import { summaryTable } from "./quantize.ts";
 * import { quantizeModel } from "../pipeline/quantize_model.ts";
 * import { LlamaModel, parseLlamaConfig } from "../model/mod.ts";
 * const model = LlamaModel.random(parseLlamaConfig({
 *   model_type: "llama", hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
 *   num_attention_heads: 2, vocab_size: 16,
 * }));
 * const q = await quantizeModel(model, [], { format: "mxfp4", method: "rtn" });
 * console.assert(summaryTable(q).includes("down loss"));
 * ```
 */
export function summaryTable(q: QuantizedModel): string {
  const kinds = ["q", "k", "v", "o", "gate", "up", "down"];
  const rows = [];
  for (let b = 0; b < q.model.config.numLayers; b++) {
    const ls = kinds.map((k) =>
      q.layers.get(
        `model.layers.${b}.${["gate", "up", "down"].includes(k) ? "mlp" : "self_attn"}.${k}_proj`,
      )!
    );
    rows.push([
      b,
      ...ls.map((l) => Number.isNaN(l.proxyLoss) ? "-" : l.proxyLoss),
      ls.reduce((a, l) => a + l.seconds, 0),
    ]);
  }
  return formatTable(
    ["block", ...kinds.map((k) => `${k} loss`), "seconds"],
    rows as (string | number)[][],
  );
}

/**
 * Runs the quantize pipeline: load, calibrate, quantize, optionally evaluate, export with a
 * manifest. Progress bars go to stderr unless `quiet`.
 *
 * @example
 * ```ts
 * import { runQuantize } from "./quantize.ts";
 * try {
 *   await runQuantize({
 *     model: "/nonexistent", out: null, format: "nvfp4", method: "rtn", actFormat: null,
 *     actScale: "dynamic",
 *     hadamard: null, calib: "/nonexistent/calib.txt", nsamples: 0, device: "cpu", seed: 0,
 *     damp: null, objective: null, eval: false, data: "", evalWindows: null, force: false,
 *   }, true);
 * } catch (e) {
 *   console.assert((e as Error).message.includes("/nonexistent"));
 * }
 * ```
 */
export async function runQuantize(
  o: QuantizeRunOptions,
  quiet = false,
): Promise<{ result: QuantizeRunResult; quantized: QuantizedModel }> {
  const started = new Date().toISOString();
  const device = requireDevice(o.device);
  resolveSpec(o.format);
  if (o.actFormat) resolveSpec(o.actFormat);
  if (o.out !== null && !o.force) {
    try {
      await Deno.lstat(o.out);
      throw new Error(`the output folder ${o.out} exists (pass --force to replace it)`);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  if (o.nsamples === 0 && o.method !== "rtn") {
    throw new Error(`--method ${o.method} needs calibration: --nsamples must be >= 1`);
  }
  const t0 = performance.now();
  try {
    await Deno.stat(`${o.model}/config.json`);
  } catch {
    throw new Error(`${o.model} is not a model folder: ${o.model}/config.json is missing`);
  }
  const tokenizer = await HfTokenizer.load(o.model);
  let loading: Progress | undefined;
  const model = await LlamaModel.load(o.model, {
    onProgress: (_d, total) => (loading ??= new Progress("load", total, quiet)).tick(),
  });
  loading?.done();
  const inputs = [...await modelFiles(o.model)];
  let windows: Int32Array[] = [];
  if (o.nsamples > 0) {
    windows = calibrationWindows(
      tokenizer.encode(await readText(o.calib, "calibration text")),
      o.nsamples,
    );
    inputs.push(o.calib);
  }
  const load = (performance.now() - t0) / 1000;

  let bar: Progress | null = null;
  const q = await quantizeModel(model, windows, {
    format: o.format,
    method: o.method,
    hadamard: o.hadamard ?? undefined,
    actFormat: o.actFormat,
    actScale: o.actScale,
    device,
    damp: o.damp ?? undefined,
    objective: o.objective ?? undefined,
    onProgress: (p) => {
      if (p.done === 0) {
        bar = new Progress(`block ${p.block} ${p.stage.padEnd(9)}`, p.total, quiet);
        return;
      }
      bar!.tick();
      if (p.done === p.total) bar!.done();
    },
  });

  let ppl: number | null = null;
  let evalWindows: number | null = null;
  let evalSeconds = 0;
  if (o.eval) {
    const t = performance.now();
    const ids = tokenizer.encode(await readText(o.data, "evaluation text"));
    inputs.push(o.data);
    const total = Math.min(Math.floor(ids.length / WINDOW_TOKENS), o.evalWindows ?? Infinity);
    const ebar = new Progress("eval", total, quiet);
    // On CUDA the decode engine scores the windows: MXFP4/NVFP4 layers through the FP4 kernels
    // (others as dequantized weights), input schemes applied on the device.
    using engine = device === "cuda"
      ? DecodeEngine.create(model, { device, contextLength: WINDOW_TOKENS, ...engineInputsOf(q) })
      : undefined;
    const r = await perplexity(model, ids, {
      linear: q.linear,
      maxWindows: o.evalWindows ?? undefined,
      scoreWindow: engine ? (w) => engine.nll(w) : undefined,
      onProgress: (_d, _t, p) => ebar.tick(1, `ppl ${p.toFixed(3)}`),
    });
    ebar.done();
    ppl = r.ppl;
    evalWindows = r.windows;
    evalSeconds = (performance.now() - t) / 1000;
  }

  const proxyLoss: Record<string, number> = {};
  let proxyLossSum = 0;
  for (const [name, l] of q.layers) {
    proxyLoss[name] = l.proxyLoss;
    proxyLossSum += l.proxyLoss;
  }
  const timings = {
    load: round(load),
    calibrate: round(q.timings.calibrate),
    quantize: round(q.timings.quantize),
    propagate: round(q.timings.propagate),
    ...(q.actScale === "static" ? { actScales: round(q.timings.actScales) } : {}),
    eval: round(evalSeconds),
  };
  const result: QuantizeRunResult = {
    options: o,
    spec: JSON.stringify({ ...q.spec, seed: q.spec.seed.toString() }),
    hadamard: q.hadamard,
    objective: q.objective,
    calibrationWindows: q.calibrationWindows,
    proxyLoss,
    proxyLossSum,
    ppl,
    evalWindows,
    timings,
    outputs: {},
  };
  if (o.out !== null) {
    const commit = await gitCommit();
    const digests = await digestFiles(inputs);
    const calibDigest = o.nsamples > 0 ? digests.find((d) => d.path === o.calib)! : null;
    await exportQuantized(q, o.out, {
      force: o.force,
      commit,
      format: o.format,
      actFormat: o.actFormat,
      calibration: {
        file: calibDigest?.path ?? null,
        sha256: calibDigest?.sha256 ?? null,
        windows: q.calibrationWindows,
        windowTokens: WINDOW_TOKENS,
      },
      finish: async (dir) => {
        for (const name of ["model.safetensors", "config.json"]) {
          result.outputs[name] = await sha256File(`${dir}/${name}`);
        }
        const manifest: Manifest = {
          manifestVersion: MANIFEST_VERSION,
          command: "quantize",
          tool: { ...TOOL },
          commit,
          options: { ...o },
          argv: quantizeArgv(o),
          inputs: digests,
          seed: o.seed,
          device,
          started,
          timings,
          results: resultJson(result),
        };
        await writeManifest(`${dir}/manifest.json`, manifest);
      },
    });
  }
  return { result, quantized: q };
}

/**
 * CLI arguments that repeat a run with options `o` (without --out, --force and --json).
 *
 * @example
 * ```ts
 * import { parseQuantizeArgs, quantizeArgv } from "./quantize.ts";
 * const o = parseQuantizeArgs(["--model", "/m", "--out", "/o", "--method", "rtn", "--eval"]);
 * const again = parseQuantizeArgs([...quantizeArgv(o), "--out", "/o"]);
 * console.assert(JSON.stringify(again) === JSON.stringify(o));
 * ```
 */
export function quantizeArgv(o: QuantizeRunOptions): string[] {
  const a = ["--model", o.model, "--format", o.format, "--method", o.method];
  if (o.actFormat !== null) a.push("--act-format", o.actFormat);
  if (o.actScale !== "dynamic") a.push("--act-scale", o.actScale);
  if (o.hadamard !== null) a.push("--hadamard", String(o.hadamard));
  a.push("--calib", o.calib, "--nsamples", String(o.nsamples), "--device", o.device);
  a.push("--seed", String(o.seed));
  if (o.damp !== null) a.push("--damp", String(o.damp));
  if (o.objective !== null) a.push("--objective", o.objective);
  if (o.eval) a.push("--eval");
  a.push("--data", o.data);
  if (o.evalWindows !== null) a.push("--eval-windows", String(o.evalWindows));
  return a;
}

function round(s: number): number {
  return Number(s.toFixed(3));
}

/** The JSON form of a result (NaN proxy losses as null). */
export function resultJson(r: QuantizeRunResult): Record<string, unknown> {
  return JSON.parse(
    JSON.stringify(r, (_k, v) => typeof v === "number" && !Number.isFinite(v) ? null : v),
  );
}

/**
 * Runs the CLI on `args`; returns the process exit code.
 *
 * @example
 * ```ts
 * import { main } from "./quantize.ts";
 * console.assert(await main(["--help"]) === 0);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  let o;
  try {
    o = parseQuantizeArgs(args);
  } catch (e) {
    console.error(`quantize: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const { help: _h, json, ...options } = o;
  try {
    if (options.out === null) throw new Error("--out DIR is required (see --help)");
    const { result, quantized } = await runQuantize(options, false);
    if (!json) {
      console.log(summaryTable(quantized));
      console.log();
      console.log(formatTable(
        [
          "format",
          "method",
          "act",
          "hadamard",
          "windows",
          "proxy loss",
          "ppl",
          "calib s",
          "quant s",
          "prop s",
          "eval s",
        ],
        [[
          options.format,
          options.method,
          options.actFormat
            ? options.actFormat + (options.actScale === "static" ? " (static)" : "")
            : "-",
          result.hadamard,
          result.calibrationWindows,
          Number.isNaN(result.proxyLossSum) ? "-" : result.proxyLossSum,
          result.ppl ?? "-",
          result.timings.calibrate,
          result.timings.quantize,
          result.timings.propagate,
          result.timings.eval,
        ]],
      ));
      console.log(`\nwrote ${options.out} (manifest.json beside the weights)`);
    } else {
      console.log(JSON.stringify(resultJson(result)));
    }
    return 0;
  } catch (e) {
    console.error(`quantize: ${(e as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
