//! Rust helpers the generated code calls (registered with `JITBuilder::symbol`):
//! strided SGEMM (`gemm`), and a linear solve.

use super::gemm::{self, Mat};

/// `C = A · B` for one `m×k` by `k×n` matrix pair, every operand with its own
/// row and column strides (in elements). `C` is overwritten.
#[allow(clippy::too_many_arguments)]
pub(crate) extern "C" fn nnc_sgemm(
    m: i64,
    k: i64,
    n: i64,
    a: *const f32,
    rsa: i64,
    csa: i64,
    b: *const f32,
    rsb: i64,
    csb: i64,
    c: *mut f32,
    rsc: i64,
    csc: i64,
    bro: *const i32,
    bco: *const i32,
    threads: i64,
) {
    let (Ok(m), Ok(k), Ok(n)) = (usize::try_from(m), usize::try_from(k), usize::try_from(n)) else {
        return;
    };
    let mat = |p: *const f32, rs: i64, cs: i64| Mat::strided(p.cast_mut(), rs as isize, cs as isize);
    // 0: the whole pool; 1 on a parallel piece's thread, the others being busy
    // with their own pieces.
    let threads = if threads > 0 { threads as usize } else { super::pool::pool().threads() };
    // SAFETY: the generated code passes pointers into the arena with strides and
    // sizes taken from the planned (shape-checked) layouts, so every element
    // `a[i·rsa + l·csa]`, `b[l·rsb + j·csb]`, `c[i·rsc + j·csc]` is in bounds, and
    // `c` never overlaps `a` or `b` (the planner gives matmul a fresh buffer).
    // A gathered B (`bro`, `bco` not null) has `k` row and `n` column offsets,
    // built by the planner from the same layouts and kept by the compiled graph.
    let b = Mat { ro: bro, co: bco, ..mat(b, rsb, csb) };
    unsafe { gemm::sgemm(m, k, n, mat(a, rsa, csa), b, mat(c, rsc, csc), threads) }
}

/// Two independent `nnc_sgemm` products (12 arguments each, in order, then
/// the two B tables of each), run
/// concurrently on two threads.
#[allow(clippy::too_many_arguments)]
pub(crate) extern "C" fn nnc_sgemm_pair(
    m1: i64,
    k1: i64,
    n1: i64,
    a1: *const f32,
    rsa1: i64,
    csa1: i64,
    b1: *const f32,
    rsb1: i64,
    csb1: i64,
    c1: *mut f32,
    rsc1: i64,
    csc1: i64,
    m2: i64,
    k2: i64,
    n2: i64,
    a2: *const f32,
    rsa2: i64,
    csa2: i64,
    b2: *const f32,
    rsb2: i64,
    csb2: i64,
    c2: *mut f32,
    rsc2: i64,
    csc2: i64,
    bro1: *const i32,
    bco1: *const i32,
    bro2: *const i32,
    bco2: *const i32,
) {
    let mat = |p: *const f32, rs: i64, cs: i64| Mat::strided(p.cast_mut(), rs as isize, cs as isize);
    let dims = |m: i64, k: i64, n: i64| Some((usize::try_from(m).ok()?, usize::try_from(k).ok()?, usize::try_from(n).ok()?));
    let (Some((m1, k1, n1)), Some((m2, k2, n2))) = (dims(m1, k1, n1), dims(m2, k2, n2)) else {
        return;
    };
    let threads = super::pool::pool().threads();
    let p1 = (m1, k1, n1, mat(a1, rsa1, csa1), Mat { ro: bro1, co: bco1, ..mat(b1, rsb1, csb1) }, mat(c1, rsc1, csc1));
    let p2 = (m2, k2, n2, mat(a2, rsa2, csa2), Mat { ro: bro2, co: bco2, ..mat(b2, rsb2, csb2) }, mat(c2, rsc2, csc2));
    // SAFETY: as for `nnc_sgemm`, for each product; the code generator pairs
    // only products whose outputs overlap no operand of the other
    // (`emit::pairable`).
    unsafe { gemm::sgemm_pair([p1, p2], threads) }
}

/// `X = A⁻¹ B` for `A [n, n]` and `B [n, k]` (strided), into the contiguous
/// `X [n, k]`, by Gaussian elimination with partial pivoting in f64. `scratch`
/// holds `n·n + n·k` f64. A singular `A` gives NaN everywhere.
#[allow(clippy::too_many_arguments)]
pub(crate) extern "C" fn nnc_solve(
    n: i64,
    k: i64,
    a: *const f32,
    rsa: i64,
    csa: i64,
    b: *const f32,
    rsb: i64,
    csb: i64,
    x: *mut f32,
    scratch: *mut f64,
) {
    let (Ok(nu), Ok(ku)) = (usize::try_from(n), usize::try_from(k)) else {
        return;
    };
    // SAFETY: the planner sized `scratch` to at least n·n + n·k f64 and sized `x`
    // to n·k contiguous f32; neither overlaps the other or `a`/`b`.
    let (s, out) = unsafe { (std::slice::from_raw_parts_mut(scratch, nu * nu + nu * ku), std::slice::from_raw_parts_mut(x, nu * ku)) };
    let (m, rhs) = s.split_at_mut(nu * nu);
    for i in 0..n {
        for j in 0..n {
            // SAFETY: i, j < n index the strided n×n operand `a` (in bounds by its layout).
            m[(i * n + j) as usize] = f64::from(unsafe { *a.offset((i * rsa + j * csa) as isize) });
        }
        for j in 0..k {
            // SAFETY: i < n, j < k index the strided n×k operand `b`.
            rhs[(i * k + j) as usize] = f64::from(unsafe { *b.offset((i * rsb + j * csb) as isize) });
        }
    }
    if gauss(m, rhs, nu, ku) {
        for (o, v) in out.iter_mut().zip(rhs.iter()) {
            *o = *v as f32;
        }
    } else {
        out.fill(f32::NAN);
    }
}

/// Solve in place (`rhs` becomes the solution); false if `m` is singular.
/// The same elimination as the reference interpreter's.
fn gauss(m: &mut [f64], x: &mut [f64], n: usize, k: usize) -> bool {
    crate::ops::linalg::gauss_solve(m, x, n, k)
}

/// `n` uniform numbers of stream `stream` into `out`, seeded by the scalar at `seed`.
pub(crate) extern "C" fn nnc_random(out: *mut f32, n: i64, seed: *const f32, stream: i64) {
    let Ok(n) = usize::try_from(n) else { return };
    // SAFETY: the planner gave `out` a buffer of `n` floats and `seed` points at
    // the scalar seed input; they do not overlap.
    let (out, seed) = unsafe { (std::slice::from_raw_parts_mut(out, n), *seed) };
    crate::ops::random::fill_uniform(out, seed, stream as u32);
}

/// A fault found by a kernel while the generated code ran: an id outside
/// `0..bound` given to the node `site` (a `Gather`, `ScatterAdd` or `CheckIndex`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    pub site: u32,
    pub index: f32,
    pub bound: usize,
}

thread_local! {
    /// The first fault of the current run on this thread (the generated code
    /// calls `nnc_lookup` from the thread that runs it).
    static FAULT: std::cell::Cell<Option<Fault>> = const { std::cell::Cell::new(None) };
}

/// The first fault recorded on this thread since the last call, if any.
pub(crate) fn take_fault() -> Option<Fault> {
    FAULT.with(|f| f.take())
}

/// An access outside its buffer caught by bounds-checked code: kernel
/// `kernel` reached element `offset` of storage `storage`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Access {
    pub kernel: usize,
    pub storage: usize,
    pub offset: i64,
}

/// Where bounds-checked code records its first bad access. Its address is
/// baked into the code, and the pieces running on other threads may write it.
#[derive(Default)]
pub(crate) struct BoundsRecord(pub std::sync::Mutex<Option<Access>>);

/// Called by bounds-checked code (`emit::Emitter::checked`) for an access
/// outside its buffer, before it is redirected to the buffer's start.
pub(crate) extern "C" fn nnc_bounds_fault(record: *const BoundsRecord, kernel: i64, storage: i64, offset: i64) {
    // SAFETY: `record` is the address of the compiled graph's boxed record
    // (`CompiledGraph::bounds`), which lives as long as the code calling this.
    let record = unsafe { &*record };
    let at = |v: i64| usize::try_from(v).unwrap_or(usize::MAX);
    if let Ok(mut first) = record.0.lock() {
        first.get_or_insert(Access { kernel: at(kernel), storage: at(storage), offset });
    }
}

/// Record `fault` as this thread's, unless one was recorded first.
fn record(fault: Fault) {
    FAULT.with(|f| {
        if f.get().is_none() {
            f.set(Some(fault));
        }
    });
}

/// `CheckIndex` over `n` ids (see `Kernel::Check`): each copied from `ids` to
/// `dst`; the first outside `0..bound` (negative, too large, fractional or
/// NaN) where `keep` (null: everywhere) is not 0 is recorded as this
/// thread's fault.
pub(crate) extern "C" fn nnc_check_ids(n: i64, bound: i64, ids: *const f32, keep: *const f32, dst: *mut f32, site: i64) {
    let (Ok(n), Ok(bound)) = (usize::try_from(n), usize::try_from(bound)) else {
        return;
    };
    // SAFETY: the planner gave the ids, the mask (when not null) and the
    // destination contiguous buffers of `n` floats (`lower_check`); the
    // destination is a fresh buffer that overlaps neither.
    let (ids, dst) = unsafe { (std::slice::from_raw_parts(ids, n), std::slice::from_raw_parts_mut(dst, n)) };
    // SAFETY: as above.
    let keep = (!keep.is_null()).then(|| unsafe { std::slice::from_raw_parts(keep, n) });
    dst.copy_from_slice(ids);
    let checked = |i: usize| keep.is_none_or(|k| k.get(i).is_some_and(|&m| m != 0.0));
    let bad = ids.iter().enumerate().find(|&(i, &id)| checked(i) && crate::ops::index::row_index(f64::from(id), bound).is_none());
    if let Some((_, &id)) = bad {
        record(Fault { site: site as u32, index: id, bound });
    }
}

/// `Gather` (`scatter == 0`) or `ScatterAdd` over `n` ids (see `Kernel::Lookup`).
/// A bad id (negative, too large, fractional or NaN) skips its row, leaving zeros
/// (gather) or nothing added (scatter), and is recorded as this thread's fault.
#[allow(clippy::too_many_arguments)]
pub(crate) extern "C" fn nnc_lookup(
    scatter: i64,
    n: i64,
    rows: i64,
    width: i64,
    ids: *const f32,
    src: *const f32,
    src_stride: i64,
    dst: *mut f32,
    site: i64,
) {
    let sizes = (usize::try_from(n), usize::try_from(rows), usize::try_from(width), usize::try_from(src_stride));
    let (Ok(n), Ok(rows), Ok(width), Ok(stride)) = sizes else {
        return;
    };
    let src_rows = if scatter != 0 { n } else { rows };
    let src_len = src_rows.saturating_sub(1) * stride + width;
    let dst_len = if scatter != 0 { rows * width } else { n * width };
    // SAFETY: the planner gave the ids and the destination contiguous buffers
    // of exactly these sizes and the source rows of `width` floats `stride`
    // apart (`lower_lookup`); the destination is a fresh buffer that overlaps
    // neither operand.
    let (ids, src, dst) = unsafe {
        (std::slice::from_raw_parts(ids, n), std::slice::from_raw_parts(src, src_len), std::slice::from_raw_parts_mut(dst, dst_len))
    };
    if scatter != 0 {
        dst.fill(0.0);
    }
    for (i, &id) in ids.iter().enumerate() {
        let Some(r) = crate::ops::index::row_index(f64::from(id), rows) else {
            record(Fault { site: site as u32, index: id, bound: rows });
            if scatter == 0 {
                dst[i * width..(i + 1) * width].fill(0.0);
            }
            continue;
        };
        if scatter != 0 {
            for (d, s) in dst[r * width..(r + 1) * width].iter_mut().zip(&src[i * stride..i * stride + width]) {
                *d += s;
            }
        } else {
            dst[i * width..(i + 1) * width].copy_from_slice(&src[r * stride..r * stride + width]);
        }
    }
}

/// Per-kernel wall time when code is generated with `NNC_PROFILE=1`: the
/// generated function calls `nnc_tick(i)` after kernel `i` (and `-1` on entry).
pub(crate) mod profile {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    struct State {
        last: Option<Instant>,
        /// Total time and count per kernel index.
        totals: Vec<(Duration, u64)>,
    }

    static STATE: Mutex<State> = Mutex::new(State { last: None, totals: Vec::new() });

    pub fn enabled() -> bool {
        std::env::var("NNC_PROFILE").is_ok_and(|v| v == "1")
    }

    pub(crate) extern "C" fn nnc_tick(i: i64) {
        let now = Instant::now();
        let Ok(mut s) = STATE.lock() else { return };
        if let (Ok(i), Some(last)) = (usize::try_from(i), s.last) {
            if s.totals.len() <= i {
                s.totals.resize(i + 1, (Duration::ZERO, 0));
            }
            s.totals[i].0 += now - last;
            s.totals[i].1 += 1;
        }
        s.last = Some(Instant::now());
    }

    /// Mean time per run of each kernel so far, and reset.
    pub fn take() -> Vec<Duration> {
        let Ok(mut s) = STATE.lock() else { return Vec::new() };
        let out = s.totals.iter().map(|(t, n)| if *n > 0 { *t / *n as u32 } else { Duration::ZERO }).collect();
        s.totals.clear();
        s.last = None;
        out
    }
}

/// A parallel piece's function: rows `[lo, hi)` of one kernel (`define_piece`).
pub(crate) type Piece = unsafe extern "C" fn(*mut f32, i64, i64);

/// Run `piece` over rows `0..rows`, split into `per_thread` ranges per thread
/// of the worker pool (several for elementwise work: a late thread then holds
/// up less; one for a row-split loop, whose products want their rows together).
pub(crate) extern "C" fn nnc_parallel(piece: Piece, arena: *mut f32, rows: i64, per_thread: i64) {
    struct Arena(*mut f32);
    // SAFETY: the pieces write disjoint rows of their outputs and only read
    // their inputs, so sharing the arena pointer between threads is sound.
    unsafe impl Sync for Arena {}
    let arena = Arena(arena);
    let p = super::pool::pool();
    let rows = rows.max(0);
    let chunks = (p.threads() as i64 * per_thread.max(1)).min(rows).max(1);
    let f = |t: usize| {
        let (lo, hi) = (rows * t as i64 / chunks, rows * (t as i64 + 1) / chunks);
        let a = &arena;
        // SAFETY: `piece` was compiled for this arena's layout; rows in `lo..hi`
        // are inside the kernel's first axis.
        unsafe { piece(a.0, lo, hi) }
    };
    p.run(chunks as usize, &f);
}

/// `rows` rows of `width` floats from `src` to `dst`, rows `src_stride` and
/// `dst_stride` floats apart (`Kernel::StepCopy`: a scan step's slice of a
/// sequence, or its new state).
pub(crate) extern "C" fn nnc_copy_rows(dst: *mut f32, dst_stride: i64, src: *const f32, src_stride: i64, rows: i64, width: i64) {
    let (Ok(rows), Ok(width)) = (usize::try_from(rows), usize::try_from(width)) else {
        return;
    };
    for r in 0..rows as isize {
        // SAFETY: the planner placed every row inside its storage (`lower_scan`:
        // the strides and widths come from the operands' shapes), and source and
        // destination are different storages.
        unsafe {
            let s = src.offset(r * src_stride as isize);
            let d = dst.offset(r * dst_stride as isize);
            std::ptr::copy_nonoverlapping(s, d, width);
        }
    }
}
