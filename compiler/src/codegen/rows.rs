//! Row fusion: consecutive map kernels that share their first axis become one
//! loop over it, running row `r` of each kernel in turn. A softmax with its
//! cross-entropy (row max, exp, row sum, log, loss, gradient: a dozen small
//! kernels over `[batch, classes]` and `[batch, 1]`) thus becomes one pass over
//! the batch whose rows stay in L1, as do bias + activation and their
//! gradients.
//!
//! Legal when no kernel of a group reads, at row `r`, anything another kernel
//! of the group writes at a different row: every buffer written in the group
//! is accessed with one row stride, each access's row `r` inside the same
//! window of that stride, or is a cross-row accumulator (a sum over
//! the first axis) that nothing else in the group reads. Constant fills (the
//! starting values of accumulators) that touch nothing in the group move in
//! front of it; other kernels that cannot join (the mean loss, read from a
//! finished sum) move behind it when nothing joining later depends on them.
//!
//! Large kernels fuse too (a softmax or layer norm over `[32, 64, 512]`):
//! the group then runs its rows across threads, each row's values still in
//! cache from one kernel to the next, instead of one full pass over memory
//! per kernel. A cross-row accumulation (a bias or gain gradient's column
//! sums) joins such a group as a per-row partial sum into a new buffer, whose
//! rows are added up after the group (`partial_sums`): the columns are summed
//! while the row is in cache, not read again from memory.

use super::emit::parallel_elements;
use super::kernel::{Affine, ENode, Kernel, MapKernel, Storage, StorageId, StorageKind};
use crate::ops::ReduceKind;

/// Fuse runs of row-compatible map kernels in `kernels`; `storages` grows by
/// the partial-sum buffers this adds.
pub(crate) fn fuse(kernels: Vec<Kernel>, storages: &mut Vec<Storage>) -> Vec<Kernel> {
    let mut out = Vec::with_capacity(kernels.len());
    let mut group: Vec<MapKernel> = Vec::new();
    // Map kernels that came while the group was open and could not join it:
    // they run right after it (nothing joining later may conflict with them).
    let mut deferred: Vec<MapKernel> = Vec::new();
    for k in kernels {
        let m = match k {
            Kernel::Map(m) => m,
            other => {
                flush(&mut out, &mut group, &mut deferred);
                out.push(other);
                continue;
            }
        };
        if !group.is_empty() && is_fill(&m) && !touches(&group, &m) && !touches(&deferred, &m) {
            // Emitted now, so before the group (which is emitted when it ends).
            out.push(Kernel::Map(m));
            continue;
        }
        if conflicts(&deferred, &m) {
            flush(&mut out, &mut group, &mut deferred);
        }
        if cross_row(&m) && (large(&m) || group.iter().any(large)) {
            // A column sum in a group that runs across threads: per-row
            // partial sums, added up after the group.
            if let Some((fill, partial, combine)) = partial_sums(&m, storages.len()) {
                if joinable(&group, &partial) {
                    storages.push(Storage { len: fill.dims.iter().product(), kind: StorageKind::Temp });
                    out.push(Kernel::Map(fill));
                    group.push(partial);
                    deferred.push(combine);
                    continue;
                }
            }
        }
        if joinable(&group, &m) {
            group.push(m);
        } else if !group.is_empty() {
            deferred.push(m);
        } else {
            out.push(Kernel::Map(m));
        }
    }
    flush(&mut out, &mut group, &mut deferred);
    out
}

/// Whether `m` may join `group`.
fn joinable(group: &[MapKernel], m: &MapKernel) -> bool {
    eligible(m) && group.first().is_none_or(|g| g.dims.first() == m.dims.first()) && may_split(group, m) && valid(group, m)
}

/// A sum `m` over the first axis (and maybe others) into a dense block of
/// outputs, as three kernels: a zero fill of a new buffer (storage
/// `storage`) of one block per row, the sum into row `r`'s block, and the sum
/// of the blocks into `m`'s outputs. `None` for other accumulations.
fn partial_sums(m: &MapKernel, storage: StorageId) -> Option<(MapKernel, MapKernel, MapKernel)> {
    if m.acc != Some(ReduceKind::Sum) || !m.extra.is_empty() || m.out.strides.len() != m.dims.len() {
        return None;
    }
    // The output axes must tile one contiguous block (each stride the
    // extent of the smaller ones), or the final sum would add into elements
    // between them.
    let mut moving: Vec<(i64, usize)> =
        m.out.strides.iter().zip(&m.dims).skip(1).filter(|(&s, &d)| s != 0 && d > 1).map(|(&s, &d)| (s, d)).collect();
    moving.sort_unstable();
    let mut block = 1i64;
    for (s, d) in moving {
        if s != block {
            return None;
        }
        block *= d as i64;
    }
    let rows = *m.dims.first()?;
    let fill = MapKernel {
        dims: vec![rows * block as usize],
        out: Affine { storage: Some(storage), off: 0, strides: vec![1] },
        operands: Vec::new(),
        nodes: vec![ENode::Const(0.0f32.to_bits())],
        root: 0,
        acc: None,
        extra: Vec::new(),
    };
    let mut strides = m.out.strides.clone();
    strides[0] = block;
    let partial = MapKernel { out: Affine { storage: Some(storage), off: 0, strides }, ..m.clone() };
    let combine = MapKernel {
        dims: vec![rows, block as usize],
        out: Affine { storage: m.out.storage, off: m.out.off, strides: vec![0, 1] },
        operands: vec![Affine { storage: Some(storage), off: 0, strides: vec![block, 1] }],
        nodes: vec![ENode::Operand(0)],
        root: 0,
        acc: Some(ReduceKind::Sum),
        extra: Vec::new(),
    };
    Some((fill, partial, combine))
}

fn flush(out: &mut Vec<Kernel>, group: &mut Vec<MapKernel>, deferred: &mut Vec<MapKernel>) {
    match group.len() {
        0 => {}
        1 => out.extend(group.drain(..).map(Kernel::Map)),
        _ => {
            let rows = group.first().and_then(|g| g.dims.first().copied()).unwrap_or(1);
            out.push(Kernel::Rows { rows, kernels: std::mem::take(group) });
        }
    }
    out.extend(deferred.drain(..).map(Kernel::Map));
}

/// Whether `m` must not move in front of any of `deferred`: it touches what
/// one writes, or writes what one reads.
fn conflicts(deferred: &[MapKernel], m: &MapKernel) -> bool {
    let mk = Kernel::Map(m.clone());
    let (mr, mw) = (mk.reads(), mk.writes());
    deferred.iter().any(|d| {
        let dk = Kernel::Map(d.clone());
        let (dr, dw) = (dk.reads(), dk.writes());
        dw.iter().any(|s| mr.contains(s) || mw.contains(s)) || dr.iter().any(|s| mw.contains(s))
    })
}

/// A constant fill: reads no storage.
fn is_fill(m: &MapKernel) -> bool {
    m.acc.is_none() && m.extra.is_empty() && m.operands.iter().all(|a| a.storage.is_none())
}

fn storages(m: &MapKernel) -> impl Iterator<Item = StorageId> + '_ {
    std::iter::once(&m.out).chain(&m.operands).chain(m.extra.iter().map(|(a, _)| a)).filter_map(|a| a.storage)
}

fn touches(group: &[MapKernel], m: &MapKernel) -> bool {
    let mine: Vec<StorageId> = storages(m).collect();
    group.iter().any(|g| storages(g).any(|s| mine.contains(&s)))
}

/// A first axis of two or more rows and more axes (a 1-D kernel cut into
/// rows of one element would lose its vector loop); a kernel large enough to
/// run across threads needs rows enough to share out (`LARGE_MIN_ROWS`) and
/// rows that fit in L2 (`LARGE_MAX_ROW`).
fn eligible(m: &MapKernel) -> bool {
    let numel: usize = m.dims.iter().product();
    let rows = m.dims.first().copied().unwrap_or(0);
    let fits = !large(m) || (rows >= LARGE_MIN_ROWS && numel / rows.max(1) <= LARGE_MAX_ROW);
    m.dims.len() >= 2 && rows >= 2 && numel > 0 && fits
}

/// Rows a group run across threads must have (four per thread on two).
const LARGE_MIN_ROWS: usize = 8;
/// Elements per row of a group run across threads: 64 Ki floats (256 KiB),
/// so the few buffers a group touches stay in L2 from one kernel to the next.
const LARGE_MAX_ROW: usize = 1 << 16;

fn large(m: &MapKernel) -> bool {
    m.dims.iter().product::<usize>() >= parallel_elements()
}

/// An accumulation into elements shared by all rows (a bias gradient's sum
/// over the batch): its rows cannot run on different threads.
fn cross_row(m: &MapKernel) -> bool {
    m.acc.is_some() && m.out.strides.first() == Some(&0)
}

/// A group with a large kernel runs across threads (`parallel`), so it may
/// not also hold a cross-row accumulation.
fn may_split(group: &[MapKernel], m: &MapKernel) -> bool {
    let any_large = large(m) || group.iter().any(large);
    let any_cross = cross_row(m) || group.iter().any(cross_row);
    !(any_large && any_cross)
}

/// Whether a fused group is large enough to run its rows across threads (it
/// then holds no cross-row accumulation: `may_split`).
pub(crate) fn parallel(kernels: &[MapKernel]) -> bool {
    kernels.iter().any(large) && !kernels.iter().any(cross_row)
}

/// Elements one row of `a` spans (from its first element).
fn row_extent(a: &Affine, dims: &[usize]) -> i64 {
    1 + dims.iter().zip(&a.strides).skip(1).map(|(&d, &s)| (d as i64 - 1) * s.abs()).sum::<i64>()
}

/// One access of a storage by a kernel of a candidate group.
struct Access<'a> {
    kernel: usize,
    affine: &'a Affine,
    dims: &'a [usize],
    write: bool,
    acc: bool,
}

/// Whether `group` with `next` added is legal (see the module comment).
fn valid(group: &[MapKernel], next: &MapKernel) -> bool {
    let mut accesses: Vec<(StorageId, Access)> = Vec::new();
    for (i, m) in group.iter().chain([next]).enumerate() {
        let outs = std::iter::once(&m.out).chain(m.extra.iter().map(|(a, _)| a));
        for a in outs {
            if let Some(s) = a.storage {
                accesses.push((s, Access { kernel: i, affine: a, dims: &m.dims, write: true, acc: m.acc.is_some() }));
            }
        }
        for a in &m.operands {
            if let Some(s) = a.storage {
                accesses.push((s, Access { kernel: i, affine: a, dims: &m.dims, write: false, acc: false }));
            }
        }
    }
    let written: Vec<StorageId> = accesses.iter().filter(|(_, a)| a.write).map(|(s, _)| *s).collect();
    written.iter().all(|&s| {
        let all: Vec<&Access> = accesses.iter().filter(|(t, _)| *t == s).map(|(_, a)| a).collect();
        let stride0 = |a: &Access| a.affine.strides.first().copied().unwrap_or(0);
        let writers: Vec<&&Access> = all.iter().filter(|a| a.write).collect();
        if writers.iter().all(|a| a.acc && stride0(a) == 0) {
            // A sum over the rows: one kernel accumulates it, nothing else reads it.
            let k = writers.first().map(|a| a.kernel);
            return writers.len() == 1 && all.iter().all(|a| Some(a.kernel) == k && (a.write || a.affine == writers[0].affine));
        }
        let Some(first) = all.first() else { return true };
        let (off, s0) = (first.affine.off, stride0(first));
        let same_window = all.iter().all(|a| a.affine.off == off && stride0(a) == s0 && row_extent(a.affine, a.dims) <= s0.abs());
        // Or row r of every access inside [base + r·s0, base + (r + 1)·s0):
        // slices of one row (a head's gradient written into its part of the
        // `qkv` gradient, read whole by the bias gradient) share it.
        let base = all.iter().map(|a| a.affine.off).min().unwrap_or(off);
        let inside = |a: &&Access| {
            stride0(a) == s0 && a.affine.strides.iter().all(|&s| s >= 0) && a.affine.off - base + row_extent(a.affine, a.dims) <= s0
        };
        s0 != 0 && (same_window || (s0 > 0 && all.iter().all(inside)))
    })
}
