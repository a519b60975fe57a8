//! nnc's runtime: data, compiled-program execution, training loops, checkpoints.
//!
//! `program` runs a whole file item by item; `train` is the training loop
//! around the compiled step; `check` is `nnc check`'s gradient check.

pub mod augment;
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod dataset;
pub mod decode;
pub mod exec;
pub mod idx;
pub mod incremental;
pub mod init;
pub mod masking;
pub mod outputs;
pub mod plot;
pub mod program;
pub mod resume;
pub mod rng;
pub mod sample;
pub mod schedule;
pub mod tasks;
pub mod text;
pub mod train;
