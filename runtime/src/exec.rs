//! A compiled graph with its inputs addressed by name.

use nnc_compiler::ast::Span;
use nnc_compiler::codegen::{CodegenError, CompiledGraph};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::ir::{Graph, SizeEnv};
use nnc_compiler::opt;
use std::collections::HashMap;
use std::time::Duration;

pub struct Exec {
    compiled: CompiledGraph,
    inputs: HashMap<String, usize>,
    pub output_names: Vec<String>,
    /// The source span of every node, to place runtime faults.
    spans: Vec<Span>,
}

impl Exec {
    /// Specialize `graph` to `sizes`, simplify it again (constants fold once
    /// sizes are known) and compile it. `updates` names, for some outputs, the
    /// input that takes the output's value after each run.
    /// A tensor too large once `sizes` are substituted is an error at its
    /// node, before any buffer is planned.
    pub fn compile(graph: &Graph, sizes: &SizeEnv, updates: &[(usize, String)]) -> Result<Exec, CodegenError> {
        let g = opt::optimize(&graph.specialize(sizes).map_err(CodegenError::TooLarge)?);
        let pairs: Vec<_> = updates.iter().filter_map(|(o, name)| g.input(name).map(|id| (*o, id))).collect();
        let mut compiled = CompiledGraph::compile(&g, &pairs)?;
        // Like XLA on CPUs: subnormals flush to zero. Late in training, tiny
        // gradients and Adam moments otherwise hit the processor's slow path
        // (W1 ran 15-20 % slower over 100 epochs than over 30).
        compiled.set_flush_subnormals(true);
        let inputs = compiled.input_names().into_iter().enumerate().map(|(i, n)| (n, i)).collect();
        let spans = g.nodes.iter().map(|n| n.span).collect();
        Ok(Exec { compiled, inputs, output_names: g.output_names.clone(), spans })
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.contains_key(name)
    }

    /// Copy `data` into the named input (ignored if the graph does not use it).
    pub fn set(&mut self, name: &str, data: &[f32]) {
        if let Some(&i) = self.inputs.get(name) {
            let buf = self.compiled.input_mut(i);
            let n = buf.len().min(data.len());
            buf[..n].copy_from_slice(&data[..n]);
        }
    }

    /// The named input's buffer, to fill in place.
    pub fn input_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        let i = *self.inputs.get(name)?;
        Some(self.compiled.input_mut(i))
    }

    pub fn input(&self, name: &str) -> Option<&[f32]> {
        let i = *self.inputs.get(name)?;
        Some(self.compiled.input(i))
    }

    /// Run once. An id out of range in an embedding lookup is an error at the
    /// line that does the lookup (the kernel skipped the row: no wild read).
    pub fn run(&mut self) -> Result<(), Diagnostic> {
        self.compiled.run();
        match self.compiled.fault() {
            None => Ok(()),
            Some(f) => {
                let span = self.spans.get(f.site as usize).copied().unwrap_or_default();
                Err(Diagnostic::new(format!("id {} is out of range: this lookup has rows 0..{}", f.index, f.bound))
                    .label(span, format!("looked up id {} here", f.index))
                    .note("ids index the rows of the table: check the data's vocabulary size against the table's first dimension"))
            }
        }
    }

    pub fn output(&self, i: usize) -> &[f32] {
        self.compiled.output(i)
    }

    /// One line per generated kernel, in execution order.
    pub fn kernel_summary(&self) -> &[String] {
        self.compiled.kernel_summary()
    }

    pub fn compile_time(&self) -> Duration {
        self.compiled.compile_time()
    }
}
