//! Packing the tiny model into shards + manifest, and loading it back verified.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;

use edge_llm::package::manifest::{FileRole, Manifest, CONTINUED_KEY};
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
    let direct = Engine::open(edge_llm::package::Package::loose(&fixture("model-fp32.onnx"), &fixture("tokenizer.json"), tiny::model_config()), &Default::default()).unwrap();
    let from_pack = Engine::open(edge_llm::package::Package::packed(&m, files), &Default::default()).unwrap();
    assert_eq!(greedy(&direct), greedy(&from_pack));
}

/// The bytes of `variant`'s largest initializer.
fn largest_tensor(variant: &str) -> usize {
    let m = edge_llm::onnx::decode(&fixture(variant)).unwrap();
    m.graph.unwrap().initializer.iter().map(|t| t.raw_data.len()).max().unwrap()
}

/// The parts (`location` + the continued ones) each external initializer of `graph` names.
fn parts(graph: &edge_llm::onnx::ModelProto) -> Vec<(String, Vec<String>)> {
    let get = |t: &tract_onnx::pb::TensorProto, k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.clone());
    graph.graph.as_ref().unwrap().initializer.iter().filter(|t| !t.external_data.is_empty()).map(|t| {
        let mut locs = vec![get(t, "location").unwrap()];
        locs.extend(get(t, CONTINUED_KEY).iter().flat_map(|v| v.split(';').map(|p| p.split(':').next().unwrap().to_string())));
        (t.name.clone(), locs)
    }).collect()
}

#[test]
fn a_tensor_bigger_than_a_shard_spans_consecutive_shards_and_loads_back() {
    for variant in ["model-fp32.onnx", "model-int8.onnx", "model-int4.onnx", "model-int4-asym.onnx"] {
        // Shards a quarter of the largest tensor: it spans at least four.
        let shard_bytes = largest_tensor(variant) as u64 / 4;
        let (m, files) = packed(variant, shard_bytes);
        assert_eq!(m.format_version, 2, "{variant}: a split tensor needs format 2");
        assert!(m.files.iter().filter(|f| f.role == FileRole::Weights).all(|f| f.bytes <= shard_bytes), "{variant}: {:?}", m.files);
        let graph = edge_llm::onnx::decode(&files["model.onnx"]).unwrap();
        let spans = parts(&graph);
        let widest = spans.iter().map(|(_, l)| l.len()).max().unwrap();
        assert!(widest >= 4, "{variant}: the largest tensor spans {widest} shards");
        for (name, locs) in &spans {
            // Consecutive shards, and a split tensor's last shard holds nothing else.
            let idx: Vec<usize> = locs.iter().map(|l| l.trim_start_matches("model.data.").parse().unwrap()).collect();
            assert!(idx.windows(2).all(|w| w[1] == w[0] + 1), "{variant}: {name} in {locs:?}");
            if locs.len() > 1 {
                let sharing = spans.iter().filter(|(_, l)| l.contains(locs.last().unwrap())).count();
                assert_eq!(sharing, 1, "{variant}: {name}'s last shard {} holds other tensors", locs.last().unwrap());
            }
        }
        let direct = Engine::open(edge_llm::package::Package::loose(&fixture(variant), &fixture("tokenizer.json"), tiny::model_config()), &Default::default()).unwrap();
        let tokens = greedy(&direct);
        assert_eq!(tokens.len(), 8);
        assert_eq!(tokens, greedy(&Engine::open(edge_llm::package::Package::packed(&m, files), &Default::default()).unwrap()), "{variant}");
        // Shards that hold every tensor whole: each tensor in one part.
        let (m1, files1) = packed(variant, largest_tensor(variant) as u64);
        assert_eq!(m1.format_version, edge_llm::package::manifest::FORMAT_VERSION, "{variant}");
        assert!(parts(&edge_llm::onnx::decode(&files1["model.onnx"]).unwrap()).iter().all(|(_, l)| l.len() == 1));
        assert_eq!(tokens, greedy(&Engine::open(edge_llm::package::Package::packed(&m1, files1), &Default::default()).unwrap()), "{variant}");
    }
}

#[test]
fn split_tensors_with_bad_parts_are_named_errors() {
    use edge_llm::cpu::{CpuModel, CpuOptions};
    let (_, files) = packed("model-fp32.onnx", largest_tensor("model-fp32.onnx") as u64 / 3);
    let graph = edge_llm::onnx::decode(&files["model.onnx"]).unwrap();
    let load = |edit: &dyn Fn(&str) -> String| {
        let mut g = graph.clone();
        let t = g.graph.as_mut().unwrap().initializer.iter_mut().find(|t| t.external_data.iter().any(|e| e.key == CONTINUED_KEY)).unwrap();
        let e = t.external_data.iter_mut().find(|e| e.key == CONTINUED_KEY).unwrap();
        e.value = edit(&e.value);
        let mut files = files.clone();
        match CpuModel::from_packed(g, |loc: &str| files.remove(loc).ok_or_else(|| Error::InvalidModel(format!("no {loc}"))), &CpuOptions::default()) {
            Ok(_) => panic!("loaded an edited split tensor"),
            Err(e) => e.to_string(),
        }
    };
    // A part one byte longer than its shard, a part in an earlier shard, a malformed part.
    let longer = load(&|v| {
        let (head, n) = v.rsplit_once(':').unwrap();
        format!("{head}:{}", n.parse::<u64>().unwrap() + 1)
    });
    assert!(longer.contains("reaches past the end"), "{longer}");
    let earlier = load(&|v| format!("model.data.000:0:4;{v}"));
    assert!(earlier.contains("not in a later shard"), "{earlier}");
    let malformed = load(&|v| format!("{v};model.data.999"));
    assert!(malformed.contains("bad continued part"), "{malformed}");
}

#[test]
fn a_tensor_over_50_mb_is_split_into_shards_under_the_limit() {
    use edge_llm::onnx::ModelProto;
    use tract_onnx::pb::{GraphProto, TensorProto};
    let big = TensorProto { name: "huge".into(), dims: vec![50_000_001], data_type: 2, raw_data: vec![7; 50_000_001], ..Default::default() };
    let model = ModelProto { graph: Some(GraphProto { initializer: vec![big], ..Default::default() }), ..Default::default() };
    let (graph, shards) = edge_llm::package::shards::shard_weights(model.clone(), 16 << 20, "model").unwrap();
    assert_eq!(shards.iter().map(|(_, b)| b.len()).collect::<Vec<_>>(), [16 << 20, 16 << 20, 50_000_001 - 2 * (16 << 20)]);
    assert_eq!(parts(&graph), [("huge".to_string(), shards.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())]);
    // No shard may be bigger than the seed's 50 MB.
    let err = edge_llm::package::shards::shard_weights(model, 50_000_001, "model").unwrap_err();
    assert!(matches!(&err, Error::InvalidOption { option: "shard_bytes", .. }), "{err}");
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
    match Engine::open(edge_llm::package::Package::packed(&m, files), &Default::default()) {
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
    assert!(matches!(Engine::open(edge_llm::package::Package::packed(&m, files.clone()), &Default::default()), Err(Error::ShardHashMismatch { .. })));
    files.remove(&shard);
    assert!(matches!(Engine::open(edge_llm::package::Package::packed(&m, files), &Default::default()), Err(Error::InvalidModel(e)) if e.contains(&shard)));
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
    future.format_version = edge_llm::package::manifest::FORMAT_VERSION + 1;
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
    // The graph says so: int4 everywhere but layer 0 (fp32 `MatMul`) and the head (int8).
    let nodes = &m.graph.as_ref().unwrap().node;
    let count = |op: &str, layer0: bool| {
        nodes.iter().filter(|n| n.op_type == op && n.input.iter().any(|i| i.starts_with("model.layers.0.")) == layer0).count()
    };
    let bits8 = nodes.iter().filter(|n| n.op_type == "MatMulNBits" && n.attribute.iter().any(|a| a.name == "bits" && a.i == 8)).count();
    assert_eq!(count("MatMulNBits", false), 7 * (cfg.num_layers - 1) + 1, "int4 linears and the int8 head");
    assert_eq!(bits8, 1, "the head, int8 in blocks of 32 (the default int8 format)");
    assert_eq!((count("MatMulNBits", true), count("MatMulInteger", true)), (0, 0));
    assert_eq!(count("MatMul", true), 7, "layer 0's projections stay fp32 MatMuls");
    // More precision where asked brings the logits closer to fp32 than all-int4 is.
    let fp32_logits = reference::forward(&cfg, &tiny::weights(), &prompt, &mut RefKvCache::default()).concat();
    let mixed_logits = Arc::new(CpuModel::load(&edge_llm::onnx::encode(&m)).unwrap()).session().forward_all(&prompt).unwrap();
    let dist = |a: &[f32]| a.iter().zip(&fp32_logits).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let (d_mixed, d_int4) = (dist(&mixed_logits), dist(&got));
    assert!(d_mixed < d_int4, "mixed {d_mixed} vs int4 {d_int4} from fp32");
}

/// `quantize --precision int8` writes its 8-bit blocks on float activations (no
/// `accuracy_level`), as `import-gguf` does; `--int8-activations` asks for int8 ones
/// (`accuracy_level = 4`), which round every layer's input and so land further from fp32.
#[test]
fn quantize_int8_computes_on_float_activations_unless_asked() {
    use edge_llm::cpu::CpuModel;
    use edge_llm::llama::onnx_export::{export, ExportOptions};
    use edge_llm::llama::reference::{self, RefKvCache};
    use edge_llm::quant::Precision;
    use edge_llm::quantize::{quantize, QuantizeOptions};
    use std::sync::Arc;

    let cfg = tiny::config();
    let fp32 = export(&cfg, &tiny::weights(), &ExportOptions::fp32()).model;
    let prompt = [3u32, 30, 60, 90];
    let want = reference::forward(&cfg, &tiny::weights(), &prompt, &mut RefKvCache::default()).concat();
    let run = |int8_activations: bool| {
        let opts = QuantizeOptions { precision: Precision::Int8, int8_activations, ..Default::default() };
        let (q, report) = quantize(fp32.clone(), &opts).unwrap();
        // 7 per layer + the tied head (the table stays fp32: `quantize` writes no int8 gathers).
        assert_eq!(report.rewritten.len(), 7 * cfg.num_layers + 1, "{report:?}");
        let nodes: Vec<_> = q.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == "MatMulNBits").cloned().collect();
        assert_eq!(nodes.len(), report.rewritten.len());
        for n in &nodes {
            assert!(n.attribute.iter().any(|a| a.name == "bits" && a.i == 8), "{}", n.name);
            let level = n.attribute.iter().find(|a| a.name == "accuracy_level").map(|a| a.i);
            assert_eq!(level, int8_activations.then_some(edge_llm::onnx::ACCURACY_LEVEL_INT8), "{}", n.name);
        }
        let got = Arc::new(CpuModel::load(&edge_llm::onnx::encode(&q)).unwrap()).session().forward_all(&prompt).unwrap();
        got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    };
    let (float_acts, int8_acts) = (run(false), run(true));
    assert!(float_acts < int8_acts, "float activations {float_acts} vs int8 activations {int8_acts} from fp32");
}

/// A manifest is input from the network: paths that could name another place, sizes past the
/// caps (or whose sum overflows) are refused before anything is fetched or allocated.
#[test]
fn hostile_manifests_are_bounded() {
    use edge_llm::package::manifest::{model_hash_v2, FileEntry, ManifestLimits, MAX_FILES, MAX_SHARD_BYTES};
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
    use edge_llm::package::manifest::model_hash;
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
    let engine = Engine::open(edge_llm::package::Package::packed(&v1, files), &Default::default()).unwrap();
    assert!(!greedy(&engine).is_empty());
}
