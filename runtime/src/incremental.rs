//! Incremental decoding for `nnc sample`: one position per run of a step graph
//! (`nnc_compiler::incremental`) that keeps earlier positions' keys and values,
//! or a recurrence's state, in caches, instead of running the whole window for
//! every new token.
//!
//! The caches hold the positions of `done`, a prefix of the sequences asked
//! about. A new sequence that shares only part of that prefix (beam search
//! moving between hypotheses) goes back to the shared part: key/value rows
//! past it are simply overwritten later (causal masking never reads them
//! before), and recurrent states are restored from the copy kept after each
//! position.

use crate::exec::Exec;
use nnc_compiler::codegen::CompileOptions;
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::incremental::{step_graph, Cache, CacheKind, POSITION};
use nnc_compiler::ir::{Graph, SizeEnv};

pub struct Incremental {
    exec: Exec,
    caches: Vec<Cache>,
    /// The tokens whose positions are in the caches, in order.
    done: Vec<u32>,
    /// The recurrent states (`CacheKind::State` caches, in order) after each position of `done`.
    states: Vec<Vec<Vec<f32>>>,
    context: usize,
}

impl Incremental {
    /// The step graph of `forward` (ids input `x: [B, context]`), compiled for
    /// one sequence, or why the model cannot be run one position at a time.
    pub fn new(forward: &Graph, context: usize) -> Result<Incremental, String> {
        let sizes: SizeEnv = [("B".to_string(), 1)].into_iter().collect();
        let one = forward.specialize(&sizes).map_err(|e| e.to_diagnostic().title)?;
        let step = step_graph(&one, "x", context)?;
        let updates: Vec<(usize, String)> = step.caches.iter().map(|c| (c.output, c.input.clone())).collect();
        let exec = Exec::compile(&step.graph, &SizeEnv::new(), &updates, CompileOptions::default()).map_err(|e| e.to_string())?;
        Ok(Incremental { exec, caches: step.caches, done: Vec::new(), states: Vec::new(), context })
    }

    /// Longest sequence this can score: the window the model was trained on.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Give the step graph the model's parameters (by input name).
    pub fn set(&mut self, name: &str, data: &[f32]) {
        self.exec.set(name, data);
    }

    /// Next-token logits after `ids` (at most `context` of them, at least one).
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<f32>, Diagnostic> {
        // Keep the shared prefix, but always run the last position (its logits are the answer).
        let shared = self.done.iter().zip(ids).take_while(|(a, b)| a == b).count().min(ids.len().saturating_sub(1));
        let went_back = shared < self.done.len();
        self.done.truncate(shared);
        self.states.truncate(shared);
        // Going back: the states after the shared prefix (the key/value rows need nothing).
        if let Some(saved) = self.states.last().filter(|_| went_back).cloned() {
            let names: Vec<String> = self.state_caches().map(|c| c.input.clone()).collect();
            for (name, v) in names.iter().zip(&saved) {
                self.exec.set(name, v);
            }
        }
        for (p, &id) in ids.iter().enumerate().skip(shared) {
            self.exec.set("x", &[id as f32]);
            self.exec.set(POSITION, &[p as f32]);
            self.exec.run()?;
            self.done.push(id);
            let saved: Vec<Vec<f32>> =
                self.state_caches().map(|c| self.exec.input(&c.input).map(<[f32]>::to_vec).unwrap_or_default()).collect();
            self.states.push(saved);
        }
        Ok(self.exec.output(0).to_vec())
    }

    fn state_caches(&self) -> impl Iterator<Item = &Cache> {
        self.caches.iter().filter(|c| c.kind == CacheKind::State)
    }
}
