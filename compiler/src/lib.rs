//! nnc's compiler: source text in, checked IR, gradients and native code out.
//!
//! The stages, in the order `compile` runs them:
//! `syntax` (pest → AST) → `elaborate` (names, modules, shapes → IR) →
//! `autodiff` (IR → IR) → `opt` → `codegen` (Cranelift). `interp` is the
//! float64 reference interpreter every compiled function is tested against.
//! The library does no file or terminal IO: diagnostics are values, rendered
//! to text by `diagnostic`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

pub mod ast;
pub mod autodiff;
pub mod builder;
pub mod codegen;
pub mod diagnostic;
pub mod elaborate;
pub mod incremental;
pub mod info;
pub mod interp;
pub mod ir;
pub mod ops;
pub mod opt;
pub mod size;
pub mod syntax;
