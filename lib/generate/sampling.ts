/**
 * Choosing the next token from logits: greedy, temperature, and top-p (nucleus) sampling, with
 * the randomness drawn from a counter-based generator (Philox-4x32-10 keyed by the seed,
 * counter = step), so that a seed gives the same tokens on every device and run.
 *
 * @module
 */
import { philox4x32, seedKey } from "../formats/philox.ts";

/** How the next token is chosen. */
export interface SamplingOptions {
  /** Softmax temperature; 0 (the default) means greedy. */
  temperature?: number;
  /** Keep the smallest set of most likely tokens whose probability reaches `topP` (default 1). */
  topP?: number;
}

/**
 * Validates sampling options: temperature finite and >= 0, top-p in (0, 1].
 *
 * @example
 * ```ts
 * import { checkSampling } from "./sampling.ts";
 * checkSampling({ temperature: 0.7, topP: 0.9 });
 * ```
 */
export function checkSampling(options: SamplingOptions): void {
  const t = options.temperature ?? 0;
  const p = options.topP ?? 1;
  if (!Number.isFinite(t) || t < 0) throw new Error(`temperature must be >= 0, got ${t}`);
  if (!(p > 0 && p <= 1)) throw new Error(`top-p must be in (0, 1], got ${p}`);
}

/**
 * The uniform number in [0, 1) for sampling step `step` under `seed`: the first Philox word of
 * counter (step, 0, 0, 0), divided by 2^32.
 *
 * @example
 * ```ts
 * import { uniformAt } from "./sampling.ts";
 * const u = uniformAt(42, 0);
 * console.assert(u >= 0 && u < 1 && u === uniformAt(42, 0) && u !== uniformAt(42, 1));
 * ```
 */
export function uniformAt(seed: number | bigint, step: number): number {
  const [k0, k1] = seedKey(seed);
  return philox4x32(step >>> 0, Math.floor(step / 2 ** 32) >>> 0, 0, 0, k0, k1)[0] / 2 ** 32;
}

/**
 * The index of the largest finite-or-infinite logit (first on ties; NaNs never win).
 *
 * @example
 * ```ts
 * import { greedyToken } from "./sampling.ts";
 * console.assert(greedyToken(new Float32Array([1, 3, 3, 2])) === 1);
 * ```
 */
export function greedyToken(logits: Float32Array): number {
  let best = 0;
  let found = false;
  for (let i = 0; i < logits.length; i++) {
    if (logits[i] === logits[i] && (!found || logits[i] > logits[best])) {
      best = i;
      found = true;
    }
  }
  return best;
}

/**
 * Draws a token from softmax(logits / temperature) restricted to the top-p nucleus, using the
 * uniform number `u` in [0, 1); temperature 0 is greedy. The nucleus is exact: tokens sorted by
 * probability (ties by index), the shortest prefix whose mass reaches `topP`; only tokens above
 * a halving threshold are sorted, so a large vocabulary costs one pass or a few.
 *
 * @example
 * ```ts
 * import { sampleToken } from "./sampling.ts";
 * const logits = new Float32Array([0, 10, 0]);
 * console.assert(sampleToken(logits, { temperature: 1, topP: 0.5 }, 0.99) === 1);
 * console.assert(sampleToken(logits, { temperature: 0 }, 0.3) === 1);
 * ```
 */
export function sampleToken(logits: Float32Array, options: SamplingOptions, u: number): number {
  checkSampling(options);
  const temperature = options.temperature ?? 0;
  const topP = options.topP ?? 1;
  if (temperature === 0) return greedyToken(logits);
  if (!(u >= 0 && u < 1)) throw new Error(`sampleToken: u must be in [0, 1), got ${u}`);
  const n = logits.length;
  let mx = -Infinity;
  for (let i = 0; i < n; i++) if (logits[i] > mx) mx = logits[i];
  if (mx === -Infinity || Number.isNaN(mx)) return greedyToken(logits);
  const p = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const v = logits[i] === logits[i] ? Math.exp((logits[i] - mx) / temperature) : 0;
    p[i] = v;
    sum += v;
  }
  // Candidates: every token with p >= tau, tau halved until their mass reaches topP; the
  // nucleus (a prefix of the sorted order with mass >= topP) lies inside any such set.
  let tau = 1;
  let cand: number[] = [];
  for (;;) {
    cand = [];
    let mass = 0;
    for (let i = 0; i < n; i++) {
      if (p[i] >= tau * sum) {
        cand.push(i);
        mass += p[i];
      }
    }
    if (mass >= topP * sum || tau === 0) break;
    tau = tau < 1e-300 ? 0 : tau / 16;
  }
  cand.sort((a, b) => p[b] - p[a] || a - b);
  let keep = cand.length;
  let mass = 0;
  for (let i = 0; i < cand.length; i++) {
    mass += p[cand[i]];
    if (mass >= topP * sum) {
      keep = i + 1;
      break;
    }
  }
  let kept = 0;
  for (let i = 0; i < keep; i++) kept += p[cand[i]];
  let target = u * kept;
  for (let i = 0; i < keep; i++) {
    target -= p[cand[i]];
    if (target < 0) return cand[i];
  }
  return cand[keep - 1];
}
