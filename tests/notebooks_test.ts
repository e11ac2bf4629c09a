// Executes every notebook headless on the Deno kernel (jupyter nbconvert --execute) and fails
// on any cell error; also checks each .ipynb is generated from its notebooks/src/*.ts source.
import { assert, assertEquals } from "./assert.ts";

const dir = new URL("../notebooks/", import.meta.url).pathname;
const notebooks = [...Deno.readDirSync(dir)]
  .filter((e) => e.name.endsWith(".ipynb"))
  .map((e) => e.name)
  .sort();

async function run(cmd: string, args: string[], cwd: string) {
  const out = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  return {
    code: out.code,
    text: new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr),
  };
}

Deno.test("there are notebooks to execute", () => {
  assert(notebooks.length >= 1, `no notebooks in ${dir}`);
});

for (const name of notebooks) {
  const stem = name.replace(/\.ipynb$/, "");

  Deno.test(`notebook ${name} is generated from notebooks/src/${stem}.ts`, async () => {
    const tmp = await Deno.makeTempFile({ suffix: ".ipynb" });
    try {
      const r = await run("python3", ["../scripts/make_notebook.py", `src/${stem}.ts`, tmp], dir);
      assertEquals(r.code, 0, r.text);
      assertEquals(
        await Deno.readTextFile(`${dir}/${name}`),
        await Deno.readTextFile(tmp),
        `notebooks/${name} is stale: run python3 scripts/make_notebook.py notebooks/src/${stem}.ts notebooks/${name}`,
      );
    } finally {
      await Deno.remove(tmp);
    }
  });

  Deno.test({
    name: `notebook ${name} executes without errors`,
    sanitizeResources: false,
    fn: async () => {
      const outDir = await Deno.makeTempDir();
      try {
        const r = await run("jupyter", [
          "nbconvert",
          "--to",
          "notebook",
          "--execute",
          "--ExecutePreprocessor.timeout=600",
          name,
          "--output-dir",
          outDir,
        ], dir);
        assertEquals(r.code, 0, `nbconvert failed for ${name}:\n${r.text.slice(-4000)}`);
        const nb = JSON.parse(await Deno.readTextFile(`${outDir}/${name}`));
        for (const cell of nb.cells) {
          for (const o of cell.outputs ?? []) {
            assert(o.output_type !== "error", `${name}: cell error ${o.ename}: ${o.evalue}`);
          }
        }
      } finally {
        await Deno.remove(outDir, { recursive: true });
      }
    },
  });
}
