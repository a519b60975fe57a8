//! The kernel list the planner produces and the emitter consumes: storages,
//! affine accesses, fused elementwise expressions, library calls.

use crate::ops::{BinaryOp, ReduceKind, UnaryOp};
use std::collections::HashMap;

pub(crate) type StorageId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageKind {
    /// A graph input: persistent, written by the caller.
    Input,
    /// Read after `run` (a graph output): never reused.
    Output,
    /// An intermediate: its arena space may be shared with other temps.
    Temp,
}

#[derive(Clone, Debug)]
pub(crate) struct Storage {
    pub len: usize,
    pub kind: StorageKind,
}

/// An affine function of the kernel's index: `off + Σ idx[i] * strides[i]`. With a
/// storage it is an element offset into that storage; without one it is the
/// (integer) value itself, which is how `Iota` is expressed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Affine {
    pub storage: Option<StorageId>,
    pub off: i64,
    pub strides: Vec<i64>,
}

/// One node of a fused elementwise expression. Children always have smaller
/// indices than their parents (the list is in topological order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ENode {
    /// The kernel operand with this index: a load, or an iota value.
    Operand(usize),
    /// An `f32` constant, by its bits.
    Const(u32),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
}

/// `out[idx] = expr(idx)` (or `out[idx] = out[idx] ⊕ expr(idx)` with `acc`) for
/// every `idx` in `dims`.
#[derive(Clone, Debug)]
pub(crate) struct MapKernel {
    pub dims: Vec<usize>,
    pub out: Affine,
    pub operands: Vec<Affine>,
    pub nodes: Vec<ENode>,
    pub root: usize,
    pub acc: Option<ReduceKind>,
    /// More outputs of the same loop (no `acc`): node `.1` stored through `.0`.
    /// Several results of one elementwise pass (Adam's new moments and weight)
    /// are written by one loop instead of three.
    pub extra: Vec<(Affine, usize)>,
}

/// A strided matrix operand, batched over leading dims.
#[derive(Clone, Debug)]
pub(crate) struct MatOperand {
    pub storage: StorageId,
    pub off: i64,
    pub batch: Vec<i64>,
    pub rs: i64,
    pub cs: i64,
    /// A gathered operand (an unfolded image read in place): element `(i, j)`
    /// at `off + rows[i] + cols[j]`, with `rows` and `cols` the plan's offset
    /// tables of these indices (`Plan::tables`); `rs` and `cs` are then unused.
    pub gather: Option<[usize; 2]>,
}

/// Rows of contiguous floats at `off + r·row_stride + t·step` in a storage,
/// for the current step `t` of the enclosing `Loop` (`step` 0: the same place
/// every step).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strip {
    pub storage: StorageId,
    pub off: i64,
    pub row_stride: i64,
    pub step: i64,
}

#[derive(Clone, Debug)]
pub(crate) enum Kernel {
    Map(MapKernel),
    /// Map kernels sharing their first axis (`rows` long), run as one loop over
    /// it: row `r` of every kernel, in order, then row `r + 1` (see `rows`).
    Rows {
        rows: usize,
        kernels: Vec<MapKernel>,
    },
    MatMul {
        batch: Vec<usize>,
        m: usize,
        k: usize,
        n: usize,
        a: MatOperand,
        b: MatOperand,
        c: MatOperand,
    },
    Solve {
        n: usize,
        k: usize,
        a: MatOperand,
        b: MatOperand,
        x: MatOperand,
    },
    /// Rows selected by integer ids (`ops::index`), through the `nnc_lookup` helper:
    /// `Gather` copies row `ids[i]` of `src [rows, width]` to row `i` of `dst`;
    /// `ScatterAdd` zeroes `dst [rows, width]` and adds row `i` of `src` to row
    /// `ids[i]`. A bad id is skipped and reported as a fault of node `site`.
    /// Rows of `src` are `src_stride` floats apart (`width` for a gather's table).
    Lookup {
        scatter: bool,
        n: usize,
        rows: usize,
        width: usize,
        ids: (StorageId, i64),
        src: (StorageId, i64),
        src_stride: usize,
        dst: (StorageId, i64),
        site: u32,
    },
    /// `n` ids copied from `ids` to `dst`, through the `nnc_check_ids` helper;
    /// an id outside `0..bound` (where `keep`, if any, is not 0) is reported
    /// as a fault of node `site` (`Op::CheckIndex`).
    Check {
        n: usize,
        bound: usize,
        ids: (StorageId, i64),
        keep: Option<(StorageId, i64)>,
        dst: (StorageId, i64),
        site: u32,
    },
    /// `n` uniform numbers into `out` from the scalar seed at `seed` (`ops::random`).
    Random {
        n: usize,
        out: (StorageId, i64),
        seed: (StorageId, i64),
        stream: u32,
    },
    /// A `Scan`: `body` run `steps` times, with the step `t` counting up from 0
    /// (down from `steps − 1` if `reverse`) for the `StepCopy` kernels in it.
    Loop {
        steps: usize,
        reverse: bool,
        body: Vec<Kernel>,
        /// `Some(rows)`: every body kernel keeps to its own rows of the batch
        /// (`loops::splittable`), so the loop may run on several threads at
        /// once, each for a range of the `rows`.
        split: Option<usize>,
        /// Body buffers that are views of a sequence at the current step
        /// (`loops::steps_in_place`).
        views: Vec<super::loops::StepView>,
    },
    /// `rows × width` floats from `src` to `dst` at the current step (only inside a `Loop`).
    StepCopy {
        rows: usize,
        width: usize,
        src: Strip,
        dst: Strip,
    },
}

impl Kernel {
    /// Storages this kernel reads.
    pub fn reads(&self) -> Vec<StorageId> {
        match self {
            Kernel::Map(m) => {
                let mut r: Vec<StorageId> = m.operands.iter().filter_map(|a| a.storage).collect();
                if m.acc.is_some() {
                    r.extend(m.out.storage);
                }
                r
            }
            Kernel::Rows { kernels, .. } => kernels.iter().flat_map(|k| Kernel::Map(k.clone()).reads()).collect(),
            Kernel::MatMul { a, b, .. } | Kernel::Solve { a, b, .. } => vec![a.storage, b.storage],
            Kernel::Random { seed, .. } => vec![seed.0],
            Kernel::Lookup { ids, src, .. } => vec![ids.0, src.0],
            Kernel::Check { ids, keep, .. } => std::iter::once(ids.0).chain(keep.map(|k| k.0)).collect(),
            Kernel::Loop { body, views, .. } => {
                let seqs = views.iter().filter(|v| !v.written).map(|v| v.of);
                body.iter().flat_map(Kernel::reads).chain(seqs).collect()
            }
            Kernel::StepCopy { src, .. } => vec![src.storage],
        }
    }

    /// The storages this kernel writes.
    pub fn writes(&self) -> Vec<StorageId> {
        match self {
            Kernel::Map(m) => m.out.storage.into_iter().chain(m.extra.iter().filter_map(|(a, _)| a.storage)).collect(),
            Kernel::Rows { kernels, .. } => kernels.iter().flat_map(|k| Kernel::Map(k.clone()).writes()).collect(),
            Kernel::MatMul { c, .. } => vec![c.storage],
            Kernel::Solve { x, .. } => vec![x.storage],
            Kernel::Random { out, .. } => vec![out.0],
            Kernel::Lookup { dst, .. } | Kernel::Check { dst, .. } => vec![dst.0],
            Kernel::Loop { body, views, .. } => {
                let seqs = views.iter().filter(|v| v.written).map(|v| v.of);
                body.iter().flat_map(Kernel::writes).chain(seqs).collect()
            }
            Kernel::StepCopy { dst, .. } => vec![dst.storage],
        }
    }

    pub fn rename(&mut self, from: StorageId, to: StorageId) {
        let fix = |s: &mut StorageId| {
            if *s == from {
                *s = to;
            }
        };
        match self {
            Kernel::Map(m) => {
                let extra = m.extra.iter_mut().map(|(a, _)| a);
                for a in m.operands.iter_mut().chain(std::iter::once(&mut m.out)).chain(extra) {
                    if let Some(s) = a.storage.as_mut() {
                        fix(s);
                    }
                }
            }
            Kernel::Rows { kernels, .. } => {
                for k in kernels.iter_mut() {
                    let mut one = Kernel::Map(std::mem::replace(k, empty_map()));
                    one.rename(from, to);
                    if let Kernel::Map(m) = one {
                        *k = m;
                    }
                }
            }
            Kernel::MatMul { a, b, c, .. } => [a, b, c].into_iter().for_each(|o| fix(&mut o.storage)),
            Kernel::Solve { a, b, x, .. } => [a, b, x].into_iter().for_each(|o| fix(&mut o.storage)),
            Kernel::Random { out, seed, .. } => [out, seed].into_iter().for_each(|o| fix(&mut o.0)),
            Kernel::Lookup { ids, src, dst, .. } => [ids, src, dst].into_iter().for_each(|o| fix(&mut o.0)),
            Kernel::Check { ids, keep, dst, .. } => [Some(ids), keep.as_mut(), Some(dst)].into_iter().flatten().for_each(|o| fix(&mut o.0)),
            Kernel::Loop { body, views, .. } => {
                body.iter_mut().for_each(|k| k.rename(from, to));
                views.iter_mut().for_each(|v| [&mut v.storage, &mut v.of].into_iter().for_each(fix));
            }
            Kernel::StepCopy { src, dst, .. } => [src, dst].into_iter().for_each(|o| fix(&mut o.storage)),
        }
    }

    /// True if this kernel only ever reads `s` at the element it writes to
    /// `src` (an in-place elementwise update once `src` becomes `s`).
    pub fn reads_in_place(&self, s: StorageId, src: StorageId) -> bool {
        match self {
            Kernel::Map(m) => {
                let outs: Vec<&Affine> =
                    std::iter::once(&m.out).chain(m.extra.iter().map(|(a, _)| a)).filter(|a| a.storage == Some(src)).collect();
                m.acc.is_none()
                    && outs.len() == 1
                    && m.operands
                        .iter()
                        .filter(|a| a.storage == Some(s))
                        .all(|a| outs.iter().all(|o| a.off == o.off && a.strides == o.strides))
            }
            Kernel::Rows { .. }
            | Kernel::MatMul { .. }
            | Kernel::Solve { .. }
            | Kernel::Random { .. }
            | Kernel::Lookup { .. }
            | Kernel::Check { .. }
            | Kernel::Loop { .. }
            | Kernel::StepCopy { .. } => !self.reads().contains(&s),
        }
    }
}

fn empty_map() -> MapKernel {
    let out = Affine { storage: None, off: 0, strides: Vec::new() };
    MapKernel { dims: Vec::new(), out, operands: Vec::new(), nodes: Vec::new(), root: 0, acc: None, extra: Vec::new() }
}

pub(crate) fn contiguous_strides(dims: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; dims.len()];
    let mut acc = 1i64;
    for (slot, &d) in s.iter_mut().zip(dims).rev() {
        *slot = acc;
        acc *= d as i64;
    }
    s
}

/// Builds one fused expression, sharing identical operands and subexpressions.
pub(crate) struct ExprBuilder {
    /// Rank of the kernel's index space.
    pub rank: usize,
    operands: Vec<Affine>,
    nodes: Vec<ENode>,
    memo: HashMap<ENode, usize>,
    /// The kernel's index space when extra outputs may be added (plain maps).
    pub tee_dims: Option<Vec<usize>>,
    /// Extra outputs: graph node index, where, and the expression node.
    pub tees: Vec<(usize, Affine, usize)>,
}

impl ExprBuilder {
    pub fn new(rank: usize) -> ExprBuilder {
        ExprBuilder { rank, operands: Vec::new(), nodes: Vec::new(), memo: HashMap::new(), tee_dims: None, tees: Vec::new() }
    }

    pub fn node(&mut self, n: ENode) -> usize {
        let n = self.folded(n);
        if let Some(&i) = self.memo.get(&n) {
            return i;
        }
        self.nodes.push(n);
        self.memo.insert(n, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    /// An op on constants as the constant it is (in float64, as the reference
    /// interpreter computes it): derivative rules build exponents such as
    /// `y − 1 + (y = 0)` that must reach `math::pow_const` as one constant.
    fn folded(&self, n: ENode) -> ENode {
        let constant = |i: usize| match self.nodes.get(i) {
            Some(ENode::Const(bits)) => Some(f64::from(f32::from_bits(*bits))),
            _ => None,
        };
        let value = match n {
            ENode::Unary(u, a) => constant(a).map(|x| u.apply(x)),
            ENode::Binary(op, a, c) => constant(a).zip(constant(c)).map(|(x, y)| op.apply(x, y)),
            ENode::Operand(_) | ENode::Const(_) => None,
        };
        value.map_or(n, |v| ENode::Const((v as f32).to_bits()))
    }

    pub fn operand(&mut self, a: Affine) -> usize {
        let i = match self.operands.iter().position(|o| *o == a) {
            Some(i) => i,
            None => {
                self.operands.push(a);
                self.operands.len() - 1
            }
        };
        self.node(ENode::Operand(i))
    }

    pub fn constant(&mut self, c: f32) -> usize {
        self.node(ENode::Const(c.to_bits()))
    }

    pub fn finish(self, dims: Vec<usize>, out: Affine, root: usize, acc: Option<ReduceKind>) -> Kernel {
        let extra = self.tees.into_iter().map(|(_, a, n)| (a, n)).collect();
        Kernel::Map(MapKernel { dims, out, operands: self.operands, nodes: self.nodes, root, acc, extra })
    }
}

pub(crate) fn copy_kernel(src: StorageId, dst: StorageId, len: usize) -> Kernel {
    let mut eb = ExprBuilder::new(1);
    let root = eb.operand(Affine { storage: Some(src), off: 0, strides: vec![1] });
    eb.finish(vec![len], Affine { storage: Some(dst), off: 0, strides: vec![1] }, root, None)
}
