//! How large a tensor may be, the one helper that counts a shape's elements,
//! and the wording of the errors about sizes.
//!
//! Element counts are formed with checked arithmetic wherever a shape is made:
//! shape rules, parameter declarations, and `Graph::specialize` when the batch
//! size is substituted. A count that overflows, or passes `MAX_ELEMENTS`, is
//! an error at the span of the construct that made it, before anything is
//! allocated. Because every tensor of a checked graph has at most
//! `MAX_ELEMENTS` elements, its strides and offsets (at most 2^32 floats, 2^35
//! bytes as float64) fit in `usize` and in Cranelift's 64-bit addresses with
//! room to spare; codegen and the interpreter still count with this module's
//! helper, so a graph built without the checks fails instead of wrapping.
//!
//! A tensor under the limit can still be more than the machine holds: the
//! runtime's large allocations (parameters, the compiled step's arena, the
//! interpreter's values) ask for their memory fallibly and report
//! `OutOfMemory` naming the tensor, instead of aborting.

use crate::ast::Span;
use crate::diagnostic::Diagnostic;
use crate::ir::{Dim, Shape};

/// The most elements one tensor may have: 2^32, 16 GiB as float32 (32 GiB as
/// the reference interpreter's float64). Chosen to be far above what a
/// training step on one CPU uses (the largest tensor in the examples' steps,
/// at their batch sizes, has 2.0e7 elements: convnext_mnist's unfolded
/// `[7, 7, 64, 32, 14, 14]`), and the same on every machine, so a program is
/// accepted or refused alike everywhere.
pub const MAX_ELEMENTS: usize = 1 << 32;

/// The limit as people read it, for messages and docs.
const MAX_ELEMENTS_TEXT: &str = "2^32 = 4294967296";

/// The number of elements of a tensor with these dims, if it is at most
/// `MAX_ELEMENTS`. An axis of size 0 gives 0 elements, but the other axes
/// must still multiply to at most the limit (their strides are used).
pub fn numel(dims: &[usize]) -> Option<usize> {
    let nonzero = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))?;
    if nonzero > MAX_ELEMENTS {
        return None;
    }
    Some(if dims.contains(&0) { 0 } else { nonzero })
}

/// `a · b` if it is at most `MAX_ELEMENTS`: a size formed from two others
/// (a constant factor of a product dim, a padded or concatenated axis).
pub fn mul(a: usize, b: usize) -> Option<usize> {
    a.checked_mul(b).filter(|&n| n <= MAX_ELEMENTS)
}

/// `a + b` if it is at most `MAX_ELEMENTS`.
pub fn add(a: usize, b: usize) -> Option<usize> {
    a.checked_add(b).filter(|&n| n <= MAX_ELEMENTS)
}

/// The element count of `dims` as a float, for messages about counts that
/// do not fit an integer.
pub fn approx_numel(dims: impl IntoIterator<Item = usize>) -> f64 {
    dims.into_iter().map(|d| d as f64).product()
}

/// A shape with more elements than a tensor may have.
#[derive(Clone, Debug, PartialEq)]
pub struct TooLarge {
    /// The shape as written, symbols (`B`) kept.
    pub shape: Shape,
    /// Sizes the symbols were given when the count was made (`B = 64`);
    /// empty when the shape's known dims alone are too many.
    pub sizes: Vec<(String, usize)>,
    /// The element count, approximately: of the known dims alone when
    /// `sizes` is empty, of the whole shape otherwise.
    pub elements: f64,
}

impl TooLarge {
    /// The error for `shape`, whose known dims multiply past the limit.
    pub fn known_dims(shape: &Shape) -> TooLarge {
        let factor = |d: &Dim| d.factors().0 as f64;
        let elements = shape.dims().iter().map(factor).product();
        TooLarge { shape: shape.clone(), sizes: Vec::new(), elements }
    }

    /// How many elements, in words: `about 3.7e19`, `B × about 3.7e19`,
    /// `about 6.4e10 with B = 64`.
    fn count(&self) -> String {
        let syms: Vec<String> = self.shape.dims().iter().filter(|d| d.known().is_none()).map(ToString::to_string).collect();
        let about = format!("about {:.1e}", self.elements);
        if !self.sizes.is_empty() {
            let sizes: Vec<String> = self.sizes.iter().map(|(s, n)| format!("{s} = {n}")).collect();
            format!("{about} elements with {}", sizes.join(", "))
        } else if syms.is_empty() {
            format!("{about} elements")
        } else {
            format!("{} × {about} elements", syms.join(" × "))
        }
    }

    /// The diagnostic at `span`, the construct that made the shape; `what`
    /// names the tensor where it has a name (`parameter \`l1.W\``).
    pub fn to_diagnostic(&self, span: Span, what: Option<&str>) -> Diagnostic {
        let label = match what {
            Some(w) => format!("{w} would be {}", self.shape),
            None => format!("this would be a {} tensor", self.shape),
        };
        Diagnostic::new(format!("{} has {}, more than a tensor can hold", self.shape, self.count()))
            .label(span, label)
            .note(format!("note: a tensor has at most {MAX_ELEMENTS_TEXT} elements (16 GiB of float32)"))
    }
}

/// A `TooLarge` shape and the span of the node that has it (from
/// `Graph::specialize`).
#[derive(Clone, Debug, PartialEq)]
pub struct TooLargeAt {
    pub span: Span,
    pub error: TooLarge,
}

impl TooLargeAt {
    pub fn to_diagnostic(&self) -> Diagnostic {
        self.error.to_diagnostic(self.span, None)
    }
}

/// An allocation the machine refused: `bytes` for the tensor (or buffers)
/// `what`, the allocation that was about to be made.
#[derive(Clone, Debug, PartialEq)]
pub struct OutOfMemory {
    pub what: String,
    pub bytes: usize,
}

impl OutOfMemory {
    /// Try to reserve room for `len` values of type `T` in `v`; on failure
    /// the error names `what`.
    pub fn reserve<T>(v: &mut Vec<T>, len: usize, what: impl FnOnce() -> String) -> Result<(), OutOfMemory> {
        v.try_reserve_exact(len).map_err(|_| OutOfMemory { what: what(), bytes: len.saturating_mul(std::mem::size_of::<T>()) })
    }

    /// The message, without a place: `could not allocate 17.2 GB for ...`.
    pub fn message(&self) -> String {
        format!("could not allocate {} for {}: the machine does not have that much memory free", bytes_text(self.bytes), self.what)
    }

    /// The diagnostic at `span`, the construct whose tensor it is.
    pub fn to_diagnostic(&self, span: Span) -> Diagnostic {
        Diagnostic::new(self.message()).label(span, "needed here")
    }
}

/// Bytes as people read them: `512 B`, `25.6 GB`.
pub fn bytes_text(bytes: usize) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    if v < 1000.0 {
        return format!("{bytes} B");
    }
    let mut unit = "B";
    for u in UNITS {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_checked() {
        assert_eq!(numel(&[]), Some(1));
        assert_eq!(numel(&[3, 4]), Some(12));
        assert_eq!(numel(&[1 << 16, 1 << 16]), Some(MAX_ELEMENTS));
        assert_eq!(numel(&[1 << 16, (1 << 16) + 1]), None);
        // The reshape of issue 17: wraps to 64 in unchecked usize arithmetic.
        assert_eq!(148684usize.wrapping_mul(135984).wrapping_mul(1824726041), 64);
        assert_eq!(numel(&[148684, 135984, 1824726041]), None);
        // A zero axis empties the tensor but does not hide the others' overflow.
        assert_eq!(numel(&[0, 5]), Some(0));
        assert_eq!(numel(&[0, usize::MAX, 2]), None);
    }

    #[test]
    fn a_refused_allocation_is_an_error_naming_the_tensor() {
        // More than `isize::MAX` bytes: refused on every machine, without an abort.
        let mut v: Vec<f64> = Vec::new();
        let e = OutOfMemory::reserve(&mut v, usize::MAX / 4, || "parameter `l1.W`".into());
        let expected = OutOfMemory { what: "parameter `l1.W`".into(), bytes: usize::MAX };
        assert_eq!(e, Err(expected.clone()));
        assert_eq!(expected.message(), "could not allocate 18.4 EB for parameter `l1.W`: the machine does not have that much memory free");
    }

    #[test]
    fn bytes_read_as_people_read_them() {
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(25_600_000_000), "25.6 GB");
        assert_eq!(bytes_text(1 << 40), "1.1 TB");
    }
}
