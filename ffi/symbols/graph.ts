/**
 * FFI symbols of `cuda/include/fp4lab/graph.h`: recording a sequence of the library's CUDA
 * calls once and replaying it with one launch (a decode step). Kept by hand;
 * `tests/ffi_header_test.ts` checks every entry against the C header.
 *
 * @module
 */

/** Symbols of the graph ABI: begin, end, launch, destroy. */
export const graphSymbols = {
  fp4_graph_begin: { parameters: ["i32"], result: "i32" },
  fp4_graph_end: { parameters: ["i32", "buffer"], result: "i32" },
  fp4_graph_launch: { parameters: ["i32", "pointer"], result: "i32" },
  fp4_graph_destroy: { parameters: ["i32", "pointer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;
