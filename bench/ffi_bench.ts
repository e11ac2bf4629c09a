/**
 * Cost of crossing the FFI boundary: a native call that does nothing, against a JS call that
 * does nothing. Run with `deno bench -A bench/ffi_bench.ts` (after `deno task build`).
 *
 * @module
 */
import { native } from "../ffi/library.ts";

const lib = native();

function jsNoop(): number {
  return 0;
}

Deno.bench({
  name: "fp4_noop() through Deno FFI",
  group: "call overhead",
  baseline: true,
  fn() {
    lib.fp4_noop();
  },
});

Deno.bench({
  name: "empty JS function, for comparison",
  group: "call overhead",
  fn() {
    jsNoop();
  },
});
