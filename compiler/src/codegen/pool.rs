//! A persistent pool of worker threads for the generated code's parallel parts
//! (large matmuls and large elementwise loops). Workers start once, on the
//! first parallel call, then wait for work: they spin for a short while (a
//! training step posts many parallel jobs in quick succession) and then sleep
//! on a condition variable.
//!
//! A job is `chunks` independent pieces. The caller and the workers claim
//! pieces one at a time with a compare-and-swap on one word holding the job's
//! epoch and the next piece, so the caller never waits for a worker that has
//! not started: on a busy machine where the worker lost its core, the caller
//! simply runs every piece itself. It waits only for pieces already claimed.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(300);
/// Spin iterations between two `yield_now` of a waiting thread (a few µs;
/// `NNC_YIELD_SPINS` overrides it, 0 = never yield, for measuring).
const YIELD_SPINS: u32 = 4096;

fn yield_spins() -> u32 {
    static N: OnceLock<u32> = OnceLock::new();
    *N.get_or_init(|| match threshold("NNC_YIELD_SPINS", YIELD_SPINS as usize) {
        0 => u32::MAX,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    })
}
/// Low bits of `state`: the next piece to claim.
const PIECE_BITS: u32 = 24;
const PIECE_MASK: u64 = (1 << PIECE_BITS) - 1;

type Task<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// `epoch << PIECE_BITS | next piece` of the current job.
    state: AtomicU64,
    /// `epoch << 32 | pieces` of the current job (written before its epoch is
    /// published in `state`). The piece count carries its epoch so that a
    /// worker still looking at the previous job's `state` can never pair it
    /// with the next job's count, claim a piece that does not exist, and run
    /// it through a `task` pointer that is already cleared (a crash seen once
    /// under heavy oversubscription).
    job: AtomicU64,
    /// Pieces of the current job finished.
    done: AtomicUsize,
    /// The poster's MXCSR: workers run the pieces with the same floating-point
    /// modes (flush-to-zero in particular).
    mxcsr: AtomicU32,
    /// The current job's function: points to a `Task` on the posting caller's
    /// stack, valid until `done == total`.
    task: AtomicPtr<Task<'static>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

pub(crate) struct Pool {
    shared: &'static Shared,
    threads: usize,
    /// Serialises callers: one job at a time.
    busy: Mutex<()>,
}

/// Threads (the caller included): `NNC_THREADS` if set, else the CPUs this
/// process may run on.
fn thread_count() -> usize {
    let env = std::env::var("NNC_THREADS").ok().and_then(|s| s.trim().parse::<usize>().ok());
    env.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(1, 64)
}

/// A size threshold: the environment variable `var` if set (for measuring),
/// else `default`.
pub(crate) fn threshold(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|s| s.trim().parse::<usize>().ok()).unwrap_or(default)
}

/// The process-wide pool.
pub(crate) fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::start(thread_count()))
}

impl Shared {
    /// Claim and run pieces of the job of `epoch` until none is left.
    fn work(&self, epoch: u64) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            if s >> PIECE_BITS != epoch {
                return;
            }
            let piece = (s & PIECE_MASK) as usize;
            let job = self.job.load(Ordering::Acquire);
            if job >> 32 != epoch & 0xFFFF_FFFF || piece >= (job & 0xFFFF_FFFF) as usize {
                return;
            }
            if self.state.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
                continue;
            }
            let p = self.task.load(Ordering::Acquire);
            // SAFETY: we hold an unfinished piece of job `epoch`, so its poster is
            // still waiting in `Pool::run` (it returns only once `done == total`)
            // and `task` still points to that job's `Task` on its stack.
            let f = unsafe { &*p };
            let want = self.mxcsr.load(Ordering::Acquire);
            if mxcsr::get() != want {
                mxcsr::set(want);
            }
            f(piece);
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

impl Pool {
    fn start(threads: usize) -> Pool {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            mxcsr: AtomicU32::new(mxcsr::get()),
            task: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        let mut started = 1;
        for tid in 1..threads {
            let spawned = std::thread::Builder::new().name(format!("nnc-worker-{tid}")).spawn(move || worker(shared));
            if spawned.is_err() {
                break;
            }
            started += 1;
        }
        Pool { shared, threads: started, busy: Mutex::new(()) }
    }

    /// Threads available to a job (the caller included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f(0) .. f(chunks - 1)` on the caller and the workers; returns when
    /// all are done.
    pub fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if chunks <= 1 || self.threads <= 1 {
            (0..chunks).for_each(f);
            return;
        }
        let _guard = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.shared;
        let task: Task<'_> = f;
        let epoch = (s.state.load(Ordering::Acquire) >> PIECE_BITS) + 1;
        s.job.store((epoch & 0xFFFF_FFFF) << 32 | chunks as u64, Ordering::Release);
        s.done.store(0, Ordering::Release);
        s.mxcsr.store(mxcsr::get(), Ordering::Release);
        // The pointer is used only by holders of a piece of this job, all of which
        // finish before this function returns (see `Shared::work`).
        s.task.store((&task as *const Task<'_>).cast_mut().cast(), Ordering::Release);
        s.state.store(epoch << PIECE_BITS, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(epoch);
        // Wait for pieces the workers hold. A worker that lost its core (other
        // processes on a shared machine) needs a CPU to finish: after a short
        // spin the caller yields, so it does not burn the time slice the
        // worker may be waiting for.
        let (mut spins, every) = (0u32, yield_spins());
        while s.done.load(Ordering::Acquire) < chunks {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(every) {
                std::thread::yield_now();
            }
        }
        s.task.store(std::ptr::null_mut(), Ordering::Release);
    }
}

fn worker(s: &'static Shared) {
    let mut seen = 0;
    loop {
        // Wait for a new epoch: spin, then sleep.
        let start = Instant::now();
        let (mut spins, every) = (0u32, yield_spins());
        let epoch = loop {
            let e = s.state.load(Ordering::SeqCst) >> PIECE_BITS;
            if e != seen {
                break e;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(every) {
                // Let a runnable thread of this process (the caller, busy with
                // serial work) or another process have the core now and then.
                std::thread::yield_now();
            }
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                while s.state.load(Ordering::SeqCst) >> PIECE_BITS == seen {
                    l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        };
        s.work(epoch);
        seen = epoch;
    }
}

/// The SSE control/status register (rounding, exception masks, and the
/// flush-to-zero / denormals-are-zero bits), on x86-64.
pub(crate) mod mxcsr {
    /// Flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    pub const FTZ_DAZ: u32 = 0x8040;

    #[cfg(target_arch = "x86_64")]
    pub fn get() -> u32 {
        let mut v: u32 = 0;
        // SAFETY: `stmxcsr` stores the 32-bit MXCSR into `v`, a valid, writable,
        // 4-byte location; it has no other effect.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack, preserves_flags)) };
        v
    }

    #[cfg(target_arch = "x86_64")]
    pub fn set(v: u32) {
        // SAFETY: `ldmxcsr` loads MXCSR from `v`; callers pass a value read by
        // `get`, possibly with FTZ/DAZ added, so no reserved bit is set (which
        // would fault). It changes only this thread's floating-point modes.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, preserves_flags, readonly)) };
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn get() -> u32 {
        0
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn set(_: u32) {}
}
