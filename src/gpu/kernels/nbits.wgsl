// Reading a block-quantized weight in com.microsoft::MatMulNBits layout, shared by
// gemv_nbits.wgsl, gemm_nbits.wgsl and embed_nbits.wgsl (each is this file followed by its own;
// they bind `p`, `data`, `scales` and `zps`). Per row of the weight (or of the part of it a
// dispatch holds, see gemv_nbits.wgsl):
//   data    [blocks][block * bits / 8] bytes, values low bits first (int4: element 2t in the
//           low nibble of byte t of a block, 2t+1 in the high one)
//   scales  [blocks] f32
//   zps     zp_mode 0: none (the middle, 2^(bits-1): 8 for int4, 128 for int8)
//           zp_mode 1: bits-wide unsigned integers, [blocks], padded to whole u32 words
//           zp_mode 2: [blocks] f32 (`w = (q - zp) * scale` with a float zp)
// A value is (q - zp) * scale. Twin: gpu::nbits::BlockWeight::value.

struct Params {
    n: u32, // this part's rows
    k: u32, // values per row (embedding: the hidden size)
    block_size: u32,
    zp_mode: u32,
    row0: u32, // the part's first row in the weight
    total: u32, // the weight's rows (y's row length; embedding: the vocabulary)
    bits: u32, // 4 or 8
}

// Values per u32 word.
fn per_word() -> u32 {
    return 32u / p.bits;
}

fn blocks() -> u32 {
    return (p.k + p.block_size - 1u) / p.block_size;
}

// u32 words of data per row.
fn words_per_row() -> u32 {
    return blocks() * p.block_size / per_word();
}

// Value t of a data word.
fn quant(word: u32, t: u32) -> f32 {
    return f32((word >> (p.bits * t)) & ((1u << p.bits) - 1u));
}

// Zero point of block b of the part's row j.
fn zero_point(j: u32, b: u32) -> f32 {
    if (p.zp_mode == 1u) {
        let row_words = (blocks() * p.bits + 31u) / 32u;
        let bit = b * p.bits;
        return f32((zps[j * row_words + bit / 32u] >> (bit % 32u)) & ((1u << p.bits) - 1u));
    }
    if (p.zp_mode == 2u) {
        return bitcast<f32>(zps[j * blocks() + b]);
    }
    return f32(1u << (p.bits - 1u));
}
