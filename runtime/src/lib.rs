//! nnc's runtime: data, compiled-program execution, training loops, checkpoints.
