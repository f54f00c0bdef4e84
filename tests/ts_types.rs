//! The TypeScript the package ships (`typescript_custom_section`s in src/web/*.rs) names exactly
//! what the Rust side accepts and sends: option names, stats fields, finish reasons. The types are
//! written by hand beside the code that defines the values; this test is what keeps them from
//! drifting (a field added on one side only fails here).
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeSet;

use edge_llm::generate::{FinishReason, GenerationStats};
use edge_llm::GenerateOptions;

fn source(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Field names of `export interface NAME ... {` in `ts` (top level of the body; comments skipped).
fn interface_fields(ts: &str, name: &str) -> BTreeSet<String> {
    let start = ts.find(&format!("export interface {name} ")).unwrap_or_else(|| panic!("no interface {name}"));
    let body = &ts[start + ts[start..].find('{').unwrap() + 1..];
    let (mut depth, mut in_comment, mut fields) = (0, false, BTreeSet::new());
    for line in body.lines() {
        let t = line.trim();
        if in_comment || t.starts_with("/*") {
            in_comment = !t.contains("*/");
            continue;
        }
        if depth == 0 && t.starts_with('}') {
            return fields;
        }
        if depth == 0 {
            if let Some(field) = t.split(['?', ':']).next().filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
                fields.insert(field.to_string());
            }
        }
        depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
    }
    panic!("interface {name} is not closed")
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn generate_options_in_typescript_are_the_options_the_engine_accepts() {
    assert_eq!(interface_fields(&source("src/web/mod.rs"), "GenerateOptions"), set(GenerateOptions::NAMES));
}

#[test]
fn load_options_in_typescript_are_the_options_engine_load_accepts() {
    assert_eq!(interface_fields(&source("src/web/load.rs"), "LoadOptions"), set(edge_llm::loader::LOAD_OPTION_NAMES));
}

#[test]
fn generation_stats_in_typescript_are_the_fields_the_engine_sends() {
    let sent = serde_json::to_value(GenerationStats::default()).unwrap();
    let sent: BTreeSet<String> = sent.as_object().unwrap().keys().cloned().collect();
    assert_eq!(interface_fields(&source("src/web/mod.rs"), "GenerationStats"), sent);
}

#[test]
fn finish_reasons_in_typescript_are_the_ones_the_engine_sends() {
    // A match, so a new variant fails to compile here until it is listed.
    let all = [FinishReason::Eos, FinishReason::StopString, FinishReason::MaxTokens].map(|r| match r {
        FinishReason::Eos | FinishReason::StopString | FinishReason::MaxTokens => serde_json::to_value(r).unwrap().as_str().unwrap().to_string(),
    });
    let ts = source("src/web/mod.rs");
    let line = ts.lines().find(|l| l.starts_with("export type FinishReason =")).expect("FinishReason type");
    let typed: BTreeSet<String> = line.split('"').skip(1).step_by(2).map(str::to_string).collect();
    assert_eq!(typed, all.into_iter().collect::<BTreeSet<_>>());
}
