//! A Rust panic reaches JS as an `Error`, with the panic message logged by
//! console_error_panic_hook. Its own binary: a trapped instance is not reused.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn panic_becomes_a_js_error_with_the_message_logged() {
    console_error_panic_hook::set_once();
    let harness = js_sys::Function::new_with_args(
        "f",
        "const logged = []; const orig = console.error;
         console.error = (...a) => logged.push(a.join(' '));
         try { f(); return { error: null, logged }; }
         catch (e) { return { error: e, isError: e instanceof Error, logged }; }
         finally { console.error = orig; }",
    );
    let boom = Closure::<dyn Fn()>::new(|| panic!("boom from Rust 42"));
    let out = harness.call1(&JsValue::NULL, boom.as_ref()).unwrap();
    std::mem::forget(boom);
    let get = |k: &str| js_sys::Reflect::get(&out, &k.into()).unwrap();
    assert!(!get("error").is_null(), "the panic did not surface in JS");
    assert_eq!(get("isError"), JsValue::TRUE, "thrown value is not an Error");
    let logged: Vec<String> = js_sys::Array::from(&get("logged")).iter().filter_map(|v| v.as_string()).collect();
    assert!(logged.iter().any(|l| l.contains("boom from Rust 42")), "panic message not logged: {logged:?}");
}
