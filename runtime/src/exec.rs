//! A compiled graph with its inputs addressed by name.

use nnc_compiler::ast::Span;
use nnc_compiler::codegen::{BoundsFault, CodegenError, CompileOptions, CompiledGraph};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::ir::{Graph, SizeEnv};
use nnc_compiler::ops::{EvalError, Op};
use nnc_compiler::opt;
use std::collections::HashMap;
use std::time::Duration;

pub struct Exec {
    compiled: CompiledGraph,
    inputs: HashMap<String, usize>,
    pub output_names: Vec<String>,
    /// The source span of every node and what its ids select, to place and
    /// word runtime faults.
    sites: Vec<(Span, Selects)>,
}

/// What the ids an op takes select: rows of a table (`embedding`), or
/// classes (the labels of `one_hot`, `cross_entropy`, `gather`, `accuracy`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selects {
    Rows,
    Classes,
}

impl Selects {
    fn of(op: &Op) -> Selects {
        if matches!(op, Op::CheckIndex { .. }) {
            Selects::Classes
        } else {
            Selects::Rows
        }
    }
}

/// The error for an id outside `0..bound` given to the op at `span`: one
/// wording whether the compiled step, the reference interpreter or a metric
/// found it.
pub fn index_fault(selects: Selects, index: f64, bound: usize, span: Span) -> Diagnostic {
    match selects {
        Selects::Rows => Diagnostic::new(format!("id {index} is out of range: this lookup has rows 0..{bound}"))
            .label(span, format!("looked up id {index} here"))
            .note("ids index the rows of the table: check the data's vocabulary size against the table's first dimension"),
        Selects::Classes => Diagnostic::new(format!("label {index} is not a class: the classes here are 0..{bound}"))
            .label(span, format!("given label {index} here"))
            .note(format!(
                "class labels are whole numbers from 0 to {}: check the labels against the number of classes",
                bound.saturating_sub(1)
            )),
    }
}

/// The reference interpreter's error `err` evaluating `graph` as a
/// diagnostic: an id out of range as `Exec::run` reports it, a tensor too
/// large as the compiled step does, anything else as "could not evaluate"
/// at `span`.
pub fn eval_error(graph: &Graph, err: &EvalError, span: Span) -> Diagnostic {
    let could_not = || Diagnostic::new(format!("could not evaluate: {err}")).label(span, "here");
    match err {
        EvalError::IndexOutOfRange { site: Some(site), index, bound } => match graph.nodes.get(site.index()) {
            Some(node) => index_fault(Selects::of(&node.op), *index, *bound, node.span),
            None => could_not(),
        },
        EvalError::TooLarge(at) => at.to_diagnostic(),
        EvalError::OutOfMemory { span, error } => error.to_diagnostic(*span),
        EvalError::IndexOutOfRange { site: None, .. }
        | EvalError::MissingInput(_)
        | EvalError::Symbolic(_)
        | EvalError::Singular
        | EvalError::InputShape { .. } => could_not(),
    }
}

impl Exec {
    /// Specialize `graph` to `sizes`, simplify it again (constants fold once
    /// sizes are known) and compile it. `updates` names, for some outputs, the
    /// input that takes the output's value after each run.
    /// A tensor too large once `sizes` are substituted is an error at its
    /// node, before any buffer is planned.
    pub fn compile(graph: &Graph, sizes: &SizeEnv, updates: &[(usize, String)], options: CompileOptions) -> Result<Exec, CodegenError> {
        let g = opt::optimize(&graph.specialize(sizes).map_err(CodegenError::TooLarge)?);
        let pairs: Vec<_> = updates.iter().filter_map(|(o, name)| g.input(name).map(|id| (*o, id))).collect();
        let mut compiled = CompiledGraph::compile_with(&g, &pairs, options)?;
        // Like XLA on CPUs: subnormals flush to zero. Late in training, tiny
        // gradients and Adam moments otherwise hit the processor's slow path
        // (W1 ran 15-20 % slower over 100 epochs than over 30).
        compiled.set_flush_subnormals(true);
        let inputs = compiled.input_names().into_iter().enumerate().map(|(i, n)| (n, i)).collect();
        let sites = g.nodes.iter().map(|n| (n.span, Selects::of(&n.op))).collect();
        Ok(Exec { compiled, inputs, output_names: g.output_names.clone(), sites })
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

    /// Run once. An id out of range (an embedding lookup's, or a class
    /// label) is an error at the line that uses it (the kernel skipped the
    /// row: no wild read).
    pub fn run(&mut self) -> Result<(), Diagnostic> {
        self.compiled.run();
        if let Some(b) = self.compiled.bounds_fault() {
            return Err(self.bounds_error(b));
        }
        match self.compiled.fault() {
            None => Ok(()),
            Some(f) => {
                let (span, selects) = self.sites.get(f.site as usize).copied().unwrap_or((Span::default(), Selects::Rows));
                Err(index_fault(selects, f64::from(f.index), f.bound, span))
            }
        }
    }

    /// A bounds-checked step's access outside its buffer (a compiler bug) as
    /// an error at the node whose buffer it is.
    fn bounds_error(&self, b: BoundsFault) -> Diagnostic {
        let kernel = self.compiled.kernel_summary().get(b.kernel).cloned().unwrap_or_default();
        let span = b.node.and_then(|n| self.sites.get(n.index())).map_or(Span::default(), |s| s.0);
        Diagnostic::new(format!(
            "internal error: the compiled step reached element {} of a buffer of {} (kernel {}: {kernel})",
            b.offset, b.len, b.kernel
        ))
        .label(span, "the buffer of this value")
        .note("the bounds-checked build stopped the access before it was made; please report this program")
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
