//! Our GGUF dequantizers (src/gguf/dequant.rs) against the `gguf` Python package's (llama.cpp's
//! gguf-py 0.19.0), on random blocks of every type the importer reads. The fixtures in
//! tests/fixtures/gguf-dequant are made by scripts/gguf-dequant-reference.py (it says how Q8_1
//! and Q8_K, which gguf-py lacks, are referenced); Python is not needed to run this test.
#![cfg(not(target_arch = "wasm32"))]

use edge_llm::gguf::dequant::dequantize;
use edge_llm::gguf::GgmlType;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gguf-dequant");

#[test]
fn dequantization_matches_gguf_py_on_every_supported_type() {
    use GgmlType::*;
    let all = [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K];
    // Every type the importer reads has a reference.
    let ids: Vec<u32> = (0..64).filter(|&i| GgmlType::from_u32(i).is_ok_and(|t| t.can_dequantize())).collect();
    let mut have: Vec<u32> = all.iter().map(|t| t.id()).collect();
    have.sort();
    assert_eq!(ids, have, "a type without a reference fixture");
    for ty in all {
        let name = format!("{ty:?}");
        let read = |ext: &str| std::fs::read(format!("{FIXTURES}/{name}.{ext}")).unwrap_or_else(|e| panic!("{name}.{ext}: {e}"));
        let want: Vec<f32> = read("f32").chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let got = dequantize(ty, &read("bin"), want.len()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        // Both compute in f32 with the same operations: bit-identical (measured so on every type).
        let exact = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{name}: {exact}/{} bit-identical, max |diff| {worst:e}", want.len());
        assert_eq!(exact, want.len(), "{name}: max |ours - gguf-py| = {worst}");
    }
}
