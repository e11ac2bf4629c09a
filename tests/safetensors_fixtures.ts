/**
 * The deterministic content of the safetensors interoperability fixtures, shared by the tests
 * and by the script that writes `tests/fixtures/safetensors/written_by_fp4lab.safetensors`.
 * `tests/gpu/make_safetensors_fixtures.py` and `tests/gpu/check_safetensors_interop.py`
 * define the same table in Python; change both together.
 *
 * Regenerate the fp4lab-written fixture with:
 * `tools/node_modules/.bin/deno run -A tests/safetensors_fixtures.ts`
 *
 * @module
 */
import { f32ToBf16, f32ToF16 } from "../lib/dtype.ts";
import {
  type SafetensorsDType,
  type SafetensorsEntry,
  writeSafetensors,
} from "../lib/safetensors.ts";

/** Folder of the committed safetensors fixtures. */
export const FIXTURE_DIR = new URL("./fixtures/safetensors/", import.meta.url).pathname;

/** File written by Python `safetensors` (tests/gpu/make_safetensors_fixtures.py). */
export const PYTHON_FILE = `${FIXTURE_DIR}python_all_dtypes.safetensors`;
/** Sharded checkpoint folder written by the same Python script. */
export const PYTHON_SHARDED_DIR = `${FIXTURE_DIR}python_sharded`;
/** File written by fp4lab, checked by tests/gpu/check_safetensors_interop.py. */
export const FP4LAB_FILE = `${FIXTURE_DIR}written_by_fp4lab.safetensors`;

/** Metadata of the Python-written file. */
export const PYTHON_METADATA = { format: "pt", source: "python-safetensors" };
/** Metadata of the fp4lab-written file. */
export const FP4LAB_METADATA = { format: "pt", source: "fp4lab" };

/** Which tensors the Python script puts in each shard of the sharded fixture. */
export const PYTHON_SHARDS: Record<string, string[]> = {
  "model-00001-of-00002.safetensors": ["f32", "bf16", "scalar"],
  "model-00002-of-00002.safetensors": ["i32", "u8", "empty"],
};

interface Spec {
  dtype: SafetensorsDType;
  shape: number[];
  value: (i: number) => number | bigint | boolean;
}

/** The fixture table: name -> dtype, shape and the value of flat element i. */
export const SPECS: Record<string, Spec> = {
  f64: { dtype: "F64", shape: [2, 3], value: (i) => (i - 2.5) * 0.125 },
  f32: { dtype: "F32", shape: [3, 5], value: (i) => (i - 7) * 0.25 },
  f16: { dtype: "F16", shape: [4, 4], value: (i) => (i - 8) * 0.5 },
  bf16: { dtype: "BF16", shape: [2, 8], value: (i) => (i - 8) * 1.5 },
  f8_e4m3: { dtype: "F8_E4M3", shape: [16], value: (i) => (i - 8) * 0.5 },
  f8_e5m2: { dtype: "F8_E5M2", shape: [16], value: (i) => (i - 8) * 0.5 },
  u8: { dtype: "U8", shape: [4, 4], value: (i) => (i * 17) % 256 },
  i8: { dtype: "I8", shape: [16], value: (i) => i * 16 - 128 },
  i16: { dtype: "I16", shape: [2, 4], value: (i) => (i - 4) * 8191 },
  i32: { dtype: "I32", shape: [8], value: (i) => (i - 4) * 536870911 },
  i64: { dtype: "I64", shape: [4], value: (i) => BigInt(i - 2) * (1n << 40n) + BigInt(i) },
  bool: { dtype: "BOOL", shape: [2, 3], value: (i) => i % 3 === 0 },
  scalar: { dtype: "F32", shape: [], value: () => 3.5 },
  empty: { dtype: "F32", shape: [0, 4], value: () => 0 },
  empty_bf16: { dtype: "BF16", shape: [3, 0], value: () => 0 },
};

/** The value of an FP8 byte: E4M3 "fn" (no infinities) or E5M2 (IEEE-like). */
export function decodeF8(byte: number, dtype: "F8_E4M3" | "F8_E5M2"): number {
  const [eBits, mBits, bias] = dtype === "F8_E4M3" ? [4, 3, 7] : [5, 2, 15];
  const sign = byte & 0x80 ? -1 : 1;
  const exp = (byte >> mBits) & ((1 << eBits) - 1);
  const man = byte & ((1 << mBits) - 1);
  if (dtype === "F8_E4M3" && exp === 15 && man === 7) return NaN;
  if (dtype === "F8_E5M2" && exp === 31) return man ? NaN : sign * Infinity;
  if (exp === 0) return sign * man * 2 ** (1 - bias - mBits);
  return sign * (1 + man / 2 ** mBits) * 2 ** (exp - bias);
}

function encodeF8Exact(x: number, dtype: "F8_E4M3" | "F8_E5M2"): number {
  for (let b = 0; b < 256; b++) if (decodeF8(b, dtype) === x) return b;
  throw new Error(`${x} is not exactly representable in ${dtype}`);
}

/** Raw little-endian bytes of fixture tensor `name`. */
export function fixtureBytes(name: string): Uint8Array {
  const { dtype, shape, value } = SPECS[name];
  const n = shape.reduce((a, b) => a * b, 1);
  const idx = Array.from({ length: n }, (_, i) => i);
  let view: ArrayBufferView;
  switch (dtype) {
    case "F64":
      view = Float64Array.from(idx, (i) => value(i) as number);
      break;
    case "F32":
      view = Float32Array.from(idx, (i) => value(i) as number);
      break;
    case "F16":
      view = Uint16Array.from(idx, (i) => f32ToF16(value(i) as number));
      break;
    case "BF16":
      view = Uint16Array.from(idx, (i) => f32ToBf16(value(i) as number));
      break;
    case "F8_E4M3":
    case "F8_E5M2":
      view = Uint8Array.from(idx, (i) => encodeF8Exact(value(i) as number, dtype));
      break;
    case "U8":
      view = Uint8Array.from(idx, (i) => value(i) as number);
      break;
    case "I8":
      view = Int8Array.from(idx, (i) => value(i) as number);
      break;
    case "I16":
      view = Int16Array.from(idx, (i) => value(i) as number);
      break;
    case "I32":
      view = Int32Array.from(idx, (i) => value(i) as number);
      break;
    case "I64":
      view = BigInt64Array.from(idx, (i) => value(i) as bigint);
      break;
    case "BOOL":
      view = Uint8Array.from(idx, (i) => (value(i) ? 1 : 0));
      break;
  }
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** Every fixture tensor as writer input. */
export function fixtureEntries(names = Object.keys(SPECS)): Record<string, SafetensorsEntry> {
  return Object.fromEntries(
    names.map((name) => {
      const { dtype, shape } = SPECS[name];
      return [name, { dtype, shape, data: fixtureBytes(name) }];
    }),
  );
}

/** Writes `written_by_fp4lab.safetensors` to `path` (default: the committed fixture). */
export async function writeFp4labFixture(path = FP4LAB_FILE): Promise<void> {
  await writeSafetensors(path, fixtureEntries(), FP4LAB_METADATA);
}

if (import.meta.main) {
  await Deno.mkdir(FIXTURE_DIR, { recursive: true });
  await writeFp4labFixture();
  console.log(`wrote ${FP4LAB_FILE}`);
}
