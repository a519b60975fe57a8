//! Native code for a whole specialized graph: one Cranelift function.
//!
//! `plan` decides which nodes are fused into their consumers' loops and which
//! get a buffer, and lists the kernels (fused `f32x4` loop nests, and calls to
//! Rust helpers for matmul and solve); `memory` lays every buffer out in one
//! arena, sharing space between temporaries whose lifetimes do not overlap;
//! `emit` writes the kernels, in order, into a single function
//! `fn(arena: *mut f32, scratch: *mut f64)`. `run` is one call of it.

mod adam;
mod emit;
pub mod gemm;
mod helpers;
mod kernel;
mod loops;
mod math;
mod memory;
mod plan;
mod pool;
mod rows;
mod updates;
mod wide;

use crate::ast::Span;
use crate::diagnostic::Diagnostic;
use crate::ir::{Graph, Shape, ValueId};
use crate::size::{OutOfMemory, TooLargeAt};
use cranelift_codegen::ir::types::I64;
use cranelift_codegen::ir::{AbiParam, InstBuilder, StackSlotData, StackSlotKind};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, FuncId, Linkage, Module};
pub use helpers::Fault;
/// Tests only: whether scans may read and write their sequences in place
/// (`loops::steps_in_place`), and whether generated code may call the
/// sixteen-lane math functions (`wide`); both true unless a test compares.
#[doc(hidden)]
pub use loops::IN_PLACE as SCAN_STEPS_IN_PLACE;
use std::fmt;
use std::time::{Duration, Instant};
#[doc(hidden)]
pub use wide::ALLOWED as WIDE_MATH;

#[derive(Debug, Clone, PartialEq)]
pub enum CodegenError {
    /// A dim is still symbolic: specialize the graph first.
    Symbolic(Shape),
    /// Cranelift rejected the host or the generated code.
    Cranelift(String),
    /// An `updates` pair that cannot be honoured.
    BadUpdate { output: usize, input: ValueId, reason: String },
    /// A node that its op's shape rule should have rejected.
    Malformed { node: ValueId, reason: String },
    /// A node with more elements than a tensor may have (a graph that was
    /// not checked, or sizes that made it too large in `Graph::specialize`).
    TooLarge(TooLargeAt),
    /// The arena or scratch space could not be allocated.
    OutOfMemory(OutOfMemory),
}

impl fmt::Display for CodegenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodegenError::Symbolic(s) => {
                write!(f, "cannot compile shape {s}: it has symbolic dims")
            }
            CodegenError::Cranelift(e) => write!(f, "code generation failed: {e}"),
            CodegenError::BadUpdate { output, input, reason } => {
                write!(f, "bad update of input {input} from output {output}: {reason}")
            }
            CodegenError::Malformed { node, reason } => {
                write!(f, "malformed node {node}: {reason}")
            }
            CodegenError::TooLarge(at) => write!(f, "{}", at.to_diagnostic().title),
            CodegenError::OutOfMemory(e) => write!(f, "{}", e.message()),
        }
    }
}

impl CodegenError {
    /// The diagnostic for a failure to compile `what`, placed at the node a
    /// size error is about, else at `span` (the item being compiled).
    pub fn to_diagnostic(&self, what: &str, span: Span) -> Diagnostic {
        match self {
            CodegenError::TooLarge(at) => at.to_diagnostic(),
            CodegenError::OutOfMemory(e) => e.to_diagnostic(span),
            other => Diagnostic::new(format!("could not compile {what}")).label(span, other.to_string()),
        }
    }
}

impl std::error::Error for CodegenError {}

/// How to compile a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CompileOptions {
    /// Compare every load and store of the generated loops with its buffer's
    /// extent first: one outside is not made (it goes to the buffer's start)
    /// and is reported by `CompiledGraph::bounds_fault`. For tests and
    /// `nnc run --bounds-checked`; the generated code guarantees this by
    /// construction, and the checks cost time.
    pub bounds_checked: bool,
}

/// An access outside its buffer that bounds-checked code caught (and did not
/// make): kernel `kernel` (see `kernel_summary`) reached element `offset` of a
/// buffer of `len` elements holding node `node`'s value (`None`: a buffer of
/// the code's own, such as a copied weight).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundsFault {
    pub kernel: usize,
    pub node: Option<ValueId>,
    pub offset: i64,
    pub len: usize,
}

/// Threads the worker pool runs (the caller included): `NNC_THREADS`, else the
/// CPUs this process may use.
/// Mean wall time of each kernel over the runs since the last call, when the
/// code was generated with `NNC_PROFILE=1` (empty otherwise).
pub fn kernel_profile() -> Vec<Duration> {
    helpers::profile::take()
}

pub fn threads() -> usize {
    pool::pool().threads()
}

/// The JIT's SGEMM on strided row/column views, for benchmarks:
/// `C[i·rsc + j·csc] = Σ_l A[i·rsa + l·csa] · B[l·rsb + j·csb]` on up to
/// `threads` threads.
///
/// # Safety
///
/// Every addressed element of `a`, `b`, `c` must be in bounds, and `c` must
/// not overlap `a` or `b` nor address one element twice.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_strided(
    mkn: [usize; 3],
    a: *const f32,
    a_strides: [isize; 2],
    b: *const f32,
    b_strides: [isize; 2],
    c: *mut f32,
    c_strides: [isize; 2],
    threads: usize,
) {
    let [m, k, n] = mkn;
    let mat = |p: *const f32, s: [isize; 2]| gemm::Mat::strided(p.cast_mut(), s[0], s[1]);
    // SAFETY: the caller's contract is `gemm::sgemm`'s.
    unsafe { gemm::sgemm(m, k, n, mat(a, a_strides), mat(b, b_strides), mat(c, c_strides), threads) }
}

fn cl(e: impl fmt::Display) -> CodegenError {
    CodegenError::Cranelift(e.to_string())
}

/// The generated function: `(arena, scratch)`.
type Entry = unsafe extern "C" fn(*mut f32, *mut f64);

/// A heap block only ever accessed through its raw pointer, so the generated
/// code and the slices handed out never alias a live Rust reference.
struct RawBuf<T> {
    ptr: *mut T,
    len: usize,
}

impl<T: Copy + Default> RawBuf<T> {
    /// `len` zeroed values, or an error naming `what` if the machine cannot
    /// give them (never an allocation abort).
    fn new(len: usize, what: &str) -> Result<RawBuf<T>, CodegenError> {
        let mut v = Vec::new();
        OutOfMemory::reserve(&mut v, len, || what.to_string()).map_err(CodegenError::OutOfMemory)?;
        v.resize(len, T::default());
        let b: Box<[T]> = v.into_boxed_slice();
        let len = b.len();
        Ok(RawBuf { ptr: Box::into_raw(b).cast::<T>(), len })
    }
}

/// Every node's element count within `size::MAX_ELEMENTS`, so that the
/// offsets and strides planned from them cannot wrap.
fn check_sizes(graph: &Graph) -> Result<(), CodegenError> {
    for node in &graph.nodes {
        node.ty.shape.check_size().map_err(|error| CodegenError::TooLarge(TooLargeAt { span: node.span, error }))?;
    }
    Ok(())
}

impl<T> Drop for RawBuf<T> {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` come from `Box::into_raw` of a boxed slice of
        // exactly `len` elements in `new`, and this is the only place freeing it.
        unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len))) }
    }
}

/// A tensor's place in the arena: offset and element count.
#[derive(Clone, Copy, Debug)]
struct Slot {
    off: usize,
    len: usize,
}

pub struct CompiledGraph {
    /// Owns the code `entry` points into; freed on drop.
    module: Option<JITModule>,
    entry: Entry,
    arena: RawBuf<f32>,
    /// First 64-byte-aligned element of `arena`; storage offsets count from here.
    base: usize,
    scratch: RawBuf<f64>,
    inputs: Vec<(String, Slot)>,
    outputs: Vec<Slot>,
    kernels: usize,
    /// One line per kernel, in order (`kernel_summary`).
    summary: Vec<String>,
    /// Run with subnormal floats flushed to zero (`set_flush_subnormals`).
    flush_subnormals: bool,
    compile_time: Duration,
    fault: Option<Fault>,
    /// Where bounds-checked code records a bad access (its address is in the code).
    bounds: Option<Box<helpers::BoundsRecord>>,
    bounds_fault: Option<BoundsFault>,
    /// The node whose value each storage holds, and its element count.
    storages: Vec<(Option<ValueId>, usize)>,
    /// Offset tables read by the SGEMM helper for gathered operands (the code
    /// holds their addresses).
    _tables: Vec<Box<[i32]>>,
}

/// Turn the finalized code address into a callable function pointer.
///
/// # Safety
///
/// `ptr` must be the address of finalized machine code for a function with the
/// signature `(i64, i64) -> ()` in the host's C calling convention, and the
/// module owning that code must stay alive (not freed) for as long as the
/// returned pointer may be called.
unsafe fn entry_from_ptr(ptr: *const u8) -> Entry {
    // SAFETY: guaranteed by the caller (see `# Safety`); pointers to data and to
    // functions have the same size and representation on every supported host.
    unsafe { std::mem::transmute::<*const u8, Entry>(ptr) }
}

fn new_module() -> Result<JITModule, CodegenError> {
    let mut flags = settings::builder();
    flags.set("opt_level", "speed").map_err(cl)?;
    flags.set("enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" }).map_err(cl)?;
    flags.set("use_colocated_libcalls", "false").map_err(cl)?;
    flags.set("is_pic", "false").map_err(cl)?;
    let isa = cranelift_native::builder().map_err(cl)?.finish(settings::Flags::new(flags)).map_err(cl)?;
    let mut jb = JITBuilder::with_isa(isa, default_libcall_names());
    jb.symbol("nnc_sgemm", helpers::nnc_sgemm as *const u8);
    jb.symbol("nnc_solve", helpers::nnc_solve as *const u8);
    jb.symbol("nnc_random", helpers::nnc_random as *const u8);
    jb.symbol("nnc_lookup", helpers::nnc_lookup as *const u8);
    jb.symbol("nnc_check_ids", helpers::nnc_check_ids as *const u8);
    jb.symbol("nnc_bounds_fault", helpers::nnc_bounds_fault as *const u8);
    jb.symbol("nnc_copy_rows", helpers::nnc_copy_rows as *const u8);
    jb.symbol("nnc_tick", helpers::profile::nnc_tick as *const u8);
    jb.symbol("nnc_parallel", helpers::nnc_parallel as *const u8);
    jb.symbol("nnc_sgemm_pair", helpers::nnc_sgemm_pair as *const u8);
    jb.symbol("nnc_adam", adam::nnc_adam as *const u8);
    for (op, name) in wide::FUNCTIONS {
        if let Some(f) = wide::address(op) {
            jb.symbol(name, f);
        }
    }
    Ok(JITModule::new(jb))
}

/// In a bounds-checked build: the fault helper, the address of the record it
/// writes, and each storage's element count.
struct Checks {
    fault: FuncId,
    record: i64,
    lens: Vec<usize>,
}

/// Declare and define the graph's function in `module`; `record` is the
/// address of the bounds record of a bounds-checked build.
fn define(
    module: &mut JITModule,
    plan: &plan::Plan,
    offsets: &[usize],
    tables: &[i64],
    record: Option<i64>,
) -> Result<FuncId, CodegenError> {
    let import = |module: &mut JITModule, name: &str, n: usize| {
        let mut sig = module.make_signature();
        sig.params = vec![AbiParam::new(I64); n];
        module.declare_function(name, Linkage::Import, &sig).map_err(cl)
    };
    let sgemm_id = import(module, "nnc_sgemm", 15)?;
    let solve_id = import(module, "nnc_solve", 10)?;
    let random_id = import(module, "nnc_random", 4)?;
    let lookup_id = import(module, "nnc_lookup", 9)?;
    let check_ids_id = import(module, "nnc_check_ids", 6)?;
    let copy_rows_id = import(module, "nnc_copy_rows", 6)?;
    let tick_id = import(module, "nnc_tick", 1)?;
    let parallel_id = import(module, "nnc_parallel", 4)?;
    let pair_id = import(module, "nnc_sgemm_pair", 28)?;
    let adam_id = import(module, "nnc_adam", 16)?;
    let helpers = [sgemm_id, solve_id, random_id, lookup_id, check_ids_id, copy_rows_id];
    let checks = match record {
        Some(record) => {
            let lens = plan.storages.iter().map(|s| s.len).collect();
            Some(Checks { fault: import(module, "nnc_bounds_fault", 4)?, record, lens })
        }
        None => None,
    };
    let checks = checks.as_ref();
    let wide_ids = match wide::enabled() {
        true => Some(wide::FUNCTIONS.map(|(_, name)| import(module, name, 1)).into_iter().collect::<Result<Vec<_>, _>>()?),
        false => None,
    };
    // Adam's update runs as a precompiled AVX-512 kernel when recognised.
    let adams: Vec<Option<adam::Adam>> = plan
        .kernels
        .iter()
        .map(|k| match k {
            kernel::Kernel::Map(m) => adam::recognise(m),
            _ => None,
        })
        .collect();
    // Kernels run across threads (large elementwise loops, fused row groups,
    // batches of small products, row-split scans): one function per kernel,
    // over a range of its rows; with how many ranges each thread takes.
    let threaded = pool::pool().threads() > 1;
    let mut pieces: Vec<Option<(FuncId, usize, i64)>> = Vec::with_capacity(plan.kernels.len());
    for (i, k) in plan.kernels.iter().enumerate() {
        let form = match k {
            kernel::Kernel::Map(m) if threaded && adams[i].is_none() => {
                emit::parallel_form(m).map(|pk| (pk.dims.first().copied().unwrap_or(1), 4, kernel::Kernel::Map(pk)))
            }
            kernel::Kernel::Loop { split: Some(rows), .. } if threaded => Some((*rows, 1, k.clone())),
            kernel::Kernel::MatMul { .. } if threaded => emit::batch_split(k).map(|items| (items, 2, k.clone())),
            kernel::Kernel::Rows { rows: n, kernels } if threaded && rows::parallel(kernels) => Some((*n, 4, k.clone())),
            _ => None,
        };
        pieces.push(match form {
            Some((rows, per_thread, pk)) => {
                let name = format!("nnc_piece{i}");
                let piece = define_piece(module, (&name, i), &pk, offsets, tables, (helpers, wide_ids.as_deref()), checks)?;
                Some((piece, rows, per_thread))
            }
            None => None,
        });
    }
    let mut ctx = module.make_context();
    ctx.func.signature.params = vec![AbiParam::new(I64), AbiParam::new(I64)];
    let id = module.declare_function("nnc_graph", Linkage::Export, &ctx.func.signature).map_err(cl)?;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (arena, scratch) = match b.block_params(entry) {
        [a, s] => (*a, *s),
        _ => return Err(CodegenError::Cranelift("entry block parameters".into())),
    };
    {
        let parallel = module.declare_func_in_func(parallel_id, b.func);
        let refs: Vec<_> = pieces.iter().map(|p| p.map(|(id, rows, per)| (module.declare_func_in_func(id, b.func), rows, per))).collect();
        let mut em = emitter(module, &mut b, (helpers, wide_ids.as_deref()), [arena, scratch], None, (offsets, tables), checks);
        let pair = module.declare_func_in_func(pair_id, em.b.func);
        let adam_fn = module.declare_func_in_func(adam_id, em.b.func);
        let lens: Vec<usize> = plan.storages.iter().map(|s| s.len).collect();
        let tick = helpers::profile::enabled().then(|| module.declare_func_in_func(tick_id, em.b.func));
        let mut i = 0;
        if let Some(t) = tick {
            let v = em.b.ins().iconst(I64, -1);
            em.b.ins().call(t, &[v]);
        }
        while let Some(k) = plan.kernels.get(i) {
            let next = plan.kernels.get(i + 1);
            em.kernel = i;
            match (refs.get(i).copied().flatten(), next) {
                _ if adams[i].is_some() => {
                    if let Some(a) = &adams[i] {
                        em.emit_adam(a, adam_fn)?;
                    }
                }
                (Some((f, rows, per_thread)), _) => {
                    let addr = em.b.ins().func_addr(I64, f);
                    let n = em.b.ins().iconst(I64, rows as i64);
                    let per = em.b.ins().iconst(I64, per_thread);
                    em.b.ins().call(parallel, &[addr, arena, n, per]);
                }
                (None, Some(k2)) if threaded && emit::pairable(k, k2, offsets, &lens) => {
                    em.emit_matmul_pair(k, k2, pair)?;
                    i += 1;
                }
                (None, _) => em.emit_kernel(k)?,
            }
            if let Some(t) = tick {
                let v = em.b.ins().iconst(I64, i as i64);
                em.b.ins().call(t, &[v]);
            }
            i += 1;
        }
    }
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(module.target_config());
    module.define_function(id, &mut ctx).map_err(|e| CodegenError::Cranelift(format!("{e:?}")))?;
    Ok(id)
}

/// The emitter for the function `b` builds: the helpers (`nnc_sgemm`,
/// `nnc_solve`, `nnc_random`, `nnc_lookup`, `nnc_check_ids`, `nnc_copy_rows`) and the
/// sixteen-lane math functions declared in it, with the arena and scratch
/// addresses and, for a piece, its row range.
fn emitter<'a, 'b>(
    module: &mut JITModule,
    b: &'a mut FunctionBuilder<'b>,
    (calls, wide_ids): ([FuncId; 6], Option<&[FuncId]>),
    [arena, scratch]: [cranelift_codegen::ir::Value; 2],
    rows: Option<(cranelift_codegen::ir::Value, cranelift_codegen::ir::Value)>,
    (offsets, tables): (&'a [usize], &'a [i64]),
    checks: Option<&'a Checks>,
) -> emit::Emitter<'a, 'b> {
    let [sgemm, solve, random, lookup, check_ids, copy_rows] = calls.map(|id| module.declare_func_in_func(id, b.func));
    let wide = wide_refs(module, wide_ids, b);
    let bounds = checks.map(|c| emit::Bounds { lens: &c.lens, fault: module.declare_func_in_func(c.fault, b.func), record: c.record });
    emit::Emitter {
        b,
        arena,
        scratch,
        offsets,
        sgemm,
        solve,
        random,
        lookup,
        check_ids,
        copy_rows,
        step: None,
        rows,
        tables,
        wide,
        views: Vec::new(),
        bounds,
        kernel: 0,
    }
}

/// The sixteen-lane math functions (`wide`) as `b`'s function calls, with
/// the stack slot their arguments pass through.
fn wide_refs(module: &mut JITModule, ids: Option<&[FuncId]>, b: &mut FunctionBuilder) -> Option<emit::Wide> {
    let funcs = wide::FUNCTIONS.iter().zip(ids?).map(|(&(op, _), &id)| (op, module.declare_func_in_func(id, b.func))).collect();
    let slot = b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 64, 6));
    Some(emit::Wide { funcs, slot })
}

fn describe(k: &kernel::Kernel) -> String {
    // Whether the kernels that can run across threads do.
    let threaded = pool::pool().threads() > 1;
    match k {
        kernel::Kernel::Map(m) => {
            let what = match (m.acc, m.extra.len()) {
                (Some(kind), _) => format!("accumulate ({kind:?})"),
                (None, 0) => "map".to_string(),
                (None, e) => format!("map with {} outputs", e + 1),
            };
            let par = if adam::recognise(m).is_some() {
                ", AVX-512 Adam kernel"
            } else if emit::parallel_form(m).is_some() {
                ", parallel"
            } else {
                ""
            };
            format!("{what} over {:?}: {} operands, {} expression nodes{par}", m.dims, m.operands.len(), m.nodes.len())
        }
        kernel::Kernel::Rows { rows, kernels } => {
            let parts: Vec<String> = kernels.iter().map(|k| describe(&kernel::Kernel::Map(k.clone()))).collect();
            let par = if threaded && rows::parallel(kernels) { ", parallel" } else { "" };
            format!("{} loops fused over {rows} rows{par}: [{}]", kernels.len(), parts.join("; "))
        }
        kernel::Kernel::MatMul { batch, m, k: depth, n, b, .. } => {
            let gathered = if b.gather.is_some() { " (B unfolded in place)" } else { "" };
            let split = if threaded && emit::batch_split(k).is_some() { ", batch split across threads" } else { "" };
            format!("matmul {batch:?} {m}x{depth} @ {depth}x{n}{gathered}{split}")
        }
        kernel::Kernel::Solve { n, k, .. } => format!("solve {n}x{n} \\ {n}x{k}"),
        kernel::Kernel::Random { n, stream, .. } => format!("random {n} (stream {stream})"),
        kernel::Kernel::Lookup { scatter: false, n, rows, width, .. } => format!("gather {n} of {rows} rows x {width}"),
        kernel::Kernel::Lookup { scatter: true, n, rows, width, .. } => format!("scatter-add {n} into {rows} rows x {width}"),
        kernel::Kernel::Check { n, bound, .. } => format!("check {n} ids in 0..{bound}"),
        kernel::Kernel::Loop { steps, reverse, body, split, views } => {
            let parts: Vec<String> = body.iter().map(describe).collect();
            let dir = if *reverse { ", reversed" } else { "" };
            let by_rows = if threaded && split.is_some() { ", rows split across threads" } else { "" };
            let (read, written) = (views.iter().filter(|v| !v.written).count(), views.iter().filter(|v| v.written).count());
            let in_place = match (read, written) {
                (0, 0) => String::new(),
                _ => format!(", {read} sequences read and {written} written in place"),
            };
            format!("loop of {steps} steps{dir}{by_rows}{in_place}: [{}]", parts.join("; "))
        }
        kernel::Kernel::StepCopy { rows, width, .. } => format!("copy {rows} rows x {width}"),
    }
}

/// Define `fn(arena, lo, hi)` running rows `[lo, hi)` of the kernel `k`: a
/// map kernel in `parallel_form`, a fused row group, a batch of products (its
/// first batch dim) or a row-split loop (`Emitter::rows`).
fn define_piece(
    module: &mut JITModule,
    (name, index): (&str, usize),
    k: &kernel::Kernel,
    offsets: &[usize],
    tables: &[i64],
    (helpers, wide_ids): ([FuncId; 6], Option<&[FuncId]>),
    checks: Option<&Checks>,
) -> Result<FuncId, CodegenError> {
    let mut ctx = module.make_context();
    ctx.func.signature.params = vec![AbiParam::new(I64); 3];
    let id = module.declare_function(name, Linkage::Local, &ctx.func.signature).map_err(cl)?;
    let mut fctx = FunctionBuilderContext::new();
    let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let (arena, lo, hi) = match b.block_params(entry) {
        [a, l, h] => (*a, *l, *h),
        _ => return Err(CodegenError::Cranelift("piece parameters".into())),
    };
    {
        let mut em = emitter(module, &mut b, (helpers, wide_ids), [arena, arena], Some((lo, hi)), (offsets, tables), checks);
        em.kernel = index;
        em.emit_kernel(k)?;
    }
    b.ins().return_(&[]);
    b.seal_all_blocks();
    b.finalize(module.target_config());
    module.define_function(id, &mut ctx).map_err(|e| CodegenError::Cranelift(format!("{e:?}")))?;
    Ok(id)
}

impl CompiledGraph {
    /// Compile `graph` (every dim known). After each `run`, the input `v` of each
    /// `(o, v)` in `updates` holds output `o`'s new value: the output is written
    /// straight into the input's buffer when no later kernel reads the input
    /// (in-place elementwise is fine), else copied there at the end.
    pub fn compile(graph: &Graph, updates: &[(usize, ValueId)]) -> Result<CompiledGraph, CodegenError> {
        CompiledGraph::compile_with(graph, updates, CompileOptions::default())
    }

    /// `compile` with `options`.
    pub fn compile_with(graph: &Graph, updates: &[(usize, ValueId)], options: CompileOptions) -> Result<CompiledGraph, CodegenError> {
        let start = Instant::now();
        check_sizes(graph)?;
        let plan = plan::plan(graph, updates)?;
        CompiledGraph::from_plan(plan, options, start)
    }

    /// The compiled code of a plan (`compile`'s steps after planning).
    fn from_plan(plan: plan::Plan, options: CompileOptions, start: Instant) -> Result<CompiledGraph, CodegenError> {
        let layout = memory::assign(&plan.storages, &plan.kernels);
        let mut module = new_module()?;
        // The offset tables of gathered operands: boxed, so their addresses
        // (baked into the code) stay valid while the compiled graph owns them.
        let tables: Vec<Box<[i32]>> = plan.tables.iter().map(|t| t.clone().into_boxed_slice()).collect();
        let addrs: Vec<i64> = tables.iter().map(|t| t.as_ptr() as i64).collect();
        let bounds = options.bounds_checked.then(|| Box::new(helpers::BoundsRecord::default()));
        let record = bounds.as_ref().map(|r| &**r as *const helpers::BoundsRecord as i64);
        let id = define(&mut module, &plan, &layout.offsets, &addrs, record)?;
        module.finalize_definitions().map_err(cl)?;
        let code = module.get_finalized_function(id);
        // SAFETY: `code` is the function just defined with params (i64, i64) and no
        // results in the ISA's default (C) calling convention; `module` is kept in
        // the returned value and freed only on drop.
        let entry = unsafe { entry_from_ptr(code) };

        let arena = RawBuf::<f32>::new(layout.len.saturating_add(16), "the compiled step's buffers")?;
        let base = (arena.ptr as usize).wrapping_neg() % 64 / 4;
        let slot = |s: usize, len: usize| -> Result<Slot, CodegenError> {
            let off = layout.offsets.get(s).copied().unwrap_or(usize::MAX);
            if off.saturating_add(len) > layout.len {
                return Err(CodegenError::Cranelift(format!("storage {s} outside the arena")));
            }
            Ok(Slot { off, len })
        };
        let len_of = |s: usize| plan.storages.get(s).map_or(0, |st| st.len);
        let inputs = plan.inputs.iter().map(|(n, s)| Ok((n.clone(), slot(*s, len_of(*s))?))).collect::<Result<_, _>>()?;
        let outputs = plan.outputs.iter().map(|&(s, len)| slot(s, len)).collect::<Result<_, _>>()?;
        Ok(CompiledGraph {
            module: Some(module),
            entry,
            arena,
            base,
            scratch: RawBuf::new(plan.scratch.max(1), "the compiled step's scratch space")?,
            inputs,
            outputs,
            kernels: plan.kernels.len(),
            summary: plan.kernels.iter().map(describe).collect(),
            flush_subnormals: false,
            compile_time: start.elapsed(),
            fault: None,
            bounds,
            bounds_fault: None,
            storages: plan.owners.iter().zip(&plan.storages).map(|(o, s)| (*o, s.len)).collect(),
            _tables: tables,
        })
    }

    /// Input names, in graph input order.
    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|(n, _)| n == name)
    }

    fn slice(&self, s: Slot) -> &[f32] {
        // SAFETY: `compile` checked `off + len <= layout.len`, and the arena holds
        // `layout.len + 16 >= base + layout.len` elements. Mutation only happens
        // through `&mut self` (`run`, `input_mut`), so no writer is live.
        unsafe { std::slice::from_raw_parts(self.arena.ptr.add(self.base + s.off), s.len) }
    }

    /// Input `i`'s buffer (row-major); values persist between runs. An index out
    /// of range gives an empty slice.
    pub fn input_mut(&mut self, i: usize) -> &mut [f32] {
        let Some(&(_, s)) = self.inputs.get(i) else {
            return &mut [];
        };
        // SAFETY: in bounds as in `slice`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.arena.ptr.add(self.base + s.off), s.len) }
    }

    pub fn input(&self, i: usize) -> &[f32] {
        self.inputs.get(i).map_or(&[], |&(_, s)| self.slice(s))
    }

    /// Run the compiled function once. Allocates nothing (SGEMM packing
    /// buffers are per thread, allocated on a thread's first product).
    /// A fault (an id out of range) leaves the outputs defined but wrong and
    /// is returned by `fault` until the next run.
    pub fn run(&mut self) {
        helpers::take_fault();
        let take_access = |b: &helpers::BoundsRecord| b.0.lock().ok().and_then(|mut a| a.take());
        if let Some(b) = &self.bounds {
            take_access(b);
        }
        let old = pool::mxcsr::get();
        if self.flush_subnormals {
            pool::mxcsr::set(old | pool::mxcsr::FTZ_DAZ);
        }
        // SAFETY: `entry` was compiled for exactly this arena layout and scratch
        // size and its module is alive (`self.module`); `&mut self` guarantees no
        // slice into the buffers is live while the code writes them.
        unsafe { (self.entry)(self.arena.ptr.add(self.base), self.scratch.ptr) }
        if self.flush_subnormals {
            pool::mxcsr::set(old);
        }
        self.fault = helpers::take_fault();
        let access = self.bounds.as_deref().and_then(take_access);
        self.bounds_fault = access.map(|a| {
            let (node, len) = self.storages.get(a.storage).copied().unwrap_or((None, 0));
            BoundsFault { kernel: a.kernel, node, offset: a.offset, len }
        });
    }

    /// In a bounds-checked build, the first access outside its buffer in the
    /// last `run`, if any (it was not made: the outputs are wrong).
    pub fn bounds_fault(&self) -> Option<BoundsFault> {
        self.bounds_fault
    }

    /// What went wrong in the last `run`, if anything: the node and the bad id.
    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// Whether `run` treats subnormal floats as zero and flushes subnormal
    /// results to zero (the x86 FTZ/DAZ modes, as XLA runs on CPUs). Off by
    /// default (IEEE). Values below 1.2e-38 then become 0; in exchange,
    /// arithmetic on them (tiny gradients late in training) does not take the
    /// processor's slow path.
    pub fn set_flush_subnormals(&mut self, on: bool) {
        self.flush_subnormals = on;
    }

    /// `graph.outputs[i]` after the last `run` (row-major). An index out of range
    /// gives an empty slice.
    pub fn output(&self, i: usize) -> &[f32] {
        self.outputs.get(i).map_or(&[], |&s| self.slice(s))
    }

    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Number of loop nests and library calls in the generated function.
    pub fn kernel_count(&self) -> usize {
        self.kernels
    }

    /// One line per kernel in execution order: what it is and its size.
    pub fn kernel_summary(&self) -> &[String] {
        &self.summary
    }
}

impl Drop for CompiledGraph {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: the only pointer into this module's code is `self.entry`,
            // which is never called again: `self` is being dropped.
            unsafe { m.free_memory() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kernel::{Affine, ExprBuilder, Storage, StorageKind};
    use super::*;

    /// A copy of a 4-element input into a 4-element output, its source
    /// (`read_at`) or destination (`write_at`) starting that many elements in.
    fn shifted_copy(read_at: i64, write_at: i64) -> plan::Plan {
        let mut eb = ExprBuilder::new(1);
        let root = eb.operand(Affine { storage: Some(0), off: read_at, strides: vec![1] });
        let out = Affine { storage: Some(1), off: write_at, strides: vec![1] };
        plan::Plan {
            storages: vec![Storage { len: 4, kind: StorageKind::Input }, Storage { len: 4, kind: StorageKind::Output }],
            kernels: vec![eb.finish(vec![4], out, root, None)],
            inputs: vec![("x".into(), 0)],
            outputs: vec![(1, 4)],
            scratch: 0,
            tables: Vec::new(),
            owners: vec![Some(ValueId(0)), Some(ValueId(1))],
        }
    }

    /// A lowering that reads (or writes) two elements past its buffer, as a
    /// wrong plan would: the checked build reports the access, with the
    /// buffer's node and the offset, and makes it at the buffer's start
    /// instead, so nothing outside the buffers is touched.
    #[test]
    fn bounds_checks_catch_an_access_past_the_buffer() {
        let checked = CompileOptions { bounds_checked: true };
        for (read_at, write_at, node) in [(2, 0, 0), (0, 2, 1)] {
            let mut jit = CompiledGraph::from_plan(shifted_copy(read_at, write_at), checked, Instant::now()).expect("compile");
            jit.input_mut(0).copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
            jit.run();
            let fault = BoundsFault { kernel: 0, node: Some(ValueId(node)), offset: 2, len: 4 };
            assert_eq!(jit.bounds_fault(), Some(fault));
            assert_eq!(jit.output(0), &[1.0, 2.0, 3.0, 4.0], "the four elements went to the buffer's start");
            // In bounds, the same build reports nothing.
            let mut jit = CompiledGraph::from_plan(shifted_copy(0, 0), checked, Instant::now()).expect("compile");
            jit.input_mut(0).copy_from_slice(&[1.0, 2.0, 3.0, 4.0]);
            jit.run();
            assert_eq!((jit.bounds_fault(), jit.output(0)), (None, &[1.0, 2.0, 3.0, 4.0][..]));
        }
    }
}
