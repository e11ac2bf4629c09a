import { assert, assertEquals, assertThrows } from "./assert.ts";
import { check, LibraryLoadError, native, NativeError, openLibrary } from "../ffi/library.ts";
import { cudaStatus, requireDevice } from "../lib/device.ts";
import { Tensor } from "../lib/tensor.ts";
import { ABI_VERSION } from "../ffi/symbols.ts";

Deno.test("library loads and reports the ABI version the module expects", () => {
  assertEquals(native().fp4_abi_version(), ABI_VERSION);
});

Deno.test("a missing library file gives a LibraryLoadError naming the path", () => {
  const e = assertThrows(() => openLibrary("/nonexistent/libfp4lab.so"), LibraryLoadError);
  assert(e.message.includes("/nonexistent/libfp4lab.so"));
  assert(e.message.includes("deno task build"));
});

Deno.test("a file that is not a library gives a LibraryLoadError", async () => {
  const path = await Deno.makeTempFile({ suffix: ".so" });
  await Deno.writeTextFile(path, "not an ELF file");
  try {
    assertThrows(() => openLibrary(path), LibraryLoadError, "cannot load");
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("native errors become NativeError with the native message", () => {
  const lib = native();
  const e = assertThrows(
    () => check(lib.fp4_memcpy(0, null, null, 4n, 9), "fp4_memcpy"),
    NativeError,
  );
  assertEquals(e.code, "INVALID_ARGUMENT");
  assert(e.message.includes("kind 9"), e.message);
});

Deno.test("an unknown device id is rejected by the native side", () => {
  const out = new BigUint64Array(1);
  const e = assertThrows(() => check(native().fp4_alloc(7, 16n, out), "fp4_alloc"), NativeError);
  assert(e.message.includes("unknown device id 7"));
});

Deno.test("cpu sum smoke test matches a float64 sum of random data", () => {
  const x = new Float32Array(10007).map(() => Math.random() * 2 - 1);
  using t = Tensor.from(x, [x.length]);
  const out = new Float64Array(1);
  check(native().fp4_sum_f32(0, t.pointer(), BigInt(x.length), out), "fp4_sum_f32");
  const ref = x.reduce((a, b) => a + b, 0);
  assert(Math.abs(out[0] - ref) <= 1e-9 * x.length, `${out[0]} vs ${ref}`);
});

Deno.test("cuda device: usable with a GPU, a clear Error naming the reason without", () => {
  const s = cudaStatus();
  if (s.available) {
    assertEquals(requireDevice("cuda"), "cuda");
    assert(s.deviceCount >= 1 && s.name);
  } else {
    const e = assertThrows(() => requireDevice("cuda"), Error);
    assert(e.message.startsWith('device "cuda" is not usable here:'), e.message);
    assert(
      /without CUDA|no usable CUDA device/.test(e.message),
      `reason should say why: ${e.message}`,
    );
  }
});

Deno.test("wrong device names are rejected", () => {
  assertThrows(() => requireDevice("gpu"), Error, 'unknown device "gpu"');
});
