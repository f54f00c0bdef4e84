//! Bytes as a file source holds them.

/// Bytes as a backend holds them (a JS `Uint8Array` on the web, a `Vec<u8>` natively).
/// The engine reads weight shards through [`Blob::copy_range`], straight into each tensor,
/// so a shard held outside wasm memory is never copied into it whole.
pub trait Blob {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Move the bytes into Rust memory, releasing the backend's copy.
    fn into_vec(self) -> Vec<u8>;
    /// Copy `dst.len()` bytes from `offset` into `dst`. The caller checks the range.
    fn copy_range(&self, offset: u64, dst: &mut [u8]);
    /// The bytes from `len` on will not be read again: a blob in Rust memory gives them back.
    fn release_from(&mut self, _len: u64) {}
    /// Done with: free it now where its backend would otherwise wait (a JS array the loader
    /// owns waits for the garbage collector).
    fn release(self)
    where
        Self: Sized,
    {
    }
    /// SHA-256 of the whole blob, lower-case hex. Without Rust memory of its own the default
    /// reads it in 1 MiB pieces, so hashing never holds a second copy.
    fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut buf = vec![0u8; (1 << 20).min(self.len() as usize)];
        let mut at = 0;
        while at < self.len() {
            let n = buf.len().min((self.len() - at) as usize);
            self.copy_range(at, &mut buf[..n]);
            h.update(&buf[..n]);
            at += n as u64;
        }
        super::manifest::hex(&h.finalize())
    }
}

impl Blob for Vec<u8> {
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }
    fn into_vec(self) -> Vec<u8> {
        self
    }
    fn copy_range(&self, offset: u64, dst: &mut [u8]) {
        let at = offset as usize;
        dst.copy_from_slice(&self[at..at + dst.len()]);
    }
    fn release_from(&mut self, len: u64) {
        self.truncate(len as usize);
        self.shrink_to_fit();
    }
    fn sha256_hex(&self) -> String {
        crate::package::manifest::sha256_hex(self)
    }
}
