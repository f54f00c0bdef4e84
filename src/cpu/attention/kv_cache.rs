//! The paged KV cache of one layer: storage only (appending, reading pages, state in and out).
//! The attention over it is in `math`.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

use super::super::kernels::{self, attention::Attention};

/// The kernels take head sizes that are a multiple of this (two f32x4 lanes per step).
pub(super) const HEAD_DIM_MULTIPLE: usize = 8;

/// Rows per [`KvCache`] page.
pub const PAGE_ROWS: usize = 32;

/// One layer's keys and values in pages of [`PAGE_ROWS`] positions, `[kv_heads][PAGE_ROWS]
/// [head_dim]` each. Appending fills the last page and adds pages; a row, once written, never
/// moves, and every page has the same size, so a page freed with a conversation is reused
/// whole (a heap that never shrinks, as wasm's, does not fragment into growing buffers).
#[derive(Clone, Debug)]
pub struct KvCache {
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
    pub(super) len: usize,
    pages: Vec<Page>,
    /// The kernel variant ([`kernels::attention::best`] unless a test picks another).
    pub(super) kernels: &'static Attention,
}

#[derive(Clone, Debug)]
struct Page {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    pub fn new(kv_heads: usize, head_dim: usize) -> Self {
        KvCache { kv_heads, head_dim, len: 0, pages: Vec::new(), kernels: kernels::attention::best() }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the allocated pages hold.
    pub fn capacity(&self) -> usize {
        self.pages.len() * PAGE_ROWS
    }

    fn page_len(&self) -> usize {
        self.kv_heads * PAGE_ROWS * self.head_dim
    }

    /// Append `s` rows given as `[kv_heads][s][head_dim]` keys and values.
    pub fn push(&mut self, k: &[f32], v: &[f32], s: usize) -> TractResult<()> {
        let (h, d) = (self.kv_heads, self.head_dim);
        ensure!(k.len() == h * s * d && v.len() == h * s * d, "KV cache: new rows have the wrong size");
        let mut done = 0;
        while done < s {
            let (page, at) = (self.len / PAGE_ROWS, self.len % PAGE_ROWS);
            if page == self.pages.len() {
                let n = self.page_len();
                let mut page = Page { k: Vec::new(), v: Vec::new() };
                for buf in [&mut page.k, &mut page.v] {
                    buf.try_reserve_exact(n).map_err(|_| format_err!("KV cache: cannot allocate {} bytes", n * 4))?;
                    buf.resize(n, 0.0);
                }
                self.pages.push(page);
            }
            let rows = (PAGE_ROWS - at).min(s - done);
            let p = &mut self.pages[page];
            for head in 0..h {
                let dst = (head * PAGE_ROWS + at) * d..(head * PAGE_ROWS + at + rows) * d;
                let src = (head * s + done) * d..(head * s + done + rows) * d;
                p.k[dst.clone()].copy_from_slice(&k[src.clone()]);
                p.v[dst].copy_from_slice(&v[src]);
            }
            self.len += rows;
            done += rows;
        }
        Ok(())
    }

    /// Live keys (`value = false`) or values of `head` in `page`, `[rows][head_dim]`.
    pub(super) fn page_rows(&self, page: usize, head: usize, value: bool) -> &[f32] {
        let p = &self.pages[page];
        let rows = (self.len - page * PAGE_ROWS).min(PAGE_ROWS);
        &(if value { &p.v } else { &p.k })[head * PAGE_ROWS * self.head_dim..][..rows * self.head_dim]
    }

    /// Pages holding live rows.
    pub(super) fn live_pages(&self) -> usize {
        self.len.div_ceil(PAGE_ROWS)
    }

    /// The live keys or values as a `[1, kv_heads, len, head_dim]` tensor (a copy).
    pub fn to_tensor(&self, value: bool) -> TractResult<Tensor> {
        let mut data = Vec::with_capacity(self.kv_heads * self.len * self.head_dim);
        for head in 0..self.kv_heads {
            for page in 0..self.live_pages() {
                data.extend_from_slice(self.page_rows(page, head, value));
            }
        }
        Tensor::from_shape(&[1, self.kv_heads, self.len, self.head_dim], &data)
    }

    /// Replace the contents with `k` and `v` (`[1, kv_heads, len, head_dim]`).
    pub fn load(&mut self, k: &Tensor, v: &Tensor) -> TractResult<()> {
        let (h, d) = (self.kv_heads, self.head_dim);
        ensure!(
            k.shape() == v.shape() && k.rank() == 4 && k.shape()[1] == h && k.shape()[3] == d,
            "KV cache: bad state shape {:?}",
            k.shape()
        );
        let (k, v) = (k.cast_to::<f32>()?, v.cast_to::<f32>()?);
        *self = KvCache::new(h, d);
        self.push(k.try_as_plain_ram()?.as_slice::<f32>()?, v.try_as_plain_ram()?.as_slice::<f32>()?, k.shape()[2])
    }

    /// Where each page's keys live (tests: rows never move).
    #[cfg(test)]
    fn page_addresses(&self) -> Vec<usize> {
        self.pages.iter().map(|p| p.k.as_ptr() as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values as values;
    use super::*;

    #[test]
    fn cache_pages_never_move_and_keep_their_rows() {
        let (h, d) = (2, 8);
        let mut cache = KvCache::new(h, d);
        let mut all_k = vec![Vec::new(); h];
        let mut addresses = Vec::new();
        for step in 0..1000 {
            let s = if step == 0 { 70 } else { 1 + step as usize % 3 };
            let k = values(h * s * d, step);
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            cache.push(&k, &v, s).unwrap();
            for head in 0..h {
                all_k[head].extend_from_slice(&k[head * s * d..][..s * d]);
            }
            // Appending never moves a written row: earlier pages stay where they were.
            let now = cache.page_addresses();
            assert_eq!(now[..addresses.len()], addresses[..]);
            addresses = now;
            assert_eq!(cache.capacity(), cache.len().div_ceil(PAGE_ROWS) * PAGE_ROWS);
        }
        let t = cache.to_tensor(false).unwrap();
        let flat = t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        assert_eq!(flat, all_k.concat());
        let v = cache.to_tensor(true).unwrap();
        assert!(v.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().iter().zip(&flat).all(|(a, b)| *a == -b));
        let mut reloaded = KvCache::new(h, d);
        reloaded.load(&t, &v).unwrap();
        assert_eq!(reloaded.to_tensor(false).unwrap(), t);
    }
}
