//! The typed side table of the weights `detach_weights` takes out of the graph before tract
//! parses it: which names are weights (graph inputs, not initializers, while the graph is
//! parsed) and how each tensor is laid out. Op builders that claim nodes with constant weights
//! (`q8_matmul`) read it; nothing in the protobuf carries the information.

use std::cell::RefCell;
use std::collections::HashMap;

/// How a detached weight's tensor is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// As the initializer declared it.
    Declared,
    /// The `MatMulInteger` kernel's `[n][k]` i8 matrix (`q8_matmul::transposed_weight`) of a
    /// `[k][n]` u8 weight (stored `b - 128`).
    TransposedFromU8,
    /// The same of a `[k][n]` i8 weight (stored as is).
    TransposedFromI8,
}

/// One detached weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetachedWeight {
    /// The rank of its tensor (as stored).
    pub rank: usize,
    pub layout: Layout,
}

/// Detached weights by initializer name.
pub type DetachedWeights = HashMap<String, DetachedWeight>;

thread_local! {
    static PARSING: RefCell<DetachedWeights> = RefCell::default();
}

/// `parse()` with `table` visible to the op builders through [`get`]. tract's ONNX op builders
/// are plain `fn` pointers (`OnnxOpRegister`) whose only context is the protobuf, so the table
/// travels beside it on the parsing thread, for the duration of the parse.
pub fn while_parsing<T>(table: DetachedWeights, parse: impl FnOnce() -> T) -> T {
    let previous = PARSING.with(|t| t.replace(table));
    let out = parse();
    PARSING.with(|t| t.replace(previous));
    out
}

/// The detached weight `name` of the graph being parsed ([`while_parsing`]), if it is one.
pub fn get(name: &str) -> Option<DetachedWeight> {
    PARSING.with(|t| t.borrow().get(name).copied())
}
