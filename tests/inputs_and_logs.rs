//! Through the real `nnc` binary: a file of garbage given as CSV is refused
//! with bounded memory and a short message, and training's progress reaches
//! a log (one line per epoch) and a terminal (lines that end in line breaks).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch folder of this test process, removed by the caller.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nnc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    dir
}

/// A `.nn` file in `dir` that loads `csv` (a file name in `dir`) with label column `label`.
fn csv_program(dir: &Path, csv: &str) -> PathBuf {
    let source = format!("data d = csv(\"{csv}\", label: \"label\") {{\n  train = rows[0..]\n}}\n");
    let path = dir.join("load.nn");
    std::fs::write(&path, source).expect("write the program");
    path
}

/// `bytes` bytes of letters without a line break, written 1 MiB at a time.
fn write_garbage(path: &Path, bytes: usize) {
    let chunk: Vec<u8> = (0..1 << 20).map(|i: usize| b'a' + (i * 7 % 26) as u8).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create the garbage file"));
    for _ in 0..bytes / chunk.len() {
        f.write_all(&chunk).expect("write garbage");
    }
    f.flush().expect("flush garbage");
}

/// Peak resident memory of a child, in KiB, as `/usr/bin/time -f %M` reports
/// it, and the child's output; `None` where GNU time is not installed.
fn run_measured(args: &[&str]) -> Option<(u64, std::process::Output)> {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        return None;
    }
    let out = Command::new(time).args(["-f", "peak-kib %M", env!("CARGO_BIN_EXE_nnc")]).args(args).output().expect("run nnc");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let peak = stderr.lines().rev().find_map(|l| l.strip_prefix("peak-kib ")).and_then(|k| k.trim().parse().ok())?;
    Some((peak, out))
}

/// A 64 MiB CSV "header" with no line break: refused after reading the
/// longest line a table may have (16 MiB), quoting 40 characters of it. On
/// the old main the whole line was read, expanded to chars for "did you
/// mean" (4 bytes each) and quoted whole: about 1.3 GB for this file.
#[test]
fn garbage_csv_is_refused_with_bounded_memory_and_a_short_message() {
    let dir = scratch("garbage-csv");
    write_garbage(&dir.join("garbage.csv"), 64 << 20);
    let program = csv_program(&dir, "garbage.csv");
    let args = ["check", program.to_str().expect("a UTF-8 path")];
    let (peak_kib, out) = match run_measured(&args) {
        Some((peak, out)) => (Some(peak), out),
        None => (None, common::nnc(&args)),
    };
    std::fs::remove_dir_all(&dir).expect("remove the scratch folder");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the line is longer than 16 MiB"), "{stderr}");
    assert!(stderr.len() < 2_000, "a {} byte message", stderr.len());
    if let Some(peak) = peak_kib {
        // Measured: 22 MiB (the 16 MiB line buffer and the process itself).
        assert!(peak < 48 << 10, "peak memory {peak} KiB for a 64 MiB file");
    }
}

/// A 10 MB header without commas is one column name: short enough to read,
/// far too long to quote. It is quoted by its first 40 characters.
#[test]
fn a_long_column_name_is_quoted_briefly() {
    let dir = scratch("long-header");
    let mut text = "x".repeat(10_000_000);
    text.push_str("\n1\n");
    std::fs::write(dir.join("long.csv"), text).expect("write the CSV");
    let program = csv_program(&dir, "long.csv");
    let out = common::nnc(&["check", program.to_str().expect("a UTF-8 path")]);
    std::fs::remove_dir_all(&dir).expect("remove the scratch folder");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("`{}…`", "x".repeat(40))), "{stderr}");
    assert!(stderr.len() < 1_000, "a {} byte message", stderr.len());
}

/// The fields of an epoch line: `epoch   2/3  train loss 0.75932  accuracy on digits.test 85.28%  0.05 s`.
fn assert_epoch_line(line: &str, epoch: usize, epochs: usize) {
    let rest =
        line.strip_prefix(&format!("epoch {epoch:>3}/{epochs}  train loss ")).unwrap_or_else(|| panic!("not epoch {epoch}: {line:?}"));
    let fields: Vec<&str> = rest.split("  ").collect();
    let [loss, metric, time] = fields.as_slice() else { panic!("expected loss, metric and time in {line:?}") };
    assert!(loss.parse::<f64>().is_ok_and(f64::is_finite), "loss {loss:?} in {line:?}");
    let accuracy = metric.strip_prefix("accuracy on digits.test ").and_then(|m| m.strip_suffix('%'));
    assert!(accuracy.and_then(|a| a.parse::<f64>().ok()).is_some_and(|a| (0.0..=100.0).contains(&a)), "metric {metric:?}");
    let seconds = time.strip_suffix(" s").and_then(|t| t.parse::<f64>().ok());
    assert!(seconds.is_some_and(|s| s >= 0.0), "time {time:?} in {line:?}");
}

/// stderr to a pipe (a log): one line per epoch with its loss, metric and
/// time, then the summary. The old main printed only the summary line.
#[test]
fn a_log_gets_one_line_per_epoch() {
    let out = common::nnc(&["run", "examples/mlp_digits.nn", "--epochs", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "three epoch lines and the summary:\n{stderr}");
    for (i, line) in lines[..3].iter().enumerate() {
        assert_epoch_line(line, i + 1, 3);
    }
    assert!(lines[3].starts_with("mlp: 3 epochs, final train loss"), "{stderr}");
    assert!(!stderr.contains('\r'), "no bar redraws in a log:\n{stderr:?}");
}

/// Under a pseudo-terminal (`script` from util-linux): the bar is drawn, and
/// every epoch line and the final bar end in a line break. On the old main
/// indicatif padded each line with spaces to the terminal's width instead,
/// so the session's transcript ran the lines together.
#[test]
fn a_terminal_gets_lines_that_end_in_line_breaks() {
    let script = Path::new("/usr/bin/script");
    if !script.exists() {
        eprintln!("skipped: no /usr/bin/script to run nnc under a pseudo-terminal");
        return;
    }
    let command = format!("{} run examples/mlp_digits.nn --epochs 2", env!("CARGO_BIN_EXE_nnc"));
    let out =
        Command::new(script).args(["-q", "-e", "-c", &command, "/dev/null"]).current_dir(common::root()).output().expect("run script");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}");
    assert!(transcript.contains("steps"), "no progress bar drawn:\n{transcript:?}");
    // What remains on screen, line by line: the text after the last redraw of each line.
    let screen: Vec<&str> = transcript.split('\n').map(|l| l.trim_end_matches('\r').rsplit('\r').next().unwrap_or("")).collect();
    let shown = |prefix: &str| screen.iter().filter(|l| l.trim_start_matches("\u{1b}[2K").starts_with(prefix)).count();
    assert_eq!(shown("epoch "), 2, "each epoch line on a line of its own:\n{transcript:?}");
    assert_eq!(shown("mlp: 2 epochs"), 1, "the summary on a line of its own:\n{transcript:?}");
    for line in screen.iter().filter(|l| l.contains("epoch ")) {
        assert!(!line.ends_with(' '), "an epoch line padded with spaces: {line:?}");
        assert_epoch_line(line.trim_start_matches("\u{1b}[2K"), if line.contains("epoch   1/") { 1 } else { 2 }, 2);
    }
    assert!(screen.iter().any(|l| l.contains("46/46 steps")), "the final bar on a line of its own:\n{transcript:?}");
}
