// CI latency gate (scripts/test.sh): p95 decode latency of the quick run (www/bench-core.js) on
// the package's wasm engine in Node, divided by the p95 of a fixed calibration workload timed in
// the same thread before every decode step (bench-core.js `calibration`), so a shared CI machine
// that is slow today slows both and the ratio holds. Median of --runs quick runs on one engine.
// Why Node, not the page: there the engine runs in its Worker and the calibration on the page's
// thread, and their ratio moved by 20 % between two invocations at load ~12 on 2 cores; in one
// thread, alternating, it stayed within a few % (README "Benchmark page and gates").
//  - fails (exit 1) when the ratio is > 10 % above the committed baseline (--baseline) in two
//    measurements, each on a fresh engine: a result above the gate is measured again, and the
//    lower ratio counts (a regression in the code shows in both; a host that slowed one of them,
//    as seen on 2026-12-02 when the same package read 1.579 and then 1.306, does not fail CI);
//  - appends each result to --history (keep it in the CI cache dir, not the repo) and warns when
//    the last 3 recorded runs were each > 5 % above the baseline (a slow drift under the gate).
// --write-baseline writes the measured ratio as the new baseline (after an intended change).
//
//   node scripts/bench-gate.mjs --model DIR --baseline scripts/bench-baseline.json --history FILE [--runs 3] [--write-baseline]
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { benchNode, parseArgs } from "./bench.mjs";
import { fmt } from "../www/bench-core.js";

export const FAIL_OVER = 0.1;
export const WARN_OVER = 0.05;
export const WARN_RUNS = 3;

/**
 * Of measurements of the same package (`{ ratio }` each), the one that counts: the lowest ratio.
 * Noise from other jobs only ever slows the decode against its calibration in one of them.
 */
export function confirmed(measurements) {
  return measurements.reduce((a, b) => (b.ratio < a.ratio ? b : a));
}

/**
 * The gate's verdict on `history` (oldest first, the current run last; each `{ change }`, the
 * ratio's change against the baseline): fail above +10 %, warn when the last 3 were each > +5 %.
 */
export function judge(history) {
  const change = history[history.length - 1].change;
  const last = history.slice(-WARN_RUNS);
  return { fail: change > FAIL_OVER, warn: last.length === WARN_RUNS && last.every((h) => h.change > WARN_OVER) };
}

async function main() {
  const o = parseArgs(process.argv.slice(2).filter((a) => a !== "--write-baseline"));
  const bless = process.argv.includes("--write-baseline");
  if (!o.model || !o.baseline || (!bless && !o.history)) {
    console.error("usage: node scripts/bench-gate.mjs --model DIR --baseline FILE --history FILE [--runs N] [--write-baseline]");
    process.exit(2);
  }
  const runs = Number(o.runs ?? 5);
  const modelSha = existsSync(join(o.model, "manifest.json")) ? JSON.parse(readFileSync(join(o.model, "manifest.json"), "utf8")).model_sha256 : undefined;

  // One engine, --runs quick runs on it; the medians of the runs.
  const measure = async () => {
    const samples = [];
    const r = await benchNode({ model: o.model, run: "quick", calibrate: true, repeat: String(runs) });
    for (const [i, x] of r.repeats.entries()) {
      const s = { p95: x.latency.p95, p50: x.latency.p50, calib: x.calibration.p95, ratio: x.latency.p95 / x.calibration.p95 };
      samples.push(s);
      console.log(`  run ${i + 1}: decode p95 ${fmt(s.p95)} ms (p50 ${fmt(s.p50)}), calibration p95 ${fmt(s.calib)} ms, ratio ${s.ratio.toFixed(3)}`);
    }
    const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
    return { ratio: median(samples.map((s) => s.ratio)), p95: median(samples.map((s) => s.p95)), calib: median(samples.map((s) => s.calib)) };
  };
  const measurements = [await measure()];
  const base = bless ? undefined : JSON.parse(readFileSync(o.baseline, "utf8"));
  if (base && measurements[0].ratio / base.ratio - 1 > FAIL_OVER) {
    console.log(`  ratio ${measurements[0].ratio.toFixed(3)} is above the gate: measuring again on a fresh engine to confirm`);
    measurements.push(await measure());
  }
  const { ratio, p95, calib } = confirmed(measurements);

  if (bless) {
    const b = {
      metric: "quick-run decode p95 (ms) / calibration p95 (ms), wasm engine in Node, 1 thread, median of runs",
      ratio,
      p95Ms: p95,
      calibrationMs: calib,
      runs,
      modelSha256: modelSha,
      measuredAt: new Date().toISOString(),
      note: o.note ?? "",
    };
    writeFileSync(o.baseline, JSON.stringify(b, null, 2) + "\n");
    console.log(`baseline written to ${o.baseline}: ratio ${ratio.toFixed(3)}`);
    return;
  }

  const change = ratio / base.ratio - 1;
  mkdirSync(dirname(o.history), { recursive: true });
  const history = existsSync(o.history) ? readFileSync(o.history, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)) : [];
  const entry = { at: new Date().toISOString(), ratio, change, measured: measurements.map((m) => m.ratio), p95Ms: p95, calibrationMs: calib, modelSha256: modelSha, baselineRatio: base.ratio };
  history.push(entry);
  appendFileSync(o.history, JSON.stringify(entry) + "\n");

  const pct = (x) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)} %`;
  const tries = measurements.length > 1 ? ` (lower of ${measurements.map((m) => m.ratio.toFixed(3)).join(" and ")})` : "";
  console.log(`latency gate: ratio ${ratio.toFixed(3)}${tries} vs baseline ${base.ratio.toFixed(3)} (${pct(change)}; fails above +${FAIL_OVER * 100} %); decode p95 ${fmt(p95)} ms, calibration ${fmt(calib)} ms`);
  if (modelSha && base.modelSha256 && modelSha !== base.modelSha256) {
    console.log("  note: the model differs from the baseline's (its sha256): re-bless with --write-baseline if the change is intended");
  }
  const verdict = judge(history);
  const last = history.slice(-WARN_RUNS);
  if (verdict.warn) {
    console.log(`warning: the last ${WARN_RUNS} recorded runs were each more than ${WARN_OVER * 100} % slower than the baseline (${last.map((h) => pct(h.change)).join(", ")}; history ${o.history})`);
  }
  if (verdict.fail) {
    console.error(`FAIL: p95 decode latency regressed ${pct(change)} against the baseline (${o.baseline})`);
    process.exit(1);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main();
