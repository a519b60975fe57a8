//! Tests of the runtime's building blocks: data loading and batching,
//! initialisers, schedules, checkpoints and plots.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use nnc_runtime::checkpoint::{self, CheckpointError};
use nnc_runtime::data::{gather_rows, load_csv, scale, select_rows, shuffled_order, Batches, DataError, RowSelect, Standardizer, Table};
use nnc_runtime::init::{initialize, Init};
use nnc_runtime::plot::{write_curves, XAxis, PLOT_HEIGHT, PLOT_WIDTH};
use nnc_runtime::rng::seeded;
use nnc_runtime::schedule::Schedule;

fn data_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/data")).to_path_buf()
}

fn digits() -> Table {
    load_csv(&data_dir().join("digits.csv"), "label").unwrap()
}

fn diabetes() -> Table {
    load_csv(&data_dir().join("diabetes.csv"), "target").unwrap()
}

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("runtime_parts-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// data
// ---------------------------------------------------------------------------

#[test]
fn digits_loads_with_expected_shape_and_classes() {
    let t = digits();
    assert_eq!(t.features.dim(), (1797, 64));
    assert_eq!(t.labels.len(), 1797);
    assert_eq!(t.label_name, "label");
    assert_eq!(t.feature_names.len(), 64);
    assert_eq!(t.feature_names[0], "p0");
    assert_eq!(t.feature_names[63], "p63");

    let mut counts = [0usize; 10];
    for &y in &t.labels {
        assert_eq!(y.fract(), 0.0);
        assert!((0.0..=9.0).contains(&y), "label {y}");
        counts[y as usize] += 1;
    }
    assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180], "class counts");
    assert!(t.features.iter().all(|&p| (0.0..=16.0).contains(&p)));
    assert_eq!(t.features.iter().cloned().fold(0.0f32, f32::max), 16.0);
}

#[test]
fn digits_split_and_scale() {
    let mut t = digits();
    scale(&mut t, 1.0 / 16.0);
    assert_eq!(t.features.iter().cloned().fold(0.0f32, f32::max), 1.0);
    let train = select_rows(&t, &RowSelect::Range { start: 0, end: Some(1437) }).unwrap();
    let test = select_rows(&t, &RowSelect::Range { start: 1437, end: None }).unwrap();
    assert_eq!(train.n_rows(), 1437);
    assert_eq!(test.n_rows(), 360);
    assert_eq!(test.features.row(0), t.features.row(1437));
    assert_eq!(test.labels[[359, 0]], t.labels[[1796, 0]]);
    assert_eq!(train.feature_names, t.feature_names);

    let err = select_rows(&t, &RowSelect::Range { start: 1000, end: Some(1800) }).unwrap_err();
    assert!(matches!(err, DataError::RangeOutOfBounds { rows: 1797, .. }));
    assert!(err.to_string().contains("1797 rows"), "{err}");
    assert!(select_rows(&t, &RowSelect::Range { start: 5, end: Some(4) }).is_err());
}

#[test]
fn diabetes_loads_and_modulo_split() {
    let t = diabetes();
    assert_eq!(t.features.dim(), (442, 10));
    assert_eq!(t.labels.len(), 442);
    assert_eq!(t.feature_names, ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]);
    assert_eq!(t.label_name, "target");
    // First data row: 59,2,32.1,101,157,93.2,38,4,4.8598,87,151
    assert_eq!(t.features[[0, 0]], 59.0);
    assert_eq!(t.features[[0, 2]], 32.1);
    assert_eq!(t.features[[0, 8]], 4.8598);
    assert_eq!(t.labels[[0, 0]], 151.0);
    let mean_target = t.labels.iter().map(|&v| f64::from(v)).sum::<f64>() / 442.0;
    assert!((mean_target - 152.13).abs() < 0.01, "{mean_target}");

    let test_sel = RowSelect::Modulo { modulus: 5, remainder: 4, equal: true };
    let train_sel = RowSelect::Modulo { modulus: 5, remainder: 4, equal: false };
    let train = select_rows(&t, &train_sel).unwrap();
    let test = select_rows(&t, &test_sel).unwrap();
    assert_eq!(train.n_rows(), 354);
    assert_eq!(test.n_rows(), 88);
    assert_eq!(test.features.row(0), t.features.row(4));
    assert_eq!(test.features.row(1), t.features.row(9));
    assert_eq!(train.features.row(4), t.features.row(5));
    assert!(select_rows(&t, &RowSelect::Modulo { modulus: 5, remainder: 5, equal: true }).is_err());
}

fn column_stats(x: &ndarray::Array2<f32>, j: usize) -> (f64, f64) {
    let n = x.nrows() as f64;
    let mean = x.column(j).iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x.column(j).iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn standardizer_fits_on_train_and_applies_to_test() {
    let t = diabetes();
    let mut train = select_rows(&t, &RowSelect::Modulo { modulus: 5, remainder: 4, equal: false }).unwrap();
    let mut test = select_rows(&t, &RowSelect::Modulo { modulus: 5, remainder: 4, equal: true }).unwrap();
    let raw_test = test.features.clone();
    let st = Standardizer::fit(&train.features).unwrap();
    st.apply(&mut train.features).unwrap();
    st.apply(&mut test.features).unwrap();
    for j in 0..10 {
        let (m, s) = column_stats(&train.features, j);
        assert!(m.abs() < 1e-5, "column {j}: mean {m}");
        assert!((s - 1.0).abs() < 1e-4, "column {j}: std {s}");
        // The test split uses the training statistics.
        let expect = (raw_test[[0, j]] - st.mean()[j]) / st.std()[j];
        assert_eq!(test.features[[0, j]], expect);
    }
    // Wrong width is an error, not a panic.
    let mut narrow = ndarray::Array2::<f32>::zeros((3, 4));
    assert!(st.apply(&mut narrow).is_err());
}

#[test]
fn standardizer_constant_column_gets_unit_std() {
    let x = ndarray::array![[1.0f32, 0.1], [2.0, 0.1], [3.0, 0.1]];
    let st = Standardizer::fit(&x).unwrap();
    assert_eq!(st.std()[1], 1.0);
    let mut y = x.clone();
    st.apply(&mut y).unwrap();
    assert!(y.column(1).iter().all(|&v| v == 0.0));
    assert!(y.iter().all(|v| v.is_finite()));
    assert!(Standardizer::fit(&ndarray::Array2::<f32>::zeros((0, 3))).is_err());
}

#[test]
fn missing_label_column_lists_columns_and_suggests() {
    let path = data_dir().join("diabetes.csv");
    let err = load_csv(&path, "targt").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("diabetes.csv"), "{msg}");
    assert!(msg.contains("`targt`"), "{msg}");
    // A summary of the columns, not every name (a header may hold millions).
    assert!(msg.contains("`age`, `sex`, `bmi`, …, `s6`, `target` (11 columns)"), "{msg}");
    assert!(msg.contains("did you mean `target`"), "{msg}");
    match err {
        DataError::MissingLabelColumn { available, suggestion, .. } => {
            assert_eq!(available.len(), 11);
            assert_eq!(suggestion.as_deref(), Some("target"));
        }
        other => panic!("wrong error {other:?}"),
    }
}

#[test]
fn csv_errors_carry_context() {
    let dir = scratch("csv-errors");
    let missing = dir.join("nope.csv");
    let msg = load_csv(&missing, "y").unwrap_err().to_string();
    assert!(msg.contains("nope.csv") && msg.contains("not found"), "{msg}");

    let bad = dir.join("bad.csv");
    fs::write(&bad, "x1,x2,y\n1,2,0\n3,abc,1\n").unwrap();
    let err = load_csv(&bad, "y").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bad.csv:3"), "{msg}");
    assert!(msg.contains("`x2`") && msg.contains("`abc`"), "{msg}");
    assert!(matches!(err, DataError::NonNumeric { line: 3, .. }));

    let ragged = dir.join("ragged.csv");
    fs::write(&ragged, "x1,x2,y\n1,2,0\n1,2,3,4\n").unwrap();
    let err = load_csv(&ragged, "y").unwrap_err();
    assert!(matches!(err, DataError::RaggedRow { line: 3, expected: 3, found: 4, .. }));
    assert!(err.to_string().contains("ragged.csv:3"), "{err}");

    let empty = dir.join("empty.csv");
    fs::write(&empty, "").unwrap();
    let msg = load_csv(&empty, "y").unwrap_err().to_string();
    assert!(msg.contains("empty.csv") && msg.contains("empty"), "{msg}");
}

#[test]
fn shuffles_are_reproducible_permutations() {
    let n = 1437;
    let a = shuffled_order(n, 42, 0);
    let mut sorted = a.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert_eq!(a, shuffled_order(n, 42, 0), "same seed and epoch");
    assert_ne!(a, shuffled_order(n, 42, 1), "different epoch");
    assert_ne!(a, shuffled_order(n, 43, 0), "different seed");
    assert_ne!(a, (0..n).collect::<Vec<_>>(), "actually shuffled");
    assert!(shuffled_order(0, 1, 0).is_empty());
    assert_eq!(shuffled_order(1, 1, 0), vec![0]);
}

#[test]
fn batches_cover_every_row_once() {
    let order = shuffled_order(354, 7, 3);
    let batches: Vec<_> = Batches::new(order.len(), 32).unwrap().collect();
    assert_eq!(batches.len(), 12);
    assert_eq!(Batches::new(354, 32).unwrap().count_total(), 12);
    assert_eq!(Batches::new(354, 32).unwrap().len(), 12);
    assert!(batches[..11].iter().all(|r| r.len() == 32));
    assert_eq!(batches[11], 352..354, "last partial batch");
    let mut seen = vec![0u32; 354];
    for r in &batches {
        for &i in &order[r.clone()] {
            seen[i] += 1;
        }
    }
    assert!(seen.iter().all(|&c| c == 1));
    assert_eq!(Batches::new(64, 32).unwrap().count(), 2);
    assert_eq!(Batches::new(0, 32).unwrap().count(), 0);
    assert!(matches!(Batches::new(10, 0), Err(DataError::ZeroBatchSize)));
}

#[test]
fn gather_copies_selected_rows() {
    let t = diabetes();
    let order = shuffled_order(t.n_rows(), 1, 0);
    let mut xbuf = vec![0.0f32; 32 * 10];
    let mut ybuf = [0.0f32; 32];
    let ptr = xbuf.as_ptr();
    for r in Batches::new(order.len(), 32).unwrap() {
        let rows = &order[r];
        let k = rows.len();
        gather_rows(&t.features, rows, &mut xbuf[..k * 10]).unwrap();
        gather_rows(&t.labels, rows, &mut ybuf[..k]).unwrap();
        for (b, &i) in rows.iter().enumerate() {
            assert_eq!(&xbuf[b * 10..(b + 1) * 10], t.features.row(i).as_slice().unwrap());
            assert_eq!(ybuf[b], t.labels[[i, 0]]);
        }
    }
    assert_eq!(ptr, xbuf.as_ptr());
    assert!(gather_rows(&t.features, &[442], &mut xbuf[..10]).is_err());
    assert!(gather_rows(&t.labels, &[0, 1], &mut ybuf[..1]).is_err());
}

// ---------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------

fn mean_var(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / n;
    (m, var)
}

/// Checks the sample mean and variance of a zero-mean sample against the
/// expected variance, within 5 standard errors. `kurtosis` = E[x^4] / var^2
/// (3 for a normal, 9/5 for a uniform).
fn check_stats(v: &[f32], var: f64, kurtosis: f64) {
    let n = v.len() as f64;
    let (m, s2) = mean_var(v);
    let se_mean = (var / n).sqrt();
    let se_var = var * ((kurtosis - 1.0) / n).sqrt();
    assert!(m.abs() < 5.0 * se_mean, "mean {m}, se {se_mean}");
    assert!((s2 - var).abs() < 5.0 * se_var, "variance {s2}, expected {var} (se {se_var})");
}

#[test]
fn initialisers_have_the_right_statistics() {
    let mut rng = seeded(2024, 0);
    let shape = [400, 300];
    let n = 400 * 300;

    let he = initialize(&Init::HeNormal, &shape, &mut rng).unwrap();
    assert_eq!(he.len(), n);
    check_stats(&he, 2.0 / 400.0, 3.0);

    let xn = initialize(&Init::XavierNormal, &shape, &mut rng).unwrap();
    check_stats(&xn, 2.0 / 700.0, 3.0);

    let xu = initialize(&Init::XavierUniform, &shape, &mut rng).unwrap();
    let a = (6.0f64 / 700.0).sqrt();
    assert!(xu.iter().all(|&x| f64::from(x).abs() <= a + 1e-7));
    check_stats(&xu, a * a / 3.0, 9.0 / 5.0);

    let nrm = initialize(&Init::Normal { std: 0.02 }, &shape, &mut rng).unwrap();
    check_stats(&nrm, 0.0004, 3.0);

    let u = initialize(&Init::Uniform { low: 2.0, high: 4.0 }, &[n], &mut rng).unwrap();
    assert!(u.iter().all(|&x| (2.0..4.0).contains(&x)));
    let shifted: Vec<f32> = u.iter().map(|x| x - 3.0).collect();
    check_stats(&shifted, 1.0 / 3.0, 9.0 / 5.0);

    // Convolution kernel [out, in, kh, kw]: fan_in = 8 * 3 * 3 = 72.
    let conv = initialize(&Init::HeNormal, &[64, 8, 3, 3], &mut rng).unwrap();
    check_stats(&conv, 2.0 / 72.0, 3.0);

    assert_eq!(initialize(&Init::Zeros, &[2, 3], &mut rng).unwrap(), vec![0.0; 6]);
    assert_eq!(initialize(&Init::Ones, &[4], &mut rng).unwrap(), vec![1.0; 4]);
}

#[test]
fn initialisers_are_deterministic() {
    let a = initialize(&Init::HeNormal, &[10, 10], &mut seeded(5, 0)).unwrap();
    let b = initialize(&Init::HeNormal, &[10, 10], &mut seeded(5, 0)).unwrap();
    let c = initialize(&Init::HeNormal, &[10, 10], &mut seeded(6, 0)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

// ---------------------------------------------------------------------------
// schedule
// ---------------------------------------------------------------------------

#[test]
fn schedules_give_exact_factors() {
    let step = Schedule::Step { every: 3, gamma: 0.1 };
    let got: Vec<f64> = (0..7).map(|s| step.factor(s)).collect();
    assert_eq!(got[..3], [1.0, 1.0, 1.0]);
    assert_eq!(got[3..6], [0.1, 0.1, 0.1]);
    assert_eq!(got[6], 0.1f64.powi(2));

    let cos = Schedule::Cosine { total: 4, min_factor: 0.0 };
    let expect = [1.0, 0.853_553_390_593_273_8, 0.5, 0.146_446_609_406_726_3, 0.0];
    for (s, e) in expect.iter().enumerate() {
        assert!((cos.factor(s) - e).abs() < 1e-15, "step {s}");
    }

    let warm = Schedule::Warmup { steps: 5, then: Box::new(Schedule::Constant) };
    let got: Vec<f64> = (0..7).map(|s| warm.factor(s)).collect();
    assert_eq!(got, [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0]);

    let warm_cos = Schedule::Warmup { steps: 2, then: Box::new(Schedule::Cosine { total: 2, min_factor: 0.2 }) };
    let got: Vec<f64> = (0..6).map(|s| warm_cos.factor(s)).collect();
    assert_eq!(got[..3], [0.5, 1.0, 1.0]);
    assert!((got[3] - 0.6).abs() < 1e-15);
    assert_eq!(got[4..], [0.2, 0.2]);
}

// ---------------------------------------------------------------------------
// checkpoint
// ---------------------------------------------------------------------------

fn sample_tensors() -> (Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 3.0).collect();
    let b = vec![0.25f32, -1.5, f32::MIN_POSITIVE];
    (w, b)
}

#[test]
fn checkpoint_round_trip_with_metadata() {
    let dir = scratch("ckpt-roundtrip");
    let path = dir.join("nested/deeper/model.safetensors");
    let (w, b) = sample_tensors();
    let mut meta = HashMap::new();
    meta.insert("epoch".to_string(), "7".to_string());
    meta.insert("model".to_string(), "mlp".to_string());
    checkpoint::save(&path, &[("layer1.w".to_string(), vec![3, 4], &w), ("layer1.b".to_string(), vec![3], &b)], &meta).unwrap();
    let (tensors, meta2) = checkpoint::load_with_metadata(&path).unwrap();
    assert_eq!(tensors, vec![("layer1.b".to_string(), vec![3], b.clone()), ("layer1.w".to_string(), vec![3, 4], w.clone()),]);
    assert_eq!(meta2, meta);
    assert_eq!(checkpoint::load(&path).unwrap(), tensors);

    // Overwriting replaces the content; no temporary files remain.
    checkpoint::save(&path, &[("s".to_string(), vec![], &[4.0])], &HashMap::new()).unwrap();
    let (t, m) = checkpoint::load_with_metadata(&path).unwrap();
    assert_eq!(t, vec![("s".to_string(), vec![], vec![4.0])]);
    assert!(m.is_empty());
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
}

#[test]
fn checkpoint_missing_and_corrupt_files_are_errors() {
    let dir = scratch("ckpt-corrupt");
    let missing = dir.join("missing.safetensors");
    let err = checkpoint::load(&missing).unwrap_err();
    assert!(matches!(err, CheckpointError::NotFound { .. }));
    assert!(err.to_string().contains("missing.safetensors"), "{err}");

    let path = dir.join("m.safetensors");
    let (w, b) = sample_tensors();
    checkpoint::save(&path, &[("w".to_string(), vec![12], &w), ("b".to_string(), vec![3], &b)], &HashMap::new()).unwrap();
    let full = fs::read(&path).unwrap();
    let truncated = dir.join("truncated.safetensors");
    for len in [0, 3, 8, 20, full.len() / 2, full.len() - 1] {
        fs::write(&truncated, &full[..len]).unwrap();
        let err = checkpoint::load(&truncated).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "len {len}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains("truncated.safetensors"), "{msg}");
    }
    // Garbage with a plausible header length.
    let mut junk = 16u64.to_le_bytes().to_vec();
    junk.extend_from_slice(b"{not json at all");
    fs::write(&truncated, &junk).unwrap();
    assert!(matches!(checkpoint::load(&truncated), Err(CheckpointError::Corrupt { .. })));
}

#[test]
fn failed_save_leaves_previous_checkpoint_intact() {
    let dir = scratch("ckpt-failed-save");
    let path = dir.join("model.safetensors");
    let (w, b) = sample_tensors();
    checkpoint::save(&path, &[("w".to_string(), vec![12], &w)], &HashMap::new()).unwrap();
    let before = fs::read(&path).unwrap();

    // Shape does not match the data: rejected before anything is written.
    let err = checkpoint::save(&path, &[("w".to_string(), vec![5], &b)], &HashMap::new()).unwrap_err();
    assert!(matches!(err, CheckpointError::ShapeMismatch { .. }), "{err}");
    // Duplicate names are rejected too.
    let err = checkpoint::save(&path, &[("w".to_string(), vec![3], &b), ("w".to_string(), vec![3], &b)], &HashMap::new()).unwrap_err();
    assert!(matches!(err, CheckpointError::DuplicateName { .. }), "{err}");
    // The rename fails because the target is a non-empty directory.
    let blocked = dir.join("blocked.safetensors");
    fs::create_dir_all(blocked.join("inside")).unwrap();
    let err = checkpoint::save(&blocked, &[("w".to_string(), vec![3], &b)], &HashMap::new()).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
    assert!(blocked.join("inside").is_dir());

    assert_eq!(fs::read(&path).unwrap(), before);
    assert_eq!(checkpoint::load(&path).unwrap()[0].2, w);
    let mut names: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["blocked.safetensors", "model.safetensors"]);
}

// ---------------------------------------------------------------------------
// plot
// ---------------------------------------------------------------------------

#[test]
fn curves_write_csv_and_png() {
    let dir = scratch("plot");
    let png = dir.join("out/loss.png");
    let csv = dir.join("out/loss.csv");
    let series = vec![("train".to_string(), vec![2.5, 1.25, 0.5, 0.25]), ("test".to_string(), vec![2.75, 1.5])];
    write_curves(&png, &csv, "digits MLP", XAxis::EPOCHS, &series).unwrap();
    let text = fs::read_to_string(&csv).unwrap();
    assert_eq!(text, "epoch,train,test\n1,2.5,2.75\n2,1.25,1.5\n3,0.5,\n4,0.25,\n");
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (PLOT_WIDTH, PLOT_HEIGHT));
    // The first series colour (tab10 blue) appears somewhere.
    assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
    // And so does the second (orange).
    assert!(img.pixels().any(|p| p.0 == [255, 127, 14]));
}

#[test]
fn curves_handle_log_scale_and_edge_cases() {
    let dir = scratch("plot-log");
    let png = dir.join("log.png");
    let csv = dir.join("log.csv");
    // Spans 4 decades: drawn on a log axis. A NaN is kept in the CSV only.
    let loss: Vec<f64> = (0..50).map(|i| 10f64.powf(1.0 - i as f64 / 12.0)).collect();
    let mut with_nan = loss.clone();
    with_nan[10] = f64::NAN;
    write_curves(&png, &csv, "log", XAxis::EPOCHS, &[("loss".to_string(), with_nan), ("single".to_string(), vec![1.0])]).unwrap();
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (PLOT_WIDTH, PLOT_HEIGHT));
    let text = fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 51);
    assert!(text.lines().nth(11).unwrap().contains("NaN"));

    // No data at all still gives a (blank) chart and a header-only CSV.
    let (png0, csv0) = (dir.join("empty.png"), dir.join("empty.csv"));
    write_curves(&png0, &csv0, "empty", XAxis::EPOCHS, &[]).unwrap();
    assert_eq!(fs::read_to_string(&csv0).unwrap(), "epoch\n");
    assert_eq!(image::open(&png0).unwrap().width(), PLOT_WIDTH);
}
