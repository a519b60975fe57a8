//! Tabular data: CSV loading, row selection, preprocessing, shuffling and
//! batching.
//!
//! All values are `f32`. Everything random is driven by an explicit seed (see
//! [`shuffled_order`]), so a training run is reproducible.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2, Axis};
use nnc_compiler::diagnostic::excerpt;
use nnc_compiler::elaborate::error::closest;

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
    /// A cell is not a finite number (`text`: an excerpt of it).
    NonNumeric { path: PathBuf, line: usize, column: String, text: String },
    /// A line longer than [`MAX_LINE_BYTES`] (`start`: an excerpt of it).
    LongLine { path: PathBuf, line: usize, start: String },
    /// A line that is not UTF-8 text.
    NotUtf8 { path: PathBuf, line: usize },
    /// A row has a different number of cells than the header.
    RaggedRow { path: PathBuf, line: usize, expected: usize, found: usize },
    /// A row range does not fit the table.
    RangeOutOfBounds { start: usize, end: usize, rows: usize },
    /// A row range that starts after it ends (`rows[1437..0]`).
    ReversedRange { start: usize, end: usize },
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
                write!(
                    f,
                    "{}:1: column `{}` appears twice in the header (columns {} and {})",
                    path.display(),
                    excerpt(column),
                    first + 1,
                    second + 1
                )
            }
            DataError::MissingLabelColumn { path, label, available, suggestion } => {
                write!(f, "{}: label column `{label}` not found; available columns: {}", path.display(), column_summary(available))?;
                if let Some(s) = suggestion {
                    write!(f, " (did you mean `{s}`?)")?;
                }
                Ok(())
            }
            DataError::NonNumeric { path, line, column, text } => {
                write!(f, "{}:{line}: column `{}`: `{text}` is not a finite number", path.display(), excerpt(column))
            }
            DataError::LongLine { path, line, start } => write!(
                f,
                "{}:{line}: the line is longer than {} MiB (it starts `{start}`); is this a CSV file?",
                path.display(),
                MAX_LINE_BYTES >> 20
            ),
            DataError::NotUtf8 { path, line } => write!(f, "{}:{line}: the line is not UTF-8 text", path.display()),
            DataError::RaggedRow { path, line, expected, found } => {
                write!(f, "{}:{line}: expected {expected} comma-separated values (as in the header), found {found}", path.display())
            }
            DataError::RangeOutOfBounds { start, end, rows } => {
                write!(f, "row range {start}..{end} is out of bounds for a table of {rows} rows")
            }
            DataError::ReversedRange { start, end } => {
                write!(f, "row range {start}..{end} is reversed: it starts after it ends")
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

/// The longest line a CSV file may have. Lines are read one at a time, so
/// this bounds the memory a file without line breaks (garbage, a binary file
/// given as CSV) can take before it is refused: 16 MiB holds a row of two
/// million numbers, far wider than any table a model here trains on.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Loads a comma-separated file with one header row and only numeric cells.
///
/// The column named `label_column` becomes [`Table::labels`]; every other
/// column is a feature, in file order. Blank lines are ignored; a trailing
/// `\r` (Windows line endings) and spaces around cells are stripped. Line
/// numbers in errors are 1-based file lines (the header is line 1).
pub fn load_csv(path: &Path, label_column: &str) -> Result<Table, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    read_csv(BufReader::new(file), path, label_column)
}

/// Parses CSV text as [`load_csv`] does; `path` is only used in errors.
pub fn parse_csv(text: &str, path: &Path, label_column: &str) -> Result<Table, DataError> {
    read_csv(text.as_bytes(), path, label_column)
}

/// The non-blank lines of a CSV file, with their 1-based line numbers, read
/// one at a time and each at most [`MAX_LINE_BYTES`] long.
struct Lines<R> {
    reader: R,
    path: PathBuf,
    line_no: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    /// The next non-blank line (without its line break), or `None` at the end.
    fn next_line(&mut self) -> Result<Option<(usize, &str)>, DataError> {
        loop {
            self.buf.clear();
            self.line_no += 1;
            let limit = MAX_LINE_BYTES as u64 + 1;
            let read = (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| DataError::Io { path: self.path.clone(), source })?;
            if read == 0 {
                return Ok(None);
            }
            let line = strip_line_break(&self.buf);
            if line.len() > MAX_LINE_BYTES {
                let start = excerpt(&String::from_utf8_lossy(&line[..4 * nnc_compiler::diagnostic::EXCERPT_CHARS]));
                return Err(DataError::LongLine { path: self.path.clone(), line: self.line_no, start });
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                break;
            }
        }
        let text = std::str::from_utf8(strip_line_break(&self.buf))
            .map_err(|_| DataError::NotUtf8 { path: self.path.clone(), line: self.line_no })?;
        Ok(Some((self.line_no, text)))
    }
}

/// A line without its trailing `\n` and `\r`.
fn strip_line_break(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses CSV from `reader`, a line at a time; `path` is only used in errors.
pub fn read_csv(reader: impl BufRead, path: &Path, label_column: &str) -> Result<Table, DataError> {
    let mut lines = Lines { reader, path: path.to_path_buf(), line_no: 0, buf: Vec::new() };
    let Some((_, header)) = lines.next_line()? else {
        return Err(DataError::EmptyFile { path: path.to_path_buf() });
    };
    let columns = header_columns(header, path)?;
    let Some(label_idx) = columns.iter().position(|c| c == label_column) else {
        return Err(DataError::MissingLabelColumn {
            path: path.to_path_buf(),
            label: label_column.to_string(),
            suggestion: closest(label_column, columns.iter().map(String::as_str)),
            available: columns,
        });
    };

    let n_cols = columns.len();
    let n_features = n_cols - 1;
    let mut features: Vec<f32> = Vec::new();
    let mut labels: Vec<f32> = Vec::new();
    while let Some((line_no, line)) = lines.next_line()? {
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
                        text: excerpt(cell),
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

/// The header's column names; the first repeated name is an error. Found
/// through a hash map: comparing every pair took hours on a wide header.
fn header_columns(header: &str, path: &Path) -> Result<Vec<String>, DataError> {
    let mut first_at: HashMap<&str, usize> = HashMap::new();
    for (i, c) in header.split(',').map(str::trim).enumerate() {
        if let Some(&first) = first_at.get(c) {
            return Err(DataError::DuplicateColumn { path: path.to_path_buf(), column: c.to_string(), first, second: i });
        }
        first_at.insert(c, i);
    }
    Ok(header.split(',').map(|c| c.trim().to_string()).collect())
}

/// The columns of a header, abbreviated when there are many and each quoted
/// briefly: `p0`, `p1`, `p2`, …, `p63`, `label` (65 columns).
pub fn column_summary(columns: &[String]) -> String {
    let quoted = |c: &[String]| c.iter().map(|n| format!("`{}`", excerpt(n))).collect::<Vec<_>>().join(", ");
    if columns.len() <= 8 {
        quoted(columns)
    } else {
        format!("{}, …, {} ({} columns)", quoted(&columns[..3]), quoted(&columns[columns.len() - 2..]), columns.len())
    }
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
                if let Some(end) = end.filter(|&e| start > e) {
                    return Err(DataError::ReversedRange { start, end });
                }
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
    fn cells_and_names_are_quoted_briefly() {
        let cell = "7".repeat(100) + "x";
        let e = parse_csv(&format!("a,b\n1,{cell}\n"), p(), "a").unwrap_err().to_string();
        assert!(e.contains(&format!("`{}…`", "7".repeat(40))) && e.len() < 200, "{e}");
        let name = "n".repeat(1_000_000);
        let e = parse_csv(&format!("{name},b\n1,2\n"), p(), "label").unwrap_err().to_string();
        assert!(e.contains(&format!("`{}…`", "n".repeat(40))) && e.len() < 300, "{} bytes", e.len());
        let e = parse_csv(&format!("{name},{name}\n1,2\n"), p(), "a").unwrap_err().to_string();
        assert!(e.contains("twice") && e.len() < 300, "{} bytes", e.len());
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_unread() {
        // The reader never ends: only the first MAX_LINE_BYTES + 1 bytes may be read.
        let endless = BufReader::new(std::io::repeat(b'z'));
        let e = read_csv(endless, p(), "label").unwrap_err();
        assert!(matches!(e, DataError::LongLine { line: 1, .. }), "{e}");
        assert!(e.to_string().contains(&format!("`{}…`", "z".repeat(40))), "{e}");
    }

    #[test]
    fn a_wide_header_is_checked_in_linear_time() {
        // 200,000 columns: comparing every pair for duplicates took minutes.
        let mut header: Vec<String> = (0..200_000).map(|i| format!("c{i}")).collect();
        header.push("c17".into());
        let e = parse_csv(&format!("{}\n", header.join(",")), p(), "c0").unwrap_err().to_string();
        assert!(e.contains("`c17` appears twice") && e.contains("columns 18 and 200001"), "{e}");
    }

    #[test]
    fn a_reversed_range_is_not_out_of_range() {
        let sel = RowSelect::Range { start: 1437, end: Some(0) };
        assert!(matches!(sel.indices(1797), Err(DataError::ReversedRange { start: 1437, end: 0 })));
        let sel = RowSelect::Range { start: 2000, end: None };
        assert!(matches!(sel.indices(1797), Err(DataError::RangeOutOfBounds { .. })));
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
