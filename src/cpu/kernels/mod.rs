//! Every CPU kernel edge-llm runs itself, in one place (in the spirit of tract-linalg's `plug`).
//!
//! Each family (one file) has a portable reference, always compiled, and its SIMD variants
//! (wasm SIMD128 where the build has `target_feature = "simd128"`, x86 SSE2 where one exists),
//! each a table of plain `fn` pointers listed in the family's `VARIANTS`, slowest first. The
//! ops take the best available variant once ([`pick`], behind a `OnceLock`) and keep the
//! `&'static` table: one indirect call per kernel call (a weight row, a tile), none inside the
//! block loops, which stay `#[inline]` inside each variant. Tests run one body over every
//! variant compiled into the build (a loop over `VARIANTS`): natively the portable reference and
//! SSE2, in wasm the portable reference and SIMD128.
//!
//! | family | used by | variants |
//! |---|---|---|
//! | [`q4`] int4 GEMV / GEMM blocks | `q4_matmul`, `q4_min_matmul` | portable, simd128, relaxed-simd (feature `relaxed-simd`: its int8-activation GEMV and GEMM) |
//! | [`q8_block`] int8 block dot products | `q8_block_matmul` | portable, simd128 |
//! | [`q8`] i8 × i16 dot products | `q8_matmul` (`MatMulInteger`) | portable, simd128 |
//! | [`attention`] scores and weighted values over [`f4`] vectors | `attention` | portable, sse2, simd128 |

pub mod attention;
pub mod f4;
pub mod q4;
pub mod q8;
pub mod q8_block;

/// One implementation of a kernel family: its name and its table of functions.
pub struct Variant<K: 'static> {
    pub name: &'static str,
    pub kernels: K,
}

/// The last variant of `variants` (the fastest compiled in; every one listed runs on any CPU
/// the build targets: SIMD128 is a build flag, SSE2 is in the x86_64 baseline).
pub fn pick<K>(variants: &'static [Variant<K>]) -> &'static K {
    &variants[variants.len() - 1].kernels
}

#[cfg(test)]
mod tests {
    fn names<K>(variants: &[super::Variant<K>]) -> Vec<&'static str> {
        variants.iter().map(|v| v.name).collect()
    }

    /// The variants each build must hold, so the tests over `VARIANTS` cover the SIMD code the
    /// build runs (a wrong `cfg` would otherwise leave only the reference, silently).
    #[cfg_attr(not(target_arch = "wasm32"), test)]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn every_build_registers_its_simd_variants() {
        let simd128 = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));
        let ints = if simd128 { vec!["portable", "simd128"] } else { vec!["portable"] };
        let mut q4 = ints.clone();
        if simd128 && cfg!(feature = "relaxed-simd") {
            q4.push("relaxed-simd");
        }
        assert_eq!((names(super::q4::VARIANTS), names(super::q8::VARIANTS), names(super::q8_block::VARIANTS)), (q4, ints.clone(), ints));
        let f4 = match (simd128, cfg!(target_arch = "x86_64")) {
            (true, _) => vec!["portable", "simd128"],
            (false, true) => vec!["portable", "sse2"],
            _ => vec!["portable"],
        };
        assert_eq!(names(super::attention::VARIANTS), f4);
    }
}
