// What the page can learn about the device it runs on: user agent, cores, memory, GPU adapter,
// isolation, battery, memory in use. Where the platform has no API for a fact, the fact is
// reported as missing with the reason, never estimated.

/** Device facts (the result's `device`). `gpu` is the worker engine's `gpuInfo()` (or undefined). */
export async function deviceFacts(gpu) {
  const nav = globalThis.navigator ?? {};
  const facts = {
    "user agent": nav.userAgent,
    "CPU cores (hardwareConcurrency)": nav.hardwareConcurrency ?? null,
    "device memory (GB, rounded)": nav.deviceMemory ?? "not exposed (Chromium-only API)",
    "cross-origin isolated": globalThis.crossOriginIsolated === true,
    "secure context": globalThis.isSecureContext === true,
    screen: globalThis.screen ? `${screen.width}×${screen.height} @${globalThis.devicePixelRatio}x` : null,
  };
  if (nav.userAgentData?.getHighEntropyValues) {
    try {
      const h = await nav.userAgentData.getHighEntropyValues(["platform", "platformVersion", "model", "architecture"]);
      facts.platform = [h.platform, h.platformVersion, h.architecture].filter(Boolean).join(" ");
      if (h.model) facts["device model"] = h.model;
    } catch {
      // Denied by permissions policy: the user agent string above still says it.
    }
  }
  if (!nav.gpu) facts["WebGPU adapter"] = "no WebGPU in this browser";
  else if (gpu) facts["WebGPU adapter"] = `${gpu.name || "unnamed"} (${gpu.deviceType}, ${gpu.backend}${gpu.driver ? ", " + gpu.driver : ""})`;
  else facts["WebGPU adapter"] = "WebGPU present, no adapter offered";
  return facts;
}

/** Battery level and charging state, or a note where the Battery API does not exist. */
export async function battery() {
  if (typeof globalThis.navigator?.getBattery !== "function") {
    return { note: "no Battery API in this browser (Safari, Firefox): read the level from the OS and note it in the label" };
  }
  try {
    const b = await navigator.getBattery();
    return { level: b.level, charging: b.charging, note: "repeat at 100 / 50 / 20 % (label each run)" };
  } catch (e) {
    return { note: `Battery API refused: ${e.message}` };
  }
}

/**
 * Memory after a run. `wasmBytes` is the worker engine's linear memory (peak: it only grows).
 * The JS heap is the page's (`performance.memory`, Chromium; the worker's heap is not in it);
 * `measureUserAgentSpecificMemory` (cross-origin isolated Chromium) is Chromium's own account
 * (in headless Chromium 156 it left the worker's wasm memory out: read the wasm row for that).
 */
export async function memory(wasmBytes) {
  const m = { wasmBytes };
  if (performance.memory) {
    m.jsHeapBytes = performance.memory.usedJSHeapSize;
    m.jsHeapNote = "page's heap (performance.memory, Chromium)";
  } else {
    m.jsHeapNote = "not exposed by this browser";
  }
  if (typeof performance.measureUserAgentSpecificMemory === "function" && globalThis.crossOriginIsolated) {
    // Chromium resolves it at a later GC: give it a few seconds, then say it did not come.
    const r = await Promise.race([performance.measureUserAgentSpecificMemory().catch(() => undefined), new Promise((ok) => setTimeout(ok, 5000))]);
    if (r) {
      m.uaBytes = r.bytes;
      m.uaNote = "measureUserAgentSpecificMemory: what Chromium attributes to this page";
    } else m.uaNote = "measureUserAgentSpecificMemory gave no answer within 5 s";
  } else {
    m.uaNote = globalThis.crossOriginIsolated ? "not exposed by this browser" : "needs a cross-origin isolated page";
  }
  m.gpuNote = "no GPU buffers: the wasm backend ran";
  return m;
}

/**
 * Main-thread cadence while a run is in progress: a `intervalMs` timer's longest gap. With the
 * engine in its Worker a run never blocks the page; a gap of seconds would mean it does. Also
 * how long the page was hidden meanwhile: phones throttle background tabs, so such a run's
 * numbers are not the device's.
 */
export function watchResponsiveness(intervalMs = 20) {
  let last = performance.now();
  let maxGapMs = 0;
  let ticks = 0;
  let hiddenMs = 0;
  let hiddenAt = document.visibilityState === "hidden" ? performance.now() : undefined;
  const onVisibility = () => {
    if (document.visibilityState === "hidden") hiddenAt ??= performance.now();
    else if (hiddenAt !== undefined) {
      hiddenMs += performance.now() - hiddenAt;
      hiddenAt = undefined;
    }
  };
  document.addEventListener("visibilitychange", onVisibility);
  const id = setInterval(() => {
    const t = performance.now();
    maxGapMs = Math.max(maxGapMs, t - last);
    last = t;
    ticks++;
  }, intervalMs);
  return () => {
    clearInterval(id);
    document.removeEventListener("visibilitychange", onVisibility);
    const t = performance.now();
    if (hiddenAt !== undefined) hiddenMs += t - hiddenAt;
    maxGapMs = Math.max(maxGapMs, t - last);
    return { intervalMs, ticks, maxGapMs, hiddenMs };
  };
}
