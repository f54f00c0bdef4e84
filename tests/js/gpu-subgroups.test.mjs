// js/gpu.js, which asks for WebGPU's `subgroups` in the device wgpu requests, on a stand-in
// GPUAdapter (Node has no WebGPU): the feature is added only where the adapter offers it, the
// wrapper is gone after one request (or when none came), and a frozen prototype is left alone.
// In Chromium the real path runs in tests/web.rs (`webgpu_rows_kernel_by_shuffles_…`).
import { test } from "node:test";
import assert from "node:assert/strict";
import { askSubgroups, subgroupsAsked } from "../../js/gpu.js";

function fakeAdapter(features) {
  class GPUAdapter {
    constructor() {
      this.features = new Set(features);
    }
    requestDevice(descriptor) {
      return Promise.resolve({ features: new Set(descriptor?.requiredFeatures ?? []), label: descriptor?.label });
    }
  }
  globalThis.GPUAdapter = GPUAdapter;
  return GPUAdapter;
}

test("subgroups are asked for where the adapter offers them, once", async () => {
  const GPUAdapter = fakeAdapter(["subgroups", "shader-f16"]);
  const original = GPUAdapter.prototype.requestDevice;
  askSubgroups();
  const device = await new GPUAdapter().requestDevice({ label: "edge-llm", requiredFeatures: ["timestamp-query"] });
  assert.equal(subgroupsAsked(), true);
  assert.deepEqual([...device.features], ["timestamp-query", "subgroups"]);
  assert.equal(device.label, "edge-llm");
  assert.equal(GPUAdapter.prototype.requestDevice, original, "the wrapper is gone after the request");
  const next = await new GPUAdapter().requestDevice({});
  assert.deepEqual([...next.features], [], "a later request of the page is its own");
});

test("an adapter without subgroups gets the descriptor as it was", async () => {
  const GPUAdapter = fakeAdapter([]);
  askSubgroups();
  const device = await new GPUAdapter().requestDevice({ requiredFeatures: [] });
  assert.equal(subgroupsAsked(), false);
  assert.deepEqual([...device.features], []);
});

test("no request after asking: the wrapper is removed and nothing was asked", () => {
  const GPUAdapter = fakeAdapter(["subgroups"]);
  const original = GPUAdapter.prototype.requestDevice;
  askSubgroups();
  assert.notEqual(GPUAdapter.prototype.requestDevice, original);
  assert.equal(subgroupsAsked(), false);
  assert.equal(GPUAdapter.prototype.requestDevice, original);
});

test("a frozen prototype or no WebGPU at all: nothing happens, nothing throws", async () => {
  const GPUAdapter = fakeAdapter(["subgroups"]);
  Object.freeze(GPUAdapter.prototype);
  askSubgroups();
  const device = await new GPUAdapter().requestDevice({});
  assert.equal(subgroupsAsked(), false);
  assert.deepEqual([...device.features], []);
  delete globalThis.GPUAdapter;
  askSubgroups();
  assert.equal(subgroupsAsked(), false);
});
