//! Four f32 lanes, the vector type of the attention kernels ([`super::attention`]): a plain
//! array (the reference; LLVM vectorizes it), x86 SSE2, wasm SIMD128. All three compute the
//! same floats: one multiply then one add per lane (no fused multiply-add), the same pairwise sum.

/// The operations the kernels use.
pub trait F4: Copy {
    fn zero() -> Self;
    fn splat(x: f32) -> Self;
    /// `s[..4]`; panics if `s` is shorter.
    fn load(s: &[f32]) -> Self;
    /// Into `s[..4]`; panics if `s` is shorter.
    fn store(self, s: &mut [f32]);
    /// `self + a * b`, rounded after the multiply and after the add.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// `(l0 + l1) + (l2 + l3)`.
    fn sum(self) -> f32;
}

/// The reference.
#[derive(Clone, Copy)]
pub struct Portable([f32; 4]);

impl F4 for Portable {
    #[inline(always)]
    fn zero() -> Self {
        Portable([0.0; 4])
    }
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Portable([x; 4])
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        Portable([s[0], s[1], s[2], s[3]])
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        s[..4].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] + a.0[i] * b.0[i]))
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        (self.0[0] + self.0[1]) + (self.0[2] + self.0[3])
    }
}

/// SSE2, part of the x86_64 baseline: no runtime detection needed.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Sse2(core::arch::x86_64::__m128);

// SAFETY (every `unsafe` below): SSE2 is always present on x86_64; loads and stores are
// bounds-checked and unaligned.
#[cfg(target_arch = "x86_64")]
impl F4 for Sse2 {
    #[inline(always)]
    fn zero() -> Self {
        Sse2(unsafe { core::arch::x86_64::_mm_setzero_ps() })
    }
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Sse2(unsafe { core::arch::x86_64::_mm_set1_ps(x) })
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        assert!(s.len() >= 4);
        Sse2(unsafe { core::arch::x86_64::_mm_loadu_ps(s.as_ptr()) })
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        assert!(s.len() >= 4);
        unsafe { core::arch::x86_64::_mm_storeu_ps(s.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        use core::arch::x86_64::{_mm_add_ps, _mm_mul_ps};
        Sse2(unsafe { _mm_add_ps(self.0, _mm_mul_ps(a.0, b.0)) })
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        let mut v = [0f32; 4];
        self.store(&mut v);
        (v[0] + v[1]) + (v[2] + v[3])
    }
}

/// wasm SIMD128.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[derive(Clone, Copy)]
pub struct Simd128(core::arch::wasm32::v128);

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl F4 for Simd128 {
    #[inline(always)]
    fn zero() -> Self {
        Simd128(core::arch::wasm32::f32x4_splat(0.0))
    }
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Simd128(core::arch::wasm32::f32x4_splat(x))
    }
    #[inline(always)]
    fn load(s: &[f32]) -> Self {
        assert!(s.len() >= 4);
        // SAFETY: four f32 are in bounds (checked above); v128_load allows unaligned.
        Simd128(unsafe { core::arch::wasm32::v128_load(s.as_ptr() as *const core::arch::wasm32::v128) })
    }
    #[inline(always)]
    fn store(self, s: &mut [f32]) {
        assert!(s.len() >= 4);
        // SAFETY: as in `load`.
        unsafe { core::arch::wasm32::v128_store(s.as_mut_ptr() as *mut core::arch::wasm32::v128, self.0) }
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        use core::arch::wasm32::{f32x4_add, f32x4_mul};
        Simd128(f32x4_add(self.0, f32x4_mul(a.0, b.0)))
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        use core::arch::wasm32::f32x4_extract_lane as lane;
        let v = self.0;
        (lane::<0>(v) + lane::<1>(v)) + (lane::<2>(v) + lane::<3>(v))
    }
}
