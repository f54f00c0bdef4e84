//! ONNX decode and packed load over any bytes, packed with a manifest that hashes them (so the
//! bytes, not the hash check, are what is fuzzed) beside the tiny tokenizer. Decoding, the
//! external-data ranges and building the engine return Ok or a named error, never panic or
//! over-allocate. Input: a mode byte, then either `[u32 graph length][graph][u32 shard
//! length][model.data.000][model.data.001]` (even modes) or a patch of the committed
//! tiny-packed fixture (odd modes: `[file][u32 offset][bytes written there]`), so the fuzzer
//! starts from a real graph without a seed corpus.
#![no_main]
use std::collections::BTreeMap;

use edge_llm::package::manifest::{model_hash, sha256_hex, FileEntry, Manifest};
use libfuzzer_sys::fuzz_target;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-packed");
const FILES: [&str; 3] = ["model.onnx", "model.data.000", "model.data.001"];

fn split(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let rest = &data[4..];
    (n <= rest.len()).then(|| rest.split_at(n))
}

struct Fixture {
    manifest: Manifest,
    files: BTreeMap<String, Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let read = |p: &str| std::fs::read(format!("{FIXTURES}/{p}")).unwrap();
        let manifest = Manifest::from_json(&read("manifest.json")).unwrap();
        let files = manifest.files.iter().map(|f| (f.path.clone(), read(&f.path))).collect();
        Fixture { manifest, files }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let fx = fixture();
    let mut files = fx.files.clone();
    if mode % 2 == 0 {
        let Some((graph, rest)) = split(rest) else { return };
        let Some((shard0, shard1)) = split(rest) else { return };
        for (p, b) in FILES.iter().zip([graph, shard0, shard1]) {
            files.insert(p.to_string(), b.to_vec());
        }
    } else {
        let Some((&which, rest)) = rest.split_first() else { return };
        let Some(at) = rest.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize) else { return };
        let file = files.get_mut(FILES[which as usize % 3]).unwrap();
        let at = at % (file.len() + 1);
        // Modes 1 and 3 overwrite; 5 and 7 cut the file at `at` and append.
        if mode & 4 != 0 {
            file.truncate(at);
        }
        for (i, &b) in rest[4..].iter().enumerate() {
            match file.get_mut(at + i) {
                Some(x) => *x = b,
                None => file.push(b),
            }
        }
    }
    let _ = edge_llm::onnx::decode(&files["model.onnx"]);
    let entries: Vec<FileEntry> = fx
        .manifest
        .files
        .iter()
        .map(|f| FileEntry { bytes: files[&f.path].len() as u64, sha256: sha256_hex(&files[&f.path]), ..f.clone() })
        .collect();
    let m = Manifest { format_version: 1, model_sha256: model_hash(&entries), total_bytes: entries.iter().map(|e| e.bytes).sum(), files: entries, ..fx.manifest.clone() };
    if m.validate().is_ok() {
        let _ = edge_llm::Engine::open(edge_llm::package::Package::packed(&m, files), &Default::default());
    }
});
