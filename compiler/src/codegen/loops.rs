//! A scan's loop, made fast: run on every thread at once, each thread for its
//! own rows of the batch through all the steps (`splittable`), and with the
//! transposed weights its products read laid out once before the loop
//! (`hoist_transposed_weights`).
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

use super::kernel::{Affine, ExprBuilder, Kernel, MapKernel, MatOperand, Storage, StorageKind, Strip};

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
