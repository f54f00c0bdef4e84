//! The model package: everything a backend loads, from one source, verified.
//!
//! - [`manifest`]: the packed format's `manifest.json` (files, roles, sizes, SHA-256s, config,
//!   generation defaults, the model hash) and its validation.
//! - [`shards`]: weight shards: the packer's slicing, the loader's tensor ranges.
//! - [`Blob`]: bytes as a source holds them (a JS `Uint8Array`, a `Vec<u8>`).
//!
//! Any source (a JS `Map` of files, the network loader, a folder, an ONNX file with its
//! tokenizer and config) becomes one [`Package`]; [`crate::Engine::open`] is the one way from
//! a package to an engine. A package hands out each file once, checked against the manifest
//! before use, and names the model ([`Package::fingerprint`]) for saved states.

mod blob;
pub mod manifest;
pub mod shards;

use std::collections::BTreeMap;

use futures_util::future::LocalBoxFuture;
use sha2::{Digest, Sha256};

pub use blob::Blob;
use manifest::{FileRole, GenerationDefaults, Manifest};

use crate::model::ModelConfig;
use crate::onnx::ModelProto;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// A source of files by path, each asked for once, when it is needed: at once (a folder, a map
/// of files) or once it has arrived (the loader's downloads, [`Package::streaming`]).
type Files<'a, B> = Box<dyn FnMut(&str) -> LocalBoxFuture<'a, Result<B>> + 'a>;

/// One model's files, from one source.
pub struct Package<'a, B: Blob = Vec<u8>> {
    inner: Inner<'a, B>,
}

enum Inner<'a, B> {
    /// An ONNX graph with its weights inside, its `tokenizer.json` and its config, as given.
    Loose { onnx: &'a [u8], tokenizer_json: &'a [u8], config: ModelConfig },
    /// A packed model; `verify`: check each file's size and SHA-256 as it is taken (false
    /// when the loader already checked each one as it arrived).
    Packed { manifest: Manifest, files: Files<'a, B>, verify: bool },
}

/// Where [`shards::consume_external`] gets each weight shard: a [`Package`], or a plain
/// function of the shard's name.
pub(crate) trait ShardSource<B> {
    fn shard(&mut self, path: &str) -> impl std::future::Future<Output = Result<B>>;
}

impl<'a, B: Blob + 'a> ShardSource<B> for Package<'a, B> {
    fn shard(&mut self, path: &str) -> impl std::future::Future<Output = Result<B>> {
        self.file(path)
    }
}

/// A function that gives each shard at once.
pub(crate) struct ShardFn<F>(pub F);

impl<B, F: FnMut(&str) -> Result<B>> ShardSource<B> for ShardFn<F> {
    fn shard(&mut self, path: &str) -> impl std::future::Future<Output = Result<B>> {
        std::future::ready((self.0)(path))
    }
}

/// The value of a future over a [`ShardFn`] source, which is ready when first polled.
pub(crate) fn at_once<T>(f: impl std::future::Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("a function's shards are there at once"),
    }
}

fn missing(path: &str) -> Error {
    Error::InvalidModel(format!("file `{path}` was not provided"))
}

impl<'a> Package<'a, Vec<u8>> {
    /// An ONNX decoder with its weights inside, its `tokenizer.json` and its config.
    pub fn loose(onnx: &'a [u8], tokenizer_json: &'a [u8], config: ModelConfig) -> Self {
        Package { inner: Inner::Loose { onnx, tokenizer_json, config } }
    }

    /// A packed model in a folder: its `manifest.json` and the files it lists, read when needed.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(dir: &'a std::path::Path) -> Result<Self> {
        let manifest = Manifest::from_json(&std::fs::read(dir.join("manifest.json"))?)?;
        let read = move |path: &str| std::fs::read(dir.join(path)).map_err(|e| Error::InvalidModel(format!("reading {path}: {e}")));
        Ok(Self::packed_with(&manifest, read))
    }
}

impl<'a, B: Blob + 'a> Package<'a, B> {
    /// A packed model: `files` holds every file the manifest lists, by path.
    pub fn packed(manifest: &Manifest, mut files: BTreeMap<String, B>) -> Self {
        Self::packed_with(manifest, move |path| files.remove(path).ok_or_else(|| missing(path)))
    }

    /// A packed model whose files `file` gives by path when they are needed: the graph, the
    /// weight shards one at a time, then the tokenizer. A shard outside Rust memory (a JS
    /// `Uint8Array`) is never copied in whole, and each is dropped before the next is asked for.
    pub fn packed_with(manifest: &Manifest, mut file: impl FnMut(&str) -> Result<B> + 'a) -> Self {
        let files: Files<'a, B> = Box::new(move |path| Box::pin(std::future::ready(file(path))));
        Package { inner: Inner::Packed { manifest: manifest.clone(), files, verify: true } }
    }

    /// A packed model whose files arrive while the engine is built from the ones before
    /// (`Engine.load`): `file` resolves once the loader has verified `path` (and fails if the
    /// load fails); the package does not hash them again. The weight shards are asked for in
    /// name order, so the loader need hold only the next few.
    pub fn streaming(manifest: &Manifest, file: impl FnMut(&str) -> LocalBoxFuture<'a, Result<B>> + 'a) -> Self {
        Package { inner: Inner::Packed { manifest: manifest.clone(), files: Box::new(file), verify: false } }
    }

    /// [`Package::packed`] for files the loader already checked against the manifest, each as
    /// it arrived: the model is not hashed a second time.
    pub fn verified(manifest: &Manifest, files: BTreeMap<String, B>) -> Self {
        let mut package = Self::packed(manifest, files);
        if let Inner::Packed { verify, .. } = &mut package.inner {
            *verify = false;
        }
        package
    }

    pub fn config(&self) -> &ModelConfig {
        match &self.inner {
            Inner::Loose { config, .. } => config,
            Inner::Packed { manifest, .. } => &manifest.config,
        }
    }

    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.inner {
            Inner::Loose { .. } => None,
            Inner::Packed { manifest, .. } => Some(manifest),
        }
    }

    /// The generation defaults a packed model's manifest carries.
    pub fn generation(&self) -> Option<&GenerationDefaults> {
        self.manifest().map(|m| &m.generation)
    }

    /// Whether the graph's weights are in external shards ([`Package::file`] gives them).
    pub fn is_packed(&self) -> bool {
        self.manifest().is_some()
    }

    /// SHA-256 naming the model, which saved states carry. A packed model's `model_sha256`
    /// covers every file, its config and generation defaults (the manifest parser checked it);
    /// a loose model is named by its graph ([`graph_sample`]), tokenizer and config.
    pub fn fingerprint(&self) -> Result<[u8; 32]> {
        Ok(match &self.inner {
            Inner::Packed { manifest, .. } => Sha256::digest(format!("edge-llm packed model {}", manifest.model_sha256)).into(),
            Inner::Loose { onnx, tokenizer_json, config } => {
                let mut h = Sha256::new();
                h.update(graph_sample(onnx));
                h.update(Sha256::digest(tokenizer_json));
                h.update(serde_json::to_vec(config).map_err(|e| Error::InvalidModel(e.to_string()))?);
                h.finalize().into()
            }
        })
    }

    /// A packed model's file `path`, checked against the manifest; it is not kept here.
    pub async fn file(&mut self, path: &str) -> Result<B> {
        let Inner::Packed { manifest, files, verify } = &mut self.inner else {
            return Err(missing(path));
        };
        let blob = files(path).await?;
        if *verify {
            manifest.verify_blob(path, &blob)?;
        }
        Ok(blob)
    }

    async fn role(&mut self, role: FileRole) -> Result<Vec<u8>> {
        let Inner::Packed { manifest, .. } = &self.inner else { unreachable!("only packed models have file roles") };
        let path = manifest.file(role).map(|f| f.path.clone()).expect("a validated manifest has every role");
        Ok(self.file(&path).await?.into_vec())
    }

    /// The decoded ONNX graph. A packed graph's weights are still in the shards.
    pub async fn graph(&mut self) -> Result<ModelProto> {
        match &self.inner {
            Inner::Loose { onnx, .. } => crate::onnx::decode(onnx),
            Inner::Packed { .. } => crate::onnx::decode(&self.role(FileRole::Graph).await?),
        }
    }

    pub async fn tokenizer(&mut self) -> Result<Tokenizer> {
        match &self.inner {
            Inner::Loose { tokenizer_json, .. } => Tokenizer::from_json(tokenizer_json),
            Inner::Packed { .. } => Tokenizer::from_json(&self.role(FileRole::Tokenizer).await?),
        }
    }
}

/// SHA-256 identifying a graph: all of it up to 1 MiB, beyond that its length and 256 evenly
/// spaced 4 KiB windows. Hashing all of SmolLM2's 86 MB would add about half a second to every
/// `fromBytes` on wasm; two different models' weights differ in every window.
fn graph_sample(onnx: &[u8]) -> [u8; 32] {
    const WINDOW: usize = 4096;
    const WINDOWS: usize = 256;
    if onnx.len() <= WINDOW * WINDOWS {
        return Sha256::digest(onnx).into();
    }
    let mut h = Sha256::new();
    h.update((onnx.len() as u64).to_le_bytes());
    let stride = (onnx.len() - WINDOW) / (WINDOWS - 1);
    for i in 0..WINDOWS {
        h.update(&onnx[i * stride..i * stride + WINDOW]);
    }
    h.finalize().into()
}
