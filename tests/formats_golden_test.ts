// Our element encoders and decoders against golden vectors from ml_dtypes and PyTorch, written
// by tests/gpu/make_format_goldens.py into tests/fixtures/formats/ (FP4LAB_FORMAT_GOLDENS
// overrides the folder). Inputs outside the range where docs/FORMATS.md §9 says we deliberately
// differ (overflow, NaN, Inf, E8M0 zero/negatives/out of range) must match bit for bit; the
// deliberate differences are counted and printed.
import { assert, assertEquals } from "./assert.ts";
import { bf16ToF32, f16ToF32 } from "../lib/dtype.ts";
import {
  decodeMinifloat,
  decodeScale,
  E2M1,
  E4M3,
  E5M2,
  type E8M0Rounding,
  encodeE8M0,
  encodeMinifloat,
  floorLog2,
  type MinifloatFormat,
} from "../lib/formats/mod.ts";

const DIR = Deno.env.get("FP4LAB_FORMAT_GOLDENS") ??
  new URL("./fixtures/formats/", import.meta.url).pathname;
const COMMAND =
  "python3 tests/gpu/make_format_goldens.py   # on a machine with ml_dtypes (and torch)";

interface Entry {
  file: string;
  lib: string;
  target: string;
  inputs?: "bf16" | "f16";
  kind: "codes" | "decode";
}

function readManifest(): { files: Entry[]; versions: Record<string, string> } | null {
  try {
    return JSON.parse(Deno.readTextFileSync(`${DIR}/manifest.json`));
  } catch {
    return null;
  }
}

const manifest = readManifest();

Deno.test("golden fixtures from ml_dtypes are present", () => {
  assert(
    manifest !== null,
    `no golden fixtures in ${DIR}: generate them with\n  ${COMMAND}\n(see tests/gpu/make_format_goldens.py)`,
  );
  assert(
    manifest.files.some((f) => f.lib === "ml_dtypes" && f.kind === "codes"),
    "manifest lists no ml_dtypes codes",
  );
  console.log("golden versions:", JSON.stringify(manifest.versions));
});

const MINI: Record<string, MinifloatFormat> = {
  float4_e2m1fn: E2M1,
  float8_e4m3fn: E4M3,
  float8_e5m2: E5M2,
};

/** Why our spec deliberately differs for input x, or null where we must match. */
function deliberate(target: string, x: number): string | null {
  if (Number.isNaN(x)) return "NaN input";
  const fmt = MINI[target];
  if (fmt) return Math.abs(x) > fmt.maxFinite ? "overflow/Inf (we saturate)" : null;
  if (!(x > 0)) return "zero or negative (we give 0x00)";
  if (x === Infinity) return "Inf (we give 0xFE)";
  if (x < 2 ** -127) return "below 2^-127 (we clamp to 0x00)";
  if (x >= 1.5 * 2 ** 127) return "rounds above 2^127 (we clamp to 0xFE)";
  if (x < 2 ** -126) return "float32 subnormal (the library rounds its bit pattern, we its value)";
  if (x / 2 ** floorLog2(x) === 1.5) {
    return "exact tie 1.5 * 2^k (the library rounds half up, we to even)";
  }
  return null;
}

function inputsOf(kind: "bf16" | "f16"): Float64Array {
  const x = new Float64Array(65536);
  for (let b = 0; b < 65536; b++) x[b] = kind === "bf16" ? bf16ToF32(b) : f16ToF32(b);
  return x;
}

function ours(target: string, x: number, rounding: E8M0Rounding): number {
  const fmt = MINI[target];
  return fmt ? encodeMinifloat(x, fmt) : encodeE8M0(x, rounding);
}

function compareCodes(
  e: Entry,
  rounding: E8M0Rounding,
): { bad: string[]; differ: Map<string, number> } {
  const theirs = Deno.readFileSync(`${DIR}/${e.file}`);
  assertEquals(theirs.length, 65536, `${e.file} length`);
  const x = inputsOf(e.inputs!);
  const mask = e.target === "float4_e2m1fn" ? 0xf : 0xff;
  const bad: string[] = [];
  const differ = new Map<string, number>();
  for (let i = 0; i < 65536; i++) {
    const want = theirs[i] & mask;
    const got = ours(e.target, x[i], rounding);
    if (got === want) continue;
    const why = deliberate(e.target, x[i]);
    if (why) differ.set(why, (differ.get(why) ?? 0) + 1);
    else {bad.push(
        `pattern 0x${i.toString(16)} (${x[i]}): ours 0x${got.toString(16)}, theirs 0x${
          want.toString(16)
        }`,
      );}
  }
  return { bad, differ };
}

for (const e of manifest?.files ?? []) {
  if (e.kind === "codes") {
    Deno.test(`golden ${e.file}: our encoder matches wherever the spec does not deliberately differ`, () => {
      let roundings: E8M0Rounding[] = ["rne"];
      // PyTorch's E8M0 cast may round differently from ml_dtypes: accept one of our roundings
      // matching everywhere in range, and say which.
      if (e.target === "float8_e8m0fnu" && e.lib !== "ml_dtypes") {
        roundings = ["rne", "ceil", "floor"];
      }
      let result = compareCodes(e, roundings[0]);
      let used = roundings[0];
      for (const r of roundings.slice(1)) {
        if (result.bad.length === 0) break;
        result = compareCodes(e, r);
        used = r;
      }
      assertEquals(
        result.bad.length,
        0,
        `${e.file}: ${result.bad.length} mismatches:\n${result.bad.slice(0, 10).join("\n")}`,
      );
      const listed = [...result.differ].map(([k, n]) => `${k}: ${n}`).join("; ") || "none";
      console.log(
        `${e.file}: e8m0 rounding ${
          MINI[e.target] ? "n/a" : used
        }; deliberate differences: ${listed}`,
      );
    });
  } else {
    Deno.test(`golden ${e.file}: our decoder gives the same value for every code`, () => {
      const bytes = Deno.readFileSync(`${DIR}/${e.file}`);
      const theirs = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
      for (let c = 0; c < theirs.length; c++) {
        const fmt = MINI[e.target];
        const got = fmt ? decodeMinifloat(c, fmt) : decodeScale(c, "e8m0");
        const want = theirs[c];
        assert(
          (Number.isNaN(got) && Number.isNaN(want)) || Object.is(got, want),
          `${e.file} code 0x${c.toString(16)}: ours ${got}, theirs ${want}`,
        );
      }
    });
  }
}
