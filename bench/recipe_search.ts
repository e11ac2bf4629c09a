// Chooses fp4lab's W4A4 MR-GPTQ recipe without looking at the evaluation text. Every candidate
// (rotation size x activation scale search x calibration objective, per format) is quantized
// from the BF16 model with the first --nsamples windows of calib.txt, exactly as the accuracy
// table does, and scored on the REST of calib.txt (the selection set: same source, never used
// for calibration). Only then are the best --confirm candidates per format scored on valid.txt.
// BF16 and plain RTN W4A4 are scored on both texts, so each candidate's share of the RTN gap is
// reported on both. One JSON file (--out), rewritten atomically after each measurement;
// re-running with the same options resumes where it stopped.
//
// Run: deno task build && deno run -A bench/recipe_search.ts --device cuda --out FILE
import { parseArgs } from "node:util";
import { writeFileAtomic } from "../lib/atomic.ts";
import { cudaStatus, type Device, parseDevice, requireDevice } from "../lib/device.ts";
import { resolveSpec } from "../lib/formats/spec.ts";
import { LlamaModel } from "../lib/model/llama.ts";
import { HfTokenizer } from "../lib/model/tokenizer.ts";
import { testModelDir } from "../lib/paths.ts";
import { calibrationWindows } from "../lib/pipeline/calibrate.ts";
import { WINDOW_TOKENS } from "../lib/model/perplexity.ts";
import { gitCommit } from "../lib/pipeline/manifest.ts";
import type { CalibrationObjective } from "../lib/pipeline/objective.ts";
import { type Config, fp4Config, quantizeConfig, scoreRun } from "./accuracy_table.ts";

type Format = "nvfp4" | "mxfp4";

// The searched space. Rotation sizes from the format's group upwards; activation scales by the
// format's rule or chosen per block by squared error among the rule and larger scales
// (docs/FORMATS.md §5.5: `mse=<candidates>,<max factor>,<norm>`).
const ROTATIONS: Record<Format, number[]> = { nvfp4: [16, 32, 64, 128], mxfp4: [32, 64, 128] };
const ACTIVATIONS: Record<Format, string[]> = {
  nvfp4: ["nvfp4", "nvfp4:mse=2,2,2", "nvfp4:mse=4,2,2", "nvfp4:mse=8,2,2"],
  mxfp4: ["mxfp4", "mxfp4:mse=2,3,2"],
};
const OBJECTIVES: CalibrationObjective[] = ["output"];

function candidates(format: Format): Config[] {
  const out: Config[] = [];
  for (const objective of OBJECTIVES) {
    for (const hadamard of ROTATIONS[format]) {
      for (const actFormat of ACTIVATIONS[format]) {
        out.push(fp4Config("W4A4", format, "mr-gptq", {
          name: `${format}-${objective}-h${hadamard}-${actFormat.replace(`${format}:`, "")}`,
          hadamard,
          actFormat,
          objective,
        }));
      }
    }
  }
  return out;
}

const baselines = (format: Format): Config[] => [
  fp4Config("W4A4", format, "rtn", { name: `${format}-rtn` }),
];
const BF16: Config = { name: "bf16", scheme: "BF16", format: null, method: null, actFormat: null };

interface Score {
  ppl: number;
  windows: number;
  seconds: number;
}

interface Row {
  name: string;
  role: "reference" | "candidate";
  format: string | null;
  hadamard: number | null;
  actFormat: string | null;
  objective: CalibrationObjective | null;
  quantizeSeconds: number;
  select: Score;
  valid: Score | null;
}

interface SearchFile {
  benchmark: "recipe-search";
  model: string;
  device: { name: Device; gpu: string | null; cores: number };
  commit: string | null;
  date: string;
  options: { nsamples: number; formats: Format[]; confirm: number; windowTokens: number };
  selectionWindows: number;
  rows: Row[];
  chosen: Record<string, string[]>;
}

const HELP = `deno run -A bench/recipe_search.ts [options]

Scores W4A4 MR-GPTQ candidates on calib.txt windows not used for calibration, then the best
--confirm per format on valid.txt (see the file's header).

  --model DIR      model folder [default: the shared brown-llama-29m]
  --nsamples N     calibration windows (the first N of calib.txt) [default: 128]
  --formats LIST   nvfp4,mxfp4 [default: both]
  --confirm K      candidates per format scored on valid.txt [default: 2]
  --device NAME    cpu | cuda [default: cuda]
  --out FILE       results JSON [default: bench/results/recipe-search.json]
  --list           print the candidate names and exit
`;

const round = (x: number, d = 4) => Math.round(x * 10 ** d) / 10 ** d;

async function save(path: string, file: SearchFile): Promise<void> {
  const text = JSON.stringify(file, null, 2) + "\n";
  await writeFileAtomic(path, async (f) => {
    await f.write(new TextEncoder().encode(text));
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      model: { type: "string" },
      nsamples: { type: "string", default: "128" },
      formats: { type: "string", default: "nvfp4,mxfp4" },
      confirm: { type: "string", default: "2" },
      device: { type: "string", default: "cuda" },
      out: { type: "string", default: "bench/results/recipe-search.json" },
      list: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) return console.log(HELP);
  const formats = values.formats.split(",").map((f) => {
    if (f !== "nvfp4" && f !== "mxfp4") throw new Error(`--formats: unknown format "${f}"`);
    return f as Format;
  });
  if (values.list) {
    for (const f of formats) for (const c of candidates(f)) console.log(c.name);
    return;
  }
  const nsamples = Number(values.nsamples), confirm = Number(values.confirm);
  if (!Number.isInteger(nsamples) || nsamples < 1) throw new Error("--nsamples must be >= 1");
  if (!Number.isInteger(confirm) || confirm < 0) throw new Error("--confirm must be >= 0");
  for (const f of formats) for (const a of ACTIVATIONS[f]) resolveSpec(a);
  const device = requireDevice(parseDevice(values.device));
  const modelDir = values.model ?? testModelDir();
  const options = { nsamples, formats, confirm, windowTokens: WINDOW_TOKENS };

  let file: SearchFile | null = null;
  try {
    const old = JSON.parse(await Deno.readTextFile(values.out)) as SearchFile;
    if (old.model === modelDir && JSON.stringify(old.options) === JSON.stringify(options)) {
      file = old;
    } else throw new Error(`${values.out} holds a search with other options; use another --out`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const tokenizer = await HfTokenizer.load(modelDir);
  const base = await LlamaModel.load(modelDir);
  const calibIds = tokenizer.encode(await Deno.readTextFile(`${modelDir}/calib.txt`));
  const windows = calibrationWindows(calibIds, nsamples);
  if (windows.length < nsamples) throw new Error(`calib.txt has only ${windows.length} windows`);
  const selectIds = calibIds.subarray(nsamples * WINDOW_TOKENS);
  const validIds = tokenizer.encode(await Deno.readTextFile(`${modelDir}/valid.txt`));
  file ??= {
    benchmark: "recipe-search",
    model: modelDir,
    device: {
      name: device,
      gpu: device === "cuda" ? cudaStatus().name ?? null : null,
      cores: navigator.hardwareConcurrency,
    },
    commit: Deno.env.get("GIT_COMMIT") ?? await gitCommit(),
    date: new Date().toISOString(),
    options,
    selectionWindows: Math.floor(selectIds.length / WINDOW_TOKENS),
    rows: [],
    chosen: {},
  };
  const f = file;
  const find = (name: string) => f.rows.find((r) => r.name === name);

  const score = async (ids: Int32Array, q: Awaited<ReturnType<typeof quantizeConfig>>) => {
    const t = performance.now();
    const r = await scoreRun(q, ids, device);
    return {
      ppl: round(r.ppl),
      windows: r.windows,
      seconds: round((performance.now() - t) / 1e3, 1),
    };
  };
  // Quantizes `c` and scores it on the selection text, and on valid.txt when `valid`.
  const measure = async (c: Config, role: Row["role"], valid: boolean): Promise<Row> => {
    const had = find(c.name);
    if (had && (had.valid || !valid)) return had;
    const t = performance.now();
    const q = await quantizeConfig(base, c, windows, device);
    const quantizeSeconds = round((performance.now() - t) / 1e3, 1);
    const row: Row = had ?? {
      name: c.name,
      role,
      format: c.format,
      hadamard: c.format ? q.hadamard : null,
      actFormat: c.actFormat,
      objective: c.objective ?? null,
      quantizeSeconds,
      select: await score(selectIds, q),
      valid: null,
    };
    if (valid) row.valid = await score(validIds, q);
    if (!had) f.rows.push(row);
    f.date = new Date().toISOString();
    await save(values.out, f);
    console.log(JSON.stringify(row));
    return row;
  };

  await measure(BF16, "reference", true);
  for (const format of formats) {
    for (const c of baselines(format)) await measure(c, "reference", true);
    const rows: Row[] = [];
    for (const c of candidates(format)) rows.push(await measure(c, "candidate", false));
    const best = [...rows].sort((a, b) => a.select.ppl - b.select.ppl).slice(0, confirm);
    f.chosen[format] = best.map((r) => r.name);
    for (const r of best) {
      await measure(candidates(format).find((c) => c.name === r.name)!, "candidate", true);
    }
  }
  const bf16 = find("bf16")!;
  for (const format of formats) {
    const rtn = find(`${format}-rtn`)!;
    const share = (r: Row, set: "select" | "valid") => {
      const s = r[set], b = bf16[set], q = rtn[set];
      return s && b && q ? `${(100 * (q.ppl - s.ppl) / (q.ppl - b.ppl)).toFixed(1)} %` : "-";
    };
    console.log(`\n${format}: share of the RTN gap closed (selection set | valid.txt)`);
    for (const r of f.rows.filter((r) => r.format?.startsWith(format) && r.role === "candidate")) {
      const mark = f.chosen[format]?.includes(r.name) ? "*" : " ";
      console.log(
        `${mark} ${r.name.padEnd(34)} ${share(r, "select").padStart(7)} | ${share(r, "valid")}`,
      );
    }
  }
}

if (import.meta.main) await main();
