//! Packing the tiny model into shards + manifest, and loading it back verified.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;

use edge_llm::manifest::{FileRole, Manifest};
use edge_llm::pack::{pack, PackOptions};
use edge_llm::{tiny, Engine, Error, GenerateOptions};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

fn packed(variant: &str, shard_bytes: u64) -> (Manifest, BTreeMap<String, Vec<u8>>) {
    let opts = PackOptions { shard_bytes, ..Default::default() };
    let (m, files) = pack(&fixture(variant), &fixture("tokenizer.json"), &tiny::model_config(), &opts).unwrap();
    (m, files.into_iter().collect())
}

fn greedy(e: &Engine) -> Vec<u32> {
    let mut g = e.generate("The capital of France", &GenerateOptions { max_tokens: 8, ignore_eos: true, ..Default::default() }).unwrap();
    while g.step().unwrap().is_some() {}
    g.generated().to_vec()
}

#[test]
fn shards_respect_the_limit_and_load_back_to_the_same_tokens() {
    let (m, files) = packed("model-fp32.onnx", 100_000);
    let shards: Vec<_> = m.files.iter().filter(|f| f.role == FileRole::Weights).collect();
    assert!(shards.len() >= 3, "expected several shards, got {}", shards.len());
    assert!(m.files.iter().all(|f| f.bytes <= 100_000), "{:?}", m.files);
    assert_eq!(m.total_bytes, files.values().map(|b| b.len() as u64).sum::<u64>());
    assert_eq!(m.config.architecture, tiny::config());
    assert!(m.inputs.iter().any(|i| i.name == "past_key_values.0.key"));
    let direct = Engine::load(&fixture("model-fp32.onnx"), &fixture("tokenizer.json"), tiny::model_config()).unwrap();
    let from_pack = Engine::load_packed(&m, files).unwrap();
    assert_eq!(greedy(&direct), greedy(&from_pack));
}

#[test]
fn a_tensor_bigger_than_the_shard_size_gets_a_shard_of_its_own() {
    // The tiny int8 embedding and head are the largest tensors; with 20 kB shards every one
    // over that limit must sit alone.
    let (m, files) = packed("model-int8.onnx", 20_000);
    let shards: Vec<_> = m.files.iter().filter(|f| f.role == FileRole::Weights).collect();
    let oversized: Vec<_> = shards.iter().filter(|f| f.bytes > 20_000).collect();
    assert!(!oversized.is_empty(), "the test wants tensors over the shard size: {shards:?}");
    let graph = edge_llm::onnx::decode(&files["model.onnx"]).unwrap();
    for f in &oversized {
        let holders = graph
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .filter(|t| t.external_data.iter().any(|e| e.key == "location" && e.value == f.path))
            .count();
        assert_eq!(holders, 1, "{} holds {holders} tensors", f.path);
    }
    let direct = Engine::load(&fixture("model-int8.onnx"), &fixture("tokenizer.json"), tiny::model_config()).unwrap();
    assert_eq!(greedy(&direct), greedy(&Engine::load_packed(&m, files).unwrap()));
}

#[test]
fn a_tensor_over_50_mb_is_refused_by_name() {
    use edge_llm::onnx::ModelProto;
    use tract_onnx::pb::{GraphProto, TensorProto};
    let big = TensorProto { name: "huge".into(), dims: vec![50_000_001], data_type: 2, raw_data: vec![0; 50_000_001], ..Default::default() };
    let model = ModelProto { graph: Some(GraphProto { initializer: vec![big], ..Default::default() }), ..Default::default() };
    let err = edge_llm::manifest::shard_weights(model, 16 << 20, "model").unwrap_err();
    assert!(matches!(&err, Error::InvalidModel(e) if e.contains("`huge`") && e.contains("50000000")), "{err}");
}

#[test]
fn packing_is_deterministic_and_the_manifest_round_trips() {
    let (a, fa) = packed("model-int4.onnx", 60_000);
    let (b, fb) = packed("model-int4.onnx", 60_000);
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(fa, fb);
    assert_eq!(Manifest::from_json(a.to_json().as_bytes()).unwrap(), a);
    assert_eq!(a.quantization.method, "rtn-int4-blockwise");
    assert_eq!(a.quantization.block_size, Some(32));
    assert_eq!(packed("model-int8.onnx", 1 << 20).0.quantization.method, "rtn-int8-per-channel");
}

#[test]
fn a_corrupted_shard_is_an_integrity_error_naming_it() {
    let (m, mut files) = packed("model-fp32.onnx", 100_000);
    let shard = m.files.iter().find(|f| f.role == FileRole::Weights).unwrap().path.clone();
    files.get_mut(&shard).unwrap()[10] ^= 1;
    match Engine::load_packed(&m, files) {
        Err(Error::ShardHashMismatch { shard: s, expected, actual }) => {
            assert_eq!(s, shard);
            assert_ne!(expected, actual);
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("loaded a corrupted shard"),
    }
}

#[test]
fn truncated_or_missing_files_are_named_errors() {
    let (m, mut files) = packed("model-fp32.onnx", 100_000);
    let shard = m.files.iter().find(|f| f.role == FileRole::Weights).unwrap().path.clone();
    files.get_mut(&shard).unwrap().truncate(50);
    assert!(matches!(Engine::load_packed(&m, files.clone()), Err(Error::ShardHashMismatch { .. })));
    files.remove(&shard);
    assert!(matches!(Engine::load_packed(&m, files), Err(Error::InvalidModel(e)) if e.contains(&shard)));
}

#[test]
fn bad_manifests_are_rejected_with_reasons() {
    let (m, _) = packed("model-int4.onnx", 1 << 20);
    let json = m.to_json();
    for cut in [0, 1, json.len() / 2, json.len() - 3] {
        assert!(matches!(Manifest::from_json(&json.as_bytes()[..cut]), Err(Error::InvalidManifest(_))), "cut {cut}");
    }
    let mut newer = m.clone();
    newer.min_runtime_version = "99.0.0".into();
    assert!(matches!(Manifest::from_json(newer.to_json().as_bytes()), Err(Error::IncompatibleManifest(_))));
    let mut future = m.clone();
    future.format_version = 3;
    assert!(matches!(future.validate(), Err(Error::IncompatibleManifest(_))));
    let mut evil = m.clone();
    evil.files[0].path = "../../etc/passwd".into();
    assert!(matches!(evil.validate(), Err(Error::InvalidManifest(_))));
    let mut tampered = m.clone();
    tampered.files[0].sha256 = "0".repeat(64);
    assert!(matches!(tampered.validate(), Err(Error::InvalidManifest(e)) if e.contains("model_sha256")));
}

#[test]
fn quantize_rewrites_an_fp32_graph_to_int4_with_the_exporters_weights() {
    use edge_llm::cpu::CpuModel;
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    use edge_llm::llama::reference::{self, RefKvCache};
    use edge_llm::quant::Precision;
    use edge_llm::quantize::{quantize, QuantizeOptions};
    use std::sync::Arc;

    let cfg = tiny::config();
    let fp32 = export(&cfg, &tiny::weights(), &ExportOptions::fp32()).model;
    let opts = QuantizeOptions { precision: Precision::Int4, ..Default::default() };
    let (q, report) = quantize(fp32.clone(), &opts).unwrap();
    // 7 per layer + the embedding + the tied head (through its Transpose), sharing one tensor.
    assert_eq!(report.rewritten.len(), 7 * cfg.num_layers + 2, "{report:?}");
    let q4_tensors = q.graph.as_ref().unwrap().initializer.iter().filter(|t| t.name.contains("embed_tokens.weight_Q4")).count();
    assert_eq!(q4_tensors, 1, "embedding and head share one int4 tensor");
    assert_eq!(report.kept, 2 * cfg.num_layers, "attention's activation matmuls stay");
    let bytes = edge_llm::onnx::encode(&q);
    let (qb, fb) = (bytes.len(), edge_llm::onnx::encode(&fp32).len());
    assert!(qb * 4 < fb, "int4 graph is {qb} bytes, fp32 {fb}");
    // Same quantization as the exporter's int4 export (shared int4 embedding and head).
    let eff = export(&cfg, &tiny::weights(), &ExportOptions::int4(32, true)).effective;
    let prompt = [3u32, 30, 60, 90];
    let got = Arc::new(CpuModel::load(&bytes).unwrap()).session().forward_all(&prompt).unwrap();
    let want = reference::forward(&cfg, &eff, &prompt, &mut RefKvCache::default()).concat();
    let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d < 1e-3, "max |diff| = {d}");
    // Deterministic.
    assert_eq!(edge_llm::onnx::encode(&quantize(fp32.clone(), &opts).unwrap().0), bytes);

    // Mixed precision: the head (tied to the embedding) at int8, layer 0 left fp32.
    let mixed = QuantizeOptions {
        overrides: vec![("embed_tokens".into(), Precision::Int8), ("layers.0.".into(), Precision::F32)],
        ..opts
    };
    let (m, report) = quantize(fp32, &mixed).unwrap();
    // The table itself stays fp32 (int8 gathers are not written by `quantize`); its head is int8.
    assert!(report.rewritten.contains(&("model.embed_tokens.weight".into(), Precision::Int8)));
    assert!(report.rewritten.iter().all(|(n, _)| !n.contains("layers.0.")));
    assert_eq!(report.rewritten.len(), 7 * (cfg.num_layers - 1) + 1);
    assert!(CpuModel::load(&edge_llm::onnx::encode(&m)).is_ok());
}

/// A manifest is input from the network: paths that could name another place, sizes past the
/// caps (or whose sum overflows) are refused before anything is fetched or allocated.
#[test]
fn hostile_manifests_are_bounded() {
    use edge_llm::manifest::{model_hash_v2, FileEntry, ManifestLimits, MAX_FILES, MAX_SHARD_BYTES};
    let (m, _) = packed("model-int4.onnx", 1 << 20);
    let rehash = |mut m: Manifest| {
        m.total_bytes = m.files.iter().fold(0u64, |s, f| s.wrapping_add(f.bytes));
        m.model_sha256 = model_hash_v2(&m.files, &m.config, &m.generation);
        m
    };
    let invalid = |m: &Manifest, limits: &ManifestLimits, what: &str| match m.validate_with(limits) {
        Err(Error::InvalidManifest(e)) => e,
        other => panic!("{what}: expected InvalidManifest, got {other:?}"),
    };
    let limits = ManifestLimits::default();
    for path in ["%2e%2e/x", "C:/x", "C:x", "a\\b", "/abs", "a//b", "./a", "a/..", "a/", "", "x?y", "x#y", "ü"] {
        let mut evil = m.clone();
        evil.files[0].path = path.into();
        let e = invalid(&rehash(evil), &limits, path);
        assert!(e.contains("plain relative name"), "{path}: {e}");
    }
    let mut big = m.clone();
    big.files[0].bytes = MAX_SHARD_BYTES + 1;
    assert!(invalid(&rehash(big), &limits, "big file").contains("a file may hold"));

    let weights = m.files.iter().find(|f| f.role == FileRole::Weights).unwrap().clone();
    let many = |n: usize, bytes: u64| {
        let mut m = m.clone();
        m.files.extend((0..n).map(|i| FileEntry { path: format!("extra.{i}"), bytes, ..weights.clone() }));
        rehash(m)
    };
    assert!(invalid(&many(MAX_FILES, 1), &limits, "count").contains("files"));
    assert!(invalid(&many(11, MAX_SHARD_BYTES), &limits, "total").contains("more than the"));
    // An app may allow a bigger model; a sum past u64 is refused, not wrapped or panicked on.
    let loose = ManifestLimits { max_file_bytes: u64::MAX, max_total_bytes: u64::MAX, ..limits };
    many(11, MAX_SHARD_BYTES).validate_with(&loose).unwrap();
    assert!(invalid(&many(2, u64::MAX / 2 + 1), &loose, "overflow").contains("total_bytes"));
}

/// The model hash (format 2) covers `config` (chat template included) and `generation`, so a
/// manifest with another template is another model; format 1 manifests still load.
#[test]
fn the_model_hash_covers_the_config() {
    use edge_llm::manifest::model_hash;
    let (m, files) = packed("model-int4.onnx", 1 << 20);
    assert_eq!(m.format_version, 2);
    let mut templated = m.clone();
    templated.config.chat_template = Some("{{ 'pwned' }}".into());
    assert!(matches!(templated.validate(), Err(Error::InvalidManifest(e)) if e.contains("model_sha256")));
    let mut hot = m.clone();
    hot.generation.temperature = 2.0;
    assert!(matches!(hot.validate(), Err(Error::InvalidManifest(e)) if e.contains("model_sha256")));

    let mut v1 = m.clone();
    v1.format_version = 1;
    v1.model_sha256 = model_hash(&v1.files);
    let v1 = Manifest::from_json(v1.to_json().as_bytes()).unwrap();
    let engine = Engine::load_packed(&v1, files).unwrap();
    assert!(!greedy(&engine).is_empty());
}
