// A workgroup's output rounded to int8 blocks in place, after its invocations wrote it:
// add_rms_norm.wgsl, attention.wgsl and attention_combine.wgsl with ROUND_Q8 (each binds
// `out`; q8_block.wgsl before this file). The `n` values from `o` (n a multiple of 32, o of
// 32 within its row): each of the 64 invocations rounds whole blocks. Call it in uniform
// control flow (it has a barrier).
fn round_out(o: u32, n: u32, lid: u32) {
    storageBarrier();
    for (var b = lid; b < n / 32u; b += 64u) {
        var v: array<f32, 32>;
        for (var i = 0u; i < 32u; i++) {
            v[i] = out[o + b * 32u + i];
        }
        v = round_block(v);
        for (var i = 0u; i < 32u; i++) {
            out[o + b * 32u + i] = v[i];
        }
    }
}
