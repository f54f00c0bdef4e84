// WebGPU's `subgroups` feature for the GPU backend's device (src/gpu/context.rs). wgpu 30's
// WebGPU backend maps no such feature (its FEATURES_MAPPING lacks it: wgpu issue #10146), so the
// device it requests never has it. `askSubgroups` wraps `GPUAdapter.prototype.requestDevice`
// for the one call wgpu makes right after (synchronously, inside its `request_device`): that
// call adds "subgroups" to the required features where the adapter offers them and puts the
// original back. `subgroupsAsked` puts it back if no call came and says whether the last
// request asked (a device the promise then resolves to has the feature: WebGPU rejects a
// request whose features the adapter lacks). Nothing else on the page sees the wrapper: the
// two calls run in one turn of the event loop.

let asked = false;
let original;

export function askSubgroups() {
  asked = false;
  const proto = globalThis.GPUAdapter?.prototype;
  if (!proto || original) return;
  const wrapped = proto.requestDevice;
  try {
    proto.requestDevice = wrapper;
  } catch {
    return; // a frozen prototype (a locked-down page): the device goes without subgroups
  }
  original = wrapped;
  function wrapper(descriptor) {
    proto.requestDevice = original;
    original = undefined;
    let desc = descriptor;
    if (this.features.has("subgroups")) {
      const features = [...(descriptor?.requiredFeatures ?? []), "subgroups"];
      desc = Object.assign({}, descriptor, { requiredFeatures: features });
      asked = true;
    }
    return proto.requestDevice.call(this, desc);
  }
}

export function subgroupsAsked() {
  if (original) {
    globalThis.GPUAdapter.prototype.requestDevice = original;
    original = undefined;
  }
  return asked;
}
