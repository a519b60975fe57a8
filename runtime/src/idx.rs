//! The IDX format of the MNIST files (optionally gzip-compressed): a
//! big-endian header — magic `0x0000_08DD` where DD is the number of dims,
//! then one u32 per dim — followed by unsigned bytes in row-major order.

use flate2::read::MultiGzDecoder;
use ndarray::{Array1, Array2};
use nnc_compiler::size;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum IdxError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The header is not an unsigned-byte IDX header.
    BadHeader {
        path: PathBuf,
        why: String,
    },
    /// Fewer bytes than the header promises.
    Truncated {
        path: PathBuf,
        expected: usize,
        found: usize,
    },
    /// Image and label files disagree on the number of items.
    CountMismatch {
        images: usize,
        labels: usize,
    },
}

impl fmt::Display for IdxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdxError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            IdxError::BadHeader { path, why } => write!(f, "{} is not an IDX file: {why}", path.display()),
            IdxError::Truncated { path, expected, found } => {
                write!(f, "{} is truncated: the header promises {expected} bytes of data, the file has {found}", path.display())
            }
            IdxError::CountMismatch { images, labels } => write!(f, "{images} images but {labels} labels"),
        }
    }
}

impl std::error::Error for IdxError {}

/// Read an IDX file: its dims and its bytes. A gzipped file is read to the
/// end of its last member (a file of two members was once reported as truncated).
pub fn read(path: &Path) -> Result<(Vec<usize>, Vec<u8>), IdxError> {
    let raw = std::fs::read(path).map_err(|source| IdxError::Io { path: path.to_path_buf(), source })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        MultiGzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(|source| IdxError::Io { path: path.to_path_buf(), source })?;
        out
    } else {
        raw
    };
    let bad = |why: &str| IdxError::BadHeader { path: path.to_path_buf(), why: why.to_string() };
    let header = bytes.get(..4).ok_or_else(|| bad("shorter than its magic number"))?;
    if header[0] != 0 || header[1] != 0 || header[2] != 0x08 {
        return Err(bad("the magic number does not announce unsigned bytes (0x0000_08..)"));
    }
    let rank = header[3] as usize;
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        let at = 4 + 4 * i;
        let d = bytes.get(at..at + 4).ok_or_else(|| bad("the header is cut short"))?;
        dims.push(u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize);
    }
    let start = 4 + 4 * rank;
    // Checked: dims that multiply past the limit (or past 2^64, where an
    // unchecked product wraps to a small count) are a bad header.
    let expected = size::numel(&dims).ok_or_else(|| bad(&format!("its dims {dims:?} multiply to more elements than a tensor can hold")))?;
    let data = bytes.get(start..).unwrap_or_default();
    if data.len() < expected {
        return Err(IdxError::Truncated { path: path.to_path_buf(), expected, found: data.len() });
    }
    Ok((dims, data[..expected].to_vec()))
}

/// Images (flattened row-major, as floats 0..255) and labels from pairs of
/// IDX files, concatenated in order.
pub fn load(images: &[PathBuf], labels: &[PathBuf]) -> Result<(Array2<f32>, Array1<f32>), IdxError> {
    let mut pixels = Vec::new();
    let mut width = 0;
    let mut rows = 0;
    for p in images {
        let (dims, data) = read(p)?;
        let n = dims.first().copied().unwrap_or(0);
        // `read` checked that the dims multiply to at most the limit.
        let w = size::numel(dims.get(1..).unwrap_or_default()).unwrap_or(usize::MAX);
        if rows > 0 && w != width {
            return Err(IdxError::BadHeader { path: p.clone(), why: format!("items of {w} values, earlier files had {width}") });
        }
        width = w;
        rows += n;
        pixels.extend(data.iter().map(|&b| f32::from(b)));
    }
    let mut ys = Vec::new();
    for p in labels {
        let (_, data) = read(p)?;
        ys.extend(data.iter().map(|&b| f32::from(b)));
    }
    if ys.len() != rows {
        return Err(IdxError::CountMismatch { images: rows, labels: ys.len() });
    }
    let x = Array2::from_shape_vec((rows, width), pixels).map_err(|e| IdxError::BadHeader { path: PathBuf::new(), why: e.to_string() })?;
    Ok((x, Array1::from_vec(ys)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_member_of_a_gzip_file() {
        // Two 2x2 images: the header and first image in one member, the second image in another.
        let header = [0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        let first: Vec<u8> = header.iter().copied().chain([1, 2, 3, 4]).collect();
        let gz = crate::text::tests::multi_member_gzip(&[&first, &[5, 6, 7, 8]]);
        let path = std::env::temp_dir().join(format!("nnc-two-members-{}-idx3-ubyte.gz", std::process::id()));
        std::fs::write(&path, gz).unwrap();
        let read = read(&path);
        std::fs::remove_file(&path).unwrap();
        let (dims, data) = read.unwrap();
        assert_eq!(dims, vec![2, 2, 2]);
        assert_eq!(data, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }

    /// An unsigned-byte IDX file of these dims holding `data`.
    fn idx_file(name: &str, dims: &[u32], data: &[u8]) -> PathBuf {
        let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            bytes.extend(d.to_be_bytes());
        }
        bytes.extend(data);
        let path = std::env::temp_dir().join(format!("nnc-idx-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn dims_that_multiply_past_2_64_are_a_bad_header() {
        // 16·47·41579·218641·26983373 = 10·2^64 + 784: an unchecked product
        // wraps to 784, and the file loaded as two 784-pixel images.
        let images = idx_file("wrap-images", &[2, 16, 47, 41579, 218641, 26983373], &[7; 2 * 784]);
        let labels = idx_file("wrap-labels", &[2], &[1, 2]);
        let result = load(std::slice::from_ref(&images), std::slice::from_ref(&labels));
        std::fs::remove_file(images).unwrap();
        std::fs::remove_file(labels).unwrap();
        match result {
            Err(IdxError::BadHeader { why, .. }) => assert!(why.contains("multiply to more elements"), "{why}"),
            other => panic!("expected a bad header, got {other:?}"),
        }
    }

    #[test]
    fn checked_dims_still_load() {
        let images = idx_file("ok-images", &[2, 2, 3], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let labels = idx_file("ok-labels", &[2], &[4, 9]);
        let (x, y) = load(std::slice::from_ref(&images), std::slice::from_ref(&labels)).unwrap();
        std::fs::remove_file(images).unwrap();
        std::fs::remove_file(labels).unwrap();
        assert_eq!(x.shape(), &[2, 6]);
        assert_eq!(x[[1, 5]], 11.0);
        assert_eq!(y.to_vec(), vec![4.0, 9.0]);
    }
}
