// What both attention kernels (attention.wgsl, attention_split.wgsl) bind first: the shape,
// the step state, the queries and the layer's cache (kernels.rs: attention_params).

struct Params {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    max_ctx: u32,
    scale: f32,
    q_row: u32,
    // attention_split.wgsl's splits a row (attention.wgsl: unused).
    splits: u32,
}

struct State {
    pos: u32,
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kcache: array<f32>;
@group(0) @binding(4) var<storage, read> vcache: array<f32>;
