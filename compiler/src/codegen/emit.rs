//! Cranelift emission of planned kernels. Every kernel becomes a loop nest in
//! the one generated function: outer loops over all but the innermost
//! (simplified) axis, and an innermost loop over groups of four elements in
//! `f32x4` registers, unrolled, bottom-tested, with a static tail.

use super::adam::Adam;
use super::kernel::{Affine, ENode, Kernel, MapKernel, MatOperand};
use super::loops::StepView;
use super::math;
use super::CodegenError;
use crate::ops::{BinaryOp, ReduceKind, UnaryOp};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32, F32X4, I64};
use cranelift_codegen::ir::{Block, BlockArg, ConstantData, FuncRef, InstBuilder, MemFlagsData, StackSlot, Value};
use cranelift_frontend::FunctionBuilder;

pub(crate) struct Emitter<'a, 'b> {
    pub b: &'a mut FunctionBuilder<'b>,
    /// Base address of the f32 arena (function parameter).
    pub arena: Value,
    /// Base address of the f64 scratch space (function parameter).
    pub scratch: Value,
    /// Arena offset (floats) of each storage.
    pub offsets: &'a [usize],
    pub sgemm: FuncRef,
    pub solve: FuncRef,
    pub random: FuncRef,
    pub lookup: FuncRef,
    pub check_ids: FuncRef,
    pub copy_rows: FuncRef,
    /// Inside a `Loop`: the current step (an `i64`).
    pub step: Option<Value>,
    /// In a parallel piece's function: the range `[lo, hi)` of the first axis
    /// of every map kernel emitted (see `parallel_form`), of a fused group's
    /// rows, of a product batch's first dim (`batch_split`), or of the rows of
    /// every kernel of a row-split loop's body (see `loops`).
    pub rows: Option<(Value, Value)>,
    /// Addresses of the plan's offset tables (gathered matrix operands).
    pub tables: &'a [i64],
    /// The sixteen-lane math functions, when the machine has AVX-512.
    pub wide: Option<Wide>,
    /// Inside a `Loop`: the byte address at the current step of each body
    /// buffer that is a view of a sequence (`StepView`), and that sequence.
    pub views: Vec<(usize, Value, usize)>,
    /// In a bounds-checked build: what checks every load and store.
    pub bounds: Option<Bounds<'a>>,
    /// The kernel being emitted (its index in the plan), named by a bounds fault.
    pub kernel: usize,
}

/// A bounds-checked build (`CompileOptions::bounds_checked`): every load and
/// store is compared with its buffer's extent first; one outside is
/// reported through `nnc_bounds_fault` (to the record at `record`) and goes
/// to the buffer's first element instead.
pub(crate) struct Bounds<'a> {
    /// Element count of each storage.
    pub lens: &'a [usize],
    pub fault: FuncRef,
    pub record: i64,
}

/// Calls to the sixteen-lane math functions (`super::wide`): which unary op
/// each computes, and the 64-byte stack slot their four groups pass through.
#[derive(Clone)]
pub(crate) struct Wide {
    pub funcs: Vec<(UnaryOp, FuncRef)>,
    pub slot: StackSlot,
}

impl Wide {
    fn func(&self, op: UnaryOp) -> Option<FuncRef> {
        self.funcs.iter().find(|(u, _)| *u == op).map(|&(_, f)| f)
    }
}

/// Map kernels with at least this many elements are split across the worker
/// pool (measured: see docs/performance.md; `NNC_PAR_ELEMENTS` overrides it).
pub(crate) const PARALLEL_ELEMENTS: usize = 1 << 15;

pub(crate) fn parallel_elements() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| super::pool::threshold("NNC_PAR_ELEMENTS", PARALLEL_ELEMENTS))
}

/// Products from this many multiply-adds may run concurrently with a
/// neighbouring independent one (below, one thread does both faster).
pub(crate) const PAIR_MIN: usize = 1 << 18;

/// Whether two consecutive kernels are unbatched products that can run at the
/// same time: each at least `PAIR_MIN`, and neither output's arena range
/// overlapping any operand or output of the other (arena space is shared
/// between temporaries, so this is checked on the final layout).
pub(crate) fn pairable(first: &Kernel, second: &Kernel, offsets: &[usize], lens: &[usize]) -> bool {
    let (
        Kernel::MatMul { batch: b1, m: m1, k: k1, n: n1, a: a1, b: x1, c: c1 },
        Kernel::MatMul { batch: b2, m: m2, k: k2, n: n2, a: a2, b: x2, c: c2 },
    ) = (first, second)
    else {
        return false;
    };
    let range = |s: usize| offsets.get(s).zip(lens.get(s)).map(|(&o, &l)| (o, o + l));
    let overlap = |s: usize, t: usize| match (range(s), range(t)) {
        (Some((a, b)), Some((c, d))) => a < d && c < b,
        _ => true,
    };
    let _ = (b1, m1, k1, n1, b2, m2, k2, n2);
    pair_candidates(first, second)
        && ![a2.storage, x2.storage, c2.storage].iter().any(|&s| overlap(c1.storage, s))
        && ![a1.storage, x1.storage].iter().any(|&s| overlap(c2.storage, s))
}

/// Two consecutive unbatched products, each of at least `PAIR_MIN`
/// multiply-adds, the second not reading the first's output (by storage): the
/// arena layout keeps their operands and outputs apart (`memory::assign`), so
/// `pairable` holds for them.
pub(crate) fn pair_candidates(first: &Kernel, second: &Kernel) -> bool {
    let (Kernel::MatMul { batch: b1, m: m1, k: k1, n: n1, c: c1, .. }, Kernel::MatMul { batch: b2, m: m2, k: k2, n: n2, a: a2, b: x2, .. }) =
        (first, second)
    else {
        return false;
    };
    let big = |m: usize, k: usize, n: usize| m * k * n >= PAIR_MIN;
    b1.is_empty() && b2.is_empty() && big(*m1, *k1, *n1) && big(*m2, *k2, *n2) && a2.storage != c1.storage && x2.storage != c1.storage
}

/// `k` with its (simplified) first axis the one to split across threads, or
/// `None` if it should run on one thread: too small, or accumulating into
/// output elements that two values of the first axis share (pieces would race
/// on them).
pub(crate) fn parallel_form(k: &MapKernel) -> Option<MapKernel> {
    let numel: usize = k.dims.iter().product();
    if numel < parallel_elements() {
        return None;
    }
    let affines: Vec<&Affine> = std::iter::once(&k.out).chain(&k.operands).chain(k.extra.iter().map(|(a, _)| a)).collect();
    let mut strides: Vec<Vec<i64>> = affines.iter().map(|a| a.strides.clone()).collect();
    let mut dims = simplify(&k.dims, &mut strides);
    if dims.len() == 1 {
        // One long row: cut it into rows of a multiple of 16 elements.
        let n = dims[0];
        let rows = [64usize, 32, 16, 8].into_iter().find(|&r| n.is_multiple_of(r) && (n / r).is_multiple_of(16))?;
        dims = vec![rows, n / rows];
        for st in &mut strides {
            let s = st.first().copied().unwrap_or(0);
            *st = vec![s * (n / rows) as i64, s];
        }
    }
    if k.acc.is_some() && !disjoint_first_axis(&dims, strides.first().map_or(&[], |s| s.as_slice())) {
        // Every row adds into the same outputs (a bias gradient's column
        // sums): the threads take halves of the columns instead.
        (dims, strides) = halve_columns(&dims, &strides)?;
    }
    if dims.first().is_none_or(|&d| d < 2) {
        return None;
    }
    let mut it = strides.into_iter();
    let mut with = |a: &Affine| Affine { storage: a.storage, off: a.off, strides: it.next().unwrap_or_default() };
    let out = with(&k.out);
    let operands = k.operands.iter().map(&mut with).collect();
    let extra = k.extra.iter().map(|(a, n)| (with(a), *n)).collect();
    Some(MapKernel { dims, out, operands, nodes: k.nodes.clone(), root: k.root, acc: k.acc, extra })
}

/// For a batch of products each too small to split across threads itself
/// (attention's `[B, heads]` batches of `T×d @ d×T`): the length of the
/// first batch dim, whose ranges then run on the threads side by side.
pub(crate) fn batch_split(k: &Kernel) -> Option<usize> {
    match k {
        Kernel::MatMul { batch, m, k, n, .. } if m * k * n < super::gemm::parallel_min() => batch.first().copied().filter(|&b| b >= 2),
        _ => None,
    }
}

/// `dims` with a new first axis of two halves of the last one (each a
/// multiple of 16 elements, kept vector-wide), and the strides to match;
/// `None` unless the last axis is an output axis (stride ≠ 0) and the halves
/// write disjoint outputs.
fn halve_columns(dims: &[usize], strides: &[Vec<i64>]) -> Option<(Vec<usize>, Vec<Vec<i64>>)> {
    let (&n, lead) = dims.split_last()?;
    if !n.is_multiple_of(32) {
        return None;
    }
    let half = n / 2;
    let dims: Vec<usize> = std::iter::once(2).chain(lead.iter().copied()).chain([half]).collect();
    let strides: Vec<Vec<i64>> = strides
        .iter()
        .map(|st| {
            let (&last, lead) = st.split_last().unwrap_or((&0, &[]));
            std::iter::once(last * half as i64).chain(lead.iter().copied()).chain([last]).collect()
        })
        .collect();
    disjoint_first_axis(&dims, strides.first().map_or(&[], |s| s.as_slice())).then_some((dims, strides))
}

/// True if the output elements an accumulating loop touches for one index of
/// its first axis are disjoint from those of every other index: the first
/// axis moves the output (non-negative strides), and either the other axes
/// span less than its stride, or the axes that move the output address
/// distinct elements (each stride larger than the span of the smaller ones).
/// Then each index (a depthwise convolution's image, a col2im's channel, a
/// weight gradient's channel) can run on its own thread.
fn disjoint_first_axis(dims: &[usize], out: &[i64]) -> bool {
    let (Some(&s0), true) = (out.first(), out.len() == dims.len()) else { return false };
    if out.iter().any(|&s| s < 0) || s0 == 0 {
        return false;
    }
    // The other axes stay within one step of the first (they may overlap
    // among themselves: a col2im's window and position axes).
    let rest: i64 = dims.iter().zip(out).skip(1).map(|(&d, &s)| (d as i64 - 1) * s).sum();
    if rest < s0 {
        return true;
    }
    let mut moving: Vec<(i64, usize)> = out.iter().zip(dims).filter(|(&s, &d)| s != 0 && d > 1).map(|(&s, &d)| (s, d)).collect();
    moving.sort_unstable();
    let mut span = 0i64;
    for (s, d) in moving {
        if s <= span {
            return false;
        }
        span += (d as i64 - 1) * s;
    }
    true
}

type Body<'x, 'a, 'b> = dyn FnMut(&mut Emitter<'a, 'b>, &[Value]) -> Result<(), CodegenError> + 'x;
type CarryBody<'x, 'a, 'b> = dyn FnMut(&mut Emitter<'a, 'b>, &[Value], Vec<Value>) -> Result<Vec<Value>, CodegenError> + 'x;

/// Longest output row whose partial sums are carried in registers across
/// summed loops (`Emitter::emit_carried`): 8 vectors of four.
pub(crate) const CARRY_MAX: usize = 32;

/// Groups of four evaluated per iteration of a row's loop, by expression size.
fn unroll_for(cost: usize, groups: usize) -> usize {
    let unroll = if cost <= 12 {
        4
    } else if cost <= 48 {
        2
    } else {
        1
    };
    unroll.min(groups.max(1))
}

/// Which expression nodes the kernel's outputs need, and which of them do
/// not depend on the innermost index (`inner[0]` is the output's stride,
/// `inner[1 + o]` operand `o`'s).
fn needed_and_invariant(k: &MapKernel, inner: &[i64]) -> (Vec<bool>, Vec<bool>) {
    let nn = k.nodes.len();
    let mut needed = vec![false; nn];
    for &r in std::iter::once(&k.root).chain(k.extra.iter().map(|(_, n)| n)) {
        if let Some(slot) = needed.get_mut(r) {
            *slot = true;
        }
    }
    for i in (0..nn).rev() {
        match (needed[i], k.nodes[i]) {
            (true, ENode::Unary(_, a)) => needed[a] = true,
            (true, ENode::Binary(_, a, c)) => {
                needed[a] = true;
                needed[c] = true;
            }
            _ => {}
        }
    }
    let mut inv: Vec<bool> = Vec::with_capacity(nn);
    for node in &k.nodes {
        let both = |a: usize, c: usize| inv.get(a) == Some(&true) && inv.get(c) == Some(&true);
        let v = match *node {
            ENode::Operand(o) => inner.get(o + 1) == Some(&0),
            ENode::Const(_) => true,
            ENode::Unary(_, a) => both(a, a),
            ENode::Binary(_, a, c) => both(a, c),
        };
        inv.push(v);
    }
    (needed, inv)
}

fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Drop size-1 axes and merge neighbouring axes that every operand walks
/// contiguously (`stride[i] == stride[i+1] · dim[i+1]`).
pub(crate) fn simplify(dims: &[usize], strides: &mut [Vec<i64>]) -> Vec<usize> {
    let mut out_dims: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<i64>> = vec![Vec::new(); strides.len()];
    for (i, &d) in dims.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let at = |s: &Vec<i64>| s.get(i).copied().unwrap_or(0);
        let merge = !out_dims.is_empty() && strides.iter().zip(&out_strides).all(|(s, o)| o.last() == Some(&(at(s) * d as i64)));
        if let (true, Some(last)) = (merge, out_dims.last_mut()) {
            *last *= d;
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                if let Some(l) = o.last_mut() {
                    *l = at(s);
                }
            }
        } else {
            out_dims.push(d);
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(at(s));
            }
        }
    }
    for (s, o) in strides.iter_mut().zip(out_strides) {
        *s = o;
    }
    out_dims
}

/// Where one group of (up to) four elements of the innermost axis is:
/// element index `pos + g`, `lanes` valid lanes. A row's tail of 1–3
/// elements (`n ≥ 4`) is a full group ending at the row's end whose first
/// `skip` lanes repeat elements of the previous group: a map stores the same
/// values again there, an accumulation masks them to the identity. One
/// vector load and store instead of a scalar load per lane and operand (rows
/// of 7 or 14 in MNIST-sized images).
#[derive(Clone, Copy)]
struct At {
    pos: Value,
    g: i64,
    lanes: u8,
    skip: u8,
}

/// Per-row facts of a map kernel.
struct Row<'k> {
    k: &'k MapKernel,
    /// Innermost stride of the output (index 0) and each operand (index 1 + i).
    inner: Vec<i64>,
    /// Address (loads) or integer value (iota) of each at the row's start.
    bases: Vec<Value>,
    needed: Vec<bool>,
    /// Values computed once per row (independent of the innermost index).
    pre: Vec<Option<Value>>,
    /// `1 / pre[i]` for row-invariant divisors: their divisions become
    /// multiplications (Adam's bias corrections).
    recip: Vec<Option<Value>>,
}

impl<'a, 'b> Emitter<'a, 'b> {
    pub fn emit_kernel(&mut self, k: &Kernel) -> Result<(), CodegenError> {
        match k {
            Kernel::Map(m) => self.emit_map(m),
            Kernel::Rows { rows, kernels } => self.emit_rows(*rows, kernels),
            Kernel::MatMul { batch, m, k, n, a, b, c } => self.emit_matmul(batch, [*m, *k, *n], a, b, c),
            Kernel::Solve { n, k, a, b, x } => self.emit_solve(*n, *k, a, b, x),
            Kernel::Random { n, out, seed, stream } => {
                let po = self.base(Some(out.0), out.1, &[], &[])?;
                let ps = self.base(Some(seed.0), seed.1, &[], &[])?;
                let n = self.b.ins().iconst(I64, *n as i64);
                let s = self.b.ins().iconst(I64, i64::from(*stream));
                self.b.ins().call(self.random, &[po, n, ps, s]);
                Ok(())
            }
            Kernel::Lookup { scatter, n, rows, width, ids, src, src_stride, dst, site } => {
                let pi = self.base(Some(ids.0), ids.1, &[], &[])?;
                let ps = self.base(Some(src.0), src.1, &[], &[])?;
                let pd = self.base(Some(dst.0), dst.1, &[], &[])?;
                let consts = [i64::from(*scatter), *n as i64, *rows as i64, *width as i64, *src_stride as i64, i64::from(*site)];
                let [sc, n, rows, width, stride, site] = consts.map(|c| self.b.ins().iconst(I64, c));
                self.b.ins().call(self.lookup, &[sc, n, rows, width, pi, ps, stride, pd, site]);
                Ok(())
            }
            Kernel::Check { n, bound, ids, keep, dst, site } => {
                let pi = self.base(Some(ids.0), ids.1, &[], &[])?;
                let pk = match keep {
                    Some(k) => self.base(Some(k.0), k.1, &[], &[])?,
                    None => self.b.ins().iconst(I64, 0),
                };
                let pd = self.base(Some(dst.0), dst.1, &[], &[])?;
                let [n, bound, site] = [*n as i64, *bound as i64, i64::from(*site)].map(|c| self.b.ins().iconst(I64, c));
                self.b.ins().call(self.check_ids, &[n, bound, pi, pk, pd, site]);
                Ok(())
            }
            Kernel::Loop { steps, reverse, body, views, .. } => self.emit_loop(*steps, *reverse, body, views),
            Kernel::StepCopy { rows, width, src, dst } => {
                let mut ps = self.strip_base(src)?;
                let mut pd = self.strip_base(dst)?;
                let consts = [dst.row_stride, src.row_stride, *rows as i64, *width as i64];
                let [ds, ss, mut rows, width] = consts.map(|c| self.b.ins().iconst(I64, c));
                if let Some((lo, hi)) = self.rows {
                    ps = self.row_offset(ps, lo, src.row_stride);
                    pd = self.row_offset(pd, lo, dst.row_stride);
                    rows = self.b.ins().isub(hi, lo);
                }
                self.b.ins().call(self.copy_rows, &[pd, ds, ps, ss, rows, width]);
                Ok(())
            }
        }
    }

    /// A scan: the body's kernels inside a loop over the steps, with the
    /// addresses of its views (`StepView`) moved to each step.
    fn emit_loop(&mut self, steps: usize, reverse: bool, body: &[Kernel], views: &[StepView]) -> Result<(), CodegenError> {
        if steps == 0 {
            return Ok(());
        }
        let (blk, i, _) = self.loop_begin(&[]);
        let t = if reverse {
            let last = self.b.ins().iconst(I64, steps as i64 - 1);
            self.b.ins().isub(last, i)
        } else {
            i
        };
        let outer = self.step.replace(t);
        let outer_views = self.views.len();
        for v in views {
            let strip = super::kernel::Strip { storage: v.of, off: v.off, row_stride: 0, step: v.step };
            let at = self.strip_base(&strip)?;
            self.views.push((v.storage, at, v.of));
        }
        for k in body {
            self.emit_kernel(k)?;
        }
        self.views.truncate(outer_views);
        self.step = outer;
        self.loop_end(blk, i, 1, steps as i64, &[]);
        Ok(())
    }

    /// `ptr` (a byte address) moved on by `row` rows of `row_stride` floats.
    fn row_offset(&mut self, ptr: Value, row: Value, row_stride: i64) -> Value {
        let by = self.b.ins().imul_imm_s(row, row_stride * 4);
        self.b.ins().iadd(ptr, by)
    }

    /// The byte address of a strip's first row at the current step.
    fn strip_base(&mut self, s: &super::kernel::Strip) -> Result<Value, CodegenError> {
        let base = self.base(Some(s.storage), s.off, &[], &[])?;
        if s.step == 0 {
            return Ok(base);
        }
        let t = self.step.ok_or_else(|| CodegenError::Cranelift("a step copy outside a loop".into()))?;
        let by = self.b.ins().imul_imm_s(t, s.step * 4);
        Ok(self.b.ins().iadd(base, by))
    }

    // ---- loops ----------------------------------------------------------------------

    /// Run `body` inside loops over `dims`, with the loop counters.
    fn loop_nest(&mut self, dims: &[usize], body: &mut Body<'_, 'a, 'b>) -> Result<(), CodegenError> {
        let mut idx = Vec::with_capacity(dims.len());
        self.nest(dims, &mut idx, body)
    }

    fn nest(&mut self, dims: &[usize], idx: &mut Vec<Value>, body: &mut Body<'_, 'a, 'b>) -> Result<(), CodegenError> {
        let Some((&d, rest)) = dims.split_first() else {
            return body(self, idx);
        };
        if d <= 1 {
            let z = self.b.ins().iconst(I64, 0);
            idx.push(z);
            self.nest(rest, idx, body)?;
            idx.pop();
            return Ok(());
        }
        let (blk, i, _) = self.loop_begin(&[]);
        idx.push(i);
        self.nest(rest, idx, body)?;
        idx.pop();
        self.loop_end(blk, i, 1, d as i64, &[]);
        Ok(())
    }

    /// Enter a bottom-tested loop whose counter starts at 0, carrying `carried`.
    fn loop_begin(&mut self, carried: &[Value]) -> (Block, Value, Vec<Value>) {
        let blk = self.b.create_block();
        let i = self.b.append_block_param(blk, I64);
        let params = carried
            .iter()
            .map(|&v| {
                let ty = self.b.func.dfg.value_type(v);
                self.b.append_block_param(blk, ty)
            })
            .collect();
        let zero = self.b.ins().iconst(I64, 0);
        let args: Vec<BlockArg> = std::iter::once(zero).chain(carried.iter().copied()).map(BlockArg::from).collect();
        self.b.ins().jump(blk, &args);
        self.b.switch_to_block(blk);
        (blk, i, params)
    }

    /// Close the loop: `i += step` and repeat while `i < limit`; returns the
    /// carried values after the loop.
    fn loop_end(&mut self, blk: Block, i: Value, step: i64, limit: i64, carried: &[Value]) -> Vec<Value> {
        let exit = self.b.create_block();
        let outs = carried
            .iter()
            .map(|&v| {
                let ty = self.b.func.dfg.value_type(v);
                self.b.append_block_param(exit, ty)
            })
            .collect();
        let next = self.b.ins().iadd_imm_s(i, step);
        let more = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, next, limit);
        let back: Vec<BlockArg> = std::iter::once(next).chain(carried.iter().copied()).map(BlockArg::from).collect();
        let fwd: Vec<BlockArg> = carried.iter().copied().map(BlockArg::from).collect();
        self.b.ins().brif(more, blk, &back, exit, &fwd);
        self.b.switch_to_block(exit);
        outs
    }

    /// Byte address (with a storage) or integer value (without) of an affine
    /// access at the loop counters `idx`.
    fn base(&mut self, storage: Option<usize>, off: i64, strides: &[i64], idx: &[Value]) -> Result<Value, CodegenError> {
        let view = storage.and_then(|s| self.views.iter().rev().find(|(v, _, _)| *v == s).map(|&(_, at, _)| at));
        let (mut v, scale) = match (storage, view) {
            (Some(_), Some(at)) => (self.b.ins().iadd_imm_s(at, off * 4), 4),
            (Some(s), None) => {
                let o = self.offsets.get(s).copied().ok_or_else(|| CodegenError::Cranelift(format!("storage {s} has no offset")))?;
                (self.b.ins().iadd_imm_s(self.arena, (o as i64 + off) * 4), 4)
            }
            (None, _) => (self.b.ins().iconst(I64, off), 1),
        };
        for (&s, &i) in strides.iter().zip(idx) {
            if s != 0 {
                let t = self.b.ins().imul_imm_s(i, s * scale);
                v = self.b.ins().iadd(v, t);
            }
        }
        Ok(v)
    }

    // ---- map kernels ----------------------------------------------------------------

    fn emit_map(&mut self, k: &MapKernel) -> Result<(), CodegenError> {
        if k.dims.contains(&0) {
            return Ok(());
        }
        let extra = k.extra.iter().map(|(a, _)| a);
        let affines: Vec<&Affine> = std::iter::once(&k.out).chain(&k.operands).chain(extra).collect();
        let mut strides: Vec<Vec<i64>> = affines.iter().map(|a| a.strides.clone()).collect();
        if let Some((lo, hi)) = self.rows {
            return self.emit_map_rows(k, affines, strides, lo, hi);
        }
        let dims = simplify(&k.dims, &mut strides);
        self.emit_nest(k, &affines, &dims, &strides, None)
    }

    /// The loop nest of a map kernel over `dims` (simplified, `strides[i]` for
    /// `affines[i]`), every address offset by `row · first[i]` when `row` is
    /// `Some((row, first))`. An accumulation whose output does not move along
    /// its last axes but the innermost (a window sum: `[N, C, OH, KH, KW, OW]`
    /// into `[N, C, OH, OW]`; or, with the innermost axis summed too, a
    /// reduction to one value) keeps its partial sums in registers across
    /// those axes: the output row is loaded and stored once, not once per
    /// summed index (`emit_carried`).
    fn emit_nest(
        &mut self,
        k: &MapKernel,
        affines: &[&Affine],
        dims: &[usize],
        strides: &[Vec<i64>],
        row: Option<(Value, &[i64])>,
    ) -> Result<(), CodegenError> {
        let r = dims.len();
        let (outer, n) = match dims.split_last() {
            Some((&n, outer)) => (outer.to_vec(), n),
            None => (Vec::new(), 1),
        };
        let inner: Vec<i64> = strides.iter().map(|s| if r == 0 { 0 } else { s.get(r - 1).copied().unwrap_or(0) }).collect();
        let out_s = strides.first().map_or(&[][..], |s| s.as_slice());
        let summed =
            if k.acc.is_some() { outer.iter().enumerate().rev().take_while(|(i, _)| out_s.get(*i) == Some(&0)).count() } else { 0 };
        let horiz = inner.first() == Some(&0);
        if summed > 0 && (horiz || n <= CARRY_MAX) {
            return self.emit_carried(k, affines, dims, strides, row, summed);
        }
        self.loop_nest(&outer, &mut |em, idx| {
            let bases = em.bases(affines, strides, r.saturating_sub(1), idx, row)?;
            em.emit_row(k, n, inner.clone(), bases)
        })
    }

    /// Addresses of every affine at the loop counters `idx` (its first `upto` strides).
    fn bases(
        &mut self,
        affines: &[&Affine],
        strides: &[Vec<i64>],
        upto: usize,
        idx: &[Value],
        row: Option<(Value, &[i64])>,
    ) -> Result<Vec<Value>, CodegenError> {
        let mut bases = Vec::with_capacity(affines.len());
        for (i, (a, s)) in affines.iter().zip(strides).enumerate() {
            let mut base = self.base(a.storage, a.off, s.get(..upto).unwrap_or(s), idx)?;
            if let Some((row, first)) = row {
                let f = first.get(i).copied().unwrap_or(0);
                let step = self.b.ins().imul_imm_s(row, f * if a.storage.is_some() { 4 } else { 1 });
                base = self.b.ins().iadd(base, step);
            }
            bases.push(base);
        }
        Ok(bases)
    }

    /// `emit_nest` for an accumulation whose last `summed` outer axes do not
    /// move the output: loops over the kept axes; the output row's partial
    /// results (one vector per group of four, or for a reduction along the
    /// innermost axis the unrolled vector accumulators and a scalar) are
    /// carried through the loops over the summed axes, then combined into the
    /// output once.
    fn emit_carried(
        &mut self,
        k: &MapKernel,
        affines: &[&Affine],
        dims: &[usize],
        strides: &[Vec<i64>],
        row: Option<(Value, &[i64])>,
        summed: usize,
    ) -> Result<(), CodegenError> {
        let kind = k.acc.ok_or_else(|| CodegenError::Cranelift("carried sums without accumulation".into()))?;
        let r = dims.len();
        let n = dims.last().copied().unwrap_or(1);
        let kept = r - 1 - summed;
        let inner: Vec<i64> = strides.iter().map(|s| s.get(r - 1).copied().unwrap_or(0)).collect();
        let s_out = inner.first().copied().unwrap_or(0);
        let out_storage = k.out.storage;
        let horiz = s_out == 0;
        let unroll = self.unroll(k, &inner, n / 4);
        self.loop_nest(&dims[..kept], &mut |em, idx| {
            let zero = em.b.ins().iconst(I64, 0);
            let out_base = em
                .bases(&affines[..1], &strides[..1], kept, idx, row)?
                .first()
                .copied()
                .ok_or_else(|| CodegenError::Cranelift("no output".into()))?;
            let mut ats: Vec<At> =
                (0..n.div_ceil(4)).map(|j| At { pos: zero, g: 4 * j as i64, lanes: (n - 4 * j).min(4) as u8, skip: 0 }).collect();
            // A tail overlapping the previous group: summed from the identity
            // and added to the output after the other groups are stored.
            let overlap = n >= 4 && n % 4 != 0;
            if let (true, Some(last)) = (overlap, ats.last_mut()) {
                *last = At { pos: zero, g: n as i64 - 4, lanes: 4, skip: (4 - n % 4) as u8 };
            }
            let init: Vec<Value> = if horiz {
                let mut v: Vec<Value> = (0..unroll).map(|_| math::splat(em.b, math::identity(kind))).collect();
                v.push(math::scalar(em.b, math::identity(kind)));
                v
            } else {
                ats.iter()
                    .map(
                        |&at| if at.skip > 0 { math::splat(em.b, math::identity(kind)) } else { em.load(out_storage, s_out, out_base, at) },
                    )
                    .collect()
            };
            let mut at_idx = idx.to_vec();
            let done = em.nest_carried(&dims[kept..r - 1], &mut at_idx, init, &mut |em, full, cur| {
                let bases = em.bases(affines, strides, r - 1, full, row)?;
                let row = em.row_setup(k, inner.clone(), bases)?;
                if horiz {
                    let mut cur = cur;
                    let s = cur.pop().ok_or_else(|| CodegenError::Cranelift("no scalar sum".into()))?;
                    let (mut accs, s) = em.horiz_row(&row, n, kind, cur, s)?;
                    accs.push(s);
                    return Ok(accs);
                }
                let mut cur = cur;
                let vals = em.eval_groups(&row, &ats)?;
                for (j, (vals, &at)) in vals.iter().zip(&ats).enumerate() {
                    let v = vals.get(k.root).copied().flatten().ok_or_else(|| CodegenError::Cranelift("empty expression".into()))?;
                    let v = em.skip_lanes(v, at.skip, kind);
                    if let Some(acc) = cur.get_mut(j) {
                        *acc = math::combine(em.b, kind, *acc, v);
                    }
                }
                Ok(cur)
            })?;
            if horiz {
                let mut accs = done;
                let s = accs.pop().ok_or_else(|| CodegenError::Cranelift("no scalar sum".into()))?;
                return em.finish_horiz(kind, accs, s, (out_storage, out_base));
            }
            for (&at, &v) in ats.iter().zip(&done).filter(|(at, _)| at.skip == 0) {
                em.store(out_storage, s_out, out_base, at, v);
            }
            for (&at, &v) in ats.iter().zip(&done).filter(|(at, _)| at.skip > 0) {
                let old = em.load(out_storage, s_out, out_base, at);
                let v = math::combine(em.b, kind, old, v);
                em.store(out_storage, s_out, out_base, at, v);
            }
            Ok(())
        })
    }

    /// A `parallel_form` kernel for the rows `[lo, hi)` of its first axis.
    fn emit_map_rows(
        &mut self,
        k: &MapKernel,
        affines: Vec<&Affine>,
        strides: Vec<Vec<i64>>,
        lo: Value,
        hi: Value,
    ) -> Result<(), CodegenError> {
        self.row_range(lo, hi, &mut |em, row| em.emit_map_at_row(k, &affines, &strides, row))
    }

    /// Row-fused kernels (`rows::fuse`): for each row of their common first
    /// axis, every kernel's part of that row, in order. With `Emitter::rows`
    /// (a group run across threads, or a row-split loop), only those rows.
    fn emit_rows(&mut self, rows: usize, ks: &[MapKernel]) -> Result<(), CodegenError> {
        let mut one_row = |em: &mut Self, row: Value| {
            for k in ks {
                let extra = k.extra.iter().map(|(a, _)| a);
                let affines: Vec<&Affine> = std::iter::once(&k.out).chain(&k.operands).chain(extra).collect();
                let strides: Vec<Vec<i64>> = affines.iter().map(|a| a.strides.clone()).collect();
                em.emit_map_at_row(k, &affines, &strides, row)?;
            }
            Ok(())
        };
        if let Some((lo, hi)) = self.rows {
            return self.row_range(lo, hi, &mut one_row);
        }
        self.loop_nest(&[rows], &mut |em, idx| {
            let row = match idx.first() {
                Some(&r) => r,
                None => em.b.ins().iconst(I64, 0),
            };
            one_row(em, row)
        })
    }

    /// `body(row)` for `row` in `lo..hi` (bottom-tested, entered only if `lo < hi`).
    fn row_range(
        &mut self,
        lo: Value,
        hi: Value,
        body: &mut dyn FnMut(&mut Self, Value) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let blk = self.b.create_block();
        let row = self.b.append_block_param(blk, I64);
        let exit = self.b.create_block();
        let any = self.b.ins().icmp(IntCC::SignedLessThan, lo, hi);
        self.b.ins().brif(any, blk, &[BlockArg::from(lo)], exit, &[]);
        self.b.switch_to_block(blk);
        body(self, row)?;
        let next = self.b.ins().iadd_imm_s(row, 1);
        let more = self.b.ins().icmp(IntCC::SignedLessThan, next, hi);
        self.b.ins().brif(more, blk, &[BlockArg::from(next)], exit, &[]);
        self.b.switch_to_block(exit);
        Ok(())
    }

    /// Row `row` of the first axis of `k`: a loop nest over the other axes.
    fn emit_map_at_row(&mut self, k: &MapKernel, affines: &[&Affine], strides: &[Vec<i64>], row: Value) -> Result<(), CodegenError> {
        if k.dims.contains(&0) {
            return Ok(());
        }
        let first: Vec<i64> = strides.iter().map(|s| s.first().copied().unwrap_or(0)).collect();
        let mut rest: Vec<Vec<i64>> = strides.iter().map(|s| s.get(1..).unwrap_or_default().to_vec()).collect();
        let dims = simplify(k.dims.get(1..).unwrap_or_default(), &mut rest);
        self.emit_nest(k, affines, &dims, &rest, Some((row, &first)))
    }

    /// Run `body` inside loops over `dims` (counters appended to `idx`),
    /// carrying `carried` from one iteration to the next; returns the values
    /// after the last.
    fn nest_carried(
        &mut self,
        dims: &[usize],
        idx: &mut Vec<Value>,
        carried: Vec<Value>,
        body: &mut CarryBody<'_, 'a, 'b>,
    ) -> Result<Vec<Value>, CodegenError> {
        let Some((&d, rest)) = dims.split_first() else {
            return body(self, idx, carried);
        };
        if d <= 1 {
            let z = self.b.ins().iconst(I64, 0);
            idx.push(z);
            let out = self.nest_carried(rest, idx, carried, body)?;
            idx.pop();
            return Ok(out);
        }
        let (blk, i, params) = self.loop_begin(&carried);
        idx.push(i);
        let out = self.nest_carried(rest, idx, params, body)?;
        idx.pop();
        Ok(self.loop_end(blk, i, 1, d as i64, &out))
    }

    /// Per-row facts, with the row invariants computed here (before the row's loop).
    fn row_setup<'k>(&mut self, k: &'k MapKernel, inner: Vec<i64>, bases: Vec<Value>) -> Result<Row<'k>, CodegenError> {
        let nn = k.nodes.len();
        let (needed, inv) = needed_and_invariant(k, &inner);
        let mut row = Row { k, inner, bases, needed, pre: vec![None; nn], recip: vec![None; nn] };
        let zero = self.b.ins().iconst(I64, 0);
        let at0 = At { pos: zero, g: 0, lanes: 4, skip: 0 };
        let hoisted: Vec<usize> = (0..nn).filter(|&i| row.needed[i] && inv[i]).collect();
        for i in hoisted {
            let v = self.eval_node(&row, i, &row.pre, at0)?;
            row.pre[i] = Some(v);
        }
        for (i, &invariant) in inv.iter().enumerate() {
            if let (true, false, Some(&ENode::Binary(BinaryOp::Div, _, c))) = (row.needed[i], invariant, k.nodes.get(i)) {
                if let (Some(d), None) = (row.pre.get(c).copied().flatten(), row.recip.get(c).copied().flatten()) {
                    let one = math::splat(self.b, 1.0);
                    row.recip[c] = Some(self.b.ins().fdiv(one, d));
                }
            }
        }
        Ok(row)
    }

    /// The innermost axis of a map kernel: `n` elements.
    fn emit_row(&mut self, k: &MapKernel, n: usize, inner: Vec<i64>, bases: Vec<Value>) -> Result<(), CodegenError> {
        let groups = n / 4;
        let tail = (n % 4) as u8;
        let unroll = self.unroll(k, &inner, groups);
        let row = self.row_setup(k, inner, bases)?;
        if let Some(kind) = k.acc.filter(|_| row.inner.first() == Some(&0)) {
            let accs = (0..unroll).map(|_| math::splat(self.b, math::identity(kind))).collect();
            let s = math::scalar(self.b, math::identity(kind));
            let (accs, s) = self.horiz_row(&row, n, kind, accs, s)?;
            let out = row.bases.first().copied().ok_or_else(|| CodegenError::Cranelift("no output".into()))?;
            return self.finish_horiz(kind, accs, s, (k.out.storage, out));
        }
        let iters = groups / unroll;
        let zero = self.b.ins().iconst(I64, 0);
        let mut done = 0;
        if iters >= 2 {
            let (blk, pos, _) = self.loop_begin(&[]);
            let ats: Vec<At> = (0..unroll).map(|j| At { pos, g: 4 * j as i64, lanes: 4, skip: 0 }).collect();
            self.groups(&row, &ats)?;
            self.loop_end(blk, pos, 4 * unroll as i64, (4 * iters * unroll) as i64, &[]);
            done = iters * unroll;
        }
        let mut rest: Vec<At> = (done..groups).map(|j| At { pos: zero, g: 4 * j as i64, lanes: 4, skip: 0 }).collect();
        if tail > 0 {
            // An overlapping last group, unless the kernel reads what it writes
            // (an in-place update would apply twice to the repeated lanes) or
            // accumulates (reloading the lanes just stored, shifted, would
            // defeat store-to-load forwarding).
            let writes = std::iter::once(&k.out).chain(k.extra.iter().map(|(a, _)| a)).filter_map(|a| a.storage);
            let aliased = writes.into_iter().any(|w| k.operands.iter().any(|o| o.storage == Some(w)));
            rest.push(if n >= 4 && k.acc.is_none() && !aliased {
                At { pos: zero, g: n as i64 - 4, lanes: 4, skip: 4 - tail }
            } else {
                At { pos: zero, g: 4 * groups as i64, lanes: tail, skip: 0 }
            });
        }
        self.groups(&row, &rest)
    }

    /// A row reduced along its `n` elements: groups of four folded into the
    /// vector accumulators `accs` (`accs.len()` groups per iteration), the
    /// tail into the scalar `s`; returns both.
    fn horiz_row(
        &mut self,
        row: &Row,
        n: usize,
        kind: ReduceKind,
        accs: Vec<Value>,
        s: Value,
    ) -> Result<(Vec<Value>, Value), CodegenError> {
        let groups = n / 4;
        let tail = (n % 4) as u8;
        let unroll = accs.len().max(1);
        let iters = groups / unroll;
        let zero = self.b.ins().iconst(I64, 0);
        let mut accs = accs;
        let mut done = 0;
        if iters >= 2 {
            let (blk, pos, mut cur) = self.loop_begin(&accs);
            let ats: Vec<At> = (0..unroll).map(|j| At { pos, g: 4 * j as i64, lanes: 4, skip: 0 }).collect();
            let vals = self.eval_groups(row, &ats)?;
            for (j, (v, &at)) in vals.iter().zip(&ats).enumerate() {
                self.finish_group(row, at, v, Some(kind), cur.get_mut(j))?;
            }
            accs = self.loop_end(blk, pos, 4 * unroll as i64, (4 * iters * unroll) as i64, &cur);
            done = iters * unroll;
        }
        let ats: Vec<At> = (done..groups).map(|j| At { pos: zero, g: 4 * j as i64, lanes: 4, skip: 0 }).collect();
        let vals = self.eval_groups(row, &ats)?;
        for (j, (v, &at)) in (done..).zip(vals.iter().zip(&ats)) {
            self.finish_group(row, at, v, Some(kind), accs.get_mut(j % unroll))?;
        }
        let mut s = s;
        if tail > 0 && n >= 4 && !accs.is_empty() {
            let tail_at = At { pos: zero, g: n as i64 - 4, lanes: 4, skip: 4 - tail };
            let vals = self.eval_group(row, tail_at)?;
            self.finish_group(row, tail_at, &vals, Some(kind), accs.first_mut())?;
        } else if tail > 0 {
            let tail_at = At { pos: zero, g: 4 * groups as i64, lanes: tail, skip: 0 };
            let vals = self.eval_group(row, tail_at)?;
            let v = vals.get(row.k.root).copied().flatten().ok_or_else(|| CodegenError::Cranelift("empty expression".into()))?;
            s = math::reduce_lanes(self.b, kind, v, tail, s);
        }
        Ok((accs, s))
    }

    /// Fold the accumulators of `horiz_row` into one value and combine it into the output element at `out`.
    fn finish_horiz(
        &mut self,
        kind: ReduceKind,
        accs: Vec<Value>,
        s: Value,
        (storage, out): (Option<usize>, Value),
    ) -> Result<(), CodegenError> {
        let mut s = s;
        let mut it = accs.into_iter();
        if let Some(first) = it.next() {
            let v = it.fold(first, |acc, v| math::combine(self.b, kind, acc, v));
            s = math::reduce_lanes(self.b, kind, v, 4, s);
        }
        let out = self.checked(storage, out, 0, 4);
        let old = self.b.ins().load(F32, mem(), out, 0);
        let new = math::combine_scalar(self.b, kind, old, s);
        self.b.ins().store(mem(), new, out, 0);
        Ok(())
    }

    /// Groups evaluated side by side (`eval_groups`), each then stored or
    /// accumulated into the output.
    fn groups(&mut self, row: &Row, ats: &[At]) -> Result<(), CodegenError> {
        let vals = self.eval_groups(row, ats)?;
        for (v, &at) in vals.iter().zip(ats) {
            self.finish_group(row, at, v, None, None)?;
        }
        Ok(())
    }

    /// One evaluated group: store, accumulate into the output, or (for a
    /// reduction along the innermost axis) fold into the register `acc`.
    fn finish_group(
        &mut self,
        row: &Row,
        at: At,
        vals: &[Option<Value>],
        horiz: Option<ReduceKind>,
        acc: Option<&mut Value>,
    ) -> Result<(), CodegenError> {
        let mut v = vals.get(row.k.root).copied().flatten().ok_or_else(|| CodegenError::Cranelift("empty expression".into()))?;
        if let Some(kind) = row.k.acc {
            v = self.skip_lanes(v, at.skip, kind);
        }
        if let (Some(kind), Some(acc)) = (horiz, acc) {
            *acc = math::combine(self.b, kind, *acc, v);
            return Ok(());
        }
        let (s, out) = (row.inner.first().copied().unwrap_or(1), row.bases.first().copied());
        let out = out.ok_or_else(|| CodegenError::Cranelift("no output".into()))?;
        let v = match row.k.acc {
            Some(kind) => {
                let old = self.load(row.k.out.storage, s, out, at);
                math::combine(self.b, kind, old, v)
            }
            None => v,
        };
        self.store(row.k.out.storage, s, out, at, v);
        let nops = row.k.operands.len();
        for (e, (extra, node)) in row.k.extra.iter().enumerate() {
            let (s, base) = (row.inner.get(1 + nops + e).copied().unwrap_or(1), row.bases.get(1 + nops + e).copied());
            let base = base.ok_or_else(|| CodegenError::Cranelift("no extra output".into()))?;
            let x = vals.get(*node).copied().flatten().ok_or_else(|| CodegenError::Cranelift("extra output not computed".into()))?;
            self.store(extra.storage, s, base, at, x);
        }
        Ok(())
    }

    /// `v` with its first `skip` lanes replaced by the identity of `kind`.
    fn skip_lanes(&mut self, v: Value, skip: u8, kind: ReduceKind) -> Value {
        if skip == 0 {
            return v;
        }
        let bytes: Vec<u8> = (0..4u8).flat_map(|l| if l < skip { [0u8; 4] } else { [0xff; 4] }).collect();
        let c = self.b.func.dfg.constants.insert(ConstantData::from(bytes));
        let mask = self.b.ins().vconst(F32X4, c);
        let ident = math::splat(self.b, math::identity(kind));
        self.b.ins().bitselect(mask, v, ident)
    }

    fn eval_group(&mut self, row: &Row, at: At) -> Result<Vec<Option<Value>>, CodegenError> {
        let mut vals = self.eval_groups(row, &[at])?;
        vals.pop().ok_or_else(|| CodegenError::Cranelift("no group".into()))
    }

    /// The expression at each of `ats`, node by node across the groups, so
    /// that a function with a sixteen-lane form (`Wide`) takes four groups
    /// per call.
    fn eval_groups(&mut self, row: &Row, ats: &[At]) -> Result<Vec<Vec<Option<Value>>>, CodegenError> {
        let mut vals: Vec<Vec<Option<Value>>> = ats.iter().map(|_| row.pre.clone()).collect();
        for i in 0..row.pre.len() {
            if !row.needed[i] || row.pre[i].is_some() {
                continue;
            }
            if let Some((call, a)) = self.wide_call(row, i) {
                for chunk in vals.chunks_mut(4) {
                    let args = chunk.iter().map(|v| v.get(a).copied().flatten()).collect::<Option<Vec<Value>>>();
                    let args = args.ok_or_else(|| CodegenError::Cranelift("operand not ready".into()))?;
                    for (v, y) in chunk.iter_mut().zip(self.call_wide(call, &args)) {
                        v[i] = Some(y);
                    }
                }
                continue;
            }
            for (v, &at) in vals.iter_mut().zip(ats) {
                let x = self.eval_node(row, i, v, at)?;
                v[i] = Some(x);
            }
        }
        Ok(vals)
    }

    /// The sixteen-lane function (with the stack slot it reads) and the
    /// operand of node `i`, if it has one.
    fn wide_call(&self, row: &Row, i: usize) -> Option<((FuncRef, StackSlot), usize)> {
        let wide = self.wide.as_ref()?;
        match row.k.nodes.get(i) {
            Some(&ENode::Unary(u, a)) => wide.func(u).map(|f| ((f, wide.slot), a)),
            _ => None,
        }
    }

    /// `f` of up to four groups through the stack slot (the slot's unused
    /// groups repeat the first, so every lane holds a value).
    fn call_wide(&mut self, (f, slot): (FuncRef, StackSlot), args: &[Value]) -> Vec<Value> {
        let p = self.b.ins().stack_addr(I64, slot, 0);
        for j in 0..4 {
            if let Some(&x) = args.get(j).or(args.first()) {
                self.b.ins().store(mem(), x, p, 16 * j as i32);
            }
        }
        self.b.ins().call(f, &[p]);
        (0..args.len()).map(|j| self.b.ins().load(F32X4, mem(), p, 16 * j as i32)).collect()
    }

    /// Groups of four per iteration of a row's loop: four when the row's
    /// expression calls a sixteen-lane function (one call per iteration), else
    /// by the expression's size.
    fn unroll(&self, k: &MapKernel, inner: &[i64], groups: usize) -> usize {
        let (needed, inv) = needed_and_invariant(k, inner);
        // Nodes evaluated per group: those that depend on the innermost index.
        let per_group: Vec<&ENode> = k.nodes.iter().enumerate().filter(|&(i, _)| needed[i] && !inv[i]).map(|(_, n)| n).collect();
        let wide = self.wide.as_ref().is_some_and(|w| per_group.iter().any(|n| matches!(n, ENode::Unary(u, _) if w.func(*u).is_some())));
        if wide {
            return 4.min(groups.max(1));
        }
        unroll_for(per_group.len(), groups)
    }

    fn eval_node(&mut self, row: &Row, i: usize, vals: &[Option<Value>], at: At) -> Result<Value, CodegenError> {
        let get = |j: usize| vals.get(j).copied().flatten().ok_or_else(|| CodegenError::Cranelift("operand not ready".into()));
        let nodes = &row.k.nodes;
        Ok(match nodes.get(i).copied().ok_or_else(|| CodegenError::Cranelift("bad node".into()))? {
            ENode::Const(bits) => math::splat(self.b, f32::from_bits(bits)),
            ENode::Operand(o) => {
                let a = row.k.operands.get(o).ok_or_else(|| CodegenError::Cranelift("bad operand".into()))?;
                let (s, base) = (row.inner.get(o + 1).copied().unwrap_or(0), row.bases.get(o + 1).copied());
                let base = base.ok_or_else(|| CodegenError::Cranelift("bad operand".into()))?;
                self.load(a.storage, s, base, at)
            }
            ENode::Unary(u, a) => math::unary(self.b, u, get(a)?),
            ENode::Binary(BinaryOp::Pow, a, c) => {
                let x = get(a)?;
                let special = match nodes.get(c) {
                    Some(ENode::Const(bits)) => math::pow_const(self.b, x, f32::from_bits(*bits)),
                    _ => None,
                };
                match special {
                    Some(v) => v,
                    None => math::pow(self.b, x, get(c)?),
                }
            }
            ENode::Binary(BinaryOp::Div, a, c) if row.recip.get(c).copied().flatten().is_some() => {
                let r = row.recip.get(c).copied().flatten().ok_or_else(|| CodegenError::Cranelift("no reciprocal".into()))?;
                self.b.ins().fmul(get(a)?, r)
            }
            ENode::Binary(op, a, c) => math::binary(self.b, op, get(a)?, get(c)?),
        })
    }

    /// `base + bytes` as an (address, immediate offset) pair.
    fn addr(&mut self, base: Value, bytes: i64) -> (Value, i32) {
        match i32::try_from(bytes) {
            Ok(o) => (base, o),
            Err(_) => (self.b.ins().iadd_imm_s(base, bytes), 0),
        }
    }

    /// The group's elements of an operand with innermost stride `s`: a load
    /// from the memory of `storage`, or (no storage) the iota value `base + index·s`.
    fn load(&mut self, storage: Option<usize>, s: i64, base: Value, at: At) -> Value {
        if storage.is_none() {
            let p = self.b.ins().imul_imm_s(at.pos, s);
            let p = self.b.ins().iadd(base, p);
            let p = self.b.ins().iadd_imm_s(p, at.g * s);
            let f = self.b.ins().fcvt_from_sint(F32, p);
            let v = self.b.ins().splat(F32X4, f);
            if s == 0 {
                return v;
            }
            let lanes: Vec<u8> = (0..4).flat_map(|l| ((l * s) as f32).to_le_bytes()).collect();
            let c = self.b.func.dfg.constants.insert(ConstantData::from(lanes));
            let steps = self.b.ins().vconst(F32X4, c);
            return self.b.ins().fadd(v, steps);
        }
        if s == 0 {
            let a = self.checked(storage, base, 0, 4);
            let x = self.b.ins().load(F32, mem(), a, 0);
            return self.b.ins().splat(F32X4, x);
        }
        let p = self.b.ins().imul_imm_s(at.pos, 4 * s);
        let row = self.b.ins().iadd(base, p);
        if s == 1 && at.lanes == 4 {
            let (a, o) = self.addr(row, 4 * at.g);
            let a = self.checked(storage, a, o, 16);
            return self.b.ins().load(F32X4, mem(), a, o);
        }
        let mut v = math::splat(self.b, 0.0);
        for l in 0..at.lanes {
            let (a, o) = self.addr(row, 4 * s * (at.g + i64::from(l)));
            let a = self.checked(storage, a, o, 4);
            let x = self.b.ins().load(F32, mem(), a, o);
            v = self.b.ins().insertlane(v, x, l);
        }
        v
    }

    /// Store the group `v` to the memory of `storage` (innermost stride `s`).
    fn store(&mut self, storage: Option<usize>, s: i64, base: Value, at: At, v: Value) {
        let p = self.b.ins().imul_imm_s(at.pos, 4 * s);
        let row = self.b.ins().iadd(base, p);
        if s == 1 && at.lanes == 4 {
            let (a, o) = self.addr(row, 4 * at.g);
            let a = self.checked(storage, a, o, 16);
            self.b.ins().store(mem(), v, a, o);
            return;
        }
        for l in 0..at.lanes {
            let x = self.b.ins().extractlane(v, l);
            let (a, o) = self.addr(row, 4 * s * (at.g + i64::from(l)));
            let a = self.checked(storage, a, o, 4);
            self.b.ins().store(mem(), x, a, o);
        }
    }

    /// `addr`, in a bounds-checked build only if the `size` bytes at `addr +
    /// off` lie inside the buffer of `storage` (for a view of a sequence, the
    /// sequence's); else, after reporting the access (`nnc_bounds_fault`),
    /// the address that puts them at the buffer's start, so nothing outside
    /// it is touched. Unchecked builds and iota values: `addr`.
    fn checked(&mut self, storage: Option<usize>, addr: Value, off: i32, size: i64) -> Value {
        let (Some(bounds), Some(s)) = (&self.bounds, storage) else { return addr };
        let (fault, record, kernel) = (bounds.fault, bounds.record, self.kernel as i64);
        let target = self.views.iter().rev().find(|v| v.0 == s).map_or(s, |v| v.2);
        let len = bounds.lens.get(target).copied().unwrap_or(0) as i64;
        let start = self.offsets.get(target).copied().unwrap_or(0) as i64;
        let lo = self.b.ins().iadd_imm_s(self.arena, start * 4);
        let hi = self.b.ins().iadd_imm_s(lo, len * 4);
        let first = self.b.ins().iadd_imm_s(addr, i64::from(off));
        let end = self.b.ins().iadd_imm_s(first, size);
        let below = self.b.ins().icmp(IntCC::UnsignedLessThan, first, lo);
        let above = self.b.ins().icmp(IntCC::UnsignedGreaterThan, end, hi);
        let bad = self.b.ins().bor(below, above);
        let (report, ok) = (self.b.create_block(), self.b.create_block());
        self.b.ins().brif(bad, report, &[], ok, &[]);
        self.b.switch_to_block(report);
        self.b.set_cold_block(report);
        let bytes = self.b.ins().isub(first, lo);
        let elements = self.b.ins().sshr_imm_s(bytes, 2);
        let [record, kernel, target] = [record, kernel, target as i64].map(|c| self.b.ins().iconst(I64, c));
        self.b.ins().call(fault, &[record, kernel, target, elements]);
        self.b.ins().jump(ok, &[]);
        self.b.switch_to_block(ok);
        let safe = self.b.ins().iadd_imm_s(lo, -i64::from(off));
        self.b.ins().select(bad, safe, addr)
    }

    // ---- library calls ----------------------------------------------------------------

    /// The addresses of a gathered operand's row and column offset tables (0, 0 if strided).
    fn gather_tables(&self, op: &MatOperand) -> Result<[i64; 2], CodegenError> {
        let Some([r, c]) = op.gather else { return Ok([0, 0]) };
        let at = |t: usize| self.tables.get(t).copied().ok_or_else(|| CodegenError::Cranelift(format!("no offset table {t}")));
        Ok([at(r)?, at(c)?])
    }

    fn mat_ptr(&mut self, op: &MatOperand, idx: &[Value]) -> Result<Value, CodegenError> {
        self.base(Some(op.storage), op.off, &op.batch, idx)
    }

    fn emit_matmul(
        &mut self,
        batch: &[usize],
        mkn: [usize; 3],
        a: &MatOperand,
        b: &MatOperand,
        c: &MatOperand,
    ) -> Result<(), CodegenError> {
        let [m, _, n] = mkn;
        if m == 0 || n == 0 || batch.contains(&0) {
            return Ok(());
        }
        match (self.rows, batch.split_first()) {
            // A batch of products split across threads (`batch_split`): this
            // piece's range of the first batch dim, each product on one thread.
            (Some((lo, hi)), Some((_, inner))) => self.row_range(lo, hi, &mut |em, i| {
                em.loop_nest(inner, &mut |em, rest| {
                    let idx: Vec<Value> = std::iter::once(i).chain(rest.iter().copied()).collect();
                    em.one_product(mkn, [a, b, c], &idx, None)
                })
            }),
            // In a row-split loop (`loops`): this thread's rows of A and C.
            (rows, _) => self.loop_nest(batch, &mut |em, idx| em.one_product(mkn, [a, b, c], idx, rows)),
        }
    }

    /// One `nnc_sgemm` call at the batch index `idx`. On a piece's thread (a
    /// batch range, or `rows` of a row-split loop) it runs on that thread only.
    fn one_product(
        &mut self,
        [m, k, n]: [usize; 3],
        [a, b, c]: [&MatOperand; 3],
        idx: &[Value],
        rows: Option<(Value, Value)>,
    ) -> Result<(), CodegenError> {
        let (mut pa, pb, mut pc) = (self.mat_ptr(a, idx)?, self.mat_ptr(b, idx)?, self.mat_ptr(c, idx)?);
        let [ro, co] = self.gather_tables(b)?;
        // Threads: 0 for the whole pool; 1 on a piece's thread.
        let threads = if self.rows.is_some() { 1 } else { 0 };
        let ints = [m as i64, k as i64, n as i64, a.rs, a.cs, b.rs, b.cs, c.rs, c.cs, ro, co, threads];
        let mut v: Vec<Value> = ints.iter().map(|&x| self.b.ins().iconst(I64, x)).collect();
        if let Some((lo, hi)) = rows {
            pa = self.row_offset(pa, lo, a.rs);
            pc = self.row_offset(pc, lo, c.rs);
            v[0] = self.b.ins().isub(hi, lo);
        }
        let args = [v[0], v[1], v[2], pa, v[3], v[4], pb, v[5], v[6], pc, v[7], v[8], v[9], v[10], v[11]];
        self.b.ins().call(self.sgemm, &args);
        Ok(())
    }

    /// Adam's update as one call of `nnc_adam` (see `adam::recognise`).
    pub fn emit_adam(&mut self, a: &Adam, adam: FuncRef) -> Result<(), CodegenError> {
        let mut args = vec![self.b.ins().iconst(I64, a.n as i64)];
        for x in [&a.p, &a.g, &a.m, &a.v, &a.out_p, &a.out_m, &a.out_v, &a.lr, &a.c1, &a.c2] {
            args.push(self.base(x.storage, x.off, &[], &[])?);
        }
        for k in a.k {
            args.push(self.b.ins().iconst(I64, i64::from(k.to_bits())));
        }
        self.b.ins().call(adam, &args);
        Ok(())
    }

    /// Two unbatched products as one call of `nnc_sgemm_pair` (see `pairable`).
    pub fn emit_matmul_pair(&mut self, first: &Kernel, second: &Kernel, pair: FuncRef) -> Result<(), CodegenError> {
        let mut args = Vec::with_capacity(28);
        let mut tables = Vec::with_capacity(4);
        for k in [first, second] {
            let Kernel::MatMul { m, k, n, a, b, c, .. } = k else {
                return Err(CodegenError::Cranelift("paired kernel is not a product".into()));
            };
            let (pa, pb, pc) = (self.mat_ptr(a, &[])?, self.mat_ptr(b, &[])?, self.mat_ptr(c, &[])?);
            let ints = [*m as i64, *k as i64, *n as i64, a.rs, a.cs, b.rs, b.cs, c.rs, c.cs];
            let v: Vec<Value> = ints.iter().map(|&x| self.b.ins().iconst(I64, x)).collect();
            args.extend([v[0], v[1], v[2], pa, v[3], v[4], pb, v[5], v[6], pc, v[7], v[8]]);
            tables.extend(self.gather_tables(b)?);
        }
        for t in tables {
            args.push(self.b.ins().iconst(I64, t));
        }
        self.b.ins().call(pair, &args);
        Ok(())
    }

    fn emit_solve(&mut self, n: usize, k: usize, a: &MatOperand, b: &MatOperand, x: &MatOperand) -> Result<(), CodegenError> {
        if n == 0 || k == 0 {
            return Ok(());
        }
        let (pa, pb, px) = (self.mat_ptr(a, &[])?, self.mat_ptr(b, &[])?, self.mat_ptr(x, &[])?);
        let ints = [n as i64, k as i64, a.rs, a.cs, b.rs, b.cs];
        let v: Vec<Value> = ints.iter().map(|&i| self.b.ins().iconst(I64, i)).collect();
        let args = [v[0], v[1], pa, v[2], v[3], pb, v[4], v[5], px, self.scratch];
        self.b.ins().call(self.solve, &args);
        Ok(())
    }
}
