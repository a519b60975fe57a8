//! Where a training run starts: fresh, from a checkpoint's parameters
//! (`load`), or exactly where an earlier run stopped (`resume`).
//!
//! A step depends on the parameters and buffers (batch norm's running
//! statistics), the optimizer state (momentum's velocity, Adam's moments), the
//! step count t (the schedule's factor, Adam's bias corrections 1 − βᵗ, the
//! dropout seed) and the epoch (the shuffled order, augmentation and masking
//! are functions of the split's seed, the epoch and the row). Everything else
//! comes from the source. A checkpoint therefore holds the tensors plus
//! metadata `epoch` and `step`, and resuming restores all of them: two epochs,
//! `resume`, one epoch trains the same bits as three epochs straight
//! (`tests/examples.rs`).

use crate::checkpoint::{self, LoadedTensor};
use crate::train::{initial_params, Params};
use nnc_compiler::ast::Span;
use nnc_compiler::diagnostic::{excerpt, Diagnostic};
use nnc_compiler::elaborate::train::OptimizerKind;
use nnc_compiler::elaborate::TrainPlan;
use std::collections::HashMap;
use std::path::Path;

/// Metadata keys of a checkpoint: the run's name, the epochs done, the steps
/// done and the optimizer whose state it holds.
const MODEL: &str = "model";
const EPOCH: &str = "epoch";
const STEP: &str = "step";
const OPTIMIZER: &str = "optimizer";

/// Everything a training run starts from.
pub struct Start {
    pub params: Params,
    /// Optimizer state by input name (`opt.m.l1.W`); empty: all zeros.
    pub state: Vec<(String, Vec<f32>)>,
    /// Epochs and steps already done.
    pub epoch: usize,
    pub step: usize,
}

/// The start the plan asks for: `resume`, `load`, or fresh parameters.
pub fn start(plan: &TrainPlan, base_dir: &Path, epochs: usize) -> Result<Start, Diagnostic> {
    let fresh = |params| Start { params, state: Vec::new(), epoch: 0, step: 0 };
    match (&plan.resume, &plan.load) {
        (Some((file, span)), _) => resume(plan, &base_dir.join(file), *span, epochs),
        (None, Some((file, span))) => load_params(plan, &base_dir.join(file), *span).map(fresh),
        (None, None) => initial_params(plan).map(fresh),
    }
}

/// The metadata written with a checkpoint after `epoch` epochs and `step` steps.
pub fn metadata(plan: &TrainPlan, epoch: usize, step: usize) -> HashMap<String, String> {
    [
        (MODEL, plan.name.clone()),
        (EPOCH, epoch.to_string()),
        (STEP, step.to_string()),
        (OPTIMIZER, optimizer_name(plan.optimizer.kind).into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn optimizer_name(kind: OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::Gd => "gd",
        OptimizerKind::Sgd => "sgd",
        OptimizerKind::Momentum => "momentum",
        OptimizerKind::Nesterov => "nesterov",
        OptimizerKind::Adam => "adam",
        OptimizerKind::AdamW => "adamw",
    }
}

fn cannot_load(path: &Path, span: Span, e: checkpoint::CheckpointError) -> Diagnostic {
    Diagnostic::new(format!("cannot load checkpoint {}", path.display())).label(span, e.to_string())
}

/// Parameters and buffers from a checkpoint, each checked against the
/// model's shape and for NaN or infinities.
pub fn load_params(plan: &TrainPlan, path: &Path, span: Span) -> Result<Params, Diagnostic> {
    let loaded = checkpoint::load(path).map_err(|e| cannot_load(path, span, e))?;
    params_of(plan, path, span, &loaded)
}

fn params_of(plan: &TrainPlan, path: &Path, span: Span, loaded: &[LoadedTensor]) -> Result<Params, Diagnostic> {
    let mut tensors = Vec::new();
    for p in plan.params.iter().chain(&plan.buffers) {
        let Some(tensor) = loaded.iter().find(|(n, _, _)| *n == p.path) else {
            let have: Vec<String> = loaded.iter().map(|(n, _, _)| excerpt(n)).collect();
            return Err(Diagnostic::new(format!("checkpoint {} has no parameter `{}`", path.display(), p.path))
                .label(span, "loaded here")
                .note(format!("it holds: {}", have.join(", "))));
        };
        let (_, shape, data) = tensor;
        if *shape != p.shape {
            return Err(Diagnostic::new(format!("checkpoint parameter `{}` has shape {:?}, the model needs {:?}", p.path, shape, p.shape))
                .label(span, "loaded here"));
        }
        checkpoint::check_finite(path, tensor).map_err(|e| cannot_load(path, span, e))?;
        tensors.push((p.path.clone(), p.shape.clone(), data.clone()));
    }
    Ok(Params { tensors })
}

/// The run a checkpoint was written by, continued: its parameters, optimizer
/// state, epoch and step.
fn resume(plan: &TrainPlan, path: &Path, span: Span, epochs: usize) -> Result<Start, Diagnostic> {
    let (loaded, meta) = checkpoint::load_with_metadata(path).map_err(|e| cannot_load(path, span, e))?;
    let params = params_of(plan, path, span, &loaded)?;
    let not_resumable = |what: String| {
        Diagnostic::new(format!("cannot resume from checkpoint {}", path.display()))
            .label(span, what)
            .note("help: `load = \"...\"` starts a new run from its parameters, with fresh optimizer state, at epoch 1")
    };
    let count = |key: &str| meta.get(key).and_then(|v| v.parse::<usize>().ok());
    let (Some(epoch), Some(step)) = (count(EPOCH), count(STEP)) else {
        return Err(not_resumable("it does not say which epoch and step it was written at (an older nnc wrote it)".into()));
    };
    let wanted = optimizer_name(plan.optimizer.kind);
    match meta.get(OPTIMIZER) {
        Some(written) if written == wanted => {}
        written => {
            let by = written.map_or("an unknown optimizer".to_string(), |w| format!("`{w}`"));
            return Err(not_resumable(format!("it holds the state of {by}, this run uses `{wanted}`")));
        }
    }
    if epoch >= epochs {
        return Err(Diagnostic::new(format!("checkpoint {} is at epoch {epoch} of {epochs}: nothing is left to train", path.display()))
            .label(span, "resumed here")
            .note("`epochs` counts the whole run, the resumed epochs included: raise it to train on"));
    }
    let mut state = Vec::new();
    for (name, shape) in &plan.state {
        let Some(tensor) = loaded.iter().find(|(n, _, _)| n == name) else {
            return Err(not_resumable(format!("it has no optimizer state `{name}`")));
        };
        if tensor.1 != *shape {
            return Err(not_resumable(format!("its optimizer state `{name}` has shape {:?}, the model needs {shape:?}", tensor.1)));
        }
        checkpoint::check_finite(path, tensor).map_err(|e| cannot_load(path, span, e))?;
        state.push((name.clone(), tensor.2.clone()));
    }
    Ok(Start { params, state, epoch, step })
}
