/**
 * Plain-text tables and progress bars for the command-line tools.
 *
 * @module
 */

/** A table cell: strings are left-aligned, numbers right-aligned. */
export type Cell = string | number;

/**
 * Formats rows as an aligned text table with a header rule.
 *
 * @example
 * ```ts
 * import { formatTable } from "./table.ts";
 * console.log(formatTable(["format", "snr"], [["nvfp4", 20.1], ["mxfp4", 18.3]]));
 * ```
 */
export function formatTable(header: readonly string[], rows: readonly (readonly Cell[])[]): string {
  const text = (c: Cell) => typeof c === "number" ? formatNumber(c) : c;
  const cells = [header.map(String), ...rows.map((r) => r.map(text))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  const numeric = header.map((_, i) =>
    rows.length > 0 && rows.every((r) => typeof r[i] === "number")
  );
  const line = (r: readonly string[]) =>
    r.map((c, i) => numeric[i] ? c.padStart(widths[i]) : c.padEnd(widths[i])).join("  ").trimEnd();
  return [line(cells[0]), widths.map((w) => "-".repeat(w)).join("  "), ...cells.slice(1).map(line)]
    .join("\n");
}

/**
 * A number with 4 significant digits (integers as they are).
 *
 * @example
 * ```ts
 * import { formatNumber } from "./table.ts";
 * console.assert(formatNumber(3.14159) === "3.142");
 * ```
 */
export function formatNumber(x: number): string {
  if (Number.isInteger(x)) return String(x);
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(3);
  return String(Number(x.toPrecision(4)));
}

/**
 * A progress bar on stderr (redrawn in place on a terminal, one line per 10% otherwise, so CI
 * logs stay short).
 *
 * @example
 * ```ts
 * import { Progress } from "./table.ts";
 * const p = new Progress("quantize", 3);
 * for (let i = 0; i < 3; i++) p.tick();
 * p.done();
 * ```
 */
export class Progress {
  #label: string;
  #total: number;
  #count = 0;
  #start = performance.now();
  #lastDecile = -1;
  #tty = Deno.stderr.isTerminal();
  #quiet: boolean;

  /** A bar for `total` steps; `quiet` silences it (e.g. for `--json`). */
  constructor(label: string, total: number, quiet = false) {
    this.#label = label;
    this.#total = Math.max(1, total);
    this.#quiet = quiet;
  }

  /** Advances by `n` steps, with an optional note shown after the bar. */
  tick(n = 1, note = ""): void {
    this.#count = Math.min(this.#total, this.#count + n);
    if (this.#quiet) return;
    const frac = this.#count / this.#total;
    const secs = (performance.now() - this.#start) / 1000;
    const eta = frac > 0 ? secs / frac - secs : 0;
    const width = 30;
    const bar = "#".repeat(Math.round(frac * width)).padEnd(width, ".");
    const text = `${this.#label} [${bar}] ${this.#count}/${this.#total} ${secs.toFixed(1)}s` +
      (this.#count < this.#total ? ` eta ${eta.toFixed(0)}s` : "") + (note ? ` ${note}` : "");
    const enc = new TextEncoder();
    if (this.#tty) {
      Deno.stderr.writeSync(enc.encode(`\r\x1b[2K${text}`));
    } else {
      const decile = Math.floor(frac * 10);
      if (decile !== this.#lastDecile) {
        this.#lastDecile = decile;
        Deno.stderr.writeSync(enc.encode(text + "\n"));
      }
    }
  }

  /** Ends the bar (newline on a terminal). */
  done(): void {
    if (!this.#quiet && this.#tty) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
  }
}
