//! Weight quantization formats and their reference (de)quantizers.
//!
//! Layouts are the ones the ONNX graph stores, so a quantized tensor round-trips unchanged:
//! - [`Q8Weight`]: per-output-channel symmetric int8 (`MatMulInteger` with `b_zero_point` 0).
//! - [`Q8BlockWeight`]: block-wise symmetric int8 (`MatMulNBits` with `bits = 8`).
//! - [`Q4MinWeight`]: 4-bit blocks with float zero points (Q4_1's `q * scale + min`).
//! - [`Q4Weight`]: block-wise 4-bit in the `com.microsoft::MatMulNBits` layout.

#[cfg(feature = "tools")]
pub mod reference;

/// Precision a linear layer's weight is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Int8,
    Int4,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" | "f32" => Ok(Precision::F32),
            "fp16" | "f16" => Ok(Precision::F16),
            "int8" | "q8" => Ok(Precision::Int8),
            "int4" | "q4" => Ok(Precision::Int4),
            other => Err(format!("unknown precision `{other}` (expected fp32, fp16, int8 or int4)")),
        }
    }
}

/// Per-output-channel symmetric int8: `w[n][k] = q[n][k] * scales[n]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Weight {
    pub n: usize,
    pub k: usize,
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Block-wise 8-bit weights in `MatMulNBits` (`bits = 8`) layout: `q[n][block][j]` u8,
/// `w = (q - 128) * scales[n][block]` (symmetric: the default zero point of 8 bits).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8BlockWeight {
    pub n: usize,
    pub k: usize,
    pub block_size: usize,
    pub q: Vec<u8>,
    pub scales: Vec<f32>,
}

/// Block-wise 4-bit weights with float zero points (`MatMulNBits` allows `zero_points` of A's
/// type): `w = (q - zero_points) * scales = q * scale + min`, llama.cpp Q4_1's form, so a Q4_1
/// block is stored exactly and the block's minimum need not be a whole number of steps.
/// `packed` as in [`Q4Weight`]; `zero_points` one f32 per block, unpacked.
#[derive(Debug, Clone, PartialEq)]
pub struct Q4MinWeight {
    pub n: usize,
    pub k: usize,
    pub block_size: usize,
    pub packed: Vec<u8>,
    pub scales: Vec<f32>,
    pub zero_points: Vec<f32>,
}

/// Block-wise 4-bit weights in `MatMulNBits` layout.
///
/// `packed[n][block][byte]`: byte `j` of a block holds element `2j` in its low nibble and
/// `2j + 1` in its high nibble. `w = (q - zp) * scale`, with `zp = 8` when `zero_points` is
/// `None` (symmetric). `zero_points` (asymmetric) holds one unpacked value per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Q4Weight {
    pub n: usize,
    pub k: usize,
    pub block_size: usize,
    pub packed: Vec<u8>,
    pub scales: Vec<f32>,
    pub zero_points: Option<Vec<u8>>,
}

impl Q4Weight {
    pub fn blocks_per_row(&self) -> usize {
        self.k.div_ceil(self.block_size)
    }

    /// Zero points packed two per byte per row, as `MatMulNBits` takes them
    /// (`[n][ceil(blocks / 2)]`, low nibble first).
    pub fn packed_zero_points(&self) -> Option<Vec<u8>> {
        let zp = self.zero_points.as_ref()?;
        let nb = self.blocks_per_row();
        let per_row = nb.div_ceil(2);
        let mut out = vec![0u8; self.n * per_row];
        for row in 0..self.n {
            for b in 0..nb {
                let v = zp[row * nb + b] & 0x0f;
                out[row * per_row + b / 2] |= if b % 2 == 0 { v } else { v << 4 };
            }
        }
        Some(out)
    }

    /// [`Q4Weight::packed_zero_points`] undone: `MatMulNBits`' `[n][ceil(blocks / 2)]` packed
    /// zero points to one per block, `[n][blocks]`.
    pub fn unpack_zero_points(packed: &[u8], n: usize, blocks: usize) -> Vec<u8> {
        let per_row = blocks.div_ceil(2);
        (0..n * blocks).map(|i| (packed[i / blocks * per_row + i % blocks / 2] >> (4 * (i % blocks % 2))) & 0x0f).collect()
    }
}
