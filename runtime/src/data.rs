//! Tabular data: CSV loading, row selection, preprocessing, shuffling and
//! batching.
//!
//! All values are `f32`. Everything random is driven by an explicit seed (see
//! [`shuffled_order`]), so a training run is reproducible.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Axis};

use crate::rng;

/// A numeric table: one label column and any number of feature columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// `rows x features`, columns in file order (label column removed).
    pub features: Array2<f32>,
    /// `rows x label width`: one label per row (width 1), or one per position
    /// of a row (a language model's next tokens).
    pub labels: Array2<f32>,
    /// Header names of the feature columns, in the order of `features`' columns.
    pub feature_names: Vec<String>,
    /// Header name of the label column.
    pub label_name: String,
}

impl Table {
    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.features.nrows()
    }

    /// Number of feature columns.
    pub fn n_features(&self) -> usize {
        self.features.ncols()
    }
}

/// Everything that can go wrong in this module. `Display` gives the context
/// needed to fix the problem (file, line, column, offending text).
#[derive(Debug)]
pub enum DataError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    Io { path: PathBuf, source: std::io::Error },
    /// The file has no header row.
    EmptyFile { path: PathBuf },
    /// The file has a header but no data rows.
    NoRows { path: PathBuf },
    /// The header names the same column twice.
    DuplicateColumn { path: PathBuf, column: String, first: usize, second: usize },
    /// The requested label column is not in the header.
    MissingLabelColumn { path: PathBuf, label: String, available: Vec<String>, suggestion: Option<String> },
    /// A cell is not a finite number.
    NonNumeric { path: PathBuf, line: usize, column: String, text: String },
    /// A row has a different number of cells than the header.
    RaggedRow { path: PathBuf, line: usize, expected: usize, found: usize },
    /// A row range does not fit the table.
    RangeOutOfBounds { start: usize, end: usize, rows: usize },
    /// A modulo selection with modulus 0 or remainder >= modulus.
    InvalidModulo { modulus: usize, remainder: usize },
    /// A row index passed to a gather function is out of bounds.
    RowIndexOutOfBounds { index: usize, rows: usize },
    /// An output buffer has the wrong length.
    BufferSize { expected: usize, found: usize },
    /// A matrix has a different number of columns than expected.
    ColumnCount { expected: usize, found: usize },
    /// A batch size of zero.
    ZeroBatchSize,
    /// Statistics requested from a matrix without rows.
    NoRowsToFit,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { path, source } => {
                if source.kind() == std::io::ErrorKind::NotFound {
                    write!(f, "{}: file not found", path.display())
                } else {
                    write!(f, "{}: cannot read file: {source}", path.display())
                }
            }
            DataError::EmptyFile { path } => {
                write!(f, "{}: file is empty (expected a header row)", path.display())
            }
            DataError::NoRows { path } => {
                write!(f, "{}: file has a header but no data rows", path.display())
            }
            DataError::DuplicateColumn { path, column, first, second } => {
                write!(f, "{}:1: column `{column}` appears twice in the header (columns {} and {})", path.display(), first + 1, second + 1)
            }
            DataError::MissingLabelColumn { path, label, available, suggestion } => {
                write!(f, "{}: label column `{label}` not found; available columns: {}", path.display(), available.join(", "))?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean `{s}`?)")?;
                }
                Ok(())
            }
            DataError::NonNumeric { path, line, column, text } => {
                write!(f, "{}:{line}: column `{column}`: `{text}` is not a finite number", path.display())
            }
            DataError::RaggedRow { path, line, expected, found } => {
                write!(f, "{}:{line}: expected {expected} comma-separated values (as in the header), found {found}", path.display())
            }
            DataError::RangeOutOfBounds { start, end, rows } => {
                write!(f, "row range {start}..{end} is out of bounds for a table of {rows} rows")
            }
            DataError::InvalidModulo { modulus, remainder } => write!(
                f,
                "invalid modulo selection: remainder {remainder} with modulus {modulus} \
                 (need modulus > 0 and remainder < modulus)"
            ),
            DataError::RowIndexOutOfBounds { index, rows } => {
                write!(f, "row index {index} is out of bounds for {rows} rows")
            }
            DataError::BufferSize { expected, found } => write!(f, "output buffer has {found} elements, expected {expected}"),
            DataError::ColumnCount { expected, found } => {
                write!(f, "matrix has {found} columns, expected {expected}")
            }
            DataError::ZeroBatchSize => write!(f, "batch size must be at least 1"),
            DataError::NoRowsToFit => write!(f, "cannot compute statistics of zero rows"),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// CSV loading
// ---------------------------------------------------------------------------

/// Loads a comma-separated file with one header row and only numeric cells.
///
/// The column named `label_column` becomes [`Table::labels`]; every other
/// column is a feature, in file order. Blank lines are ignored; a trailing
/// `\r` (Windows line endings) and spaces around cells are stripped. Line
/// numbers in errors are 1-based file lines (the header is line 1).
pub fn load_csv(path: &Path, label_column: &str) -> Result<Table, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    parse_csv(&text, path, label_column)
}

/// Parses CSV text as [`load_csv`] does; `path` is only used in errors.
pub fn parse_csv(text: &str, path: &Path, label_column: &str) -> Result<Table, DataError> {
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).filter(|(_, l)| !l.trim().is_empty());

    let Some((_, header)) = lines.next() else {
        return Err(DataError::EmptyFile { path: path.to_path_buf() });
    };
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
    for (i, c) in columns.iter().enumerate() {
        if let Some(j) = columns[i + 1..].iter().position(|d| d == c) {
            return Err(DataError::DuplicateColumn { path: path.to_path_buf(), column: c.clone(), first: i, second: i + 1 + j });
        }
    }
    let Some(label_idx) = columns.iter().position(|c| c == label_column) else {
        return Err(DataError::MissingLabelColumn {
            path: path.to_path_buf(),
            label: label_column.to_string(),
            suggestion: closest_name(label_column, &columns),
            available: columns,
        });
    };

    let n_cols = columns.len();
    let n_features = n_cols - 1;
    let mut features: Vec<f32> = Vec::new();
    let mut labels: Vec<f32> = Vec::new();
    for (line_no, line) in lines {
        let mut found = 0usize;
        for (col, cell) in line.split(',').enumerate() {
            found += 1;
            if col >= n_cols {
                continue; // counted, reported below as a ragged row
            }
            let cell = cell.trim();
            let value = match cell.parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                _ => {
                    return Err(DataError::NonNumeric {
                        path: path.to_path_buf(),
                        line: line_no,
                        column: columns[col].clone(),
                        text: cell.to_string(),
                    })
                }
            };
            if col == label_idx {
                labels.push(value);
            } else {
                features.push(value);
            }
        }
        if found != n_cols {
            return Err(DataError::RaggedRow { path: path.to_path_buf(), line: line_no, expected: n_cols, found });
        }
    }
    if labels.is_empty() {
        return Err(DataError::NoRows { path: path.to_path_buf() });
    }
    let n_rows = labels.len();
    let features = Array2::from_shape_vec((n_rows, n_features), features)
        .map_err(|_| DataError::BufferSize { expected: n_rows * n_features, found: 0 })?;
    let mut feature_names = columns;
    let label_name = feature_names.remove(label_idx);
    let labels = Array1::from(labels).insert_axis(Axis(1));
    Ok(Table { features, labels, feature_names, label_name })
}

/// The candidate closest to `name` by (case-insensitive) edit distance.
fn closest_name(name: &str, candidates: &[String]) -> Option<String> {
    let target: Vec<char> = name.to_lowercase().chars().collect();
    candidates
        .iter()
        .map(|c| {
            let cand: Vec<char> = c.to_lowercase().chars().collect();
            (levenshtein(&target, &cand), c)
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Row selection
// ---------------------------------------------------------------------------

/// Which rows of a table to keep. Row indices are 0-based data rows (the
/// header is not counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSelect {
    /// Rows `start..end` (`end = None` means to the last row).
    Range { start: usize, end: Option<usize> },
    /// Rows `i` with `(i % modulus == remainder) == equal`; e.g. the test split
    /// `{ modulus: 5, remainder: 4, equal: true }` and its training complement
    /// with `equal: false`.
    Modulo { modulus: usize, remainder: usize, equal: bool },
}

impl RowSelect {
    /// The selected row indices of a table with `rows` rows, in order.
    pub fn indices(&self, rows: usize) -> Result<Vec<usize>, DataError> {
        match *self {
            RowSelect::Range { start, end } => {
                let end = end.unwrap_or(rows);
                if start > end || end > rows {
                    return Err(DataError::RangeOutOfBounds { start, end, rows });
                }
                Ok((start..end).collect())
            }
            RowSelect::Modulo { modulus, remainder, equal } => {
                if modulus == 0 || remainder >= modulus {
                    return Err(DataError::InvalidModulo { modulus, remainder });
                }
                Ok((0..rows).filter(|i| (i % modulus == remainder) == equal).collect())
            }
        }
    }
}

/// A new table with only the rows chosen by `select` (in their original order).
pub fn select_rows(table: &Table, select: &RowSelect) -> Result<Table, DataError> {
    let idx = select.indices(table.n_rows())?;
    Ok(Table {
        features: table.features.select(Axis(0), &idx),
        labels: table.labels.select(Axis(0), &idx),
        feature_names: table.feature_names.clone(),
        label_name: table.label_name.clone(),
    })
}

// ---------------------------------------------------------------------------
// Preprocessing
// ---------------------------------------------------------------------------

/// Multiplies every feature by `factor` (e.g. `1.0 / 16.0` for the digits
/// pixels). Labels are left alone.
pub fn scale(table: &mut Table, factor: f32) {
    table.features.mapv_inplace(|v| v * factor);
}

/// Per-column standardisation `(x - mean) / std`, fitted on one split (the
/// training rows) and applied unchanged to the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    mean: Array1<f32>,
    std: Array1<f32>,
}

impl Standardizer {
    /// Column means and population standard deviations of `x`. A constant
    /// column gets std 1 (so it maps to 0 instead of dividing by zero).
    pub fn fit(x: &Array2<f32>) -> Result<Self, DataError> {
        let n = x.nrows();
        if n == 0 {
            return Err(DataError::NoRowsToFit);
        }
        let mut mean = Array1::<f32>::zeros(x.ncols());
        let mut std = Array1::<f32>::ones(x.ncols());
        for (j, col) in x.axis_iter(Axis(1)).enumerate() {
            // Accumulate in f64 for accuracy; two passes for stability.
            let m = col.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let var = col.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / n as f64;
            let first = col[0];
            let constant = col.iter().all(|&v| v == first);
            mean[j] = m as f32;
            let s = var.sqrt() as f32;
            std[j] = if constant || s.is_nan() || s <= 0.0 { 1.0 } else { s };
        }
        Ok(Standardizer { mean, std })
    }

    /// Standardises `x` in place with the fitted statistics.
    pub fn apply(&self, x: &mut Array2<f32>) -> Result<(), DataError> {
        if x.ncols() != self.mean.len() {
            return Err(DataError::ColumnCount { expected: self.mean.len(), found: x.ncols() });
        }
        for mut row in x.axis_iter_mut(Axis(0)) {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
        Ok(())
    }

    /// The fitted column means.
    pub fn mean(&self) -> &Array1<f32> {
        &self.mean
    }

    /// The fitted column standard deviations (1 for constant columns).
    pub fn std(&self) -> &Array1<f32> {
        &self.std
    }
}

// ---------------------------------------------------------------------------
// Shuffling and batching
// ---------------------------------------------------------------------------

/// A permutation of `0..n` for the given epoch: the same `(seed, epoch)`
/// always gives the same order, and each epoch draws from its own ChaCha8
/// stream so the orders differ from epoch to epoch.
pub fn shuffled_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = rng::seeded(seed, epoch as u64);
    let mut order: Vec<usize> = (0..n).collect();
    rng::shuffle(&mut rng, &mut order);
    order
}

/// Iterator over consecutive position ranges `start..end` of an order of
/// `len` rows, `batch_size` at a time; the last batch may be shorter. Index
/// the order with each range: `&order[range]`.
#[derive(Debug, Clone)]
pub struct Batches {
    len: usize,
    batch_size: usize,
    next: usize,
}

impl Batches {
    /// Batches over `len` positions. A zero `batch_size` is an error.
    pub fn new(len: usize, batch_size: usize) -> Result<Self, DataError> {
        if batch_size == 0 {
            return Err(DataError::ZeroBatchSize);
        }
        Ok(Batches { len, batch_size, next: 0 })
    }

    /// Total number of batches (`ceil(len / batch_size)`).
    pub fn count_total(&self) -> usize {
        self.len.div_ceil(self.batch_size)
    }
}

impl Iterator for Batches {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.next >= self.len {
            return None;
        }
        let start = self.next;
        let end = (start + self.batch_size).min(self.len);
        self.next = end;
        Some(start..end)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.len - self.next).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches {}

/// Copies rows `rows` of `src` (in that order) into `out`, which must hold
/// exactly `rows.len() * src.ncols()` values. Does not allocate.
pub fn gather_rows(src: &Array2<f32>, rows: &[usize], out: &mut [f32]) -> Result<(), DataError> {
    let cols = src.ncols();
    let expected = rows.len() * cols;
    if out.len() != expected {
        return Err(DataError::BufferSize { expected, found: out.len() });
    }
    let n = src.nrows();
    if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
        return Err(DataError::RowIndexOutOfBounds { index: bad, rows: n });
    }
    if cols == 0 {
        return Ok(());
    }
    match src.as_slice() {
        Some(flat) => {
            for (dst, &r) in out.chunks_exact_mut(cols).zip(rows) {
                dst.copy_from_slice(&flat[r * cols..(r + 1) * cols]);
            }
        }
        None => {
            for (dst, &r) in out.chunks_exact_mut(cols).zip(rows) {
                for (d, s) in dst.iter_mut().zip(src.row(r)) {
                    *d = *s;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.csv")
    }

    #[test]
    fn parses_and_moves_label_out() {
        let t = parse_csv("a,y,b\r\n1,2,3\n\n4,5,6\n", p(), "y").unwrap();
        assert_eq!(t.feature_names, vec!["a", "b"]);
        assert_eq!(t.label_name, "y");
        assert_eq!(t.features, ndarray::array![[1.0, 3.0], [4.0, 6.0]]);
        assert_eq!(t.labels, ndarray::array![[2.0], [5.0]]);
    }

    #[test]
    fn errors_have_context() {
        let e = parse_csv("a,b\n1,x\n", p(), "a").unwrap_err().to_string();
        assert!(e.contains("t.csv:2") && e.contains("`b`") && e.contains("`x`"), "{e}");
        let e = parse_csv("a,b\n1,2\n1,2,3\n", p(), "a").unwrap_err().to_string();
        assert!(e.contains("t.csv:3") && e.contains("expected 2") && e.contains("found 3"), "{e}");
        let e = parse_csv("a,b\n1\n", p(), "a").unwrap_err().to_string();
        assert!(e.contains("found 1"), "{e}");
        let e = parse_csv("", p(), "a").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse_csv("a,b\n", p(), "a").unwrap_err().to_string();
        assert!(e.contains("no data rows"), "{e}");
        let e = parse_csv("a,a\n1,2\n", p(), "a").unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        let e = parse_csv("a,b\nnan,1\n", p(), "b").unwrap_err().to_string();
        assert!(e.contains("`nan`"), "{e}");
        let e = parse_csv("sepal,Label\n1,2\n", p(), "label").unwrap_err().to_string();
        assert!(e.contains("did you mean `Label`"), "{e}");
    }

    #[test]
    fn levenshtein_basics() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(levenshtein(&c("kitten"), &c("sitting")), 3);
        assert_eq!(levenshtein(&c(""), &c("abc")), 3);
        assert_eq!(levenshtein(&c("abc"), &c("abc")), 0);
    }

    #[test]
    fn modulo_validation() {
        let sel = RowSelect::Modulo { modulus: 0, remainder: 0, equal: true };
        assert!(sel.indices(10).is_err());
        let sel = RowSelect::Modulo { modulus: 3, remainder: 1, equal: true };
        assert_eq!(sel.indices(8).unwrap(), vec![1, 4, 7]);
    }

    #[test]
    fn gather_checks_bounds_and_sizes() {
        let x = ndarray::array![[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]];
        let mut out = [0.0f32; 4];
        gather_rows(&x, &[2, 0], &mut out).unwrap();
        assert_eq!(out, [5.0, 6.0, 1.0, 2.0]);
        assert!(gather_rows(&x, &[3, 0], &mut out).is_err());
        assert!(gather_rows(&x, &[0], &mut out).is_err());
        // Column-major source: takes the non-contiguous path.
        use ndarray::ShapeBuilder;
        let xf = Array2::from_shape_vec((3, 2).f(), vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0]).unwrap();
        assert!(xf.as_slice().is_none());
        assert_eq!(xf, x);
        gather_rows(&xf, &[1, 2], &mut out).unwrap();
        assert_eq!(out, [3.0, 4.0, 5.0, 6.0]);
    }
}
