//! Planning: which nodes get a buffer, which are fused into their consumers,
//! and the list of kernels (loop nests and library calls) in execution order.
//!
//! Every node gets one of five modes. `Inline` nodes (cheap sources, index
//! maps such as broadcast/transpose/slice, and elementwise math with a single
//! non-expanding consumer) have no buffer: consumers re-express them through an
//! affine index map, so a chain of elementwise ops becomes one loop. Every other
//! live node either owns a contiguous buffer (`Kernel`, `Buffer` for inputs) or
//! is a contiguous view of one (`View`, for reshape).

use super::kernel::{
    contiguous_strides, copy_kernel, Affine, ENode, ExprBuilder, Kernel, MatOperand, Storage, StorageId, StorageKind, Strip,
};
use super::{updates, CodegenError};
use crate::ir::{Graph, Op, ValueId};
use crate::ops::{BinaryOp, ReduceKind, Window};
use crate::size;

/// Matmuls with at most this many multiply-adds per matrix (about 8³), or with one or two
/// rows or columns (matrix-vector products), run as a fused loop: the library's packing
/// costs more there (measured: 1×784 @ 784×128 takes 11 µs fused vs 41 µs in SGEMM;
/// from 16³ up SGEMM wins).
const SMALL_MATMUL: usize = 512;

/// Longest chain of elementwise ops on a biased product that its readers
/// recompute rather than read from a buffer (`Planner::recomputed`): a GELU
/// written with erf, `Φ = ½(1 + erf(x/√2))`, is four (scale, erf, shift,
/// scale).
const RECOMPUTE_DEPTH: usize = 4;

/// Everything codegen needs: storages, kernels in order, and where inputs and
/// outputs live.
pub(crate) struct Plan {
    pub storages: Vec<Storage>,
    pub kernels: Vec<Kernel>,
    /// Graph inputs in order: name and storage.
    pub inputs: Vec<(String, StorageId)>,
    /// Graph outputs in order: storage and element count.
    pub outputs: Vec<(StorageId, usize)>,
    /// f64 scratch elements needed by `Solve`.
    pub scratch: usize,
    /// Offset tables of gathered matrix operands (`MatOperand::gather`).
    pub tables: Vec<Vec<i32>>,
    /// The node whose value each storage holds (`None`: a scan body's buffer).
    pub owners: Vec<Option<ValueId>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Dead,
    Buffer,
    View,
    Inline,
    Kernel,
    /// Elementwise, read by fused consumers and also a graph output: computed
    /// inside the first consumer loop that covers it exactly, which also stores
    /// it (so Adam's moments and weight update are one pass).
    Tee,
}

/// What a consumer needs from an operand.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Need {
    /// Read element by element from a fused loop; `expanding` if elements are
    /// read more than once (through a broadcast).
    Fuse { expanding: bool },
    /// A strided view of a buffer (library calls).
    Strided,
    /// The B operand of a product: a strided view, or an unfolded image read
    /// in place through offset tables (`gathered`), so the im2col matrix of a
    /// convolution is never written.
    GatherB,
    /// A contiguous buffer (reshape).
    Contig,
    /// A graph output (a contiguous buffer after the run).
    Output,
}

/// Where a node's value lives: `storage[off + Σ idx[j] * strides[j]]`.
#[derive(Clone, Debug)]
struct Layout {
    storage: StorageId,
    off: i64,
    strides: Vec<i64>,
}

/// How a node's index along one axis depends on the kernel's index:
/// `off + Σ coef · idx[src]` over at most two `(src, coef)` terms (a fused
/// `Unfold` reads input row `p·S + i·D`: output position and window offset);
/// a term with coefficient 0 is unused.
#[derive(Clone, Copy, Debug)]
struct AxisRef {
    terms: [(usize, i64); 2],
    off: i64,
}

impl AxisRef {
    const NONE: AxisRef = AxisRef { terms: [(0, 0), (0, 0)], off: 0 };

    fn axis(i: usize) -> AxisRef {
        AxisRef { terms: [(i, 1), (0, 0)], off: 0 }
    }

    /// True if this is exactly kernel axis `i`.
    fn is_axis(&self, i: usize) -> bool {
        self.off == 0 && self.terms[0] == (i, 1) && self.terms[1].1 == 0
    }

    fn scaled(self, c: i64) -> AxisRef {
        AxisRef { terms: self.terms.map(|(k, a)| (k, a * c)), off: self.off * c }
    }

    /// `self + other`, or `None` if that needs more than two terms.
    fn plus(self, other: AxisRef) -> Option<AxisRef> {
        let mut terms = self.terms;
        for (k, c) in other.terms.into_iter().filter(|t| t.1 != 0) {
            if let Some(t) = terms.iter_mut().find(|t| t.1 != 0 && t.0 == k) {
                t.1 += c;
            } else {
                *terms.iter_mut().find(|t| t.1 == 0)? = (k, c);
            }
        }
        Some(AxisRef { terms, off: self.off + other.off })
    }

    /// Add this axis' contribution, at stride `s`, to kernel strides.
    fn add_strides(&self, s: i64, strides: &mut [i64]) {
        for &(k, c) in self.terms.iter().filter(|t| t.1 != 0) {
            if let Some(slot) = strides.get_mut(k) {
                *slot += s * c;
            }
        }
    }
}

/// A layout of rank ≥ 2 as a matrix operand: its last two axes are the rows and
/// columns, the others the batch.
fn matrix_of(l: &Layout) -> MatOperand {
    let r = l.strides.len();
    MatOperand {
        storage: l.storage,
        off: l.off,
        batch: l.strides[..r - 2].to_vec(),
        rs: l.strides[r - 2],
        cs: l.strides[r - 1],
        gather: None,
    }
}

fn identity(rank: usize) -> Vec<AxisRef> {
    (0..rank).map(AxisRef::axis).collect()
}

struct Planner<'g> {
    g: &'g Graph,
    dims: Vec<Vec<usize>>,
    mode: Vec<Mode>,
    layouts: Vec<Option<Layout>>,
    storages: Vec<Storage>,
    /// The node whose value each storage holds (`Plan::owners`).
    owners: Vec<Option<ValueId>>,
    kernels: Vec<Kernel>,
    scratch: usize,
    /// The buffer of each `Tee` node, which has a layout only once stored.
    tee: Vec<Option<StorageId>>,
    tables: Vec<Vec<i32>>,
}

/// Output elements (of the innermost kept axes) an accumulating loop may
/// sweep once per summed index: 1024 floats (4 KiB) stay in L1.
const ACC_TILE: usize = 1024;

/// Loop order for an accumulating kernel: the accumulated axes `axes` move
/// just outside the innermost kept axes whose output block fits in `ACC_TILE`
/// elements (at least the innermost one), so that block is read, updated and
/// written while it sits in L1 (reducing `[KH, KW, N, C, OH, OW]` over the
/// window in that order would sweep the whole output once per window element).
/// Keeping a whole `OH×OW` plane inside, rather than one row, also means that
/// consecutive iterations update different rows: with a row inside, a col2im
/// (`Fold`) would reload a row shifted by one element right after storing it,
/// which defeats store-to-load forwarding.
///
/// A reduction (`carried`: the output does not move along `axes`) instead
/// puts them where the emitter keeps the partial sums in registers
/// (`emit::CARRY_MAX`): just inside a short innermost kept axis (a window sum
/// `[N, C, OH, KH, KW, OW]`), or, when the innermost axis is summed, all of
/// them innermost (one value per kept index, summed in registers), the kept
/// axes ordered by how far they move the operands.
fn accumulate_near_inner(k: Kernel, axes: &[usize], carried: bool) -> Kernel {
    let Kernel::Map(mut m) = k else { return k };
    let r = m.dims.len();
    if r < 2 || axes.iter().any(|&a| a >= r) {
        return Kernel::Map(m);
    }
    let mut kept: Vec<usize> = (0..r).filter(|a| !axes.contains(a)).collect();
    // How many of the innermost kept axes stay inside the summed ones.
    let mut inside = 1;
    if axes.contains(&(r - 1)) {
        if !carried {
            return Kernel::Map(m);
        }
        inside = 0;
        // Each kept index sweeps the operands over all summed axes: the kept
        // axes that move the operands least go innermost, so consecutive
        // sweeps reread data still in cache (a depthwise weight gradient,
        // `[C, KH, KW]` from `[N, C, OH, OW]` windows: all 49 window offsets
        // of a channel while its planes sit in L2, not every channel per offset).
        let reach = |a: usize| m.operands.iter().map(|o| o.strides.get(a).map_or(0, |s| s.abs())).max().unwrap_or(0);
        kept.sort_by_key(|&a| std::cmp::Reverse(reach(a)));
    } else if !carried || m.dims[r - 1] > super::emit::CARRY_MAX {
        let mut block = m.dims[r - 1];
        while inside < kept.len() {
            let next = m.dims[kept[kept.len() - 1 - inside]];
            if block * next > ACC_TILE {
                break;
            }
            block *= next;
            inside += 1;
        }
    }
    let mut perm: Vec<usize> = kept[..kept.len() - inside].to_vec();
    perm.extend(axes.iter().copied());
    perm.extend_from_slice(&kept[kept.len() - inside..]);
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Kernel::Map(m);
    }
    let apply = |v: &[i64]| perm.iter().map(|&p| v.get(p).copied().unwrap_or(0)).collect::<Vec<_>>();
    m.dims = perm.iter().map(|&p| m.dims[p]).collect();
    m.out.strides = apply(&m.out.strides);
    for a in m.operands.iter_mut().chain(m.extra.iter_mut().map(|(a, _)| a)) {
        a.strides = apply(&a.strides);
    }
    Kernel::Map(m)
}

/// True if `perm` swaps the last two axes and keeps the others.
fn swaps_last_two(perm: &[usize]) -> bool {
    let r = perm.len();
    r >= 2 && perm[r - 2] == r - 1 && perm[r - 1] == r - 2 && perm[..r - 2].iter().enumerate().all(|(i, &p)| i == p)
}

/// For a reshape of `from` into `to` that only inserts or drops size-1 axes:
/// each `to` axis's `from` axis (`None` for an inserted one). Such a reshape
/// is a view of any strided layout (an attention head sliced out of a fused
/// `qkv` product is read in place, not copied to drop the slice's axis).
fn unit_axes_map(from: &[usize], to: &[usize]) -> Option<Vec<Option<usize>>> {
    let mut kept = from.iter().enumerate().filter(|(_, &d)| d != 1).map(|(a, _)| a);
    let map: Vec<Option<usize>> =
        to.iter().map(|&d| if d == 1 { Some(None) } else { kept.next().filter(|&a| from[a] == d).map(Some) }).collect::<Option<_>>()?;
    kept.next().is_none().then_some(map)
}

/// For a reshape of `from` into `to` that only groups consecutive axes: the
/// `from` axes of each `to` axis (size-1 axes go with a neighbour); `None`
/// if the reshape splits an axis.
fn group_axes(from: &[usize], to: &[usize]) -> Option<Vec<Vec<usize>>> {
    let mut groups = vec![Vec::new(); to.len()];
    let mut i = 0;
    for (g, &t) in groups.iter_mut().zip(to) {
        let mut prod = 1;
        while prod < t {
            let &d = from.get(i)?;
            prod *= d;
            g.push(i);
            i += 1;
        }
        if prod != t {
            return None;
        }
    }
    // Trailing size-1 axes join the last group.
    while i < from.len() {
        if from[i] != 1 {
            return None;
        }
        groups.last_mut()?.push(i);
        i += 1;
    }
    Some(groups)
}

/// A kernel planned for a scan body, moved into the enclosing plan: its offset
/// tables follow the plan's `tables` others, and a bad id it meets is reported
/// as a fault of the scan node `site`.
fn relocate(k: &mut Kernel, tables: usize, site: u32) {
    match k {
        Kernel::MatMul { a, b, c, .. } => {
            for g in [a, b, c].into_iter().filter_map(|o| o.gather.as_mut()) {
                g[0] += tables;
                g[1] += tables;
            }
        }
        Kernel::Lookup { site: s, .. } | Kernel::Check { site: s, .. } => *s = site,
        Kernel::Loop { body, .. } => body.iter_mut().for_each(|k| relocate(k, tables, site)),
        _ => {}
    }
}

fn malformed(id: ValueId, reason: &str) -> CodegenError {
    CodegenError::Malformed { node: id, reason: reason.to_string() }
}

fn bad_update(output: usize, input: ValueId, reason: &str) -> CodegenError {
    CodegenError::BadUpdate { output, input, reason: reason.to_string() }
}

/// Plan `graph` (all dims known) with the given in-place `updates`.
pub(crate) fn plan(graph: &Graph, updates: &[(usize, ValueId)]) -> Result<Plan, CodegenError> {
    let dims = graph
        .nodes
        .iter()
        .map(|n| n.ty.shape.concrete().ok_or_else(|| CodegenError::Symbolic(n.ty.shape.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut p = Planner {
        g: graph,
        dims,
        mode: vec![Mode::Dead; graph.nodes.len()],
        layouts: vec![None; graph.nodes.len()],
        storages: Vec::new(),
        owners: Vec::new(),
        kernels: Vec::new(),
        scratch: 0,
        tee: vec![None; graph.nodes.len()],
        tables: Vec::new(),
    };
    let dests = p.check_updates(updates)?;
    p.decide_modes()?;

    // Forward: buffers, views and kernels in graph order.
    let mut inputs = Vec::new();
    let mut out_storage: Vec<Option<StorageId>> = vec![None; graph.outputs.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let id = ValueId(i as u32);
        match p.mode[i] {
            Mode::Dead | Mode::Inline => {}
            Mode::Buffer => {
                let s = p.new_storage(i, StorageKind::Input);
                if let Op::Input { name, .. } = &node.op {
                    inputs.push((name.clone(), s));
                }
            }
            Mode::View => {
                let arg = *node.args.first().ok_or_else(|| malformed(id, "reshape without operand"))?;
                let base = p.layout(arg)?.clone();
                let strides = contiguous_strides(&p.dims[i]);
                p.layouts[i] = Some(Layout { storage: base.storage, off: base.off, strides });
            }
            Mode::Kernel => {
                p.new_storage(i, StorageKind::Temp);
                p.lower_op(id)?;
            }
            Mode::Tee => {
                p.new_storage(i, StorageKind::Temp);
                p.tee[i] = p.layouts[i].take().map(|l| l.storage);
            }
        }
        // An output that shows an input's buffer while that input is overwritten
        // by an update gets its own copy, taken here (before any overwrite).
        for (o, &out) in graph.outputs.iter().enumerate() {
            if out != id {
                continue;
            }
            let s = match p.tee[i] {
                Some(s) => s,
                None => p.layout(id)?.storage,
            };
            let overwritten = dests.iter().any(|&(src, v)| {
                p.layouts[v.index()].as_ref().map(|l| l.storage) == Some(s)
                    && graph.outputs.get(src).and_then(|&n| p.layouts[n.index()].as_ref()).map(|l| l.storage) != Some(s)
            });
            out_storage[o] = Some(if overwritten { p.copy_of(id)? } else { s });
        }
    }
    // Tees that no consumer loop stored: a loop of their own.
    for i in 0..graph.nodes.len() {
        if let (Some(s), None) = (p.tee[i], &p.layouts[i]) {
            let layout = Layout { storage: s, off: 0, strides: contiguous_strides(&p.dims[i]) };
            p.lower_map(ValueId(i as u32), &layout)?;
            p.layouts[i] = Some(layout);
        }
    }
    let mut outputs = Vec::with_capacity(graph.outputs.len());
    for (o, s) in out_storage.into_iter().enumerate() {
        let node = graph.outputs.get(o).copied().unwrap_or(ValueId(0));
        let s = s.ok_or_else(|| malformed(node, "output not computed"))?;
        if let Some(st) = p.storages.get_mut(s) {
            if st.kind == StorageKind::Temp {
                st.kind = StorageKind::Output;
            }
        }
        let len = graph.outputs.get(o).map_or(0, |n| p.numel(*n));
        outputs.push((s, len));
    }
    let mut pairs = Vec::with_capacity(updates.len());
    for &(o, v) in updates {
        pairs.push((o, p.layout(v)?.storage));
    }
    updates::apply(&mut p.kernels, &mut p.storages, &pairs, &mut outputs);
    let kernels = super::rows::fuse(p.kernels, &mut p.storages);
    p.owners.resize(p.storages.len(), None);
    Ok(Plan { storages: p.storages, kernels, inputs, outputs, scratch: p.scratch, tables: p.tables, owners: p.owners })
}

impl Planner<'_> {
    /// `id`'s dims (empty for an id outside the graph).
    fn shape(&self, id: ValueId) -> &[usize] {
        self.dims.get(id.index()).map_or(&[], |d| d.as_slice())
    }

    /// `id`'s element count. `compile` checked every node against
    /// `size::MAX_ELEMENTS`; were one larger, the count saturates and the
    /// arena's allocation fails with an error.
    fn numel(&self, id: ValueId) -> usize {
        size::numel(self.shape(id)).unwrap_or(usize::MAX)
    }

    fn new_storage(&mut self, i: usize, kind: StorageKind) -> StorageId {
        let len = size::numel(&self.dims[i]).unwrap_or(usize::MAX);
        self.storages.push(Storage { len, kind });
        self.owners.push(Some(ValueId(i as u32)));
        let s = self.storages.len() - 1;
        self.layouts[i] = Some(Layout { storage: s, off: 0, strides: contiguous_strides(&self.dims[i]) });
        s
    }

    fn layout(&self, id: ValueId) -> Result<&Layout, CodegenError> {
        self.layouts[id.index()].as_ref().ok_or_else(|| malformed(id, "operand has no buffer"))
    }

    fn args(&self, id: ValueId) -> &[ValueId] {
        &self.g.node(id).args
    }

    fn arg(&self, id: ValueId, k: usize) -> Result<ValueId, CodegenError> {
        self.args(id).get(k).copied().ok_or_else(|| malformed(id, "missing operand"))
    }

    /// Validate `updates`; returns them as (output index, input) pairs.
    fn check_updates(&self, updates: &[(usize, ValueId)]) -> Result<Vec<(usize, ValueId)>, CodegenError> {
        let mut seen = Vec::new();
        for &(o, v) in updates {
            let out = *self.g.outputs.get(o).ok_or_else(|| bad_update(o, v, "no such output"))?;
            let node = self.g.nodes.get(v.index()).ok_or_else(|| bad_update(o, v, "no such node"))?;
            if !matches!(node.op, Op::Input { .. }) {
                return Err(bad_update(o, v, "target is not an input"));
            }
            if self.numel(out) != self.numel(v) {
                return Err(bad_update(o, v, "output and input sizes differ"));
            }
            if seen.contains(&v) {
                return Err(bad_update(o, v, "input updated twice"));
            }
            seen.push(v);
        }
        Ok(updates.to_vec())
    }

    /// Reverse pass: collect what each consumer needs and pick every node's mode.
    fn decide_modes(&mut self) -> Result<(), CodegenError> {
        let n = self.g.nodes.len();
        let mut needs: Vec<Vec<Need>> = vec![Vec::new(); n];
        for o in &self.g.outputs {
            needs.get_mut(o.index()).ok_or_else(|| malformed(*o, "output out of range"))?.push(Need::Output);
        }
        for i in (0..n).rev() {
            let node = &self.g.nodes[i];
            let mine = std::mem::take(&mut needs[i]);
            let is_input = matches!(node.op, Op::Input { .. });
            if mine.is_empty() && !is_input {
                continue;
            }
            let hard = mine.iter().any(|k| !matches!(k, Need::Fuse { .. }));
            let contig = mine.iter().any(|k| matches!(k, Need::Contig | Need::Output));
            let expands = matches!(node.op, Op::Broadcast { .. })
                && node.args.first().is_some_and(|a| self.numel(*a) < self.dims[i].iter().product());
            let (mode, pass): (Mode, Vec<Need>) = match &node.op {
                Op::Input { .. } => (Mode::Buffer, Vec::new()),
                Op::Reshape { .. } if !hard && self.constant_chain(ValueId(i as u32)).is_some() => (Mode::Inline, Vec::new()),
                // An unfolded image viewed as a product's B matrix: read in place.
                Op::Reshape { .. }
                    if !mine.is_empty() && mine.iter().all(|k| *k == Need::GatherB) && self.gatherable(ValueId(i as u32)) =>
                {
                    (Mode::Inline, vec![Need::GatherB])
                }
                Op::Reshape { .. } if !contig && self.unit_reshape(ValueId(i as u32)) => {
                    let pass = mine.iter().map(|k| if *k == Need::GatherB { Need::Strided } else { *k }).collect();
                    (Mode::Inline, pass)
                }
                Op::Reshape { .. } => (Mode::View, vec![Need::Contig]),
                Op::Constant(_) | Op::Iota { .. } => (if hard { Mode::Kernel } else { Mode::Inline }, Vec::new()),
                Op::Broadcast { .. } | Op::Transpose { .. } | Op::Slice { .. } | Op::StopGradient => {
                    if contig {
                        (Mode::Kernel, vec![Need::Fuse { expanding: expands }])
                    } else {
                        // Only a transpose of a matrix's last two axes keeps a gathered view.
                        let swap = matches!(&node.op, Op::Transpose { perm } if swaps_last_two(perm));
                        let pass = mine
                            .iter()
                            .map(|k| match k {
                                Need::Fuse { expanding } => Need::Fuse { expanding: *expanding || expands },
                                Need::GatherB if !swap => Need::Strided,
                                other => *other,
                            })
                            .collect();
                        (Mode::Inline, pass)
                    }
                }
                Op::Unary(_) | Op::Binary(_) => {
                    let plain_reads = !mine.is_empty() && mine.iter().all(|k| *k == Need::Fuse { expanding: false });
                    let fuse = matches!(mine.as_slice(), [Need::Fuse { expanding: false }])
                        || (plain_reads
                            && (self.with_small_broadcast(ValueId(i as u32)) || self.recomputed(ValueId(i as u32), RECOMPUTE_DEPTH)));
                    let plain = |k: &Need| matches!(k, Need::Fuse { expanding: false });
                    let tee = mine.iter().all(|k| plain(k) || *k == Need::Output) && mine.iter().any(plain) && mine.contains(&Need::Output);
                    let mode = match (fuse, tee) {
                        (true, _) => Mode::Inline,
                        (false, true) => Mode::Tee,
                        (false, false) => Mode::Kernel,
                    };
                    (mode, vec![Need::Fuse { expanding: false }])
                }
                // A reduction of a constant (the batch size in a mean) is a constant.
                Op::Reduce { .. } if !hard && self.reduced_constant(ValueId(i as u32)).is_some() => (Mode::Inline, Vec::new()),
                Op::Reduce { .. } | Op::Pad { .. } | Op::Concat { .. } => (Mode::Kernel, vec![Need::Fuse { expanding: false }]),
                // A window view read by fused loops (pooling, depthwise
                // convolution) is inlined: its elements are loaded through the
                // window strides, with no im2col copy. A window of a window
                // would need more than two terms per axis, so it is copied.
                Op::Unfold { .. }
                    if mine.iter().all(|k| matches!(k, Need::Fuse { .. } | Need::GatherB))
                        && !self.feeds_unfold(node.args.first().copied()) =>
                {
                    let pass = mine
                        .iter()
                        .map(|k| match k {
                            Need::Fuse { .. } => Need::Fuse { expanding: true },
                            _ => Need::Strided,
                        })
                        .collect();
                    (Mode::Inline, pass)
                }
                Op::MatMul | Op::Solve | Op::Unfold { .. } | Op::RandomUniform { .. } => (Mode::Kernel, vec![Need::Strided]),
                Op::Fold { .. } => (Mode::Kernel, vec![Need::Fuse { expanding: false }]),
                Op::Gather | Op::ScatterAdd { .. } | Op::CheckIndex { .. } | Op::Scan { .. } => (Mode::Kernel, vec![Need::Contig]),
            };
            self.mode[i] = mode;
            // A product's B may be gathered when it runs as a library call.
            let gather_b = matches!(node.op, Op::MatMul) && !self.loop_matmul_size(ValueId(i as u32));
            // A scan reads its sequences a step's rows at a time (`step_rows`),
            // and a scatter its values a row at a time (`rows_of`), so these
            // may be views (the states or gradient columns sliced out of a
            // scan's result).
            let sequences = match &node.op {
                Op::Scan { inputs, .. } => 1..*inputs + 1,
                Op::ScatterAdd { .. } => 1..2,
                _ => 0..0,
            };
            for (ai, a) in node.args.iter().enumerate() {
                let slot = needs.get_mut(a.index()).filter(|_| a.index() < i);
                let slot = slot.ok_or_else(|| malformed(ValueId(i as u32), "operand not before its user"))?;
                if gather_b && ai == 1 {
                    slot.push(Need::GatherB);
                } else if sequences.contains(&ai) {
                    slot.push(Need::Strided);
                } else {
                    slot.extend(pass.iter().copied());
                }
            }
        }
        Ok(())
    }

    /// True if the reshape `id` only inserts or drops size-1 axes (`unit_axes_map`).
    fn unit_reshape(&self, id: ValueId) -> bool {
        self.args(id).first().is_some_and(|&x| unit_axes_map(self.shape(x), self.shape(id)).is_some())
    }

    /// True if `id` is (seen through views) itself a window.
    fn feeds_unfold(&self, id: Option<ValueId>) -> bool {
        let mut at = id;
        while let Some(v) = at {
            let n = self.g.node(v);
            match &n.op {
                Op::Unfold { .. } => return true,
                Op::Transpose { .. } | Op::Broadcast { .. } | Op::Slice { .. } | Op::StopGradient => at = n.args.first().copied(),
                Op::Reshape { .. } if self.unit_reshape(v) => at = n.args.first().copied(),
                _ => return false,
            }
        }
        false
    }

    /// True for `x ⊕ broadcast(v)`, `x` a value that has its own buffer (a
    /// product, an input, a reduction) and `v` small (a bias). Read by several
    /// elementwise loops (an MLP's activation and, in the backward pass, its
    /// derivative), it is recomputed in each rather than stored: each reads
    /// `x` as it would the result, and the pass that would write the result
    /// and the stream that would read it back are saved.
    fn with_small_broadcast(&self, id: ValueId) -> bool {
        let node = self.g.node(id);
        let buffered = |a: ValueId| match &self.g.node(a).op {
            Op::MatMul | Op::Input { .. } | Op::Reduce { .. } | Op::Gather => true,
            Op::Reshape { .. } => self.g.node(a).args.first().is_some_and(|&b| matches!(self.g.node(b).op, Op::MatMul | Op::Input { .. })),
            _ => false,
        };
        let small_broadcast = |a: ValueId| {
            let n = self.g.node(a);
            matches!(n.op, Op::Broadcast { .. })
                && n.args.first().is_some_and(|&v| self.numel(v) <= 4096 && matches!(self.g.node(v).op, Op::Input { .. }))
        };
        match (&node.op, node.args.as_slice()) {
            (Op::Binary(_), &[x, y]) => (buffered(x) && small_broadcast(y)) || (small_broadcast(x) && buffered(y)),
            _ => false,
        }
    }

    /// Whether `id` is an elementwise function, at most `depth` ops deep, of
    /// constants and of values that its readers recompute
    /// (`with_small_broadcast`). A GELU written with erf (the `gelu`
    /// primitive needs none of this): `Φ = ½(1 + erf(x/√2))` of a biased
    /// product is read by the forward pass's `x·Φ` and again by the
    /// derivative; each recomputes it (an `erf` per element) instead of one
    /// writing the whole tensor out and the other reading it back.
    fn recomputed(&self, id: ValueId, depth: usize) -> bool {
        let node = self.g.node(id);
        if depth == 0 || !matches!(node.op, Op::Unary(_) | Op::Binary(_)) {
            return false;
        }
        let mut reads_one = false;
        for &a in &node.args {
            if self.constant_chain(a).is_some() {
                continue;
            }
            if !(self.with_small_broadcast(a) || self.recomputed(a, depth - 1)) {
                return false;
            }
            reads_one = true;
        }
        reads_one
    }

    /// True if the product `id` runs as a fused loop (`loop_matmul`), not SGEMM.
    fn loop_matmul_size(&self, id: ValueId) -> bool {
        let od = self.shape(id);
        let r = od.len();
        let k = self.args(id).first().and_then(|x| self.shape(*x).last().copied()).unwrap_or(0);
        if r < 2 {
            return true;
        }
        let (m, n) = (od[r - 2], od[r - 1]);
        m * k * n <= SMALL_MATMUL || m <= 2 || n <= 2
    }

    /// True if the reshape `id` of an unfolded image can be read as a gathered
    /// matrix: it groups the unfolded axes (`group_axes`), its batch axes move
    /// along at most one unfolded axis each, and every offset fits an `i32`.
    fn gatherable(&self, id: ValueId) -> bool {
        let Some(&u) = self.args(id).first() else { return false };
        if !matches!(self.g.node(u).op, Op::Unfold { .. }) {
            return false;
        }
        let Some(&x) = self.args(u).first() else { return false };
        let Some(groups) = group_axes(self.shape(u), self.shape(id)) else { return false };
        let udims = self.shape(u);
        let r = groups.len();
        r >= 2
            && groups[..r - 2].iter().all(|g| g.iter().filter(|&&a| udims[a] > 1).count() <= 1)
            && self.numel(x) < (1 << 30)
            && self.numel(u) < (1 << 31)
    }

    /// The B operand `id` of a product as a gathered view of an unfolded image
    /// (`Need::GatherB`): `[transpose of the last two axes of] reshape of
    /// unfold` (or the unfold itself), read from the unfold's operand, or from
    /// its buffer if it has one. `None` if `id` is not such a view.
    fn gathered(&mut self, id: ValueId) -> Result<Option<MatOperand>, CodegenError> {
        if self.layouts[id.index()].is_some() {
            return Ok(None);
        }
        let mut at = id;
        let mut swap = false;
        if let Op::Transpose { perm } = &self.g.node(at).op {
            if !swaps_last_two(perm) {
                return Ok(None);
            }
            swap = true;
            at = self.arg(at, 0)?;
            if self.layouts[at.index()].is_some() {
                return Ok(None);
            }
        }
        let u = match &self.g.node(at).op {
            Op::Reshape { .. } => self.arg(at, 0)?,
            Op::Unfold { .. } => at,
            _ => return Ok(None),
        };
        let Op::Unfold { window: w } = &self.g.node(u).op else { return Ok(None) };
        let (storage, off, ustrides) = match &self.layouts[u.index()] {
            Some(l) => (l.storage, l.off, l.strides.clone()),
            None => {
                let l = self.strided(self.arg(u, 0)?)?;
                (l.storage, l.off, Self::window_strides(&l.strides, w))
            }
        };
        let udims = self.shape(u).to_vec();
        let groups = group_axes(&udims, self.shape(at)).ok_or_else(|| malformed(id, "reshape does not group the unfolded axes"))?;
        let r = groups.len();
        if r < 2 {
            return Err(malformed(id, "gathered matrix of rank < 2"));
        }
        let mut batch = Vec::with_capacity(r - 2);
        for g in &groups[..r - 2] {
            let moving: Vec<usize> = g.iter().copied().filter(|&a| udims[a] > 1).collect();
            match moving.as_slice() {
                [] => batch.push(0),
                [a] => batch.push(ustrides[*a]),
                _ => return Err(malformed(id, "batch axis of a gathered matrix spans several unfolded axes")),
            }
        }
        let table = |g: &[usize]| -> Option<Vec<i32>> {
            let mut offs = vec![0i64];
            for &a in g {
                let (d, st) = (udims[a], ustrides[a]);
                offs = offs.iter().flat_map(|&o| (0..d as i64).map(move |i| o + i * st)).collect();
            }
            offs.into_iter().map(|o| i32::try_from(o).ok()).collect()
        };
        let too_far = || malformed(id, "gathered offsets exceed 32 bits");
        let (mut rows, mut cols) = (table(&groups[r - 2]).ok_or_else(too_far)?, table(&groups[r - 1]).ok_or_else(too_far)?);
        if swap {
            std::mem::swap(&mut rows, &mut cols);
        }
        self.tables.push(rows);
        self.tables.push(cols);
        let t = self.tables.len();
        Ok(Some(MatOperand { storage, off, batch, rs: 0, cs: 0, gather: Some([t - 2, t - 1]) }))
    }

    // ---- expressions ------------------------------------------------------------

    /// `id` read through `map` inside a fused kernel.
    fn expr(&self, eb: &mut ExprBuilder, id: ValueId, map: &[AxisRef]) -> Result<usize, CodegenError> {
        match &self.layouts[id.index()] {
            Some(l) => {
                let mut strides = vec![0i64; eb.rank];
                let mut off = l.off;
                for (s, a) in l.strides.iter().zip(map) {
                    off += s * a.off;
                    a.add_strides(*s, &mut strides);
                }
                Ok(eb.operand(Affine { storage: Some(l.storage), off, strides }))
            }
            None => {
                let node = self.expr_op(eb, id, map)?;
                if let Some(st) = self.tee[id.index()] {
                    // Store it here if this loop visits each of its elements once.
                    let exact = eb.tee_dims.as_deref() == Some(self.shape(id))
                        && map.len() == eb.rank
                        && map.iter().enumerate().all(|(i, a)| a.is_axis(i));
                    if exact && !eb.tees.iter().any(|t| t.0 == id.index()) {
                        let at = Affine { storage: Some(st), off: 0, strides: contiguous_strides(self.shape(id)) };
                        eb.tees.push((id.index(), at, node));
                    }
                }
                Ok(node)
            }
        }
    }

    /// The value of a reduction whose operand is a constant broadcast (or
    /// reshaped): `c · count` for a sum, `c` for a max; `None` otherwise.
    fn reduced_constant(&self, id: ValueId) -> Option<f32> {
        let node = self.g.nodes.get(id.index())?;
        let Op::Reduce { kind, .. } = &node.op else { return None };
        let x = *node.args.first()?;
        let c = self.constant_chain(x)?;
        let count = self.numel(x) / self.numel(id).max(1);
        Some(match kind {
            ReduceKind::Sum => (c * count as f64) as f32,
            ReduceKind::Max if count > 0 => c as f32,
            ReduceKind::Max => f32::NEG_INFINITY,
        })
    }

    /// The value of a constant seen through broadcasts, reshapes,
    /// `stop_gradient`s and reductions.
    fn constant_chain(&self, id: ValueId) -> Option<f64> {
        let mut at = id;
        loop {
            let n = self.g.nodes.get(at.index())?;
            match &n.op {
                Op::Constant(c) => return Some(*c),
                Op::Reduce { .. } => return self.reduced_constant(at).map(f64::from),
                Op::Broadcast { .. } | Op::Reshape { .. } | Op::StopGradient => at = *n.args.first()?,
                _ => return None,
            }
        }
    }

    /// `id`'s own op applied to its (fused or loaded) operands.
    fn expr_op(&self, eb: &mut ExprBuilder, id: ValueId, map: &[AxisRef]) -> Result<usize, CodegenError> {
        let node = self.g.node(id);
        let arg = |k: usize| self.arg(id, k);
        match &node.op {
            Op::Constant(c) => Ok(eb.constant(*c as f32)),
            Op::Iota { axis } => {
                let a = map.get(*axis).ok_or_else(|| malformed(id, "iota axis out of range"))?;
                let mut strides = vec![0i64; eb.rank];
                a.add_strides(1, &mut strides);
                Ok(eb.operand(Affine { storage: None, off: a.off, strides }))
            }
            Op::Unary(u) => {
                let x = self.expr(eb, arg(0)?, map)?;
                Ok(eb.node(ENode::Unary(*u, x)))
            }
            Op::Binary(b) => {
                let x = self.expr(eb, arg(0)?, map)?;
                let y = self.expr(eb, arg(1)?, map)?;
                Ok(eb.node(ENode::Binary(*b, x, y)))
            }
            Op::StopGradient => self.expr(eb, arg(0)?, map),
            Op::Broadcast { .. } => {
                let x = arg(0)?;
                let xd = self.shape(x);
                let lead = map.len().checked_sub(xd.len()).ok_or_else(|| malformed(id, "broadcast to lower rank"))?;
                let inner: Vec<AxisRef> = xd.iter().zip(&map[lead..]).map(|(&d, a)| if d == 1 { AxisRef::NONE } else { *a }).collect();
                self.expr(eb, x, &inner)
            }
            Op::Transpose { perm } => {
                let mut inner = vec![AxisRef::NONE; map.len()];
                for (a, &p) in map.iter().zip(perm) {
                    *inner.get_mut(p).ok_or_else(|| malformed(id, "bad permutation"))? = *a;
                }
                self.expr(eb, arg(0)?, &inner)
            }
            Op::Slice { axis, start, .. } => {
                let mut inner = map.to_vec();
                inner.get_mut(*axis).ok_or_else(|| malformed(id, "slice axis out of range"))?.off += *start as i64;
                self.expr(eb, arg(0)?, &inner)
            }
            Op::Unfold { window: w } => {
                // [a.., KH, KW, b.., OH, OW] read from [a.., b.., H, W]: row p·SH + i·DH, column q·SW + j·DW.
                let r = map.len();
                if r < w.lead + 4 {
                    return Err(malformed(id, "unfold of too low a rank"));
                }
                let too_many = || malformed(id, "window of a window cannot be fused");
                let mut inner = map[..w.lead].to_vec();
                inner.extend_from_slice(&map[w.lead + 2..r - 2]);
                let h = map[r - 2].scaled(w.stride[0] as i64).plus(map[w.lead].scaled(w.dilation[0] as i64)).ok_or_else(too_many)?;
                let v = map[r - 1].scaled(w.stride[1] as i64).plus(map[w.lead + 1].scaled(w.dilation[1] as i64)).ok_or_else(too_many)?;
                inner.extend([h, v]);
                self.expr(eb, arg(0)?, &inner)
            }
            Op::Reshape { .. } if self.constant_chain(id).is_some() => Ok(eb.constant(self.constant_chain(id).unwrap_or(f64::NAN) as f32)),
            Op::Reshape { .. } if self.mode[id.index()] == Mode::Inline => {
                let x = arg(0)?;
                let axes = unit_axes_map(self.shape(x), self.shape(id)).ok_or_else(|| malformed(id, "inlined reshape moves elements"))?;
                let mut inner = vec![AxisRef::NONE; self.shape(x).len()];
                for (a, from) in map.iter().zip(&axes) {
                    if let Some(slot) = from.and_then(|f| inner.get_mut(f)) {
                        *slot = *a;
                    }
                }
                self.expr(eb, x, &inner)
            }
            Op::Reduce { .. } if self.reduced_constant(id).is_some() => Ok(eb.constant(self.reduced_constant(id).unwrap_or(f32::NAN))),
            Op::Input { .. }
            | Op::Reshape { .. }
            | Op::Pad { .. }
            | Op::Concat { .. }
            | Op::Reduce { .. }
            | Op::Fold { .. }
            | Op::RandomUniform { .. }
            | Op::Gather
            | Op::ScatterAdd { .. }
            | Op::CheckIndex { .. }
            | Op::MatMul
            | Op::Solve
            | Op::Scan { .. } => Err(malformed(id, "op cannot be fused into a loop")),
        }
    }

    /// A strided view of `id` for a library call (no arithmetic on the way).
    fn strided(&self, id: ValueId) -> Result<Layout, CodegenError> {
        if let Some(l) = &self.layouts[id.index()] {
            return Ok(l.clone());
        }
        let node = self.g.node(id);
        let x = self.arg(id, 0)?;
        let mut l = self.strided(x)?;
        match &node.op {
            Op::StopGradient => {}
            Op::Transpose { perm } => {
                l.strides = perm.iter().map(|&p| l.strides.get(p).copied().unwrap_or(0)).collect();
            }
            Op::Slice { axis, start, .. } => l.off += l.strides.get(*axis).copied().unwrap_or(0) * *start as i64,
            Op::Reshape { .. } => {
                let axes = unit_axes_map(self.shape(x), self.shape(id)).ok_or_else(|| malformed(id, "operand is not a strided view"))?;
                l.strides = axes.iter().map(|a| a.and_then(|a| l.strides.get(a).copied()).unwrap_or(0)).collect();
            }
            Op::Broadcast { .. } => {
                let (xd, od) = (self.shape(x), self.shape(id));
                let lead = od.len().saturating_sub(xd.len());
                let mut s = vec![0i64; lead];
                s.extend(xd.iter().zip(&l.strides).map(|(&d, &st)| if d == 1 { 0 } else { st }));
                l.strides = s;
            }
            _ => return Err(malformed(id, "operand is not a strided view")),
        }
        Ok(l)
    }

    fn mat_operand(&self, id: ValueId) -> Result<MatOperand, CodegenError> {
        let l = self.strided(id)?;
        let r = l.strides.len();
        if r < 2 {
            return Err(malformed(id, "matrix operand of rank < 2"));
        }
        Ok(matrix_of(&l))
    }

    // ---- lowering -----------------------------------------------------------------

    /// Append the kernels computing `id` into its buffer.
    fn lower_op(&mut self, id: ValueId) -> Result<(), CodegenError> {
        let out = self.layout(id)?.clone();
        match &self.g.node(id).op {
            // Sources with a buffer and views: no code.
            Op::Input { .. } | Op::Reshape { .. } => Ok(()),
            Op::Constant(_)
            | Op::Iota { .. }
            | Op::Unary(_)
            | Op::Binary(_)
            | Op::StopGradient
            | Op::Broadcast { .. }
            | Op::Transpose { .. }
            | Op::Slice { .. } => self.lower_map(id, &out),
            Op::Pad { axis, before, value, .. } => self.lower_pad(id, *axis, *before, *value as f32, &out),
            Op::Concat { axis } => self.lower_concat(id, *axis, &out),
            Op::Reduce { kind, axes } => self.lower_reduce(id, *kind, axes, &out),
            Op::MatMul => self.lower_matmul(id, &out),
            Op::Solve => self.lower_solve(id, &out),
            Op::Unfold { window } => self.lower_unfold(id, window, &out),
            Op::RandomUniform { stream } => {
                let seed = self.strided(self.arg(id, 0)?)?;
                let n = self.numel(id);
                self.kernels.push(Kernel::Random { n, out: (out.storage, out.off), seed: (seed.storage, seed.off), stream: *stream });
                Ok(())
            }
            Op::Fold { window, .. } => self.lower_fold(id, window, &out),
            Op::Gather => self.lower_lookup(id, false, &out),
            Op::ScatterAdd { .. } => self.lower_lookup(id, true, &out),
            Op::CheckIndex { bound } => self.lower_check(id, *bound, &out),
            Op::Scan { body, steps, inputs, reverse, .. } => self.lower_scan(id, body, *steps, *inputs, *reverse, &out),
        }
    }

    /// The strides that walk `[a.., KH, KW, b.., OH, OW]` over an `[a.., b.., H, W]`
    /// layout with strides `s`: `(i, j, p, q) → (p·SH + i·DH, q·SW + j·DW)`.
    fn window_strides(s: &[i64], w: &Window) -> Vec<i64> {
        let r = s.len();
        let (sh, sw) = (s[r - 2], s[r - 1]);
        let mut out = s[..w.lead].to_vec();
        out.extend([sh * w.dilation[0] as i64, sw * w.dilation[1] as i64]);
        out.extend_from_slice(&s[w.lead..r - 2]);
        out.extend([sh * w.stride[0] as i64, sw * w.stride[1] as i64]);
        out
    }

    /// im2col: one loop over the windows, each element loaded from the operand
    /// through the window strides (no bounds checks: padding is a `Pad` before).
    fn lower_unfold(&mut self, id: ValueId, w: &Window, out: &Layout) -> Result<(), CodegenError> {
        let x = self.arg(id, 0)?;
        let l = self.strided(x)?;
        if l.strides.len() < w.lead + 2 {
            return Err(malformed(id, "unfold of rank < 2"));
        }
        let dims = self.shape(id).to_vec();
        let mut eb = ExprBuilder::new(dims.len());
        let root = eb.operand(Affine { storage: Some(l.storage), off: l.off, strides: Self::window_strides(&l.strides, w) });
        let out = Affine { storage: Some(out.storage), off: out.off, strides: out.strides.clone() };
        self.kernels.push(eb.finish(dims, out, root, None));
        Ok(())
    }

    /// col2im: zero the output, then add every window element into the
    /// position it came from. Within one innermost row (`OW`) the positions
    /// are distinct, so the vector accumulate is exact; overlaps only occur
    /// between rows, which run one after another.
    fn lower_fold(&mut self, id: ValueId, w: &Window, out: &Layout) -> Result<(), CodegenError> {
        let x = self.arg(id, 0)?;
        let od = self.shape(id).to_vec();
        let xd = self.shape(x).to_vec();
        if od.len() < w.lead + 2 {
            return Err(malformed(id, "fold of rank < 2"));
        }
        let mut eb = ExprBuilder::new(od.len());
        let zero = eb.constant(0.0);
        let full = Affine { storage: Some(out.storage), off: out.off, strides: out.strides.clone() };
        self.kernels.push(eb.finish(od, full, zero, None));

        let mut eb = ExprBuilder::new(xd.len());
        let root = self.expr(&mut eb, x, &identity(xd.len()))?;
        let acc = Affine { storage: Some(out.storage), off: out.off, strides: Self::window_strides(&out.strides, w) };
        let k = eb.finish(xd, acc, root, Some(ReduceKind::Sum));
        self.kernels.push(accumulate_near_inner(k, &[w.lead, w.lead + 1], false));
        Ok(())
    }

    /// One fused loop over `id`'s shape.
    fn lower_map(&mut self, id: ValueId, out: &Layout) -> Result<(), CodegenError> {
        let dims = self.shape(id).to_vec();
        let mut eb = ExprBuilder::new(dims.len());
        eb.tee_dims = Some(dims.clone());
        let root = self.expr_op(&mut eb, id, &identity(dims.len()))?;
        let out = Affine { storage: Some(out.storage), off: out.off, strides: out.strides.clone() };
        for (v, at, _) in &eb.tees {
            if let Some(slot) = self.layouts.get_mut(*v) {
                *slot = Some(Layout { storage: at.storage.unwrap_or(0), off: 0, strides: at.strides.clone() });
            }
        }
        self.kernels.push(eb.finish(dims, out, root, None));
        Ok(())
    }

    /// A loop writing `value` (fused from `src`, or a constant) into the block of
    /// `out` that starts at `start` along `axis` and has shape `dims`.
    fn lower_block(
        &mut self,
        dims: Vec<usize>,
        out: &Layout,
        axis: usize,
        start: usize,
        src: Result<ValueId, f32>,
    ) -> Result<(), CodegenError> {
        let mut eb = ExprBuilder::new(dims.len());
        let root = match src {
            Ok(x) => self.expr(&mut eb, x, &identity(dims.len()))?,
            Err(fill) => eb.constant(fill),
        };
        let off = out.off + out.strides.get(axis).copied().unwrap_or(0) * start as i64;
        let out = Affine { storage: Some(out.storage), off, strides: out.strides.clone() };
        self.kernels.push(eb.finish(dims, out, root, None));
        Ok(())
    }

    fn lower_pad(&mut self, id: ValueId, axis: usize, before: usize, fill: f32, out: &Layout) -> Result<(), CodegenError> {
        let x = self.arg(id, 0)?;
        let od = self.shape(id).to_vec();
        let n = self.shape(x).get(axis).copied().ok_or_else(|| malformed(id, "pad axis out of range"))?;
        let total = od.get(axis).copied().unwrap_or(0);
        let with = |len: usize| {
            let mut d = od.clone();
            if let Some(slot) = d.get_mut(axis) {
                *slot = len;
            }
            d
        };
        if before > 0 {
            self.lower_block(with(before), out, axis, 0, Err(fill))?;
        }
        self.lower_block(self.shape(x).to_vec(), out, axis, before, Ok(x))?;
        let after = total.saturating_sub(before + n);
        if after > 0 {
            self.lower_block(with(after), out, axis, before + n, Err(fill))?;
        }
        Ok(())
    }

    fn lower_concat(&mut self, id: ValueId, axis: usize, out: &Layout) -> Result<(), CodegenError> {
        let mut start = 0;
        for x in self.args(id).to_vec() {
            let d = self.shape(x).to_vec();
            let n = d.get(axis).copied().ok_or_else(|| malformed(id, "concat axis out of range"))?;
            self.lower_block(d, out, axis, start, Ok(x))?;
            start += n;
        }
        Ok(())
    }

    /// Fill the output with the identity, then accumulate over the operand's shape
    /// with the output's strides zeroed on the reduced axes.
    fn lower_reduce(&mut self, id: ValueId, kind: ReduceKind, axes: &[usize], out: &Layout) -> Result<(), CodegenError> {
        let x = self.arg(id, 0)?;
        let od = self.shape(id).to_vec();
        let xd = self.shape(x).to_vec();
        let init = match kind {
            ReduceKind::Sum => 0.0,
            ReduceKind::Max => f32::NEG_INFINITY,
        };
        let mut eb = ExprBuilder::new(od.len());
        let c = eb.constant(init);
        let full = Affine { storage: Some(out.storage), off: out.off, strides: out.strides.clone() };
        self.kernels.push(eb.finish(od, full, c, None));

        let mut eb = ExprBuilder::new(xd.len());
        let root = self.expr(&mut eb, x, &identity(xd.len()))?;
        let mut strides = out.strides.clone();
        for &a in axes {
            *strides.get_mut(a).ok_or_else(|| malformed(id, "reduce axis out of range"))? = 0;
        }
        let acc = Affine { storage: Some(out.storage), off: out.off, strides };
        self.kernels.push(accumulate_near_inner(eb.finish(xd, acc, root, Some(kind)), axes, true));
        Ok(())
    }

    fn lower_matmul(&mut self, id: ValueId, out: &Layout) -> Result<(), CodegenError> {
        let (x, y) = (self.arg(id, 0)?, self.arg(id, 1)?);
        let a = self.mat_operand(x)?;
        let b = match self.gathered(y)? {
            Some(b) => b,
            None => self.mat_operand(y)?,
        };
        let od = self.shape(id);
        let r = od.len();
        let k = self.shape(x).last().copied().ok_or_else(|| malformed(id, "matmul of a scalar"))?;
        if r < 2 {
            return Err(malformed(id, "matmul result of rank < 2"));
        }
        let c = matrix_of(out);
        let (m, n) = (od[r - 2], od[r - 1]);
        // Batch axes of size 1 (one group of a convolution) are dropped, so the
        // product counts as unbatched (it may then be paired with its neighbour).
        let same = a.batch.len() == r - 2 && b.batch.len() == r - 2;
        let keep: Vec<bool> = od[..r - 2].iter().map(|&d| d != 1 || !same).collect();
        let squeeze =
            |op: MatOperand| MatOperand { batch: op.batch.iter().zip(&keep).filter(|(_, &k)| k).map(|(&s, _)| s).collect(), ..op };
        let (a, b, c) = (squeeze(a), squeeze(b), squeeze(c));
        let batch: Vec<usize> = od[..r - 2].iter().zip(&keep).filter(|(_, &k)| k).map(|(&d, _)| d).collect();
        if m * k * n <= SMALL_MATMUL || m <= 2 || n <= 2 {
            self.loop_matmul(batch, [m, k, n], &a, &b, &c);
        } else {
            self.kernels.push(Kernel::MatMul { batch, m, k, n, a, b, c });
        }
        Ok(())
    }

    /// `C = A·B` as a fused i-k-j loop: zero `C`, then accumulate
    /// `A[.., i, l] · B[.., l, j]` over the index space `[.., m, k, n]`.
    fn loop_matmul(&mut self, batch: Vec<usize>, mkn: [usize; 3], a: &MatOperand, b: &MatOperand, c: &MatOperand) {
        let [m, k, n] = mkn;
        let with =
            |op: &MatOperand, tail: [i64; 3]| -> Vec<i64> { op.batch.iter().copied().chain(tail).filter(|&s| s != i64::MIN).collect() };
        let mut dims = batch.clone();
        dims.extend([m, n]);
        let mut eb = ExprBuilder::new(dims.len());
        let zero = eb.constant(0.0);
        let out = Affine { storage: Some(c.storage), off: c.off, strides: with(c, [c.rs, c.cs, i64::MIN]) };
        self.kernels.push(eb.finish(dims, out, zero, None));

        let mut dims = batch;
        dims.extend([m, k, n]);
        let mut eb = ExprBuilder::new(dims.len());
        let x = eb.operand(Affine { storage: Some(a.storage), off: a.off, strides: with(a, [a.rs, a.cs, 0]) });
        let y = eb.operand(Affine { storage: Some(b.storage), off: b.off, strides: with(b, [0, b.rs, b.cs]) });
        let prod = eb.node(ENode::Binary(BinaryOp::Mul, x, y));
        let acc = Affine { storage: Some(c.storage), off: c.off, strides: with(c, [c.rs, 0, c.cs]) };
        self.kernels.push(eb.finish(dims, acc, prod, Some(ReduceKind::Sum)));
    }

    fn lower_solve(&mut self, id: ValueId, out: &Layout) -> Result<(), CodegenError> {
        let (x, y) = (self.arg(id, 0)?, self.arg(id, 1)?);
        let (a, b) = (self.mat_operand(x)?, self.mat_operand(y)?);
        let od = self.shape(id);
        let [n, k] = od else {
            return Err(malformed(id, "solve result must be a matrix"));
        };
        let (n, k) = (*n, *k);
        let x_out = MatOperand { storage: out.storage, off: out.off, batch: Vec::new(), rs: k as i64, cs: 1, gather: None };
        self.scratch = self.scratch.max(n * n + n * k);
        self.kernels.push(Kernel::Solve { n, k, a, b, x: x_out });
        Ok(())
    }

    /// `Gather` (`table`, `ids`) or `ScatterAdd` (`ids`, `values`) as one helper call
    /// on contiguous operands.
    fn lower_lookup(&mut self, id: ValueId, scatter: bool, out: &Layout) -> Result<(), CodegenError> {
        let (a0, a1) = (self.arg(id, 0)?, self.arg(id, 1)?);
        let (ids, src) = if scatter { (a0, a1) } else { (a1, a0) };
        let n = self.numel(ids);
        // The table is the `[rows, width]` operand: the result of a scatter, the source of a gather.
        let table = if scatter { id } else { src };
        let rows = self.shape(table).first().copied().unwrap_or(0);
        let width = self.numel(table) / rows.max(1);
        let lead = if scatter { self.shape(ids).len() } else { 1 };
        let (src_storage, src_off, src_stride) = self.rows_of(src, lead)?;
        let ids = self.layout(ids)?;
        let ids = (ids.storage, ids.off);
        let kernel = Kernel::Lookup {
            scatter,
            n,
            rows,
            width,
            ids,
            src: (src_storage, src_off),
            src_stride,
            dst: (out.storage, out.off),
            site: id.0,
        };
        self.kernels.push(kernel);
        Ok(())
    }

    /// Ids copied to `out` through `nnc_check_ids`, which reports the first
    /// outside `0..bound` (where the optional second operand is not 0).
    fn lower_check(&mut self, id: ValueId, bound: usize, out: &Layout) -> Result<(), CodegenError> {
        let ids = self.layout(self.arg(id, 0)?)?;
        let ids = (ids.storage, ids.off);
        let keep = match self.args(id).get(1) {
            Some(&k) => Some(self.layout(k).map(|l| (l.storage, l.off))?),
            None => None,
        };
        let n = self.numel(id);
        self.kernels.push(Kernel::Check { n, bound, ids, keep, dst: (out.storage, out.off), site: id.0 });
        Ok(())
    }

    /// `x` as rows (its first `lead` dims) of contiguous floats equally far
    /// apart: `(storage, offset, row stride)`. A scatter's values may be a view
    /// (the gradient columns of a scan's result); a view whose rows are not
    /// like that is copied first.
    fn rows_of(&mut self, x: ValueId, lead: usize) -> Result<(StorageId, i64, usize), CodegenError> {
        let dims = self.shape(x).to_vec();
        let l = self.strided(x)?;
        let inner = &dims[lead.min(dims.len())..];
        let row_len: usize = inner.iter().product();
        if l.strides.len() == dims.len() && lead >= 1 && lead <= dims.len() {
            let contiguous = l.strides[lead..] == super::kernel::contiguous_strides(inner)[..];
            // The leading dims step like one: each stride the next one's times its size.
            let uniform = (0..lead - 1).all(|i| dims[i + 1] == 1 || dims[i] == 1 || l.strides[i] == l.strides[i + 1] * dims[i + 1] as i64);
            let stride = (0..lead).rev().find(|&i| dims[i] != 1).map_or(row_len as i64, |i| l.strides[i]);
            if contiguous && uniform && stride >= row_len as i64 {
                return Ok((l.storage, l.off, stride as usize));
            }
        }
        let copy = self.contiguous_copy(x)?;
        Ok((copy.storage, 0, row_len))
    }

    /// A `Scan` as a `Loop`: the body is planned on its own (its batch dim set
    /// to the state's rows) and its storages join this plan's. Each step copies
    /// its slice of every per-step input into the body's input buffers, runs
    /// the body's kernels, and copies the new state into the result and back
    /// into the body's state buffer; constants are read where they are. Where
    /// the body reaches an input or its result a row at a time, the copy gives
    /// way to a view of the sequence at the step (`loops::steps_in_place`).
    #[allow(clippy::too_many_arguments)]
    fn lower_scan(
        &mut self,
        id: ValueId,
        body: &crate::ir::Graph,
        steps: usize,
        inputs: usize,
        reverse: bool,
        out: &Layout,
    ) -> Result<(), CodegenError> {
        let init = self.arg(id, 0)?;
        let rows = self.shape(init).first().copied().unwrap_or(1);
        let state_len = self.numel(init);
        let width = state_len / rows.max(1);
        let sub = plan(&crate::ops::scan::body_for_batch(body, &crate::ir::Dim::Known(rows)), &[])?;
        // Which body buffers hold values with the rows first (checked against
        // the body's symbolic shapes, so a weight that happens to have as many
        // rows as the batch is not mistaken for one).
        let rows_first = |v: &Option<ValueId>| v.is_some_and(|v| crate::ops::scan::rows_first(body.shape(v)));
        let sub_batched: Vec<bool> = sub.owners.iter().map(rows_first).collect();
        let base = self.storages.len();
        let tables = self.tables.len();
        self.storages.extend(sub.storages.iter().map(|st| Storage { len: st.len, kind: StorageKind::Temp }));
        self.owners.extend(sub.storages.iter().map(|_| None));
        self.tables.extend(sub.tables);
        self.scratch = self.scratch.max(sub.scratch);
        let mut kernels = sub.kernels;
        // Body storage ids move past this plan's, highest first so none collides.
        for s in (0..sub.storages.len()).rev() {
            kernels.iter_mut().for_each(|k| k.rename(s, s + base));
        }
        kernels.iter_mut().for_each(|k| relocate(k, tables, id.0));
        let body_input = |k: usize| sub.inputs.get(k).map(|(_, s)| s + base).ok_or_else(|| malformed(id, "scan body input missing"));
        let state = body_input(0)?;
        let new_state = sub.outputs.first().map(|(s, _)| s + base).ok_or_else(|| malformed(id, "scan body has no output"))?;
        let strip = |l: &Layout, row_stride: usize, step: usize| Strip {
            storage: l.storage,
            off: l.off,
            row_stride: row_stride as i64,
            step: step as i64,
        };
        let own = |s: StorageId, row_stride: usize| Strip { storage: s, off: 0, row_stride: row_stride as i64, step: 0 };
        let mut before = Vec::new();
        let init_l = self.layout(init)?.clone();
        before.push(Kernel::StepCopy { rows: 1, width: state_len, src: strip(&init_l, 0, 0), dst: own(state, 0) });
        let mut each = Vec::new();
        for k in 0..inputs {
            let x = self.arg(id, 1 + k)?;
            let w = self.numel(x) / (rows * steps).max(1);
            let src = self.step_rows(x)?;
            each.push(Kernel::StepCopy { rows, width: w, src, dst: own(body_input(1 + k)?, w) });
        }
        for k in 1 + inputs..self.args(id).len() {
            let c = self.arg(id, k)?;
            let l = self.layout(c)?.clone();
            let target = body_input(k)?;
            if l.off == 0 {
                kernels.iter_mut().for_each(|kern| kern.rename(target, l.storage));
                if let Some(st) = self.storages.get_mut(target) {
                    st.len = 0;
                }
            } else {
                let n = self.numel(c);
                before.push(Kernel::StepCopy { rows: 1, width: n, src: strip(&l, 0, 0), dst: own(target, 0) });
            }
        }
        each.extend(kernels);
        // The body's output: the new state, then any saved products (`Scan::saved`).
        let out_width = self.numel(id) / (rows * steps).max(1);
        each.push(Kernel::StepCopy {
            rows,
            width: out_width,
            src: own(new_state, out_width),
            dst: strip(out, steps * out_width, out_width),
        });
        each.push(Kernel::StepCopy { rows, width, src: own(new_state, out_width), dst: own(state, width) });
        before.extend(super::loops::hoist_transposed_weights(&mut each, &mut self.storages, &mut self.owners));
        let batched: Vec<bool> = (0..self.storages.len()).map(|s| s >= base && sub_batched.get(s - base) == Some(&true)).collect();
        let split = super::loops::splittable(&each, rows, &self.storages, &batched).then_some(rows);
        let views = super::loops::steps_in_place(&mut each, rows, &mut self.storages, state);
        self.kernels.extend(before);
        self.kernels.push(Kernel::Loop { steps, reverse, body: each, split, views });
        Ok(())
    }

    /// Where a scan reads its sequence `x [N, T, r..]` a step at a time: the
    /// rows of step `t` at `off + t·step + n·row_stride`, each `r..` contiguous.
    /// A view whose rows are not contiguous within a step (a transpose) is
    /// copied first.
    fn step_rows(&mut self, x: ValueId) -> Result<Strip, CodegenError> {
        let dims = self.shape(x).to_vec();
        let l = self.strided(x)?;
        let inner = &dims[2.min(dims.len())..];
        if l.strides.len() == dims.len() && dims.len() >= 2 && l.strides[2..] == super::kernel::contiguous_strides(inner)[..] {
            return Ok(Strip { storage: l.storage, off: l.off, row_stride: l.strides[0], step: l.strides[1] });
        }
        let copy = self.contiguous_copy(x)?;
        let per_row: usize = dims[1..].iter().product();
        let per_step: usize = dims[2..].iter().product();
        Ok(Strip { storage: copy.storage, off: 0, row_stride: per_row as i64, step: per_step as i64 })
    }

    /// A fresh temporary holding `x` (a view) laid out contiguously.
    fn contiguous_copy(&mut self, x: ValueId) -> Result<Layout, CodegenError> {
        let dims = self.shape(x).to_vec();
        self.storages.push(Storage { len: self.numel(x), kind: StorageKind::Temp });
        self.owners.push(None);
        let copy = Layout { storage: self.storages.len() - 1, off: 0, strides: super::kernel::contiguous_strides(&dims) };
        self.lower_block(dims, &copy, 0, 0, Ok(x))?;
        Ok(copy)
    }

    /// A fresh output buffer holding a copy of `id`, taken now.
    fn copy_of(&mut self, id: ValueId) -> Result<StorageId, CodegenError> {
        let len = self.numel(id);
        let src = self.layout(id)?.storage;
        self.storages.push(Storage { len, kind: StorageKind::Output });
        self.owners.push(Some(id));
        let dst = self.storages.len() - 1;
        self.kernels.push(copy_kernel(src, dst, len));
        Ok(dst)
    }
}
