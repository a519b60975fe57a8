//! Tests of the `augment(...)` split modifier: each transform against a closed
//! form, determinism, and the diagnostics for mistakes.

use std::path::{Path, PathBuf};

use nnc_compiler::ast::Item;
use nnc_compiler::diagnostic::Diagnostic;
use nnc_runtime::augment::{add_noise, autocontrast, rotate_translate, row_rng, Augment, ImageShape};
use nnc_runtime::data::gather_rows;
use nnc_runtime::dataset::{self, Dataset};

fn data_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/data")).to_path_buf()
}

/// The source of a digits data set whose `train` split has `modifiers`.
fn digits_source(modifiers: &str) -> String {
    format!(
        "data digits = csv(\"digits.csv\", label: \"label\", scale: 1/16) {{\n  train = rows[0..1000] {modifiers}\n  test = rows[1000..]\n}}\n"
    )
}

/// Loads the single `data` declaration of `source` (paths relative to examples/data).
fn load(source: &str) -> Result<Dataset, Diagnostic> {
    let program = nnc_compiler::syntax::parse(source).unwrap_or_else(|d| panic!("parse error: {d:?}"));
    let def = program
        .items
        .iter()
        .find_map(|i| match i {
            Item::Data(d) => Some(d),
            _ => None,
        })
        .expect("a data declaration");
    dataset::load(def, &data_dir())
}

fn load_err(source: &str) -> Diagnostic {
    match load(source) {
        Ok(_) => panic!("expected an error for:\n{source}"),
        Err(d) => d,
    }
}

/// The source text under a diagnostic's first label.
fn labelled<'a>(d: &Diagnostic, source: &'a str) -> &'a str {
    let span = d.labels.first().expect("a label").span;
    &source[span.start..span.end]
}

fn digits_augment(options: &str) -> (Dataset, Augment) {
    let ds = load(&digits_source(&format!("augment({options})"))).unwrap_or_else(|d| panic!("{d:?}"));
    let aug = ds.split("train").and_then(|s| s.augment.clone()).expect("train is augmented");
    (ds, aug)
}

/// The batch of split `train` rows `rows`, augmented for `epoch`.
fn batch(ds: &Dataset, aug: &Augment, rows: &[usize], epoch: usize) -> Vec<f32> {
    let split = ds.split("train").expect("a train split");
    let mut out = vec![0.0; rows.len() * split.x.ncols()];
    gather_rows(&split.x, rows, &mut out).expect("rows in range");
    aug.apply(&mut out, rows, epoch).expect("right batch size");
    out
}

fn gray(height: usize, width: usize) -> ImageShape {
    ImageShape { channels: 1, height, width }
}

// ---------------------------------------------------------------------------
// the transforms, one by one
// ---------------------------------------------------------------------------

#[test]
fn rotating_by_90_degrees_is_rot90_counter_clockwise() {
    // An even size: the centre (1.5, 1.5) is between pixels, every pixel
    // still lands on a pixel.
    let (h, w) = (4, 4);
    let src: Vec<f32> = (0..h * w).map(|i| i as f32 + 1.0).collect();
    let mut dst = vec![0.0; h * w];
    rotate_translate(&src, &mut dst, h, w, 90.0, 0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            // numpy's rot90: out[y][x] = in[x][w-1-y].
            let expected = src[x * w + (w - 1 - y)];
            assert!((dst[y * w + x] - expected).abs() < 1e-5, "({y}, {x}): {} vs {expected}", dst[y * w + x]);
        }
    }
}

#[test]
fn rotation_moves_a_pixel_right_of_centre_to_the_top() {
    let (h, w) = (5, 5);
    let mut src = vec![0.0f32; h * w];
    src[2 * w + 4] = 1.0; // row 2 (the centre row), rightmost column
    let mut dst = vec![0.0; h * w];
    rotate_translate(&src, &mut dst, h, w, 90.0, 0.0, 0.0);
    assert!((dst[2] - 1.0).abs() < 1e-6, "top centre holds {}", dst[2]);
    let rest: f32 = dst.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, v)| v.abs()).sum();
    assert!(rest < 1e-6, "the rest of the image holds {rest}");
    // −90° takes it to the bottom, 180° to the left edge.
    rotate_translate(&src, &mut dst, h, w, -90.0, 0.0, 0.0);
    assert!((dst[4 * w + 2] - 1.0).abs() < 1e-6);
    rotate_translate(&src, &mut dst, h, w, 180.0, 0.0, 0.0);
    assert!((dst[2 * w] - 1.0).abs() < 1e-6);
}

#[test]
fn a_small_rotation_interpolates_and_fills_corners_with_zero() {
    let (h, w) = (9, 9);
    let src = vec![1.0f32; h * w];
    let mut dst = vec![0.0; h * w];
    rotate_translate(&src, &mut dst, h, w, 30.0, 0.0, 0.0);
    // The corners come from outside the image; the centre stays.
    assert_eq!(dst[0], 0.0);
    assert_eq!(dst[h * w - 1], 0.0);
    assert!((dst[4 * w + 4] - 1.0).abs() < 1e-6);
    assert!(dst.iter().all(|&v| (0.0..=1.0 + 1e-6).contains(&v)), "bilinear stays within the input range");
}

#[test]
fn an_integer_translation_moves_every_pixel_exactly() {
    let (h, w) = (6, 7);
    let src: Vec<f32> = (0..h * w).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut dst = vec![f32::NAN; h * w];
    // 2 right, 1 up.
    rotate_translate(&src, &mut dst, h, w, 0.0, 2.0, -1.0);
    for y in 0..h {
        for x in 0..w {
            let expected = match (y.checked_add(1), x.checked_sub(2)) {
                (Some(sy), Some(sx)) if sy < h => src[sy * w + sx],
                _ => 0.0,
            };
            assert_eq!(dst[y * w + x], expected, "({y}, {x})");
        }
    }
}

#[test]
fn a_half_pixel_shift_averages_neighbours() {
    let src = [0.0f32, 1.0, 0.0, 0.0];
    let mut dst = [0.0f32; 4];
    rotate_translate(&src, &mut dst, 1, 4, 0.0, 0.5, 0.0);
    assert_eq!(dst, [0.0, 0.5, 0.5, 0.0]);
}

#[test]
fn autocontrast_maps_min_to_zero_and_max_to_the_target() {
    let mut channel = vec![0.2f32, 0.4, 0.6, 0.3];
    autocontrast(&mut channel, 1.0);
    let expected = [0.0, 0.5, 1.0, 0.25];
    for (v, e) in channel.iter().zip(expected) {
        assert!((v - e).abs() < 1e-6, "{channel:?}");
    }
    // The target maximum is a parameter: the data's maximum.
    let mut channel = vec![3.0f32, 5.0, 4.0];
    autocontrast(&mut channel, 16.0);
    assert_eq!(channel, [0.0, 16.0, 8.0]);
    // A flat channel has no contrast to stretch and is left alone.
    let mut flat = vec![0.3f32; 5];
    autocontrast(&mut flat, 1.0);
    assert_eq!(flat, [0.3; 5]);
}

#[test]
fn autocontrast_is_per_channel_and_happens_with_the_given_probability() {
    let shape = ImageShape { channels: 2, height: 2, width: 2 };
    let always = Augment { autocontrast: 1.0, ..Augment::new(shape) };
    // Channel 0 spans 0.2..0.4, channel 1 spans 0.5..0.9.
    let image = [0.2f32, 0.3, 0.4, 0.25, 0.5, 0.9, 0.7, 0.6];
    let mut b = image.to_vec();
    always.apply(&mut b, &[0], 0).unwrap();
    let expected = [0.0, 0.5, 1.0, 0.25, 0.0, 1.0, 0.5, 0.25];
    for (v, e) in b.iter().zip(expected) {
        assert!((v - e).abs() < 1e-6, "{b:?}");
    }

    let sometimes = Augment { autocontrast: 0.3, seed: 4, ..Augment::new(shape) };
    let rows: Vec<usize> = (0..4000).collect();
    let mut many: Vec<f32> = rows.iter().flat_map(|_| image).collect();
    sometimes.apply(&mut many, &rows, 0).unwrap();
    let stretched = many.chunks(4).filter(|c| c.contains(&0.0)).count();
    let fraction = stretched as f64 / (2.0 * rows.len() as f64);
    assert!((fraction - 0.3).abs() < 0.02, "stretched {fraction} of the channels");
}

#[test]
fn noise_has_the_requested_standard_deviation() {
    let shape = gray(50, 50);
    let aug = Augment { noise: 0.05, seed: 7, ..Augment::new(shape) };
    let rows: Vec<usize> = (0..40).collect();
    let mut b = vec![0.5f32; rows.len() * shape.features()];
    aug.apply(&mut b, &rows, 3).unwrap();
    let n = b.len() as f64;
    let mean = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (b.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!((mean - 0.5).abs() < 0.001, "mean {mean}");
    assert!((std / 0.05 - 1.0).abs() < 0.02, "std {std} over {n} pixels");
    // About 68% within one std, 95% within two: the noise is Gaussian.
    let within = |k: f64| b.iter().filter(|&&v| (v as f64 - 0.5).abs() < k * 0.05).count() as f64 / n;
    assert!((within(1.0) - 0.6827).abs() < 0.01, "{}", within(1.0));
    assert!((within(2.0) - 0.9545).abs() < 0.01, "{}", within(2.0));
}

#[test]
fn add_noise_handles_an_odd_number_of_values() {
    let mut v = vec![0.0f32; 3];
    add_noise(&mut v, 1.0, &mut row_rng(0, 0, 0));
    assert!(v.iter().all(|x| *x != 0.0 && x.is_finite()), "{v:?}");
}

// ---------------------------------------------------------------------------
// the whole modifier on real data
// ---------------------------------------------------------------------------

#[test]
fn zero_augmentation_is_the_identity() {
    let (ds, aug) = digits_augment("image: [8, 8], rotate: 0, translate: 0, autocontrast: 0, noise: 0, seed: 9");
    assert!(aug.is_identity());
    let split = ds.split("train").unwrap();
    let rows: Vec<usize> = (0..32).collect();
    let mut plain = vec![0.0; rows.len() * 64];
    gather_rows(&split.x, &rows, &mut plain).unwrap();
    assert_eq!(batch(&ds, &aug, &rows, 5), plain);
}

#[test]
fn the_modifier_sets_every_option() {
    let (_, aug) = digits_augment("image: [1, 8, 8], rotate: 10, translate: 1.5, autocontrast: 0.3, noise: 0.05, seed: 1");
    assert_eq!(aug.image, ImageShape { channels: 1, height: 8, width: 8 });
    assert_eq!((aug.rotate, aug.translate, aug.autocontrast, aug.noise, aug.seed), (10.0, 1.5, 0.3, 0.05, 1));
    // digits are 0..16, scaled by 1/16: the data's maximum is 1.
    assert_eq!(aug.contrast_max, 1.0);
    // The seed defaults to 0.
    assert_eq!(digits_augment("image: [8, 8]").1.seed, 0);
}

#[test]
fn shuffle_and_augment_combine_and_only_the_marked_split_is_augmented() {
    let ds = load(&digits_source("shuffle(seed: 3) augment(image: [8, 8], noise: 0.1)")).unwrap();
    let train = ds.split("train").unwrap();
    assert_eq!(train.shuffle_seed, Some(3));
    assert!(train.augment.is_some());
    assert!(ds.split("test").unwrap().augment.is_none());
    // Order does not matter either.
    let ds = load(&digits_source("augment(image: [8, 8]) shuffle(seed: 3)")).unwrap();
    assert_eq!(ds.split("train").unwrap().shuffle_seed, Some(3));
}

#[test]
fn augmentation_is_deterministic_per_seed_epoch_and_row() {
    let options = "image: [8, 8], rotate: 15, translate: 1.5, autocontrast: 0.5, noise: 0.05, seed: 3";
    let (ds, aug) = digits_augment(options);
    let rows: Vec<usize> = (0..20).collect();
    let a = batch(&ds, &aug, &rows, 0);
    // Same seed, same epoch: identical, also from a freshly loaded data set.
    assert_eq!(a, batch(&ds, &aug, &rows, 0));
    let (ds2, aug2) = digits_augment(options);
    assert_eq!(a, batch(&ds2, &aug2, &rows, 0));
    // It does something.
    let split = ds.split("train").unwrap();
    let mut plain = vec![0.0; a.len()];
    gather_rows(&split.x, &rows, &mut plain).unwrap();
    assert_ne!(a, plain);
    // Another epoch or another seed: different images.
    assert_ne!(a, batch(&ds, &aug, &rows, 1));
    let other_seed = Augment { seed: 4, ..aug.clone() };
    assert_ne!(a, batch(&ds, &other_seed, &rows, 0));
    // Each row is augmented the same whatever the batch size and order.
    let reversed: Vec<usize> = rows.iter().rev().copied().collect();
    for chunk in reversed.chunks(3) {
        let b = batch(&ds, &aug, chunk, 0);
        for (image, &row) in b.chunks(64).zip(chunk) {
            assert_eq!(image, &a[row * 64..(row + 1) * 64], "row {row}");
        }
    }
}

#[test]
fn apply_checks_the_batch_size() {
    let aug = Augment { noise: 0.1, ..Augment::new(gray(2, 2)) };
    let mut b = vec![0.0; 7];
    assert!(aug.apply(&mut b, &[0, 1], 0).is_err());
}

// ---------------------------------------------------------------------------
// diagnostics
// ---------------------------------------------------------------------------

#[test]
fn an_image_shape_that_does_not_fit_the_features_is_reported() {
    let source = digits_source("augment(image: [28, 28], rotate: 10)");
    let d = load_err(&source);
    assert!(d.title.contains("784") && d.title.contains("64"), "{}", d.title);
    assert_eq!(labelled(&d, &source), "[28, 28]");
    let label = &d.labels[0].message;
    assert!(label.contains("64") && label.contains("28 x 28 = 784"), "{label}");
    assert!(d.notes.iter().any(|n| n.contains("image: [8, 8]")), "{:?}", d.notes);
    // Three channels of 8x8 do not fit either.
    let source = digits_source("augment(image: [3, 8, 8])");
    let d = load_err(&source);
    assert!(d.labels[0].message.contains("3 x 8 x 8 = 192"), "{:?}", d.labels);
}

#[test]
fn bad_options_are_reported_at_their_value() {
    let cases = [
        ("augment(image: [8, 8], noise: -0.1)", "-0.1", "noise"),
        ("augment(image: [8, 8], autocontrast: 1.5)", "1.5", "probability"),
        ("augment(image: [8, 8], rotate: 270)", "270", "0 to 180"),
        ("augment(image: [8, 8], translate: -1)", "-1", "translate"),
        ("augment(image: [8, 8], seed: 1.5)", "1.5", "whole number"),
        ("augment(image: [8, 8], noise: \"big\")", "\"big\"", "noise"),
        ("augment(image: 64)", "64", "`image`"),
        ("augment(image: [2, 4, 2, 4])", "[2, 4, 2, 4]", "`image`"),
        ("augment(image: [0, 64])", "0", "positive"),
    ];
    for (modifier, at, title_part) in cases {
        let source = digits_source(modifier);
        let d = load_err(&source);
        assert_eq!(labelled(&d, &source), at, "{modifier}: {d:?}");
        assert!(d.title.contains(title_part), "{modifier}: {}", d.title);
        assert!(d.labels[0].message.contains("found"), "{modifier}: says what it found: {:?}", d.labels);
    }
}

#[test]
fn unknown_options_and_modifiers_are_reported() {
    let source = digits_source("augment(image: [8, 8], rotation: 10)");
    let d = load_err(&source);
    assert_eq!(labelled(&d, &source), "rotation");
    assert!(d.title.contains("no option `rotation`"), "{}", d.title);
    assert!(d.notes.iter().any(|n| n.contains("did you mean `rotate`")), "{:?}", d.notes);

    let source = digits_source("augment(rotate: 10)");
    let d = load_err(&source);
    assert_eq!(labelled(&d, &source), "augment(rotate: 10)");
    assert!(d.title.contains("image shape") && d.notes.iter().any(|n| n.contains("64 features")), "{d:?}");

    let source = digits_source("augment([8, 8])");
    assert!(load_err(&source).title.contains("named options"));

    let source = digits_source("augment(image: [8, 8], noise: 0.1, noise: 0.2)");
    let d = load_err(&source);
    assert!(d.title.contains("twice"), "{}", d.title);

    let source = digits_source("augment(image: [8, 8]) augment(image: [8, 8])");
    assert!(load_err(&source).title.contains("two `augment`"));

    // The list of modifiers names `augment` too.
    let source = digits_source("augmnt(image: [8, 8])");
    let d = load_err(&source);
    assert_eq!(d.title, "unknown split modifier");
    assert!(d.labels[0].message.contains("augment(") && d.labels[0].message.contains("shuffle("), "{:?}", d.labels);
}

#[test]
fn other_names_for_an_option_get_a_suggestion() {
    for (written, meant) in
        [("rotation", "rotate"), ("translation", "translate"), ("contrast", "autocontrast"), ("gaussian_noise", "noise"), ("shape", "")]
    {
        let d = load_err(&digits_source(&format!("augment(image: [8, 8], {written}: 1)")));
        let help = d.notes.iter().find(|n| n.starts_with("help:"));
        match meant {
            "" => assert!(help.is_none(), "{written}: {help:?}"),
            m => assert!(help.is_some_and(|h| h.contains(&format!("`{m}`"))), "{written}: {:?}", d.notes),
        }
    }
}
