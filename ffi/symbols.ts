/**
 * The whole FFI symbol table of the native library: the union of the per-concern tables in
 * `ffi/symbols/`, one per header in `cuda/include/fp4lab/`.
 *
 * @module
 */
import { coreSymbols } from "./symbols/core.ts";
import { decodeSymbols } from "./symbols/decode.ts";
import { formatsSymbols } from "./symbols/formats.ts";
import { gemmSymbols } from "./symbols/gemm.ts";
import { gptqSymbols } from "./symbols/gptq.ts";
import { graphSymbols } from "./symbols/graph.ts";
import { linalgSymbols } from "./symbols/linalg.ts";
import { modelSymbols } from "./symbols/model.ts";

/** Every symbol the Deno side binds, with its FFI signature. */
export const symbols = {
  ...coreSymbols,
  ...formatsSymbols,
  ...gemmSymbols,
  ...gptqSymbols,
  ...modelSymbols,
  ...decodeSymbols,
  ...linalgSymbols,
  ...graphSymbols,
} as const satisfies Deno.ForeignLibraryInterface;

/** Must equal `FP4_ABI_VERSION` in `cuda/include/fp4lab/core.h`. */
export const ABI_VERSION = 7;
