//! nnc's runtime: data, compiled-program execution, training loops, checkpoints.
pub mod checkpoint;
pub mod data;
pub mod init;
pub mod plot;
pub mod rng;
pub mod schedule;
