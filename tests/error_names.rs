//! Every JS error name the crate can throw is exported by the package (js/errors.js: the error
//! classes and `ERROR_NAMES`; js/errors.d.ts: the `ErrorName` union), so apps can narrow on all of
//! them. A new `Error` variant fails to compile here until it is listed.
#![cfg(not(target_arch = "wasm32"))]

use edge_llm::Error;

fn every_variant() -> Vec<Error> {
    let s = String::new;
    let all = vec![
        Error::InvalidModel(s()),
        Error::InvalidGguf(s()),
        Error::UnsupportedOp { op: s(), node: s() },
        Error::Tokenizer(s()),
        Error::ChatTemplate(s()),
        Error::InvalidOption { option: "x", reason: s() },
        Error::UnknownOption { option: s(), hint: s() },
        Error::ContextOverflow { needed: 0, max: 0 },
        Error::Inference(s()),
        Error::ShardHashMismatch { shard: s(), expected: s(), actual: s() },
        Error::InvalidManifest(s()),
        Error::IncompatibleManifest(s()),
        Error::InvalidState(s()),
        Error::Disposed,
        Error::Io(std::io::Error::other("x")),
        Error::Network { file: s(), reason: s() },
        Error::Quota { needed: 0, available: 0 },
        Error::Aborted(s()),
        Error::UnsupportedBackend(s()),
        Error::GpuDeviceLost(s()),
        Error::Store(s()),
        Error::Timeout(s()),
    ];
    // Exhaustive on purpose: a new variant must be added to the list above.
    for e in &all {
        match e {
            Error::InvalidModel(_)
            | Error::InvalidGguf(_)
            | Error::UnsupportedOp { .. }
            | Error::Tokenizer(_)
            | Error::ChatTemplate(_)
            | Error::InvalidOption { .. }
            | Error::UnknownOption { .. }
            | Error::ContextOverflow { .. }
            | Error::Inference(_)
            | Error::ShardHashMismatch { .. }
            | Error::InvalidManifest(_)
            | Error::IncompatibleManifest(_)
            | Error::InvalidState(_)
            | Error::Disposed
            | Error::Io(_)
            | Error::Network { .. }
            | Error::Quota { .. }
            | Error::Aborted(_)
            | Error::UnsupportedBackend(_)
            | Error::GpuDeviceLost(_)
            | Error::Timeout(_)
            | Error::Store(_) => {}
        }
    }
    all
}

#[test]
fn every_error_name_is_exported_to_js_and_typed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let js = std::fs::read_to_string(format!("{root}/js/errors.js")).unwrap();
    let dts = std::fs::read_to_string(format!("{root}/js/errors.d.ts")).unwrap();
    for e in every_variant() {
        let name = e.name();
        assert!(js.contains(&format!("\"{name}\",")), "{name} is not in ERROR_NAMES (js/errors.js)");
        assert!(js.contains(&format!("export const {name} = named(\"{name}\");")), "js/errors.js has no class {name}");
        assert!(dts.contains(&format!("| \"{name}\"")), "{name} is not in ErrorName (js/errors.d.ts)");
        assert!(dts.contains(&format!("export class {name} extends EdgeLlmError")), "js/errors.d.ts has no class {name}");
    }
}
