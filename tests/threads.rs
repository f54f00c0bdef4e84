//! Multi-threaded CPU inference (feature `threads`, on with `pack`): the same tokens and
//! bit-identical logits at any thread count.
#![cfg(feature = "threads")]

mod common;

#[test]
fn q4_kernel_on_three_threads_equals_one_thread() {
    // One test, so no other test in this binary changes the process-wide thread count meanwhile.
    for (sym, int8) in common::Q4_KERNEL_VARIANTS {
        let (one_tokens, one_logits) = common::q4_greedy_on_threads(sym, int8, 1, 12);
        let before = edge_llm::cpu::threads::split_calls();
        let (three_tokens, three_logits) = common::q4_greedy_on_threads(sym, int8, 3, 12);
        let splits = edge_llm::cpu::threads::split_calls() - before;
        assert!(splits > 0, "symmetric={sym} int8={int8}: no matmul was split across threads");
        assert_eq!(one_tokens, three_tokens, "symmetric={sym} int8={int8}");
        assert_eq!(one_logits, three_logits, "symmetric={sym} int8={int8}: logits differ");
        eprintln!("symmetric={sym} int8={int8}: {splits} split matmuls, tokens {three_tokens:?}");
    }
    edge_llm::cpu::threads::configure(1);
}
