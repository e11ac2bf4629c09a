// The accuracy table of issue 5: perplexity of brown-llama-29m (or --model) under every
// quantization configuration below, each quantized from the same BF16 weights loaded once.
// One JSON object per configuration goes into --out as soon as it is measured (atomic
// rewrite of the whole file), so an interrupted run keeps what it finished; re-running with
// the same options skips the configurations already in the file.
//
// Run: deno task build && deno run -A bench/accuracy_table.ts --configs bf16,w4a4-nvfp4-rtn
//      deno run -A bench/accuracy_table.ts --list
import { parseArgs } from "node:util";
import { writeFileAtomic } from "../lib/atomic.ts";
import { cudaStatus, type Device, parseDevice, requireDevice } from "../lib/device.ts";
import { DecodeEngine } from "../lib/generate/engine.ts";
import type { Fp4Weights } from "../lib/kernels/fp4_linear.ts";
import type { InputScheme } from "../lib/pipeline/act_quant.ts";
import { describeSpec, resolveSpec } from "../lib/formats/spec.ts";
import type { GptqMethod } from "../lib/gptq/layer.ts";
import { LlamaModel, llamaWeightShapes, type Weight } from "../lib/model/llama.ts";
import { perplexity } from "../lib/model/perplexity.ts";
import { HfTokenizer } from "../lib/model/tokenizer.ts";
import { testModelDir } from "../lib/paths.ts";
import { calibrationWindows } from "../lib/pipeline/calibrate.ts";
import { gitCommit } from "../lib/pipeline/manifest.ts";
import { engineInputsOf, quantizeModel } from "../lib/pipeline/quantize_model.ts";
import type { CalibrationObjective } from "../lib/pipeline/objective.ts";
import type { Linear } from "../lib/model/forward.ts";

/** One row of the table: how the linears are quantized (null format: the BF16 model). */
export interface Config {
  name: string;
  scheme: "BF16" | "W4A16" | "W4A4" | "W8A8" | "W4A16-INT4";
  format: string | null;
  method: GptqMethod | null;
  hadamard?: number;
  actFormat: string | null;
  // What the row is for, when it is not the plain method: recorded with the result.
  note?: string;
  // The library method run, when `method` names the method it emulates (see below).
  runAs?: GptqMethod;
  // quantizeModel's calibration objective (lib/pipeline/objective.ts), when not its default.
  objective?: CalibrationObjective;
  // GPTQ's relative damping, when not quantizeModel's default.
  damp?: number;
}

/** A row quantizing to an FP4 preset, named `<scheme>-<format>-<method>` unless `extra` says. */
export const fp4Config = (
  scheme: "W4A16" | "W4A4",
  format: "nvfp4" | "mxfp4",
  method: GptqMethod,
  extra: Partial<Config> = {},
): Config => ({
  name: `${scheme.toLowerCase()}-${format}-${method}`,
  scheme,
  format,
  method,
  actFormat: scheme === "W4A4" ? format : null,
  ...extra,
});

// MR-GPTQ with the OCP E8M0 scale rule: lib/gptq's mr-gptq differs from gptq only in its
// defaults (rotation = group size, rule mr-gptq for E8M0, MSE search), and quantizeModel does
// not pass a rule, so the row runs gptq with those defaults spelled out but rule=ocp.
const mrOcp: Config = fp4Config("W4A4", "mxfp4", "mr-gptq", {
  name: "w4a4-mxfp4-mr-gptq-rule-ocp",
  format: "mxfp4:rule=ocp:mse",
  hadamard: 32,
  runAs: "gptq",
  note: "scale rule comparison: OCP E8M0 rule instead of mr-gptq's (run as gptq + H32 + mse)",
});
// The same spelled-out path with mr-gptq's own rule: must reproduce w4a4-mxfp4-mr-gptq.
const mrSpelled: Config = fp4Config("W4A4", "mxfp4", "mr-gptq", {
  name: "w4a4-mxfp4-mr-gptq-rule-mr-gptq-spelled",
  format: "mxfp4:rule=mr-gptq:mse",
  hadamard: 32,
  runAs: "gptq",
  note: "control for the rule comparison: mr-gptq's defaults spelled out through gptq",
});

const rotations = (format: "nvfp4" | "mxfp4", sizes: number[]): Config[] =>
  sizes.map((h) =>
    fp4Config("W4A4", format, "mr-gptq", {
      name: `w4a4-${format}-mr-gptq-h${h}`,
      hadamard: h,
      note: `rotation size comparison: Hadamard block ${h}`,
    })
  );

// The W4A4 recipe of bench/notes/accuracy.md: the asymmetric "output" objective, and activations
// whose block scales are chosen per block by MSE between the format's rule and one larger scale
// (NVFP4: the absmax scale times 1, 1.25, 1.5 or 1.75, i.e. the block's max mapped to 6, 4.8, 4
// or 3.4; MXFP4: the OCP exponent or the next). The online quantizer picks the scales; the GEMM's
// numerics do not change.
const ACT_SEARCH = { nvfp4: "nvfp4:mse=4,2,2", mxfp4: "mxfp4:mse=2,3,2" } as const;
const recipe = (
  format: "nvfp4" | "mxfp4",
  method: GptqMethod,
  objective: CalibrationObjective = "output",
): Config =>
  fp4Config("W4A4", format, method, {
    name: `w4a4-${format}-${method}-${objective === "output" ? "recipe" : "actsearch"}`,
    actFormat: ACT_SEARCH[format],
    objective: method === "rtn" ? undefined : objective,
    note: method === "rtn"
      ? `RTN weights with the recipe's activations ${ACT_SEARCH[format]}`
      : `objective ${objective}, activations ${ACT_SEARCH[format]}`,
  });

/** Every configuration, in the order they run by default (most wanted first). */
const CONFIGS: readonly Config[] = [
  { name: "bf16", scheme: "BF16", format: null, method: null, actFormat: null },
  fp4Config("W4A4", "nvfp4", "rtn"),
  fp4Config("W4A4", "nvfp4", "gptq"),
  fp4Config("W4A4", "nvfp4", "mr-gptq"),
  fp4Config("W4A4", "mxfp4", "rtn"),
  fp4Config("W4A4", "mxfp4", "gptq"),
  fp4Config("W4A4", "mxfp4", "mr-gptq"),
  mrOcp,
  ...rotations("mxfp4", [16, 64, 128]),
  fp4Config("W4A16", "nvfp4", "rtn"),
  fp4Config("W4A16", "nvfp4", "mr-gptq"),
  fp4Config("W4A16", "mxfp4", "rtn"),
  fp4Config("W4A16", "mxfp4", "mr-gptq"),
  { name: "w8a8-fp8-rtn", scheme: "W8A8", format: "fp8", method: "rtn", actFormat: "fp8" },
  { name: "w8a8-int8-rtn", scheme: "W8A8", format: "int8", method: "rtn", actFormat: "int8" },
  {
    name: "w4a16-int4-rtn",
    scheme: "W4A16-INT4",
    format: "int4:g128",
    method: "rtn",
    actFormat: null,
  },
  fp4Config("W4A16", "nvfp4", "gptq"),
  fp4Config("W4A16", "mxfp4", "gptq"),
  fp4Config("W4A4", "nvfp4", "rtn", {
    name: "w4a4-nvfp4-rtn-h16",
    hadamard: 16,
    note: "RTN with rotation",
  }),
  fp4Config("W4A4", "mxfp4", "rtn", {
    name: "w4a4-mxfp4-rtn-h32",
    hadamard: 32,
    note: "RTN with rotation",
  }),
  ...rotations("nvfp4", [32, 64, 128]),
  mrSpelled,
  recipe("nvfp4", "mr-gptq"),
  recipe("mxfp4", "mr-gptq"),
  recipe("nvfp4", "rtn"),
  recipe("mxfp4", "rtn"),
  recipe("nvfp4", "gptq"),
  recipe("mxfp4", "gptq"),
  recipe("nvfp4", "mr-gptq", "weights"),
  {
    ...recipe("nvfp4", "mr-gptq"),
    name: "w4a4-nvfp4-mr-gptq-recipe-46",
    actFormat: "nvfp4:mse=2,2,2",
    note: "objective output, activations nvfp4:mse=2,2,2",
  },
  recipe("mxfp4", "mr-gptq", "weights"),
];

/** One measured configuration as stored in the results file. */
interface Row {
  name: string;
  scheme: string;
  format: string | null;
  method: GptqMethod | null;
  runAs: GptqMethod | null;
  hadamard: number;
  actFormat: string | null;
  objective: CalibrationObjective | null;
  weightSpec: string | null;
  actSpec: string | null;
  note: string | null;
  ppl: number;
  deltaVsBf16: number | null;
  calibrationWindows: number;
  evalWindows: number;
  seconds: { quantize: number; eval: number; total: number };
  finished: string;
}

interface ResultsFile {
  benchmark: "accuracy-table";
  model: string;
  device: { forward: Device; gptq: Device; cores: number; os: string; gpu: string | null };
  date: string;
  commit: string | null;
  options: {
    nsamples: number;
    evalWindows: number | null;
    calib: string;
    data: string;
    windowTokens: number;
    device?: Device;
  };
  bf16Ppl: number | null;
  results: Row[];
}

const HELP = `deno run -A bench/accuracy_table.ts [options]

  --model DIR          model folder [default: the shared brown-llama-29m]
  --nsamples N         calibration windows for gptq / mr-gptq [default: 32]
  --eval-windows N     evaluate the first N windows of the evaluation text [default: 64]
  --calib FILE         calibration text [default: MODEL/calib.txt]
  --data FILE          evaluation text [default: MODEL/valid.txt]
  --out FILE           results JSON [default: bench/results/accuracy-brown-llama-29m-2026-11-23.json]
  --configs LIST       comma-separated configuration names, or "all" [default: all]
  --device NAME        cpu | cuda: where quantization (forward passes, Hessians, solves) and
                       evaluation run [default: cpu]
  --fresh              ignore the results already in --out (else rows there are kept and skipped)
  --list               print the configuration names and exit
`;

const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

function positive(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be an integer >= 1, got "${v}"`);
  return n;
}

async function readExisting(path: string): Promise<ResultsFile | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as ResultsFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`cannot read the existing results ${path}: ${(e as Error).message}`);
  }
}

async function save(path: string, file: ResultsFile): Promise<void> {
  const bf16 = file.results.find((r) => r.name === "bf16");
  file.bf16Ppl = bf16?.ppl ?? null;
  for (const r of file.results) r.deltaVsBf16 = bf16 ? round(r.ppl - bf16.ppl, 4) : null;
  const text = JSON.stringify(file, null, 2) + "\n";
  await writeFileAtomic(path, async (f) => {
    await f.write(new TextEncoder().encode(text));
  });
}

/** A configuration's quantized model, ready to score. */
export interface QuantizedRun {
  model: LlamaModel;
  linear: Linear | undefined;
  schemes: Map<string, InputScheme>;
  fp4: Map<string, Fp4Weights>;
  weightSpec: string | null;
  actSpec: string | null;
  hadamard: number;
  calibrationWindows: number;
}

/**
 * Quantizes a copy of `base` under `c` on `device` (calibrating on `windows`); `base` is left
 * untouched (quantizeModel replaces weights in its model, never writes into the arrays, so a
 * fresh model over the same BF16 arrays is an untouched copy).
 */
export async function quantizeConfig(
  base: LlamaModel,
  c: Config,
  windows: Int32Array[],
  device: Device,
): Promise<QuantizedRun> {
  const names = [...llamaWeightShapes(base.config).keys()];
  const model = LlamaModel.fromWeights(
    base.config,
    new Map<string, Weight>(names.map((n) => [n, base.weight(n)])),
  );
  const run: QuantizedRun = {
    model,
    linear: undefined,
    schemes: new Map(),
    fp4: new Map(),
    weightSpec: null,
    actSpec: null,
    hadamard: 0,
    calibrationWindows: 0,
  };
  if (!c.format || !c.method) return run;
  const method = c.runAs ?? c.method;
  const q = await quantizeModel(model, method === "rtn" ? [] : windows, {
    format: c.format,
    method,
    hadamard: c.hadamard,
    actFormat: c.actFormat,
    objective: c.objective,
    damp: c.damp,
    device,
  });
  const { schemes, quantized } = engineInputsOf(q);
  return {
    ...run,
    linear: q.linear,
    schemes,
    fp4: quantized,
    weightSpec: describeSpec(q.spec),
    actSpec: q.actSpec ? describeSpec(q.actSpec) : null,
    hadamard: q.hadamard,
    calibrationWindows: q.calibrationWindows,
  };
}

/**
 * Perplexity of a quantized run on `ids` (the first `maxWindows` windows): on CUDA through the
 * decode engine (packed MXFP4/NVFP4 through the FP4 kernels, as `quantize --device cuda --eval`
 * does), on the CPU through lib/model's forward pass with the run's linear hook.
 */
export async function scoreRun(
  q: QuantizedRun,
  ids: Int32Array,
  device: Device,
  maxWindows?: number,
): Promise<{ ppl: number; windows: number }> {
  using engine = device === "cuda"
    ? DecodeEngine.create(q.model, {
      device,
      contextLength: 512,
      schemes: q.schemes,
      quantized: q.fp4,
    })
    : undefined;
  return await perplexity(q.model, ids, {
    linear: q.linear,
    maxWindows,
    scoreWindow: engine ? (w) => engine.nll(w) : undefined,
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      nsamples: { type: "string", default: "32" },
      "eval-windows": { type: "string", default: "64" },
      calib: { type: "string" },
      data: { type: "string" },
      out: { type: "string", default: "bench/results/accuracy-brown-llama-29m-2026-11-23.json" },
      configs: { type: "string", default: "all" },
      fresh: { type: "boolean", default: false },
      device: { type: "string", default: "cpu" },
      list: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) return console.log(HELP);
  if (values.list) {
    for (const c of CONFIGS) console.log(c.name);
    return;
  }
  const modelDir = values.model ?? testModelDir();
  const nsamples = positive(values.nsamples, "--nsamples");
  const evalWindows = positive(values["eval-windows"], "--eval-windows");
  const calib = values.calib ?? `${modelDir}/calib.txt`;
  const data = values.data ?? `${modelDir}/valid.txt`;
  const byName = new Map(CONFIGS.map((c) => [c.name, c]));
  const wanted = values.configs === "all" ? [...CONFIGS] : values.configs.split(",").map((n) => {
    const c = byName.get(n.trim());
    if (!c) throw new Error(`unknown configuration "${n}"; --list shows them`);
    return c;
  });
  for (const c of wanted) {
    if (c.format) resolveSpec(c.format);
    if (c.actFormat) resolveSpec(c.actFormat);
  }

  const device = requireDevice(parseDevice(values.device));
  // CPU runs keep the options of the files recorded before --device existed.
  const options = device === "cpu"
    ? { nsamples, evalWindows, calib, data, windowTokens: 512 }
    : { nsamples, evalWindows, calib, data, windowTokens: 512, device };
  const existing = values.fresh ? null : await readExisting(values.out);
  const sameRun = existing !== null && existing.model === modelDir &&
    JSON.stringify(existing.options) === JSON.stringify(options);
  if (existing && !sameRun) {
    throw new Error(
      `${values.out} holds results of other options (${JSON.stringify(existing.options)}); ` +
        `pass --fresh to replace it or --out for another file`,
    );
  }
  const file: ResultsFile = {
    benchmark: "accuracy-table",
    model: modelDir,
    device: {
      forward: device,
      gptq: device,
      cores: navigator.hardwareConcurrency,
      os: `${Deno.build.os} ${Deno.osRelease()}`,
      gpu: device === "cuda" ? cudaStatus().name ?? null : null,
    },
    date: new Date().toISOString(),
    // The GPU machine's copy may sit inside another checkout: the commit the caller names wins.
    commit: Deno.env.get("GIT_COMMIT") ?? await gitCommit(),
    options,
    bf16Ppl: null,
    results: existing?.results ?? [],
  };
  const done = new Set(file.results.map((r) => r.name));

  const tokenizer = await HfTokenizer.load(modelDir);
  const base = await LlamaModel.load(modelDir);
  const calibIds = tokenizer.encode(await Deno.readTextFile(calib));
  const windows = calibrationWindows(calibIds, nsamples);
  if (windows.length < nsamples) {
    throw new Error(`${calib} has only ${windows.length} windows; asked for ${nsamples}`);
  }
  const evalIds = tokenizer.encode(await Deno.readTextFile(data));

  for (const c of wanted) {
    if (done.has(c.name)) {
      console.error(`${c.name}: already in ${values.out}, skipped`);
      continue;
    }
    const t0 = performance.now();
    const q = await quantizeConfig(base, c, windows, device);
    const t1 = performance.now();
    const r = await scoreRun(q, evalIds, device, evalWindows);
    const t2 = performance.now();
    const row: Row = {
      name: c.name,
      scheme: c.scheme,
      format: c.format,
      method: c.method,
      runAs: c.runAs ?? null,
      hadamard: q.hadamard,
      actFormat: c.actFormat,
      objective: c.objective ?? null,
      weightSpec: q.weightSpec,
      actSpec: q.actSpec,
      note: c.note ?? null,
      ppl: round(r.ppl, 4),
      deltaVsBf16: null,
      calibrationWindows: q.calibrationWindows,
      evalWindows: r.windows,
      seconds: {
        quantize: round((t1 - t0) / 1000, 1),
        eval: round((t2 - t1) / 1000, 1),
        total: round((t2 - t0) / 1000, 1),
      },
      finished: new Date().toISOString(),
    };
    file.results.push(row);
    file.date = row.finished;
    await save(values.out, file);
    console.log(JSON.stringify(row));
  }
}

if (import.meta.main) await main();
