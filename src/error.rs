//! One error type for the whole crate. `web/` maps each variant to a JS `Error` whose `name`
//! is [`Error::name`], so apps can switch on it.

/// Everything that can go wrong inside edge-llm, with the facts needed to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// A GGUF file that is truncated, corrupted or uses something the importer cannot map.
    #[error("invalid GGUF: {0}")]
    InvalidGguf(String),
    #[error("unsupported operator `{op}` at node `{node}`")]
    UnsupportedOp { op: String, node: String },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("chat template error: {0}")]
    ChatTemplate(String),
    #[error("invalid generation option `{option}`: {reason}")]
    InvalidOption { option: &'static str, reason: String },
    /// An option name the API does not have (a typo, or another library's spelling):
    /// rejected rather than silently ignored. See [`Error::unknown_option`].
    #[error("unknown option `{option}`: {hint}")]
    UnknownOption { option: String, hint: String },
    #[error("context length {needed} exceeds the model's maximum of {max}")]
    ContextOverflow { needed: usize, max: usize },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("shard `{shard}` failed its SHA-256 check: expected {expected}, got {actual}")]
    ShardHashMismatch { shard: String, expected: String, actual: String },
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("incompatible model: {0}")]
    IncompatibleManifest(String),
    /// Saved state that is truncated, corrupted, from another format version or another model.
    #[error("invalid state: {0}")]
    InvalidState(String),
    /// The engine was disposed; nothing more can run on it.
    #[error("the engine was disposed")]
    Disposed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A file could not be downloaded (after the retries the loader allows).
    #[error("network error fetching `{file}`: {reason}")]
    Network { file: String, reason: String },
    /// The cache is out of storage quota (only thrown with `strictQuota`; otherwise a warning).
    #[error("storage quota exceeded: {needed} bytes needed, {available} available")]
    Quota { needed: u64, available: u64 },
    #[error("aborted: {0}")]
    Aborted(String),
    #[error("unsupported backend: {0}")]
    UnsupportedBackend(String),
    /// The GPU device was lost (a driver reset, the browser reclaiming it, `destroy()`) during
    /// the call. The engine continues on the CPU backend from the next call where it can.
    #[error("the GPU device was lost: {0}")]
    GpuDeviceLost(String),
    #[error("model store error: {0}")]
    Store(String),
    /// The load's `timeoutMs` passed.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// Stable name for the JS side (`err.name`).
    pub fn name(&self) -> &'static str {
        match self {
            Error::InvalidModel(_) | Error::InvalidGguf(_) | Error::UnsupportedOp { .. } => "IncompatibleModelError",
            Error::Tokenizer(_) => "TokenizerError",
            Error::ChatTemplate(_) => "ChatTemplateError",
            Error::InvalidOption { .. } | Error::UnknownOption { .. } => "InvalidOptionError",
            Error::ContextOverflow { .. } => "ContextOverflowError",
            Error::Inference(_) => "InferenceError",
            Error::ShardHashMismatch { .. } => "IntegrityError",
            Error::InvalidManifest(_) => "InvalidManifestError",
            Error::IncompatibleManifest(_) => "IncompatibleModelError",
            Error::InvalidState(_) => "InvalidStateError",
            Error::Disposed => "EngineDisposedError",
            Error::Io(_) => "IoError",
            Error::Network { .. } => "NetworkError",
            Error::Quota { .. } => "QuotaError",
            Error::Aborted(_) => "AbortError",
            Error::UnsupportedBackend(_) => "UnsupportedBackendError",
            Error::GpuDeviceLost(_) => "GpuDeviceLostError",
            Error::Store(_) => "StoreError",
            Error::Timeout(_) => "TimeoutError",
        }
    }
}

impl Error {
    /// The same error (same name) with `what` led it, as "`what`: message", where its message
    /// is free text.
    pub fn context(self, what: &str) -> Error {
        let at = |m: String| format!("{what}: {m}");
        match self {
            Error::InvalidModel(m) => Error::InvalidModel(at(m)),
            Error::Inference(m) => Error::Inference(at(m)),
            Error::InvalidManifest(m) => Error::InvalidManifest(at(m)),
            Error::IncompatibleManifest(m) => Error::IncompatibleManifest(at(m)),
            Error::Aborted(m) => Error::Aborted(at(m)),
            Error::UnsupportedBackend(m) => Error::UnsupportedBackend(at(m)),
            Error::GpuDeviceLost(m) => Error::GpuDeviceLost(at(m)),
            Error::Store(m) => Error::Store(at(m)),
            Error::Timeout(m) => Error::Timeout(at(m)),
            Error::Network { file, reason } => Error::Network { file, reason: at(reason) },
            e => e,
        }
    }

    /// `option` is not one of `known`: names the closest known spelling (same letters, case and
    /// `_`/`-` aside: `max_tokens` -> `maxTokens`), else lists them all.
    pub fn unknown_option(option: &str, known: &[&str]) -> Error {
        let fold = |s: &str| s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect::<String>();
        let hint = match known.iter().find(|k| fold(k) == fold(option)) {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("the options are {}", known.join(", ")),
        };
        Error::UnknownOption { option: option.to_string(), hint }
    }

    /// The option an `InvalidOptionError` is about (set as `error.option` in JS).
    pub fn option(&self) -> Option<&str> {
        match self {
            Error::InvalidOption { option, .. } => Some(*option),
            Error::UnknownOption { option, .. } => Some(option.as_str()),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
