//! Any bytes: manifest parsing and validation return Ok or a named error, never panic; a
//! manifest that validates also re-serializes to an equal one.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = edge_llm::package::manifest::Manifest::from_json(data) {
        let again = edge_llm::package::manifest::Manifest::from_json(m.to_json().as_bytes()).expect("round trip");
        assert_eq!(again, m);
    }
});
