//! The packed model format: `manifest.json` plus files of at most `shard_size` bytes, each with
//! its SHA-256. The ONNX graph keeps its weights as external data in `model.data.NNN` shards; a
//! tensor bigger than a shard continues into the next ones ([`CONTINUED_KEY`]).
//! [`consume_external`] hands them back, verified, for the CPU engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::ModelConfig;
use crate::{Error, Result};

/// Version of the manifest schema this runtime writes. Version 2 binds `config` and
/// `generation` into `model_sha256` and lets a tensor span shards ([`CONTINUED_KEY`]);
/// version 1 (files only, no split tensor) is still read.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest manifest schema this runtime reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// The external-data entry of a tensor that continues past its first shard (format 2): its
/// further parts, in order, as `location:offset:length` separated by `;`. The standard
/// `location`/`offset`/`length` entries name the first part.
pub const CONTINUED_KEY: &str = "edge_llm.continued";
/// Default shard size: 16 MiB, well under the seed's 50 MB incremental-download limit: an
/// interrupted download resumes from whole shards, and each cache write is one small
/// transaction. (The engine copies tensors out of a shard one by one, so wasm memory does not
/// depend on it.) A tensor bigger than this is split across consecutive shards.
pub const DEFAULT_SHARD_BYTES: u64 = 16 << 20;
/// The largest shard `pack` writes (the seed: shards of at most 50 MB).
pub const MAX_SHARD_BYTES: u64 = 50_000_000;
/// Size budgets (seed: "<100MB for bundled models, <500MB for on-demand downloads").
pub const BUNDLED_BUDGET_BYTES: u64 = 100_000_000;
pub const ON_DEMAND_BUDGET_BYTES: u64 = 500_000_000;
/// Most files a manifest may list: 500 MB in shards of 1 MB is 500; anything near this many is
/// a forged manifest, not a model.
pub const MAX_FILES: usize = 1024;

/// Bounds a manifest must keep before anything is fetched or allocated for it: each file at
/// most a shard's size (download buffers are sized by it), at most `max_files` of them, and
/// `max_total_bytes` in all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ManifestLimits {
    pub max_file_bytes: u64,
    pub max_files: usize,
    pub max_total_bytes: u64,
}

impl Default for ManifestLimits {
    /// What the loader accepts from the network: the seed's on-demand budget in all.
    fn default() -> Self {
        ManifestLimits { max_file_bytes: MAX_SHARD_BYTES, max_files: MAX_FILES, max_total_bytes: ON_DEMAND_BUDGET_BYTES }
    }
}

impl ManifestLimits {
    /// [`Manifest::validate`]'s bounds: any total (the packer packs bigger models, and
    /// `fromPacked` gets bytes already in memory); the loader applies the budget.
    pub fn any_total() -> Self {
        ManifestLimits { max_total_bytes: u64::MAX, ..Default::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    /// The ONNX graph with weights as external data.
    Graph,
    /// A weight shard the graph points into.
    Weights,
    Tokenizer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub role: FileRole,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Fixed sizes as numbers, symbolic ones as their names.
    pub shape: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    /// e.g. "rtn-int4-blockwise", "rtn-int8-per-channel", "none".
    pub method: String,
    pub bits: u32,
    pub block_size: Option<u32>,
    pub symmetric: Option<bool>,
    /// Storage precision of every weight tensor, by initializer name.
    pub tensors: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub repetition_penalty: f32,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        GenerationDefaults { max_new_tokens: 256, temperature: 0.0, top_p: 1.0, repetition_penalty: 1.0 }
    }
}

impl GenerationDefaults {
    /// From a Hugging Face `generation_config.json` (what model folders ship beside the
    /// weights): `max_new_tokens`, `temperature`, `top_p`, `repetition_penalty` where present,
    /// the rest defaulted; `do_sample: false` means greedy (temperature 0). Other keys (token
    /// ids, `max_length`, …) are not generation defaults of the manifest and are ignored.
    pub fn from_generation_config(json: &[u8]) -> Result<Self> {
        let bad = |why: String| Error::InvalidModel(format!("generation_config.json: {why}"));
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let num = |key: &str| -> Result<Option<f64>> {
            match obj.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(x) => x.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(Some).ok_or_else(|| bad(format!("`{key}` is {x}, not a non-negative number"))),
            }
        };
        let mut g = GenerationDefaults::default();
        if let Some(n) = num("max_new_tokens")? {
            g.max_new_tokens = if n.fract() == 0.0 && n >= 1.0 { n as usize } else { return Err(bad(format!("`max_new_tokens` is {n}, not a positive integer"))) };
        }
        if let Some(t) = num("temperature")? {
            g.temperature = t as f32;
        }
        if let Some(p) = num("top_p")? {
            g.top_p = if p > 0.0 && p <= 1.0 { p as f32 } else { return Err(bad(format!("`top_p` is {p}, not in (0, 1]"))) };
        }
        if let Some(r) = num("repetition_penalty")? {
            g.repetition_penalty = if r > 0.0 { r as f32 } else { return Err(bad("`repetition_penalty` is 0".into())) };
        }
        if obj.get("do_sample") == Some(&serde_json::Value::Bool(false)) {
            g.temperature = 0.0;
        }
        Ok(g)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model_id: String,
    pub model_version: String,
    /// Oldest edge-llm version able to run this model (semver `MAJOR.MINOR.PATCH`).
    pub min_runtime_version: String,
    pub files: Vec<FileEntry>,
    /// SHA-256 over the files' SHA-256 hex strings, in `files` order, each followed by `\n`.
    pub model_sha256: String,
    pub total_bytes: u64,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub quantization: QuantizationConfig,
    pub config: ModelConfig,
    pub generation: GenerationDefaults,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The whole-model hash of format version 1: binds every file's hash and their order.
pub fn model_hash(files: &[FileEntry]) -> String {
    hex(&files_hasher(files).finalize())
}

fn files_hasher(files: &[FileEntry]) -> Sha256 {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.sha256.as_bytes());
        h.update(b"\n");
    }
    h
}

/// The whole-model hash of format version 2: [`model_hash`]'s input, then `config` and
/// `generation` as JSON, so the chat template and architecture are as pinned as the weights.
pub fn model_hash_v2(files: &[FileEntry], config: &ModelConfig, generation: &GenerationDefaults) -> String {
    let mut h = files_hasher(files);
    for (label, json) in [("config", serde_json::to_vec(config)), ("generation", serde_json::to_vec(generation))] {
        h.update(label.as_bytes());
        h.update(b" ");
        h.update(json.expect("config serializes"));
        h.update(b"\n");
    }
    hex(&h.finalize())
}

/// A file path a manifest may name: `/`-separated segments of ASCII letters, digits, `.`, `_`
/// and `-`, none empty, `.` or `..`. Nothing that a URL resolver, a file system or a cache key
/// could read as another place (`%2e%2e/`, `C:/`, `\`, `/abs`, `a//b`).
pub fn is_plain_path(path: &str) -> bool {
    path.len() <= 255
        && path.split('/').all(|seg| {
            !seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.').map(|p| p.parse::<u64>().ok());
    let out = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(out)
}

impl Manifest {
    /// Parse and check a manifest: schema version, runtime version, file list and sizes.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        Self::from_json_with(bytes, &ManifestLimits::any_total())
    }

    /// [`Manifest::from_json`] with other bounds.
    pub fn from_json_with(bytes: &[u8], limits: &ManifestLimits) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::InvalidManifest(e.to_string()))?;
        m.validate_with(limits)?;
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serializes") + "\n"
    }

    pub fn validate(&self) -> Result<()> {
        self.validate_with(&ManifestLimits::any_total())
    }

    pub fn validate_with(&self, limits: &ManifestLimits) -> Result<()> {
        let bad = |s: String| Err(Error::InvalidManifest(s));
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(Error::IncompatibleManifest(format!(
                "format_version {} (this runtime reads {MIN_FORMAT_VERSION} to {FORMAT_VERSION})",
                self.format_version
            )));
        }
        let Some(min) = parse_version(&self.min_runtime_version) else {
            return bad(format!("min_runtime_version `{}` is not MAJOR.MINOR.PATCH", self.min_runtime_version));
        };
        let ours = parse_version(env!("CARGO_PKG_VERSION")).expect("crate version is semver");
        if min > ours {
            return Err(Error::IncompatibleManifest(format!(
                "model needs edge-llm >= {}, this is {}",
                self.min_runtime_version,
                env!("CARGO_PKG_VERSION")
            )));
        }
        if self.files.len() > limits.max_files {
            return bad(format!("{} files, more than the {} a manifest may list", self.files.len(), limits.max_files));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.files {
            if !is_plain_path(&f.path) {
                return bad(format!("file path `{}` must be a plain relative name", f.path));
            }
            if f.bytes > limits.max_file_bytes {
                return bad(format!("file `{}` is {} bytes, more than the {} a file may hold", f.path, f.bytes, limits.max_file_bytes));
            }
            if !seen.insert(&f.path) {
                return bad(format!("file `{}` listed twice", f.path));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return bad(format!("file `{}` has a malformed sha256", f.path));
            }
        }
        if self.files.iter().filter(|f| f.role == FileRole::Graph).count() != 1 {
            return bad("exactly one file must have role `graph`".into());
        }
        if self.files.iter().filter(|f| f.role == FileRole::Tokenizer).count() != 1 {
            return bad("exactly one file must have role `tokenizer`".into());
        }
        // Each file is at most `max_file_bytes` and there are at most `max_files`, but the
        // limits are the caller's: the sum is still checked.
        let total = self.files.iter().try_fold(0u64, |sum, f| sum.checked_add(f.bytes));
        if total != Some(self.total_bytes) {
            return bad(format!("total_bytes {} != sum of file sizes", self.total_bytes));
        }
        if self.total_bytes > limits.max_total_bytes {
            return bad(format!("the model is {} bytes, more than the {} allowed", self.total_bytes, limits.max_total_bytes));
        }
        if self.expected_model_hash() != self.model_sha256 {
            return bad("model_sha256 does not match the files' hashes".into());
        }
        Ok(())
    }

    /// `model_sha256` as this manifest's format version defines it.
    pub fn expected_model_hash(&self) -> String {
        match self.format_version {
            1 => model_hash(&self.files),
            _ => model_hash_v2(&self.files, &self.config, &self.generation),
        }
    }

    pub fn file(&self, role: FileRole) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.role == role)
    }

    /// Check `bytes` against the entry for `path`.
    pub fn verify_file(&self, path: &str, bytes: &[u8]) -> Result<()> {
        self.verify_with(path, bytes.len() as u64, || sha256_hex(bytes))
    }

    /// [`Manifest::verify_file`] for bytes wherever they are held (a JS `Uint8Array` is hashed
    /// in pieces, never copied whole).
    pub fn verify_blob(&self, path: &str, blob: &impl crate::package::Blob) -> Result<()> {
        self.verify_with(path, blob.len(), || blob.sha256_hex())
    }

    fn verify_with(&self, path: &str, len: u64, hash: impl FnOnce() -> String) -> Result<()> {
        let f = self
            .files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(|| Error::InvalidManifest(format!("`{path}` is not in the manifest")))?;
        let actual = if len == f.bytes { hash() } else { format!("{len} bytes, expected {}", f.bytes) };
        if actual != f.sha256 {
            return Err(Error::ShardHashMismatch { shard: path.into(), expected: f.sha256.clone(), actual });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_defaults_come_from_a_hugging_face_generation_config() {
        let g = GenerationDefaults::from_generation_config(br#"{"max_new_tokens": 32, "top_p": 0.9, "temperature": 0.7, "do_sample": true, "eos_token_id": 2}"#).unwrap();
        assert_eq!(g, GenerationDefaults { max_new_tokens: 32, temperature: 0.7, top_p: 0.9, repetition_penalty: 1.0 });
        let greedy = GenerationDefaults::from_generation_config(br#"{"temperature": 0.7, "do_sample": false}"#).unwrap();
        assert_eq!(greedy, GenerationDefaults::default());
        for bad in [&br#"{"max_new_tokens": 0}"#[..], br#"{"max_new_tokens": 1.5}"#, br#"{"top_p": 2}"#, br#"{"temperature": -1}"#, br#"[1]"#, b"{"] {
            let e = GenerationDefaults::from_generation_config(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidModel(_)), "{e}");
            assert!(e.to_string().contains("generation_config.json"), "{e}");
        }
    }
}
