// Reading a block-quantized weight in com.microsoft::MatMulNBits layout, shared by
// gemv_nbits.wgsl, gemv_rows.wgsl, gemm_nbits.wgsl and embed_nbits.wgsl (each is this file
// followed by its own; they bind `p`, `data`, `scales` and `zps`, all u32 words but the
// uniform and gemv_rows.wgsl's `data`). The weight's kind is the pipeline's constants below
// (gpu::kernels::NBitsKind sets them), so a pipeline is compiled for one kind and its reads
// carry no branches on it; the shape is in `p`. Per row of the weight (or of the part of it a
// dispatch holds, see gemv_nbits.wgsl):
//   data    [blocks][block * bits / 8] bytes, values low bits first (int4: element 2t in the
//           low nibble of byte t of a block, 2t+1 in the high one)
//   scales  [blocks] f32, or with F16_PARAMS two f16 per word, padded to a whole word
//   zps     ZP_MODE 0: none (the middle, 2^(bits-1): 8 for int4, 128 for int8)
//           ZP_MODE 1: bits-wide unsigned integers, [blocks], padded to whole u32 words
//           ZP_MODE 2: [blocks] floats, as the scales (`w = (q - zp) * scale`, a float zp)
//           ZP_MODE 3: float values (BITS 32: f32; BITS 16: two f16 per word, low half first),
//           one block per row (BLOCK = k padded to a whole word), no zero points or scales
//           (their buffers are placeholders): a plain MatMul's weight (fp32 / fp16 files)
// A value is (q - zp) * scale. Twin: gpu::nbits::BlockWeight::value.

override BITS: u32 = 4u; // 4 or 8; float values: 16 or 32
override BLOCK: u32 = 32u; // values per block
override ZP_MODE: u32 = 0u;
override F16_PARAMS: u32 = 0u; // scales and float zero points as f16 pairs

struct Params {
    n: u32, // this part's rows
    k: u32, // values per row (embedding: the hidden size)
    block_size: u32, // BLOCK, ZP_MODE, BITS and F16_PARAMS again (read by no kernel)
    zp_mode: u32,
    row0: u32, // the part's first row in the weight
    total: u32, // the weight's rows (y's row length; embedding: the vocabulary)
    bits: u32,
    f16_params: u32,
}

// Values per u32 word.
fn per_word() -> u32 {
    return 32u / BITS;
}

fn blocks() -> u32 {
    return (p.k + BLOCK - 1u) / BLOCK;
}

// u32 words of data per row.
fn words_per_row() -> u32 {
    return blocks() * BLOCK / per_word();
}

// The low BITS bits (no `1 << BITS`: with BITS 32 that constant is an error even where unused).
fn mask() -> u32 {
    return 0xffffffffu >> (32u - BITS);
}

// Value t of a data word.
fn quant(word: u32, t: u32) -> f32 {
    if (BITS == 32u) {
        return bitcast<f32>(word);
    }
    if (BITS == 16u) {
        return unpack2x16float(word)[t];
    }
    return f32((word >> (BITS * t)) & mask());
}

// Zero point of block b of the part's row j.
fn zero_point(j: u32, b: u32) -> f32 {
    if (ZP_MODE == 1u) {
        let row_words = (blocks() * BITS + 31u) / 32u;
        let bit = b * BITS;
        return f32((zps[j * row_words + bit / 32u] >> (bit % 32u)) & mask());
    }
    if (ZP_MODE == 2u) {
        return param(zps[param_word(j, b)], b);
    }
    if (ZP_MODE == 3u) {
        return 0.0;
    }
    return f32(1u << (BITS - 1u));
}

// Word of block b of row j in a scales (or float zero points) buffer.
fn param_word(j: u32, b: u32) -> u32 {
    if (F16_PARAMS == 1u) {
        return j * ((blocks() + 1u) / 2u) + b / 2u;
    }
    return j * blocks() + b;
}

// Block b's value in its word.
fn param(word: u32, b: u32) -> f32 {
    if (F16_PARAMS == 1u) {
        return unpack2x16float(word)[b % 2u];
    }
    return bitcast<f32>(word);
}

// Scale of block b of the part's row j.
fn block_scale(j: u32, b: u32) -> f32 {
    if (ZP_MODE == 3u) {
        return 1.0;
    }
    return param(scales[param_word(j, b)], b);
}
