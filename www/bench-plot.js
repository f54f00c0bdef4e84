// Two small canvas plots for the benchmark page (no library, no network): lines over time and a
// histogram, each able to overlay several results (the comparison view). Sharp on phone screens
// (devicePixelRatio), sized by the canvas's CSS width.
export const COLORS = ["#1f6feb", "#d9480f", "#2f9e44", "#9c36b5"];

function setup(canvas) {
  const dpr = globalThis.devicePixelRatio || 1;
  const w = canvas.clientWidth || 320;
  const h = canvas.clientHeight || 180;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  g.font = "11px system-ui, sans-serif";
  return { g, w, h };
}

/** Round a range to 1/2/5 × 10^k steps. */
function ticks(lo, hi, n = 4) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function frame(g, w, h, x0, x1, y0, y1, xLabel, yLabel) {
  const L = 44, R = 8, T = 8, B = 30;
  const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (w - L - R);
  const sy = (y) => h - B - ((y - y0) / (y1 - y0 || 1)) * (h - T - B);
  g.strokeStyle = "#ddd";
  g.fillStyle = "#555";
  g.lineWidth = 1;
  g.textAlign = "right";
  for (const y of ticks(y0, y1)) {
    g.beginPath();
    g.moveTo(L, sy(y));
    g.lineTo(w - R, sy(y));
    g.stroke();
    g.fillText(String(y), L - 4, sy(y) + 4);
  }
  g.textAlign = "center";
  for (const x of ticks(x0, x1, 5)) g.fillText(String(x), sx(x), h - B + 14);
  g.fillText(xLabel, (L + w - R) / 2, h - 3);
  g.save();
  g.translate(10, (T + h - B) / 2);
  g.rotate(-Math.PI / 2);
  g.fillText(yLabel, 0, 0);
  g.restore();
  return { sx, sy };
}

function legend(g, w, series) {
  g.textAlign = "right";
  series.forEach((s, i) => {
    g.fillStyle = s.color ?? COLORS[i];
    g.fillText(s.label ?? "", w - 10, 18 + i * 13);
  });
}

/** Lines: `series` = [{ label, xs, ys, color? }]. */
export function linePlot(canvas, series, { xLabel = "", yLabel = "" } = {}) {
  const { g, w, h } = setup(canvas);
  const xs = series.flatMap((s) => s.xs);
  const ys = series.flatMap((s) => s.ys).filter(Number.isFinite);
  if (ys.length === 0) return;
  const y1 = Math.max(...ys) * 1.05;
  const { sx, sy } = frame(g, w, h, Math.min(0, ...xs), Math.max(...xs), 0, y1, xLabel, yLabel);
  series.forEach((s, i) => {
    g.strokeStyle = s.color ?? COLORS[i];
    g.lineWidth = 1.25;
    g.beginPath();
    s.xs.forEach((x, j) => (j ? g.lineTo(sx(x), sy(s.ys[j])) : g.moveTo(sx(x), sy(s.ys[j]))));
    g.stroke();
  });
  if (series.length > 1 || series[0].label) legend(g, w, series);
}

/** Histogram of `values` per series over shared bins (outlines, so overlays stay readable). */
export function histogram(canvas, series, { bins = 30, xLabel = "" } = {}) {
  const { g, w, h } = setup(canvas);
  if (series.every((s) => s.values.length === 0)) return;
  // Clip each series at its 99.5th percentile so one outlier doesn't squash the rest into a bar
  // (values past the range count in the last bin).
  const ranges = series.filter((s) => s.values.length).map((s) => {
    const sorted = [...s.values].sort((a, b) => a - b);
    return [sorted[0], sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * 0.995))]];
  });
  const lo = Math.min(...ranges.map((r) => r[0]));
  const hi = Math.max(...ranges.map((r) => r[1]), lo + 1e-3);
  const width = (hi - lo || 1) / bins;
  const counts = series.map((s) => {
    const c = new Array(bins).fill(0);
    for (const v of s.values) c[Math.min(bins - 1, Math.max(0, Math.floor((v - lo) / width)))]++;
    return c.map((n) => n / s.values.length);
  });
  const top = Math.max(...counts.flat()) * 1.1;
  const { sx, sy } = frame(g, w, h, lo, lo + width * bins, 0, Number((top * 100).toPrecision(2)), xLabel, "% of tokens");
  counts.forEach((c, i) => {
    g.strokeStyle = series[i].color ?? COLORS[i];
    g.fillStyle = (series[i].color ?? COLORS[i]) + "55";
    c.forEach((f, b) => {
      const x = sx(lo + b * width);
      const x2 = sx(lo + (b + 1) * width);
      const y = sy(f * 100);
      g.fillRect(x, y, x2 - x - 1, sy(0) - y);
      g.strokeRect(x, y, x2 - x - 1, sy(0) - y);
    });
  });
  if (series.length > 1 || series[0].label) legend(g, w, series);
}
