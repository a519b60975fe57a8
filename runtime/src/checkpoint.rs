//! Checkpoints: named f32 tensors plus string metadata in the safetensors
//! format, written atomically.
//!
//! [`save`] writes to a temporary file in the target's directory, flushes it
//! to disk, and renames it over the target, so a crash or an error part-way
//! leaves either the old checkpoint or the new one, never a torn file.
//!
//! A write that fails removes its temporary file; a process killed mid-write
//! (`kill -9`, which cannot be caught) cannot, so each write first removes
//! the temporary files of the same checkpoint whose process is gone: the
//! name `.NAME.tmp.PID.N` says which process wrote it, and a process that
//! still runs keeps its file. (An unnamed `O_TMPFILE` linked in place would
//! leak nothing, but it is Linux-only, unsupported on some file systems, and
//! `linkat` cannot replace the old checkpoint: a named step stays.)

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nnc_compiler::diagnostic::excerpt;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// A tensor as loaded: name, shape, row-major values.
pub type LoadedTensor = (String, Vec<usize>, Vec<f32>);

/// Everything that can go wrong saving or loading a checkpoint.
#[derive(Debug)]
pub enum CheckpointError {
    /// The checkpoint file does not exist.
    NotFound { path: PathBuf },
    /// An I/O operation failed (`what` says which).
    Io { path: PathBuf, what: &'static str, source: io::Error },
    /// The file is not a valid safetensors file (truncated, corrupt header...).
    Corrupt { path: PathBuf, message: String },
    /// A tensor in the file is not f32.
    WrongDtype { path: PathBuf, tensor: String, dtype: String },
    /// A tensor holds NaN or an infinity, first at `index` (one per axis).
    NonFinite { path: PathBuf, tensor: String, index: Vec<usize>, value: f32 },
    /// A tensor given to `save` whose data length does not match its shape.
    ShapeMismatch { tensor: String, shape: Vec<usize>, len: usize },
    /// Two tensors given to `save` with the same name.
    DuplicateName { tensor: String },
    /// The safetensors encoder refused the data.
    Encode { path: PathBuf, message: String },
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::NotFound { path } => {
                write!(f, "{}: checkpoint file not found", path.display())
            }
            CheckpointError::Io { path, what, source } => {
                write!(f, "{}: {what}: {source}", path.display())
            }
            CheckpointError::Corrupt { path, message } => {
                write!(f, "{}: not a valid safetensors checkpoint (corrupt or truncated): {message}", path.display())
            }
            CheckpointError::WrongDtype { path, tensor, dtype } => {
                write!(f, "{}: tensor `{}` has dtype {dtype}, only F32 is supported", path.display(), excerpt(tensor))
            }
            CheckpointError::NonFinite { path, tensor, index, value } => {
                write!(f, "{}: tensor `{tensor}` holds {value} at index {index:?}; a checkpoint must hold finite values", path.display())
            }
            CheckpointError::ShapeMismatch { tensor, shape, len } => {
                write!(f, "tensor `{tensor}`: shape {shape:?} needs {} values but {len} were given", shape.iter().product::<usize>())
            }
            CheckpointError::DuplicateName { tensor } => {
                write!(f, "tensor name `{tensor}` is used twice")
            }
            CheckpointError::Encode { path, message } => {
                write!(f, "{}: cannot encode checkpoint: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Saves `tensors` (name, shape, row-major f32 data) and `metadata` to `path`
/// atomically, creating missing parent directories.
pub fn save(path: &Path, tensors: &[(String, Vec<usize>, &[f32])], metadata: &HashMap<String, String>) -> Result<(), CheckpointError> {
    let bytes = encode(path, tensors, metadata)?;
    write_atomic(path, |file| file.write_all(&bytes))
}

/// Loads every tensor of a checkpoint, sorted by name.
pub fn load(path: &Path) -> Result<Vec<LoadedTensor>, CheckpointError> {
    load_with_metadata(path).map(|(t, _)| t)
}

/// Loads every tensor (sorted by name) and the metadata of a checkpoint.
pub fn load_with_metadata(path: &Path) -> Result<(Vec<LoadedTensor>, HashMap<String, String>), CheckpointError> {
    let bytes = fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            CheckpointError::NotFound { path: path.to_path_buf() }
        } else {
            CheckpointError::Io { path: path.to_path_buf(), what: "cannot read checkpoint", source }
        }
    })?;
    decode(path, &bytes)
}

/// Decodes the bytes of a safetensors file; `path` is only used in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<(Vec<LoadedTensor>, HashMap<String, String>), CheckpointError> {
    let corrupt = |e: safetensors::SafeTensorError| CheckpointError::Corrupt { path: path.to_path_buf(), message: e.to_string() };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let st = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::WrongDtype {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: view.dtype().to_string(),
            });
        }
        let values: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        out.push((name.to_string(), view.shape().to_vec(), values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, header.metadata().clone().unwrap_or_default()))
}

/// Refuses a tensor holding NaN or an infinity, naming the first one (in
/// row-major order) by its index along each axis. A NaN weight would
/// otherwise train on silently and be written back to the next checkpoint.
pub fn check_finite(path: &Path, (name, shape, values): &LoadedTensor) -> Result<(), CheckpointError> {
    let Some(flat) = values.iter().position(|v| !v.is_finite()) else { return Ok(()) };
    let mut index = vec![0; shape.len()];
    let mut rest = flat;
    for (i, &d) in index.iter_mut().zip(shape).rev() {
        *i = rest % d.max(1);
        rest /= d.max(1);
    }
    Err(CheckpointError::NonFinite { path: path.to_path_buf(), tensor: name.clone(), index, value: values[flat] })
}

fn encode(path: &Path, tensors: &[(String, Vec<usize>, &[f32])], metadata: &HashMap<String, String>) -> Result<Vec<u8>, CheckpointError> {
    let mut seen = std::collections::HashSet::new();
    let mut raw: Vec<(&str, &[usize], Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, shape, data) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(CheckpointError::DuplicateName { tensor: name.clone() });
        }
        let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if expected != Some(data.len()) {
            return Err(CheckpointError::ShapeMismatch { tensor: name.clone(), shape: shape.clone(), len: data.len() });
        }
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw.push((name, shape, bytes));
    }
    let encode_err = |e: safetensors::SafeTensorError| CheckpointError::Encode { path: path.to_path_buf(), message: e.to_string() };
    let mut views = Vec::with_capacity(raw.len());
    for (name, shape, bytes) in &raw {
        let view = TensorView::new(Dtype::F32, shape.to_vec(), bytes).map_err(encode_err)?;
        views.push((*name, view));
    }
    let info = if metadata.is_empty() { None } else { Some(metadata.clone()) };
    safetensors::serialize(views, info).map_err(encode_err)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a file atomically: `fill` writes the content into a temporary file
/// next to `path`; the file is synced and renamed over `path`. On any error
/// the temporary file is removed and `path` is untouched.
fn write_atomic(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> Result<(), CheckpointError> {
    let io_err = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| CheckpointError::Io { path: p, what, source }
    };
    let file_name = path.file_name().ok_or_else(|| CheckpointError::Io {
        path: path.to_path_buf(),
        what: "checkpoint path has no file name",
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(io_err("cannot create checkpoint directory", &dir))?;

    remove_stale_temps(&dir, file_name);
    let mut tmp_name = temp_prefix(file_name);
    tmp_name.push(format!("{}.{}", std::process::id(), TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err("cannot create temporary file", &tmp))?;
        fill(&mut file).map_err(io_err("cannot write temporary file", &tmp))?;
        file.sync_all().map_err(io_err("cannot sync temporary file", &tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err("cannot rename temporary file over", path))
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Persist the rename itself (the directory entry). Not all platforms allow
    // opening a directory; the data is already safe, so this is best effort.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `.NAME.tmp.`: the start of the names of `NAME`'s temporary files.
fn temp_prefix(file_name: &OsStr) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(file_name);
    prefix.push(".tmp.");
    prefix
}

/// Removes the temporary files `.NAME.tmp.PID.N` in `dir` left by processes
/// that no longer run. Best effort: a file that cannot be removed stays.
fn remove_stale_temps(dir: &Path, file_name: &OsStr) {
    let prefix = temp_prefix(file_name);
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let rest = name.as_encoded_bytes().strip_prefix(prefix.as_encoded_bytes());
        let pid = rest.and_then(|r| std::str::from_utf8(r).ok()).and_then(|r| {
            let (pid, n) = r.split_once('.')?;
            n.parse::<u64>().ok()?;
            pid.parse::<u32>().ok()
        });
        if let Some(pid) = pid {
            if pid != std::process::id() && !process_runs(pid) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether process `pid` exists (signal 0 checks without sending anything;
/// EPERM means it exists but belongs to someone else).
#[cfg(unix)]
fn process_runs(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
    // SAFETY: kill with signal 0 sends no signal and touches no memory; it only
    // reports whether the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Elsewhere nnc cannot tell, and keeps the file.
#[cfg(not(unix))]
fn process_runs(_: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "nnc-ckpt-unit-{tag}-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn failing_write_keeps_previous_checkpoint_and_no_temp_files() {
        let dir = temp_dir("fail");
        let path = dir.join("model.safetensors");
        let w = [1.0f32, 2.0, 3.0];
        save(&path, &[("w".into(), vec![3], &w)], &HashMap::new()).unwrap();
        let before = fs::read(&path).unwrap();

        // Simulate a disk error half-way through writing the new checkpoint.
        let err = write_atomic(&path, |f| {
            f.write_all(&before[..before.len() / 2])?;
            Err(io::Error::other("simulated disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("simulated disk full"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(load(&path).unwrap()[0].2, w.to_vec());
        let names: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 1, "temporary file left behind: {names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A process that has exited: its PID names no running process (until the
    /// system reuses it, which takes tens of thousands of new processes).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn temporary_files_of_dead_processes_are_removed_by_the_next_write() {
        let dir = temp_dir("stale");
        let path = dir.join("x.safetensors");
        let stale = dir.join(format!(".x.safetensors.tmp.{}.3", dead_pid()));
        // PID 1 always runs: its file may be a write in progress.
        let live = dir.join(".x.safetensors.tmp.1.0");
        let other = dir.join(format!(".y.safetensors.tmp.{}.0", dead_pid()));
        for f in [&stale, &live, &other] {
            fs::write(f, b"half a checkpoint").unwrap();
        }
        save(&path, &[("w".into(), vec![1], &[1.0])], &HashMap::new()).unwrap();
        assert!(!stale.exists(), "a dead process's temporary file stays");
        assert!(live.exists() && other.exists(), "a live process's file, or another checkpoint's, was removed");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_non_finite_value_is_named_by_tensor_and_index() {
        let mut values = vec![0.5f32; 12];
        values[7] = f32::NAN;
        let err = check_finite(Path::new("m.st"), &("l1.W".into(), vec![3, 4], values)).unwrap_err().to_string();
        assert_eq!(err, "m.st: tensor `l1.W` holds NaN at index [1, 3]; a checkpoint must hold finite values");
        let err = check_finite(Path::new("m.st"), &("b".into(), vec![2], vec![1.0, f32::NEG_INFINITY])).unwrap_err().to_string();
        assert!(err.contains("-inf at index [1]"), "{err}");
        assert!(check_finite(Path::new("m.st"), &("b".into(), vec![2], vec![1.0, -0.0])).is_ok());
    }

    #[test]
    fn wrong_dtype_is_reported() {
        let data = [0u8; 8];
        let view = TensorView::new(Dtype::F64, vec![1], &data).unwrap();
        let bytes = safetensors::serialize([("x", view)], None).unwrap();
        let err = decode(Path::new("m.st"), &bytes).unwrap_err().to_string();
        assert!(err.contains("`x`") && err.contains("F64"), "{err}");
    }
}
