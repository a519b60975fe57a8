//! A scan's loop, made fast: run on every thread at once, each thread for its
//! own rows of the batch through all the steps (`splittable`), with the
//! transposed weights its products read laid out once before the loop
//! (`hoist_transposed_weights`), and with its sequences read and its result
//! written where they are rather than copied at every step (`steps_in_place`).
//!
//! A scan body treats the rows of its state independently (`ops::scan::
//! check_rowwise`), so rows `[lo, hi)` of every step depend only on rows
//! `[lo, hi)` of the previous one. Split that way, the threads never wait for
//! each other inside the loop: there is one hand-off for the whole scan instead
//! of one per parallel product or elementwise loop per step (a language model's
//! 64 steps × a dozen small kernels), and the step's elementwise work, too small
//! to split on its own, runs on every core.
//!
//! The emitter runs each body kernel for a row range (`Emitter::rows`); this
//! module decides whether every kernel of a body can: each must touch only its
//! own rows of the values that carry the batch and only read the others (the
//! weights, from outside the loop).

use super::kernel::{Affine, ExprBuilder, Kernel, MapKernel, MatOperand, Storage, StorageId, StorageKind, Strip};

/// Whether the loop `body` (kernels of a scan planned for `rows` rows) can run
/// as independent row ranges: `batched[s]` says whether storage `s` holds a
/// value with the rows as its first axis (`[rows, ..]`, row-major).
pub(crate) fn splittable(body: &[Kernel], rows: usize, storages: &[Storage], batched: &[bool]) -> bool {
    if rows < 2 {
        return false;
    }
    let is_batched = |s: usize| batched.get(s).copied().unwrap_or(false);
    // The row stride of a batched storage.
    let row_len = |s: usize| storages.get(s).map_or(0, |st| (st.len / rows) as i64);
    // A batched operand must be read at its own row: first stride = row
    // stride, starting inside the first row.
    let in_first_row = |s: usize, off: i64| (0..row_len(s)).contains(&off);
    let own_rows = |a: &Affine| match a.storage {
        Some(s) if is_batched(s) => a.strides.first() == Some(&row_len(s)) && in_first_row(s, a.off),
        _ => true,
    };
    let map_ok = |m: &MapKernel| {
        let outs = std::iter::once(&m.out).chain(m.extra.iter().map(|(a, _)| a));
        let writes_rows = outs.clone().all(|a| a.storage.is_some_and(is_batched));
        m.dims.first() == Some(&rows) && writes_rows && outs.chain(&m.operands).all(own_rows)
    };
    let mat_ok = |o: &MatOperand, want_rows: bool| {
        let rows_of = |o: &MatOperand| is_batched(o.storage) && o.rs == row_len(o.storage) && in_first_row(o.storage, o.off);
        o.gather.is_none() && if want_rows { rows_of(o) } else { !is_batched(o.storage) }
    };
    let strip_ok = |s: &Strip| !is_batched(s.storage) || (s.row_stride == row_len(s.storage) && in_first_row(s.storage, s.off));
    body.iter().all(|k| match k {
        Kernel::Map(m) => map_ok(m),
        Kernel::Rows { rows: r, kernels } => *r == rows && kernels.iter().all(map_ok),
        Kernel::MatMul { batch, m, a, b, c, .. } => {
            batch.is_empty() && *m == rows && mat_ok(a, true) && mat_ok(b, false) && mat_ok(c, true)
        }
        Kernel::StepCopy { rows: r, src, dst, .. } => *r == rows && strip_ok(src) && strip_ok(dst),
        _ => false,
    })
}

/// A transposed weight as a product reads it: storage, offset, column stride, k, n.
type WeightView = (usize, i64, i64, usize, usize);

/// Make every product in the loop `body` whose B is a transposed weight (read
/// down its columns: row stride 1) read a row-major copy instead, written by
/// a kernel returned here to run before the loop. The backward step's `G·Wᵀ`
/// otherwise repacks (transposes) the whole weight at every step and on every
/// thread; row-major, a product with few rows reads it in place.
pub(crate) fn hoist_transposed_weights(
    body: &mut [Kernel],
    storages: &mut Vec<Storage>,
    owners: &mut Vec<Option<crate::ir::ValueId>>,
) -> Vec<Kernel> {
    let written: Vec<usize> = body.iter().flat_map(Kernel::writes).collect();
    // (weight storage, offset, column stride, k, n) → its row-major copy.
    let mut copies: Vec<(WeightView, usize)> = Vec::new();
    let mut before = Vec::new();
    for kern in body.iter_mut() {
        let Kernel::MatMul { batch, k, n, b, .. } = kern else { continue };
        if !batch.is_empty() || b.gather.is_some() || b.rs != 1 || b.cs == 1 || written.contains(&b.storage) {
            continue;
        }
        let key = (b.storage, b.off, b.cs, *k, *n);
        let copy = match copies.iter().find(|(c, _)| *c == key) {
            Some(&(_, s)) => s,
            None => {
                storages.push(Storage { len: *k * *n, kind: StorageKind::Temp });
                owners.push(None);
                let s = storages.len() - 1;
                let mut eb = ExprBuilder::new(1);
                let root = eb.operand(Affine { storage: Some(b.storage), off: b.off, strides: vec![b.rs, b.cs] });
                let out = Affine { storage: Some(s), off: 0, strides: vec![*n as i64, 1] };
                before.push(eb.finish(vec![*k, *n], out, root, None));
                copies.push((key, s));
                s
            }
        };
        *b = MatOperand { storage: copy, off: 0, batch: Vec::new(), rs: *n as i64, cs: 1, gather: None };
    }
    before
}

/// Tests only: allow `steps_in_place` (default true), to compare the loops
/// with and without it.
pub static IN_PLACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// A body buffer that is not one: at step `t` of its loop, its rows are those
/// of the storage `of` from `off + t·step`, as far apart as the sequence's
/// (the body's kernels carry that row stride): a scan's sequence read in
/// place, or its result written in place.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepView {
    pub storage: StorageId,
    pub of: StorageId,
    pub off: i64,
    pub step: i64,
    /// The body writes the view (the scan's result), else only reads it.
    pub written: bool,
}

/// Replace the loop `body`'s step copies between a body buffer and a
/// sequence by views of the sequence (`StepView`), where every kernel reaches
/// the buffer a row at a time: the kernels then read (or write) the sequence
/// where it is, rows `row_stride` apart, instead of through a copy at every
/// step. The buffers turned into views take no space (`len` 0). `state` is the
/// body's state buffer, which is never a view (the step writes it back).
pub(crate) fn steps_in_place(body: &mut Vec<Kernel>, rows: usize, storages: &mut [Storage], state: StorageId) -> Vec<StepView> {
    let mut views = Vec::new();
    if !IN_PLACE.load(std::sync::atomic::Ordering::Relaxed) {
        return views;
    }
    let mut i = 0;
    while let Some(kern) = body.get(i) {
        let Kernel::StepCopy { rows: r, width, src, dst } = *kern else {
            i += 1;
            continue;
        };
        // A sequence into a body buffer (an input), or a body buffer into a
        // sequence (the result).
        let (buffer, seq, written) = match (src.step, dst.step) {
            (0, 0) => {
                i += 1;
                continue;
            }
            (_, 0) => (dst, src, false),
            (0, _) => (src, dst, true),
            _ => {
                i += 1;
                continue;
            }
        };
        let others = body.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, k)| k);
        let w = width as i64;
        let is_own_buffer = buffer.off == 0 && buffer.row_stride == w && buffer.storage != state;
        let written_elsewhere = others.clone().any(|k| k.writes().contains(&buffer.storage));
        let copies_into = others.clone().any(|k| matches!(k, Kernel::StepCopy { dst, .. } if dst.storage == buffer.storage));
        let fits = r == rows && is_own_buffer && written == written_elsewhere && !copies_into;
        if !fits || !others.clone().all(|k| by_rows(k, buffer.storage, rows, w)) {
            i += 1;
            continue;
        }
        body.remove(i);
        for k in body.iter_mut() {
            set_row_stride(k, buffer.storage, seq.row_stride);
        }
        if let Some(st) = storages.get_mut(buffer.storage) {
            st.len = 0;
        }
        views.push(StepView { storage: buffer.storage, of: seq.storage, off: seq.off, step: seq.step, written });
    }
    views
}

/// Whether `k` reaches storage `s` only a row at a time: every access of it
/// steps `w` floats per row of the loop's `rows` and starts in the first row.
/// Products do not take views (a step's products read values it computes,
/// or the weights).
fn by_rows(k: &Kernel, s: StorageId, rows: usize, w: i64) -> bool {
    let row_access = |off: i64, first: Option<i64>| first == Some(w) && (0..w).contains(&off);
    let map_ok = |m: &MapKernel| {
        let outs = std::iter::once(&m.out).chain(m.extra.iter().map(|(a, _)| a));
        let mut of_s = outs.chain(&m.operands).filter(|a| a.storage == Some(s)).peekable();
        of_s.peek().is_none() || (m.dims.first() == Some(&rows) && of_s.all(|a| row_access(a.off, a.strides.first().copied())))
    };
    match k {
        Kernel::Map(m) => map_ok(m),
        Kernel::Rows { rows: r, kernels } => kernels.iter().all(|m| !touches(m, s) || (*r == rows && map_ok(m))),
        Kernel::StepCopy { rows: r, src, dst, .. } => {
            [src, dst].into_iter().all(|st| st.storage != s || (*r == rows && st.step == 0 && row_access(st.off, Some(st.row_stride))))
        }
        _ => !k.reads().contains(&s) && !k.writes().contains(&s),
    }
}

fn touches(m: &MapKernel, s: StorageId) -> bool {
    std::iter::once(&m.out).chain(&m.operands).chain(m.extra.iter().map(|(a, _)| a)).any(|a| a.storage == Some(s))
}

/// Every access of storage `s` in `k` (row-shaped: `by_rows`) with rows
/// `row_stride` floats apart.
fn set_row_stride(k: &mut Kernel, s: StorageId, row_stride: i64) {
    let fix_map = |m: &mut MapKernel| {
        let outs = std::iter::once(&mut m.out).chain(m.extra.iter_mut().map(|(a, _)| a));
        for a in outs.chain(m.operands.iter_mut()).filter(|a| a.storage == Some(s)) {
            if let Some(first) = a.strides.first_mut() {
                *first = row_stride;
            }
        }
    };
    match k {
        Kernel::Map(m) => fix_map(m),
        Kernel::Rows { kernels, .. } => kernels.iter_mut().for_each(fix_map),
        Kernel::StepCopy { src, dst, .. } => [src, dst].into_iter().filter(|st| st.storage == s).for_each(|st| st.row_stride = row_stride),
        _ => {}
    }
}
