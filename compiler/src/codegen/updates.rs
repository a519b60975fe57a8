//! In-place updates: after a run, each updated input must hold its output.
//! The output's kernels write straight into the input's buffer when that is
//! safe (no kernel reads the input after they start, except an elementwise
//! kernel reading it at the very element it writes); otherwise the output is
//! copied into the input at the end of the function.

use super::kernel::{copy_kernel, Kernel, Storage, StorageId, StorageKind};

/// Apply `(output index, input storage)` pairs to the kernel list and the
/// output table.
pub(crate) fn apply(
    kernels: &mut Vec<Kernel>,
    storages: &mut [Storage],
    updates: &[(usize, StorageId)],
    outputs: &mut [(StorageId, usize)],
) {
    for &(o, dst) in updates {
        let Some(&(src, len)) = outputs.get(o) else {
            continue;
        };
        if src == dst {
            continue;
        }
        if can_alias(kernels, storages, src, dst) {
            for k in kernels.iter_mut() {
                k.rename(src, dst);
            }
            for out in outputs.iter_mut().filter(|(s, _)| *s == src) {
                out.0 = dst;
            }
            if let Some(st) = storages.get_mut(src) {
                st.len = 0;
                st.kind = StorageKind::Temp;
            }
        } else {
            kernels.push(copy_kernel(src, dst, len));
        }
    }
}

/// Whether the kernels writing `src` may write `dst` instead.
fn can_alias(kernels: &[Kernel], storages: &[Storage], src: StorageId, dst: StorageId) -> bool {
    if storages.get(src).is_none_or(|s| s.kind == StorageKind::Input) {
        return false;
    }
    let writers: Vec<usize> = (0..kernels.len()).filter(|&k| kernels[k].writes().contains(&src)).collect();
    let Some(&first) = writers.first() else {
        return false;
    };
    kernels
        .iter()
        .enumerate()
        .all(|(k, kern)| !kern.reads().contains(&dst) || k < first || (writers.len() == 1 && k == first && kern.reads_in_place(dst, src)))
}
