//! External-data ranges over any graph and shard bytes. Offsets, lengths and overlaps are
//! checked before a byte is copied; never a panic or an allocation past the shard's size.
//! Input: a mode byte, then `[u32 graph length][graph][shard]` (even modes: the shard is named
//! `model.data.000`, what the graph's `location` must say), or (odd modes) a patch
//! `[u32 offset][bytes]` written into the committed tiny-packed graph, its shards as they are.
#![no_main]
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-packed");

fn fixture() -> &'static (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    static F: std::sync::OnceLock<(Vec<u8>, BTreeMap<String, Vec<u8>>)> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let read = |p: &str| std::fs::read(format!("{FIXTURES}/{p}")).unwrap();
        let shards = ["model.data.000", "model.data.001"].iter().map(|p| (p.to_string(), read(p))).collect();
        (read("model.onnx"), shards)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (graph, shards) = if mode % 2 == 0 {
        let Some(n) = rest.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize) else { return };
        let rest = &rest[4..];
        if n > rest.len() {
            return;
        }
        let (graph, shard) = rest.split_at(n);
        (graph.to_vec(), BTreeMap::from([("model.data.000".to_string(), shard.to_vec())]))
    } else {
        let (graph, shards) = fixture();
        let Some(at) = rest.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize) else { return };
        let mut graph = graph.clone();
        let at = at % (graph.len() + 1);
        for (i, &b) in rest[4..].iter().enumerate() {
            match graph.get_mut(at + i) {
                Some(x) => *x = b,
                None => graph.push(b),
            }
        }
        (graph, shards.clone())
    };
    let Ok(model) = edge_llm::onnx::decode(&graph) else { return };
    let Some(graph) = model.graph.as_ref() else { return };
    if let Ok(taken) = edge_llm::package::shards::consume_external_in_memory(graph, &shards) {
        let held: u64 = shards.values().map(|s| s.len() as u64).sum();
        assert!(taken <= held, "tensors of one shard cannot overlap: {taken} bytes taken from {held}");
    }
});
