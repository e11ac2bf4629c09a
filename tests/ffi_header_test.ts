// The FFI symbol table is written by hand; this test parses the C headers and checks that
// every declared entry point is bound with matching parameter and result types, and that
// nothing is bound that the headers do not declare.
import { assert, assertEquals } from "./assert.ts";
import { ABI_VERSION, symbols } from "../ffi/symbols.ts";

const headerDir = new URL("../cuda/include/fp4lab/", import.meta.url);

function ffiTypeOf(cType: string): string[] {
  const t = cType.replace(/\bconst\b/g, "").replace(/\s+/g, " ").trim();
  if (t.includes("*")) return ["pointer", "buffer"];
  const map: Record<string, string> = {
    int32_t: "i32",
    fp4_status: "i32",
    uint32_t: "u32",
    int64_t: "i64",
    uint64_t: "u64",
    float: "f32",
    double: "f64",
    uint8_t: "u8",
    int: "i32",
    "size_t": "usize",
  };
  if (!(t in map)) throw new Error(`header type "${cType}" has no FFI mapping in this test`);
  return [map[t]];
}

function parseHeaders(): Map<string, { params: string[]; result: string }> {
  const decls = new Map<string, { params: string[]; result: string }>();
  for (const entry of Deno.readDirSync(headerDir)) {
    if (!entry.name.endsWith(".h")) continue;
    const text = Deno.readTextFileSync(new URL(entry.name, headerDir))
      .replace(/\/\*[\s\S]*?\*\//g, "")
      .replace(/\/\/.*$/gm, "");
    for (const m of text.matchAll(/FP4_API\s+([\w\s]+?)\s+(fp4_\w+)\s*\(([^)]*)\)\s*;/g)) {
      const params = m[3].trim() === "void" || m[3].trim() === ""
        ? []
        : m[3].split(",").map((p) => p.trim().replace(/\s*\b\w+$/, "")); // drop the name
      decls.set(m[2], { params, result: m[1].trim() });
    }
  }
  return decls;
}

Deno.test("every header entry point is bound with matching FFI types", () => {
  const decls = parseHeaders();
  assert(decls.size > 5, `parsed only ${decls.size} declarations`);
  const table = symbols as Record<string, { parameters: readonly string[]; result: string }>;
  for (const [name, d] of decls) {
    const sym = table[name];
    assert(sym, `${name} is declared in cuda/include/fp4lab/ but missing from ffi/symbols`);
    assertEquals(sym.parameters.length, d.params.length, `${name}: parameter count`);
    d.params.forEach((p, i) => {
      const allowed = ffiTypeOf(p);
      assert(
        allowed.includes(sym.parameters[i]),
        `${name} parameter ${i}: C type "${p}" bound as "${sym.parameters[i]}"`,
      );
    });
    assert(ffiTypeOf(d.result).includes(sym.result), `${name}: result type`);
  }
  for (const name of Object.keys(table)) {
    assert(decls.has(name), `${name} is bound in ffi/symbols but not declared in any header`);
  }
});

Deno.test("the ABI version in the header equals the module's", () => {
  const core = Deno.readTextFileSync(new URL("core.h", headerDir));
  const m = core.match(/#define FP4_ABI_VERSION (\d+)/);
  assert(m);
  assertEquals(Number(m[1]), ABI_VERSION);
});
