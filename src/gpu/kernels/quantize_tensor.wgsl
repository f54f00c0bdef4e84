// Activations quantized to uint8 with one scale and zero point over the whole step's rows, as
// ONNX DynamicQuantizeLinear computes them before a MatMulInteger (onnxruntime's
// quantize_dynamic), written back dequantized so the linears that follow read
// y = (q - zp) * scale:
//   range [min(0, min x), max(0, max x)]; scale = range / 255 (1 for an all-zero input, as
//   onnxruntime); zp = clamp(round(-min / scale), 0, 255); q = clamp(round(x / scale) + zp, 0, 255)
// round() ties to even, as ONNX says. WGSL's division may be 2.5 ulp off (SwiftShader's is a
// product with the reciprocal), so every quotient takes one fma correction (`div`), giving the
// correctly rounded quotient the CPU computes (natively and on SwiftShader: onnxruntime's
// rounding cases bit for bit).
// Scope: the step's rows (a decode step: the one row onnxruntime sees; a prefill chunk: its
// rows, where onnxruntime's run covers the whole prompt).
//   x, y  [rows][k]
// Grid: one workgroup. Twin: gpu::twin::quantize_tensor.

struct Params {
    k: u32,
}

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;

// a / b as IEEE division rounds it: the quotient corrected by its fma residual.
fn div(a: f32, b: f32) -> f32 {
    let q = a / b;
    return fma(fma(-q, b, a), 1.0 / b, q);
}
var<workgroup> lo: array<f32, 256>;
var<workgroup> hi: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let total = state.rows * p.k;
    var a = 0.0;
    var b = 0.0;
    for (var i = lid; i < total; i += WG) {
        a = min(a, x[i]);
        b = max(b, x[i]);
    }
    lo[lid] = a;
    hi[lid] = b;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            lo[lid] = min(lo[lid], lo[lid + stride]);
            hi[lid] = max(hi[lid], hi[lid + stride]);
        }
        workgroupBarrier();
    }
    let mn = lo[0];
    let mx = hi[0];
    var scale = 1.0;
    if (mx != mn) {
        scale = div(mx - mn, 255.0);
    }
    let zp = clamp(round(div(-mn, scale)), 0.0, 255.0);
    for (var i = lid; i < total; i += WG) {
        let q = clamp(round(div(x[i], scale)) + zp, 0.0, 255.0);
        y[i] = (q - zp) * scale;
    }
}
