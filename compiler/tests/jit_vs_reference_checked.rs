//! The JIT-vs-reference cases again, compiled bounds-checked: every load and
//! store of the generated loops is compared with its buffer's extent, and a
//! run may not report an access outside (`common::run`).

#[path = "jit_vs_reference.rs"]
mod cases;
