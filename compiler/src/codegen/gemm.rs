//! SGEMM for the generated code: `C = A · B` with arbitrary element strides on
//! every operand (transposed operands cost nothing extra), BLIS-style blocked
//! with packed panels and an AVX-512 12×32 register-tile micro-kernel.
//!
//! Packing space is allocated once per thread (on its first matmul, at the
//! fixed block sizes) and reused. Large products are split across the
//! persistent worker pool (`pool`); the split is along the longer of the two
//! output dims, each thread packing its own panels. Each thread's part runs
//! on the `gemm` crate's kernels where those measured faster (a row-major B,
//! `library_kernels`; the crate allocates its packing space per call), else on
//! ours. Without AVX-512 at run time, `matrixmultiply` is used instead.
//! `docs/performance.md` has the measurements behind the block sizes and the
//! threading threshold.

use super::pool;
use std::cell::RefCell;

/// Rows of the register tile (broadcast A values).
const MR: usize = 12;
/// Columns of the register tile (two 16-lane vectors of B).
const NR: usize = 32;
/// Depth of a packed panel.
const KC: usize = 256;
/// Rows of A packed at once (a multiple of MR): `MC · KC` floats stay in L2.
const MC: usize = 120;
/// Columns of B packed at once (a multiple of NR).
const NC: usize = 1024;

/// Largest `m` for which a row-major B is not packed.
const DIRECT_MAX_M: usize = 6 * MR;
/// Largest row stride (floats) of a B read in place. Beyond it each step of
/// the micro-kernel's k loop lands on another page (a convolution's im2col
/// matrix is N·OH·OW = 12544 floats wide for MNIST at batch 64) and the
/// packed copy wins by far (docs/performance.md, W3).
const DIRECT_MAX_ROW_STRIDE: isize = 1024;

/// Benchmarks only: allow reading B in place (default true).
#[doc(hidden)]
pub static DIRECT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Multiply-adds (`m·k·n`) from which a product is split across threads
/// (`NNC_PAR_MACS` overrides it, for measuring).
pub(crate) const PARALLEL_MIN: usize = 1 << 21;

pub(crate) fn parallel_min() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| pool::threshold("NNC_PAR_MACS", PARALLEL_MIN))
}

/// A strided matrix view: element `(i, j)` at `ptr[i·rs + j·cs]`; or, when
/// `ro` and `co` are not null, a gathered one: element `(i, j)` at
/// `ptr[ro[i] + co[j]]` (an unfolded image read in place: `ro` holds each
/// row's window offset and channel, `co` each column's image and position).
/// Only B operands are gathered (`pack_b_gather`).
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *mut f32,
    pub rs: isize,
    pub cs: isize,
    pub ro: *const i32,
    pub co: *const i32,
}

// SAFETY: a `Mat` is only a pointer with strides; the callers guarantee that
// the threads it is shared with touch disjoint output elements and only read
// the inputs (see `sgemm`).
unsafe impl Send for Mat {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mat {}

impl Mat {
    pub fn strided(ptr: *mut f32, rs: isize, cs: isize) -> Mat {
        Mat { ptr, rs, cs, ro: std::ptr::null(), co: std::ptr::null() }
    }

    fn gathered(self) -> bool {
        !self.ro.is_null() && !self.co.is_null()
    }

    /// Address of element `(i, j)` of a strided view.
    fn at(self, i: usize, j: usize) -> *mut f32 {
        self.ptr.wrapping_offset(i as isize * self.rs + j as isize * self.cs)
    }

    /// The view from element `(i, j)` on.
    fn sub(self, i: usize, j: usize) -> Mat {
        if self.gathered() {
            Mat { ro: self.ro.wrapping_add(i), co: self.co.wrapping_add(j), ..self }
        } else {
            Mat { ptr: self.at(i, j), ..self }
        }
    }

    fn transposed(self) -> Mat {
        Mat { ptr: self.ptr, rs: self.cs, cs: self.rs, ro: self.co, co: self.ro }
    }
}

/// Per-thread packing buffers, 64-byte aligned.
struct Packs {
    a: Vec<f32>,
    b: Vec<f32>,
}

thread_local! {
    static PACKS: RefCell<Option<Packs>> = const { RefCell::new(None) };
}

fn aligned(v: &mut [f32]) -> *mut f32 {
    let skip = (v.as_ptr() as usize).wrapping_neg() % 64 / 4;
    let skip = skip.min(v.len());
    v[skip..].as_mut_ptr()
}

pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `C = A · B` for an `m×k` by `k×n` product (`C` overwritten), threaded when
/// `threads > 1` and the product is large enough.
///
/// # Safety
///
/// Every element `A(i, l)`, `B(l, j)`, `C(i, j)` for `i < m`, `l < k`, `j < n`
/// must be in bounds of its allocation, and `C` must not overlap `A` or `B`
/// nor have two indices that address the same element.
pub(crate) unsafe fn sgemm(m: usize, k: usize, n: usize, a: Mat, b: Mat, c: Mat, threads: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if a.gathered() || c.gathered() {
        // Not produced by the planner (only B operands are gathered).
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                // SAFETY: in bounds by the caller's contract.
                unsafe { *c.at(i, j) = 0.0 };
            }
        }
        return;
    }
    if !has_avx512() {
        if b.gathered() {
            // SAFETY: the caller's contract.
            unsafe { gathered_fallback(m, k, n, a, b, c) };
            return;
        }
        // SAFETY: the caller's contract is matrixmultiply's.
        unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, 0.0, c.ptr, c.rs, c.cs) };
        return;
    }
    if n < NR && m > n && !b.gathered() {
        // A narrow C (few columns, e.g. the classifier layer): compute
        // Cᵀ = Bᵀ·Aᵀ, whose rows fill the 12-row tiles instead of wasting most
        // of the 32 columns.
        // SAFETY: the same elements as the caller's product, transposed.
        unsafe { sgemm(n, k, m, b.transposed(), a.transposed(), c.transposed(), threads) };
        return;
    }
    let p = pool::pool();
    let threads = if m * k * n >= parallel_min() { threads.min(p.threads()) } else { 1 };
    if threads <= 1 {
        // SAFETY: forwarded contract; AVX-512 checked above.
        unsafe { serial(m, k, n, a, b, c) };
        return;
    }
    // Split the longer output dim into `threads` tile-aligned ranges.
    let split_n = n >= m;
    let (len, unit) = if split_n { (n, NR) } else { (m, MR) };
    let units = len.div_ceil(unit);
    // Two pieces per thread when each piece's extra packing (of A) is cheap:
    // a thread that is late (the core is busy) then delays the step by less.
    let pieces = if split_n && m <= DIRECT_MAX_M { 2 * threads } else { threads }.min(units);
    let per = units.div_ceil(pieces) * unit;
    let pieces = len.div_ceil(per);
    let task = move |t: usize| {
        let lo = (t * per).min(len);
        let hi = ((t + 1) * per).min(len);
        if lo >= hi {
            return;
        }
        // SAFETY: each task writes the disjoint block of C in its range, and the
        // sub-views stay inside the caller's in-bounds ranges.
        unsafe {
            if split_n {
                serial(m, k, hi - lo, a, b.sub(0, lo), c.sub(0, lo))
            } else {
                serial(hi - lo, k, n, a.sub(lo, 0), b, c.sub(lo, 0))
            }
        }
    };
    p.run(pieces, &task);
}

/// One product for `sgemm_pair`: `(m, k, n, A, B, C)`.
pub(crate) type Product = (usize, usize, usize, Mat, Mat, Mat);

/// Two independent products at once, one per thread (the backward pass's
/// `G·Wᵀ` and `Xᵀ·G`): no packing is duplicated, unlike splitting each.
///
/// # Safety
///
/// Each product as for `sgemm`; neither C overlaps any operand of the other.
pub(crate) unsafe fn sgemm_pair(products: [Product; 2], threads: usize) {
    let p = pool::pool();
    if threads.min(p.threads()) < 2 {
        for (m, k, n, a, b, c) in products {
            // SAFETY: the caller's contract.
            unsafe { sgemm(m, k, n, a, b, c, threads) };
        }
        return;
    }
    let task = |t: usize| {
        if let Some(&(m, k, n, a, b, c)) = products.get(t) {
            // SAFETY: the caller's contract; the two products touch disjoint
            // outputs, and one thread each (`threads = 1`: no nested pool job).
            unsafe { sgemm(m, k, n, a, b, c, 1) };
        }
    };
    p.run(2, &task);
}

/// Whether a one-thread product runs on the `gemm` crate's kernels:
/// - a row-major B (`cs = 1`) at least 32 columns wide and 128 deep. There
///   they are faster than ours: on W5's products, interleaved runs of the
///   whole step measured the loops' 16-row products 10–22 % faster and `hᵀ·dz`
///   (`256×2048 @ 2048×1024`) 11 % (docs/performance.md, round 5). Narrow
///   outputs, transposed B and short depths stay on ours, where the crate was
///   slower or no faster (`gemm_shapes`).
/// - a small product, every dim at most 64 (attention's per-head products),
///   whatever its strides: the crate does not pack operands this small, where
///   ours packs A for every call. W4's twelve batched products took 10–17 %
///   less time in the step (docs/performance.md, round 6).
///
/// `NNC_GEMM_CRATE=0` turns it off, for measuring.
fn library_kernels(m: usize, k: usize, n: usize, b: Mat) -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let allowed = *ALLOWED.get_or_init(|| std::env::var("NNC_GEMM_CRATE").map_or(true, |v| v != "0"));
    let wide = b.cs == 1 && k >= 128 && n >= 32;
    let small = m <= 64 && k <= 64 && n <= 64;
    allowed && !b.gathered() && (wide || small)
}

/// Single-threaded blocked product on this thread's packing buffers.
///
/// # Safety
///
/// As `sgemm`, and AVX-512F must be available.
unsafe fn serial(m: usize, k: usize, n: usize, a: Mat, b: Mat, c: Mat) {
    if library_kernels(m, k, n, b) {
        // SAFETY: the caller's contract (every element in bounds, C disjoint
        // from A and B); `gemm` takes column strides first and computes
        // `dst = beta·lhs·rhs` when it does not read `dst`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.ptr,
                c.cs,
                c.rs,
                false,
                a.ptr,
                a.cs,
                a.rs,
                b.ptr,
                b.cs,
                b.rs,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        return;
    }
    PACKS.with(|cell| {
        let mut guard = cell.borrow_mut();
        let packs = guard.get_or_insert_with(|| Packs { a: vec![0.0; MC * KC + 16], b: vec![0.0; KC * NC + 16] });
        let pa = aligned(&mut packs.a);
        let pb = aligned(&mut packs.b);
        let mut jc = 0;
        while jc < n {
            let nc = NC.min(n - jc);
            let mut pc = 0;
            while pc < k {
                let kc = KC.min(k - pc);
                // A row-major B used by few row tiles is read in place (full
                // strips): packing it would cost as much as the products. With
                // many row tiles the packed copy wins (contiguous, no L1 set
                // conflicts from the row stride). Measured: docs/performance.md.
                let direct = !b.gathered()
                    && b.cs == 1
                    && b.rs <= DIRECT_MAX_ROW_STRIDE
                    && m <= DIRECT_MAX_M
                    && DIRECT.load(std::sync::atomic::Ordering::Relaxed);
                let packed_from = if direct { nc / NR * NR } else { 0 };
                // SAFETY: the panel is inside B; `pb` holds KC·NC floats.
                unsafe {
                    if b.gathered() {
                        #[cfg(target_arch = "x86_64")]
                        avx512::pack_b_gather(kc, nc, b.sub(pc, jc), pb);
                    } else {
                        pack_b(kc, nc - packed_from, b.at(pc, jc + packed_from), b.rs, b.cs, pb.add(packed_from * kc));
                    }
                }
                let mut ic = 0;
                while ic < m {
                    let mc = MC.min(m - ic);
                    // SAFETY: the block is inside A; `pa` holds MC·KC floats.
                    unsafe { pack_a(mc, kc, a.at(ic, pc), a.rs, a.cs, pa) };
                    let mut jr = 0;
                    while jr < nc {
                        let cols = NR.min(nc - jr);
                        let mut ir = 0;
                        while ir < mc {
                            let rows = MR.min(mc - ir);
                            let tile = c.sub(ic + ir, jc + jr);
                            // SAFETY: packed panels hold kc·MR and kc·NR floats
                            // at these offsets; the tile is inside C.
                            unsafe {
                                #[cfg(target_arch = "x86_64")]
                                if jr < packed_from {
                                    let pbd = b.at(pc, jc + jr).cast_const();
                                    avx512::kernel_rows(kc, pa.add(ir * kc), pbd, b.rs, tile, rows, cols, pc > 0);
                                } else {
                                    avx512::kernel_rows(kc, pa.add(ir * kc), pb.add(jr * kc), NR as isize, tile, rows, cols, pc > 0);
                                }
                            }
                            ir += MR;
                        }
                        jr += NR;
                    }
                    ic += MC;
                }
                pc += KC;
            }
            jc += NC;
        }
    });
}

/// `C = A · B` for a gathered B without AVX-512: one element at a time.
///
/// # Safety
///
/// As `sgemm`.
unsafe fn gathered_fallback(m: usize, k: usize, n: usize, a: Mat, b: Mat, c: Mat) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for l in 0..k {
                // SAFETY: in bounds by the caller's contract (tables of k and n entries).
                unsafe { acc += *a.at(i, l) * *b.ptr.offset(*b.ro.add(l) as isize + *b.co.add(j) as isize) };
            }
            // SAFETY: as above.
            unsafe { *c.at(i, j) = acc };
        }
    }
}

/// Pack `mc×kc` of A as strips of MR rows, each `[kc][MR]`, zero-padded.
///
/// # Safety
///
/// AVX-512F available; `a` addresses an in-bounds `mc×kc` view; `dst` holds `⌈mc/MR⌉·MR·kc` floats.
unsafe fn pack_a(mc: usize, kc: usize, a: *const f32, rs: isize, cs: isize, dst: *mut f32) {
    let mut s = 0;
    while s < mc {
        let rows = MR.min(mc - s);
        // SAFETY: `dst` has room for this strip (see above).
        let strip = unsafe { std::slice::from_raw_parts_mut(dst.add(s * kc), kc * MR) };
        if rs == 1 {
            // Columns are contiguous (a transposed operand, `Xᵀ·G`): each packed
            // column is `rows` consecutive floats, a plain copy.
            for (l, out) in strip.chunks_exact_mut(MR).enumerate() {
                // SAFETY: column l, rows s..s+rows of the view, contiguous.
                let src = unsafe { std::slice::from_raw_parts(a.offset(s as isize + l as isize * cs), rows) };
                out[..rows].copy_from_slice(src);
                out[rows..].fill(0.0);
            }
            s += MR;
            continue;
        }
        if cs == 1 && rows == MR {
            // Rows are contiguous: transpose 16-column blocks of the 12 rows.
            // SAFETY: AVX-512F is available (checked before any packing); the
            // elements read, (s + r, l), are inside the view.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::transpose_rows(kc, a.offset(s as isize * rs), rs, strip.as_mut_ptr())
            };
            s += MR;
            continue;
        }
        for (l, out) in strip.chunks_exact_mut(MR).enumerate() {
            for (r, o) in out.iter_mut().enumerate() {
                *o = if r < rows {
                    // SAFETY: (s + r, l) is inside the view.
                    unsafe { *a.offset((s + r) as isize * rs + l as isize * cs) }
                } else {
                    0.0
                };
            }
        }
        s += MR;
    }
}

/// Pack `kc×nc` of B as strips of NR columns, each `[kc][NR]`, zero-padded.
///
/// # Safety
///
/// AVX-512F available; `b` addresses an in-bounds `kc×nc` view; `dst` holds
/// `kc·⌈nc/NR⌉·NR` floats.
unsafe fn pack_b(kc: usize, nc: usize, b: *const f32, rs: isize, cs: isize, dst: *mut f32) {
    let mut s = 0;
    while s < nc {
        let cols = NR.min(nc - s);
        // SAFETY: `dst` has room for this strip (see above).
        let strip = unsafe { std::slice::from_raw_parts_mut(dst.add(s * kc), kc * NR) };
        if cs == 1 && cols == NR {
            for (l, out) in strip.chunks_exact_mut(NR).enumerate() {
                // SAFETY: row l, columns s..s+NR of the view, contiguous.
                let src = unsafe { std::slice::from_raw_parts(b.offset(l as isize * rs + s as isize), NR) };
                out.copy_from_slice(src);
            }
        } else if rs == 1 && cols == NR {
            // Columns are contiguous (a transposed operand): transpose 16×16
            // blocks of the 32 columns.
            // SAFETY: AVX-512F is available (checked before any packing); the
            // elements read, (l, s + j), are inside the view.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::transpose_strip(kc, b.offset(s as isize * cs), cs, strip.as_mut_ptr())
            };
        } else if rs == 1 {
            // Columns are contiguous: read along them, write with stride NR.
            if cols < NR {
                strip.fill(0.0);
            }
            for j in 0..cols {
                // SAFETY: column s + j, rows 0..kc of the view, contiguous.
                let src = unsafe { std::slice::from_raw_parts(b.offset((s + j) as isize * cs), kc) };
                for (l, &v) in src.iter().enumerate() {
                    strip[l * NR + j] = v;
                }
            }
        } else {
            for (l, out) in strip.chunks_exact_mut(NR).enumerate() {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = if j < cols {
                        // SAFETY: (l, s + j) is inside the view.
                        unsafe { *b.offset(l as isize * rs + (s + j) as isize * cs) }
                    } else {
                        0.0
                    };
                }
            }
        }
        s += NR;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Mat, MR, NR};
    use std::arch::x86_64::*;

    /// Transpose the 16×16 block whose rows are `r`: `out[j]` lane `i` is
    /// `r[i]` lane `j`. Four rounds of 16 shuffles (32-bit and 64-bit unpacks,
    /// then two of 128-bit lanes): much cheaper than gathers on this machine.
    #[target_feature(enable = "avx512f")]
    fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        // u[4q + c], 128-bit lane k: column 4k + c of rows 4q..4q + 4.
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let pd = |x: __m512| _mm512_castps_pd(x);
            let (a, b, c, d) = (pd(t[4 * q]), pd(t[4 * q + 1]), pd(t[4 * q + 2]), pd(t[4 * q + 3]));
            u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
            u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
            u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
            u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            let s0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let s1 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
            let h0 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let h1 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
            out[c] = _mm512_shuffle_f32x4::<0x88>(s0, h0);
            out[4 + c] = _mm512_shuffle_f32x4::<0x88>(s1, h1);
            out[8 + c] = _mm512_shuffle_f32x4::<0xdd>(s0, h0);
            out[12 + c] = _mm512_shuffle_f32x4::<0xdd>(s1, h1);
        }
        out
    }

    /// Lanes `0..n` (`n ≤ 16`).
    fn first_lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as u16
        }
    }

    /// Pack one full strip of a row-contiguous A (column stride 1, row stride
    /// `rs`): `dst[l·MR + r] = a[r·rs + l]` for `l < kc`, `r < MR`, by 16×16
    /// transposes of 16 columns of the 12 rows (and 4 zero rows).
    ///
    /// # Safety
    ///
    /// AVX-512F available; every `a[r·rs + l]` in bounds; `dst` holds `kc·MR`
    /// floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_rows(kc: usize, a: *const f32, rs: isize, dst: *mut f32) {
        let keep: __mmask16 = (1 << MR) - 1;
        let mut rows = [_mm512_setzero_ps(); 16];
        let mut l0 = 0;
        while l0 < kc {
            let n = (kc - l0).min(16);
            for (r, row) in rows.iter_mut().enumerate().take(MR) {
                // SAFETY: elements (r, l0..l0 + n) are in the view; the other
                // lanes are masked off.
                *row = unsafe { _mm512_maskz_loadu_ps(first_lanes(n), a.offset(r as isize * rs + l0 as isize)) };
            }
            let cols = transpose16(&rows);
            for (l, col) in cols.iter().enumerate().take(n) {
                // SAFETY: packed column l0 + l < kc, its MR floats.
                unsafe { _mm512_mask_storeu_ps(dst.add((l0 + l) * MR), keep, *col) };
            }
            l0 += 16;
        }
    }

    /// Pack one full strip of a column-contiguous B (row stride 1, column
    /// stride `cs`): `dst[l·NR + j] = b[l + j·cs]` for `l < kc`, `j < NR`, by
    /// 16×16 transposes.
    ///
    /// # Safety
    ///
    /// AVX-512F available; every `b[l + j·cs]` in bounds; `dst` holds `kc·NR`
    /// floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_strip(kc: usize, b: *const f32, cs: isize, dst: *mut f32) {
        let mut cols = [_mm512_setzero_ps(); 16];
        for half in 0..NR / 16 {
            let mut l0 = 0;
            while l0 < kc {
                let n = (kc - l0).min(16);
                for (j, col) in cols.iter_mut().enumerate() {
                    let at = (16 * half + j) as isize * cs + l0 as isize;
                    // SAFETY: elements (l0..l0 + n, 16·half + j) are in the
                    // view; the other lanes are masked off.
                    *col = unsafe { _mm512_maskz_loadu_ps(first_lanes(n), b.offset(at)) };
                }
                let rows = transpose16(&cols);
                for (l, row) in rows.iter().enumerate().take(n) {
                    // SAFETY: packed row l0 + l < kc, columns 16·half..+16.
                    unsafe { _mm512_storeu_ps(dst.add((l0 + l) * NR + 16 * half), *row) };
                }
                l0 += 16;
            }
        }
    }

    /// Pack `kc×nc` of a gathered B (`Mat::ro`, `Mat::co`) as strips of NR
    /// columns, each `[kc][NR]`, zero-padded: two 16-lane gathers per packed
    /// row, with the column offsets loaded once per strip.
    ///
    /// # Safety
    ///
    /// AVX-512F available; `b.ro` holds `kc` and `b.co` `nc` offsets, every
    /// `b.ptr[ro[l] + co[j]]` in bounds; `dst` holds `kc·⌈nc/NR⌉·NR` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_b_gather(kc: usize, nc: usize, b: Mat, dst: *mut f32) {
        let mut s = 0;
        while s < nc {
            let cols = NR.min(nc - s);
            let (m0, m1) = (first_lanes(cols), first_lanes(cols.saturating_sub(16)));
            // SAFETY: the masked lanes are the strip's columns, inside `co`.
            let (i0, i1) =
                unsafe { (_mm512_maskz_loadu_epi32(m0, b.co.add(s).cast()), _mm512_maskz_loadu_epi32(m1, b.co.add(s + 16).cast())) };
            let strip = dst.wrapping_add(s * kc);
            for l in 0..kc {
                // SAFETY: row l's offset is in `ro`; the gathered elements are
                // in bounds (caller), the masked-off lanes are not read; the
                // packed row is inside `dst`.
                unsafe {
                    let base = b.ptr.offset(*b.ro.add(l) as isize).cast_const();
                    let v0 = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m0, i0, base);
                    let v1 = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m1, i1, base);
                    _mm512_storeu_ps(strip.add(l * NR), v0);
                    _mm512_storeu_ps(strip.add(l * NR + 16), v1);
                }
            }
            s += NR;
        }
    }

    /// `kernel` with the fewest tile rows that cover `rows`: a partial row
    /// tile (the last 4 of W1's 64-row products, 10 of an `n = 10` product
    /// computed transposed) does not pay for 12 rows of multiply-adds.
    ///
    /// # Safety
    ///
    /// As `kernel`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn kernel_rows(kc: usize, a: *const f32, b: *const f32, ldb: isize, c: Mat, rows: usize, cols: usize, acc: bool) {
        // SAFETY: forwarded; each instance reads at most its R ≤ MR rows of the
        // packed strip and stores at most `rows` ≤ R rows.
        unsafe {
            if cols <= 16 {
                // The last strip of a product 16k + 1..16 wide (65 classes:
                // 32 + 32 + 1): one vector of B, half the multiply-adds.
                match rows {
                    0..=4 => kernel::<4, false>(kc, a, b, ldb, c, rows, cols, acc),
                    5..=8 => kernel::<8, false>(kc, a, b, ldb, c, rows, cols, acc),
                    _ => kernel::<MR, false>(kc, a, b, ldb, c, rows, cols, acc),
                }
                return;
            }
            match rows {
                0..=4 => kernel::<4, true>(kc, a, b, ldb, c, rows, cols, acc),
                5..=8 => kernel::<8, true>(kc, a, b, ldb, c, rows, cols, acc),
                9..=10 => kernel::<10, true>(kc, a, b, ldb, c, rows, cols, acc),
                _ => kernel::<MR, true>(kc, a, b, ldb, c, rows, cols, acc),
            }
        }
    }

    /// `C[tile] (+)= Apanel · Bpanel` for the first `R` rows (`R ≤ MR`) of one
    /// MR×NR tile over depth `kc`, storing `rows × cols` of it (`acc`: add to
    /// C, else overwrite); only its first 16 columns unless `TWO`
    /// (`cols ≤ 16` then).
    ///
    /// # Safety
    ///
    /// AVX-512F available; `a` holds `kc·MR` floats, `b` holds `kc·NR` floats;
    /// the `rows×cols` tile of `c` is in bounds.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel<const R: usize, const TWO: bool>(
        kc: usize,
        a: *const f32,
        b: *const f32,
        ldb: isize,
        c: Mat,
        rows: usize,
        cols: usize,
        acc: bool,
    ) {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        let mut pa = a;
        let mut pb = b;
        for _ in 0..kc {
            // SAFETY: within the packed panels (kc steps of MR and NR floats).
            unsafe {
                let b0 = _mm512_loadu_ps(pb);
                let b1 = if TWO { _mm512_loadu_ps(pb.add(16)) } else { b0 };
                for r in 0..R {
                    let av = _mm512_set1_ps(*pa.add(r));
                    lo[r] = _mm512_fmadd_ps(av, b0, lo[r]);
                    if TWO {
                        hi[r] = _mm512_fmadd_ps(av, b1, hi[r]);
                    }
                }
                pa = pa.add(MR);
                pb = pb.offset(ldb);
            }
        }
        if c.cs == 1 {
            let m0: __mmask16 = if cols >= 16 { 0xffff } else { ((1u32 << cols) - 1) as u16 };
            let m1: __mmask16 = if cols >= NR {
                0xffff
            } else if cols > 16 {
                ((1u32 << (cols - 16)) - 1) as u16
            } else {
                0
            };
            for r in 0..rows.min(R) {
                let p = c.ptr.wrapping_offset(r as isize * c.rs);
                // SAFETY: the masked lanes are the tile's in-bounds columns.
                unsafe {
                    let (mut v0, mut v1) = (lo[r], hi[r]);
                    if acc {
                        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
                        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, p.add(16)));
                    }
                    _mm512_mask_storeu_ps(p, m0, v0);
                    _mm512_mask_storeu_ps(p.add(16), m1, v1);
                }
            }
        } else {
            let mut t = [0.0f32; NR];
            for r in 0..rows.min(R) {
                // SAFETY: `t` holds NR floats.
                unsafe {
                    _mm512_storeu_ps(t.as_mut_ptr(), lo[r]);
                    _mm512_storeu_ps(t.as_mut_ptr().add(16), hi[r]);
                }
                for (j, &v) in t.iter().enumerate().take(cols) {
                    let p = c.at(r, j);
                    // SAFETY: (r, j) is inside the tile.
                    unsafe { *p = if acc { *p + v } else { v } };
                }
            }
        }
    }
}
