//! Arena layout: every storage gets an offset in one f32 allocation. Inputs and
//! outputs get their own space; temporaries share space when their lifetimes
//! (first to last kernel touching them) do not overlap.

use super::kernel::{Kernel, Storage, StorageKind};
use std::collections::BTreeSet;

/// Offsets are multiples of this many floats (64 bytes).
const ALIGN: usize = 16;

/// Sizes saturate rather than wrap: every storage is at most
/// `size::MAX_ELEMENTS` (`CompiledGraph::compile` checks), and a saturated
/// total only makes the arena's allocation fail with an error.
fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN).saturating_mul(ALIGN)
}

pub(crate) struct Arena {
    /// Offset in floats of each storage.
    pub offsets: Vec<usize>,
    /// Total floats.
    pub len: usize,
}

pub(crate) fn assign(storages: &[Storage], kernels: &[Kernel]) -> Arena {
    // Lifetime of each temp: first and last kernel that touches it. Two
    // products that may run side by side (`emit::pair_candidates`) count as
    // one step, so neither output shares space with the other's operands.
    let mut step = Vec::with_capacity(kernels.len());
    for (k, kern) in kernels.iter().enumerate() {
        let paired = k > 0
            && step.get(k - 1) != step.get(k.wrapping_sub(2))
            && kernels.get(k - 1).is_some_and(|prev| super::emit::pair_candidates(prev, kern));
        step.push(if paired { step[k - 1] } else { k });
    }
    let mut life: Vec<Option<(usize, usize)>> = vec![None; storages.len()];
    for (k, kern) in kernels.iter().enumerate() {
        let t = step[k];
        for s in kern.reads().into_iter().chain(kern.writes()) {
            if let Some(slot) = life.get_mut(s) {
                *slot = Some(slot.map_or((t, t), |(a, _)| (a, t)));
            }
        }
    }
    let is_temp = |s: usize| storages.get(s).is_some_and(|st| st.kind == StorageKind::Temp && st.len > 0);

    // Temps starting at / released before each kernel.
    let mut starts: Vec<Vec<usize>> = vec![Vec::new(); kernels.len() + 1];
    let mut ends: Vec<Vec<usize>> = vec![Vec::new(); kernels.len() + 1];
    for (s, l) in life.iter().enumerate() {
        if let (Some((first, last)), true) = (l, is_temp(s)) {
            starts[*first].push(s);
            ends[*last + 1].push(s);
        }
    }
    // The free slots by capacity (then index), so that finding one for each
    // temp takes a logarithmic search: a scan over every slot made a loss of
    // 5,000 chained `let`s (2,500 activations live at once, kept for the
    // backward pass) quadratic here.
    let mut slots: Vec<usize> = Vec::new();
    let mut free: BTreeSet<(usize, usize)> = BTreeSet::new();
    let mut slot_of: Vec<Option<usize>> = vec![None; storages.len()];
    for (starting, ending) in starts.iter().zip(&ends) {
        for &s in ending {
            if let Some(i) = slot_of[s] {
                free.insert((slots[i], i));
            }
        }
        for &s in starting {
            let need = storages.get(s).map_or(0, |st| st.len);
            // The smallest free slot that fits (the first of equals), else
            // the largest free one (the last of equals), grown to fit.
            let fitting = free.range((need, 0)..).next().copied();
            let chosen = match fitting.or_else(|| free.last().copied()) {
                Some((cap, i)) => {
                    free.remove(&(cap, i));
                    slots[i] = cap.max(need);
                    i
                }
                None => {
                    slots.push(need);
                    slots.len() - 1
                }
            };
            slot_of[s] = Some(chosen);
        }
    }

    let mut len = 0usize;
    let mut slot_off = Vec::with_capacity(slots.len());
    for &cap in &slots {
        slot_off.push(len);
        len = len.saturating_add(round_up(cap));
    }
    let mut offsets = vec![0; storages.len()];
    for (s, st) in storages.iter().enumerate() {
        offsets[s] = match (st.kind, slot_of[s]) {
            (StorageKind::Temp, Some(slot)) => slot_off.get(slot).copied().unwrap_or(0),
            (StorageKind::Temp, None) => 0,
            (StorageKind::Input | StorageKind::Output, _) => {
                let o = len;
                len = len.saturating_add(round_up(st.len.max(1)));
                o
            }
        };
    }
    Arena { offsets, len: len.max(ALIGN) }
}
