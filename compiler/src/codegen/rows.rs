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
//!
//! The search is linear in the kernels and their accesses. The open group
//! keeps, for each storage it touches, a summary of all its kernels' accesses
//! of it (`Footprint`), and the kernels deferred behind it keep the sets of
//! storages they read and write; so whether a kernel may join, moves in front
//! or must close the group is decided from that kernel's own accesses alone.
//! Each condition of the legality test holds for every access or bounds them
//! all, so a summary takes one access at a time, and a storage the newcomer
//! does not touch stays legal. Checking every access of the whole group for
//! each newcomer instead made the search quadratic in the size of a group or
//! worse: a loss of 5,000 chained `let`s (one group of about 2,500 kernels)
//! took 16 s of CPU time to compile, most of it here (`benches/compile_time.rs`
//! and docs/performance.md have the figures since).

use super::emit::parallel_elements;
use super::kernel::{Affine, ENode, Kernel, MapKernel, Storage, StorageId, StorageKind};
use crate::ops::ReduceKind;
use std::collections::{HashMap, HashSet};

/// Fuse runs of row-compatible map kernels in `kernels`; `storages` grows by
/// the partial-sum buffers this adds.
pub(crate) fn fuse(kernels: Vec<Kernel>, storages: &mut Vec<Storage>) -> Vec<Kernel> {
    let mut out = Vec::with_capacity(kernels.len());
    let mut group = Group::default();
    // Map kernels that came while the group was open and could not join it:
    // they run right after it (nothing joining later may conflict with them).
    let mut deferred = Deferred::default();
    for k in kernels {
        let m = match k {
            Kernel::Map(m) => m,
            other => {
                flush(&mut out, &mut group, &mut deferred);
                out.push(other);
                continue;
            }
        };
        if !group.kernels.is_empty() && is_fill(&m) && !group.touches(&m) && !deferred.touches(&m) {
            // Emitted now, so before the group (which is emitted when it ends).
            out.push(Kernel::Map(m));
            continue;
        }
        if deferred.conflicts(&m) {
            flush(&mut out, &mut group, &mut deferred);
        }
        if cross_row(&m) && (large(&m) || group.any_large) {
            // A column sum in a group that runs across threads: per-row
            // partial sums, added up after the group.
            if let Some((fill, partial, combine)) = partial_sums(&m, storages.len()) {
                if let Some(footprints) = group.joinable(&partial) {
                    storages.push(Storage { len: fill.dims.iter().product(), kind: StorageKind::Temp });
                    out.push(Kernel::Map(fill));
                    group.join(partial, footprints);
                    deferred.push(combine);
                    continue;
                }
            }
        }
        if let Some(footprints) = group.joinable(&m) {
            group.join(m, footprints);
        } else if !group.kernels.is_empty() {
            deferred.push(m);
        } else {
            out.push(Kernel::Map(m));
        }
    }
    flush(&mut out, &mut group, &mut deferred);
    out
}

fn flush(out: &mut Vec<Kernel>, group: &mut Group, deferred: &mut Deferred) {
    let mut kernels = std::mem::take(group).kernels;
    match kernels.len() {
        0 => {}
        1 => out.extend(kernels.drain(..).map(Kernel::Map)),
        _ => {
            let rows = kernels.first().and_then(|g| g.dims.first().copied()).unwrap_or(1);
            out.push(Kernel::Rows { rows, kernels });
        }
    }
    out.extend(std::mem::take(deferred).kernels.into_iter().map(Kernel::Map));
}

/// The open group, with what deciding whether a kernel may join it needs.
#[derive(Default)]
struct Group {
    kernels: Vec<MapKernel>,
    /// Whether some kernel of the group is `large`, or a `cross_row` sum.
    any_large: bool,
    any_cross: bool,
    /// Every storage the group's kernels touch, with a summary of how.
    footprints: HashMap<StorageId, Footprint>,
}

impl Group {
    /// If `m` may join the group: the footprints of the storages `m` touches
    /// once it has joined. The other storages keep theirs, legal since the
    /// group without `m` was.
    fn joinable(&self, m: &MapKernel) -> Option<HashMap<StorageId, Footprint>> {
        let same_rows = self.kernels.first().is_none_or(|g| g.dims.first() == m.dims.first());
        // A group with a large kernel runs across threads (`parallel`), so it
        // may not also hold a cross-row accumulation.
        let splits = (self.any_large || large(m)) && (self.any_cross || cross_row(m));
        if !eligible(m) || !same_rows || splits {
            return None;
        }
        let mut changed: HashMap<StorageId, Footprint> = HashMap::new();
        for (s, access) in accesses(m, self.kernels.len()) {
            let start = || self.footprints.get(&s).cloned().unwrap_or_else(|| Footprint::new(&access));
            changed.entry(s).or_insert_with(start).add(&access);
        }
        changed.values().all(Footprint::legal).then_some(changed)
    }

    /// Add `m`, with the footprints `joinable` returned for it.
    fn join(&mut self, m: MapKernel, footprints: HashMap<StorageId, Footprint>) {
        self.any_large |= large(&m);
        self.any_cross |= cross_row(&m);
        self.footprints.extend(footprints);
        self.kernels.push(m);
    }

    fn touches(&self, m: &MapKernel) -> bool {
        storages(m).any(|s| self.footprints.contains_key(&s))
    }
}

/// One access of a storage by the `kernel`-th kernel of a group.
struct Access<'a> {
    kernel: usize,
    affine: &'a Affine,
    dims: &'a [usize],
    write: bool,
    acc: bool,
}

/// The accesses of `m` as the `kernel`-th kernel of a group: its outputs,
/// then its operands.
fn accesses(m: &MapKernel, kernel: usize) -> impl Iterator<Item = (StorageId, Access<'_>)> {
    let outs = std::iter::once(&m.out).chain(m.extra.iter().map(|(a, _)| a)).map(|a| (a, true));
    let operands = m.operands.iter().map(|a| (a, false));
    outs.chain(operands).filter_map(move |(affine, write)| {
        let acc = write && m.acc.is_some();
        affine.storage.map(|s| (s, Access { kernel, affine, dims: &m.dims, write, acc }))
    })
}

/// What the legality test (module comment) needs to know of the accesses of
/// one storage by a group's kernels, taken in order: each field is a fact
/// about every access or an extreme over them, so it takes one access at a
/// time, and once illegal a footprint stays illegal.
#[derive(Clone)]
struct Footprint {
    /// The first access's offset, row stride and kernel.
    off: i64,
    s0: i64,
    kernel: usize,
    /// Every access at `off` with row stride `s0`, each row within `|s0|`.
    same_window: bool,
    /// Every access with row stride `s0` and no negative stride.
    forward: bool,
    /// The lowest offset, and the highest end of a row of any access.
    base: i64,
    end: i64,
    /// Every access by the first one's kernel.
    one_kernel: bool,
    writers: usize,
    /// Every write an accumulation over the rows (row stride 0).
    row_sums_only: bool,
    /// The first write, and whether every read came after it, through the same affine.
    writer: Option<Affine>,
    reads_match_writer: bool,
}

impl Footprint {
    /// A footprint of no accesses yet, anchored at `first` (then `add` it).
    fn new(first: &Access) -> Footprint {
        let off = first.affine.off;
        Footprint {
            off,
            s0: row_stride(first.affine),
            kernel: first.kernel,
            same_window: true,
            forward: true,
            base: off,
            end: off,
            one_kernel: true,
            writers: 0,
            row_sums_only: true,
            writer: None,
            reads_match_writer: true,
        }
    }

    fn add(&mut self, a: &Access) {
        let (off, s0, extent) = (a.affine.off, row_stride(a.affine), row_extent(a.affine, a.dims));
        self.same_window &= off == self.off && s0 == self.s0 && extent <= self.s0.abs();
        self.forward &= s0 == self.s0 && a.affine.strides.iter().all(|&s| s >= 0);
        self.base = self.base.min(off);
        self.end = self.end.max(off + extent);
        self.one_kernel &= a.kernel == self.kernel;
        if a.write {
            self.writers += 1;
            self.row_sums_only &= a.acc && s0 == 0;
            if self.writer.is_none() {
                self.writer = Some(a.affine.clone());
            }
        } else {
            self.reads_match_writer &= self.writer.as_ref() == Some(a.affine);
        }
    }

    /// Whether no kernel reads, at row `r`, what another writes at a different row.
    fn legal(&self) -> bool {
        if self.writers == 0 {
            return true;
        }
        if self.row_sums_only {
            // A sum over the rows: one kernel accumulates it, nothing else reads it.
            return self.writers == 1 && self.one_kernel && self.reads_match_writer;
        }
        // Every access in one window of the row stride; or row r of every
        // access inside [base + r·s0, base + (r + 1)·s0): slices of one row
        // (a head's gradient written into its part of the `qkv` gradient,
        // read whole by the bias gradient) share it.
        self.s0 != 0 && (self.same_window || (self.s0 > 0 && self.forward && self.end - self.base <= self.s0))
    }
}

fn row_stride(a: &Affine) -> i64 {
    a.strides.first().copied().unwrap_or(0)
}

/// Elements one row of `a` spans (from its first element).
fn row_extent(a: &Affine, dims: &[usize]) -> i64 {
    1 + dims.iter().zip(&a.strides).skip(1).map(|(&d, &s)| (d as i64 - 1) * s.abs()).sum::<i64>()
}

/// The map kernels deferred behind the open group, with the storages they
/// read and write.
#[derive(Default)]
struct Deferred {
    kernels: Vec<MapKernel>,
    reads: HashSet<StorageId>,
    writes: HashSet<StorageId>,
}

impl Deferred {
    fn push(&mut self, m: MapKernel) {
        self.reads.extend(reads(&m));
        self.writes.extend(writes(&m));
        self.kernels.push(m);
    }

    /// Whether `m` must not move in front of any deferred kernel: it touches
    /// what one writes, or writes what one reads.
    fn conflicts(&self, m: &MapKernel) -> bool {
        reads(m).chain(writes(m)).any(|s| self.writes.contains(&s)) || writes(m).any(|s| self.reads.contains(&s))
    }

    fn touches(&self, m: &MapKernel) -> bool {
        storages(m).any(|s| self.reads.contains(&s) || self.writes.contains(&s))
    }
}

/// The storages `m` reads (as `Kernel::reads`: an accumulation reads its
/// output), writes, and either.
fn reads(m: &MapKernel) -> impl Iterator<Item = StorageId> + '_ {
    m.operands.iter().filter_map(|a| a.storage).chain(m.acc.and(m.out.storage))
}

fn writes(m: &MapKernel) -> impl Iterator<Item = StorageId> + '_ {
    std::iter::once(&m.out).chain(m.extra.iter().map(|(a, _)| a)).filter_map(|a| a.storage)
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

/// A constant fill: reads no storage.
fn is_fill(m: &MapKernel) -> bool {
    m.acc.is_none() && m.extra.is_empty() && m.operands.iter().all(|a| a.storage.is_none())
}

fn storages(m: &MapKernel) -> impl Iterator<Item = StorageId> + '_ {
    std::iter::once(&m.out).chain(&m.operands).chain(m.extra.iter().map(|(a, _)| a)).filter_map(|a| a.storage)
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

/// Whether a fused group is large enough to run its rows across threads (it
/// then holds no cross-row accumulation: `Group::joinable`).
pub(crate) fn parallel(kernels: &[MapKernel]) -> bool {
    kernels.iter().any(large) && !kernels.iter().any(cross_row)
}
