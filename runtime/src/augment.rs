//! Seeded data augmentation for image rows: the `augment(...)` split modifier.
//!
//! Augmentation adds fake observations that encode what we know about images
//! (a digit rotated a little or moved a pixel is still the same digit), so a
//! model trained on few images generalises better. It is applied to each
//! training batch right after the rows are gathered, and never to evaluation
//! data.
//!
//! Every random choice for one image comes from a generator that depends only
//! on `(seed, epoch, row index in the split)` (see [`row_rng`]). A run is
//! therefore reproducible, and an image is augmented the same way whatever the
//! batch size or the order in which the rows are visited.
//!
//! Per image, in this order:
//! 1. `autocontrast`: per channel, with probability p, stretch the channel's
//!    values linearly so its minimum becomes 0 and its maximum the data's
//!    maximum ([`Augment::contrast_max`]). It runs first so that it sees the
//!    image's own pixels, not the zero fill of step 2.
//! 2. `rotate` / `translate`: one affine resampling (bilinear, zero outside the
//!    image), so rotation and shift blur the image once, not twice.
//! 3. `noise`: Gaussian noise on every pixel, last, as a sensor would add it.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use crate::data::DataError;
use crate::rng::{self, ChaCha8Rng, SeedableRng};
use nnc_compiler::ast::{CallArg, Expr, ExprKind, Span};
use nnc_compiler::diagnostic::Diagnostic;
use nnc_compiler::elaborate::error::closest;
use nnc_compiler::elaborate::train::constant_number;

/// How one row's features are laid out: `channels` planes of
/// `height x width` pixels, each plane row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    /// Pixels in one channel.
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// Features in one row.
    pub fn features(&self) -> usize {
        self.channels * self.plane()
    }
}

/// The options of one `augment(...)` modifier. A zero option turns its
/// transform off; with every option zero, [`Augment::apply`] changes nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Augment {
    pub image: ImageShape,
    /// Largest rotation in degrees; the angle is uniform in `[-rotate, rotate]`.
    pub rotate: f64,
    /// Largest shift in pixels; each axis is shifted uniformly in `[-translate, translate]`.
    pub translate: f64,
    /// Probability that autocontrast is applied to one channel of one image.
    pub autocontrast: f64,
    /// Standard deviation of the Gaussian noise added to every pixel.
    pub noise: f64,
    pub seed: u64,
    /// What autocontrast maps a channel's maximum to. The data set loader sets
    /// it to the largest feature value of the split (1 for images with
    /// `scale: 1/255`), so stretched images keep the data's range.
    pub contrast_max: f32,
}

/// The options `augment` accepts, for messages and suggestions.
const OPTIONS: [&str; 6] = ["image", "rotate", "translate", "autocontrast", "noise", "seed"];
const OPTIONS_NOTE: &str = "options: image: [H, W] or [C, H, W] (required), rotate: DEGREES, translate: PIXELS, \
                            autocontrast: PROBABILITY, noise: STD, seed: N";

impl Augment {
    /// No transform at all for images of `image`'s shape.
    pub fn new(image: ImageShape) -> Augment {
        Augment { image, rotate: 0.0, translate: 0.0, autocontrast: 0.0, noise: 0.0, seed: 0, contrast_max: 1.0 }
    }

    /// Reads `augment(image: ..., rotate: ..., ...)`'s arguments for rows of
    /// `features` values. `modifier` is the span of the whole modifier.
    pub fn parse(modifier: Span, args: &[CallArg], features: usize) -> Result<Augment, Diagnostic> {
        let mut image = None;
        let mut aug = Augment::new(ImageShape { channels: 1, height: 1, width: features });
        let mut seen: Vec<&str> = Vec::new();
        for a in args {
            let Some(key) = &a.name else {
                return Err(error(a.value.span, "`augment` takes named options only", "expected `OPTION: VALUE`").note(OPTIONS_NOTE));
            };
            let k = key.name.as_str();
            if seen.contains(&k) {
                return Err(error(key.span, format!("`augment` option `{k}` is given twice"), "given again here"));
            }
            seen.push(k);
            let v = &a.value;
            match k {
                "image" => image = Some(image_shape(v, features)?),
                "rotate" => aug.rotate = number_in(v, "rotate", 0.0, 180.0, "an angle in degrees from 0 to 180, such as 10")?,
                "translate" => aug.translate = number_in(v, "translate", 0.0, f64::MAX, "a shift in pixels of 0 or more, such as 2")?,
                "autocontrast" => aug.autocontrast = number_in(v, "autocontrast", 0.0, 1.0, "a probability from 0 to 1, such as 0.3")?,
                "noise" => aug.noise = number_in(v, "noise", 0.0, f64::MAX, "a standard deviation of 0 or more, such as 0.05")?,
                "seed" => {
                    let s = number_in(v, "seed", 0.0, u64::MAX as f64, "a whole number of 0 or more, such as 1")?;
                    if s.fract() != 0.0 {
                        return Err(error(
                            v.span,
                            "the `augment` seed must be a whole number",
                            format!("expected an integer such as 1, found {s}"),
                        ));
                    }
                    aug.seed = s as u64;
                }
                _ => {
                    let d = error(key.span, format!("`augment` has no option `{k}`"), "unknown option");
                    let d = match suggestion(k) {
                        Some(s) => d.note(format!("help: did you mean `{s}`?")),
                        None => d,
                    };
                    return Err(d.note(OPTIONS_NOTE));
                }
            }
        }
        aug.image = image.ok_or_else(|| {
            let d = error(modifier, "`augment` needs the image shape", "add `image: [H, W]` or `image: [C, H, W]`")
                .note(format!("each row of this data has {features} features"));
            shape_hint(d, features)
        })?;
        Ok(aug)
    }

    /// True if applying changes nothing.
    pub fn is_identity(&self) -> bool {
        self.rotate == 0.0 && self.translate == 0.0 && self.autocontrast == 0.0 && self.noise == 0.0
    }

    /// Augments a gathered batch in place: `batch` holds the rows `rows` of
    /// the split (indices into the split, in batch order), one after another.
    pub fn apply(&self, batch: &mut [f32], rows: &[usize], epoch: usize) -> Result<(), DataError> {
        let n = self.image.features();
        if batch.len() != rows.len() * n {
            return Err(DataError::BufferSize { expected: rows.len() * n, found: batch.len() });
        }
        if self.is_identity() || n == 0 {
            return Ok(());
        }
        let mut scratch = vec![0.0f32; n];
        for (image, &row) in batch.chunks_exact_mut(n).zip(rows) {
            self.apply_one(image, row, epoch, &mut scratch);
        }
        Ok(())
    }

    /// Augments one image (`image.len()` is the feature count) of split row
    /// `row`; `scratch` is any buffer of the same length.
    fn apply_one(&self, image: &mut [f32], row: usize, epoch: usize, scratch: &mut [f32]) {
        let mut rng = row_rng(self.seed, epoch, row);
        // Draw every choice up front and always the same number of them, so
        // that turning one option on does not change the others' draws.
        let angle = self.rotate * symmetric(&mut rng);
        let shift_x = self.translate * symmetric(&mut rng);
        let shift_y = self.translate * symmetric(&mut rng);
        let plane = self.image.plane();
        for channel in image.chunks_exact_mut(plane) {
            if rng::unit_f64(&mut rng) < self.autocontrast {
                autocontrast(channel, self.contrast_max);
            }
        }
        if angle != 0.0 || shift_x != 0.0 || shift_y != 0.0 {
            scratch.copy_from_slice(image);
            for (src, dst) in scratch.chunks_exact(plane).zip(image.chunks_exact_mut(plane)) {
                rotate_translate(src, dst, self.image.height, self.image.width, angle, shift_x, shift_y);
            }
        }
        if self.noise > 0.0 {
            add_noise(image, self.noise, &mut rng);
        }
    }
}

/// The generator for one image: ChaCha keyed by the seed and the epoch, on
/// the stream of the row. The key also holds a tag, so augmentation never
/// shares a stream with `shuffle` of the same seed (which keys ChaCha with
/// `seed_from_u64`).
pub fn row_rng(seed: u64, epoch: usize, row: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(b"augment\0");
    key[16..24].copy_from_slice(&(epoch as u64).to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(row as u64);
    rng
}

/// Uniform in `[-1, 1)`.
fn symmetric(rng: &mut ChaCha8Rng) -> f64 {
    2.0 * rng::unit_f64(rng) - 1.0
}

/// Resamples one `height x width` plane: `dst` is `src` rotated by
/// `angle_deg` degrees counter-clockwise (as displayed, rows going down)
/// about the plane's centre, then shifted `shift_x` pixels right and
/// `shift_y` pixels down. Bilinear interpolation; outside `src` is 0.
///
/// With angle 0 and whole-number shifts every pixel moves exactly.
pub fn rotate_translate(src: &[f32], dst: &mut [f32], height: usize, width: usize, angle_deg: f64, shift_x: f64, shift_y: f64) {
    let (sin, cos) = angle_deg.to_radians().sin_cos();
    let (cy, cx) = ((height as f64 - 1.0) / 2.0, (width as f64 - 1.0) / 2.0);
    for (y, out_row) in dst.chunks_exact_mut(width).take(height).enumerate() {
        for (x, out) in out_row.iter_mut().enumerate() {
            // Map the output pixel back into the source: undo the shift,
            // then rotate by −angle about the centre.
            let dx = x as f64 - shift_x - cx;
            let dy = y as f64 - shift_y - cy;
            let sx = cos * dx - sin * dy + cx;
            let sy = sin * dx + cos * dy + cy;
            *out = bilinear(src, height, width, sy, sx);
        }
    }
}

/// `src` at the fractional position `(y, x)`; pixels outside count as 0.
fn bilinear(src: &[f32], height: usize, width: usize, y: f64, x: f64) -> f32 {
    // Far outside (or NaN): nothing to interpolate. This also keeps the
    // integer conversions below in range.
    let (h, w) = (height as f64, width as f64);
    if !(y > -1.0 && x > -1.0 && y < h && x < w) {
        return 0.0;
    }
    let (y0, x0) = (floor(y), floor(x));
    let (fy, fx) = ((y - y0 as f64) as f32, (x - x0 as f64) as f32);
    let at = |yy: isize, xx: isize| -> f32 {
        if yy < 0 || xx < 0 || yy as usize >= height || xx as usize >= width {
            0.0
        } else {
            src.get(yy as usize * width + xx as usize).copied().unwrap_or(0.0)
        }
    };
    // At a whole-pixel position the other taps have weight 0 and the pixel
    // comes back exactly (the data is finite, so 0 × neighbour is 0).
    let top = (1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1);
    let bottom = (1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1);
    (1.0 - fy) * top + fy * bottom
}

/// `v.floor()` as an integer, for `v` in a small range around 0. (The
/// library `floor` is a function call on baseline x86-64; this is not.)
fn floor(v: f64) -> isize {
    let t = v as isize;
    if (t as f64) > v {
        t - 1
    } else {
        t
    }
}

/// Stretches `channel` linearly so its minimum becomes 0 and its maximum
/// `max` (PIL's `ImageOps.autocontrast` without cut-off). A constant channel
/// is left alone, as PIL does: there is no contrast to stretch.
pub fn autocontrast(channel: &mut [f32], max: f32) {
    let (lo, hi) = channel.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return;
    }
    let gain = max / (hi - lo);
    for v in channel {
        *v = (*v - lo) * gain;
    }
}

/// Adds independent N(0, std²) noise to every value. Values are not clipped,
/// so the noise has exactly the requested spread.
pub fn add_noise(values: &mut [f32], std: f64, rng: &mut ChaCha8Rng) {
    for pair in values.chunks_mut(2) {
        let (a, b) = gaussian_pair(rng);
        pair[0] += (std * a) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second += (std * b) as f32;
        }
    }
}

/// Two independent standard normal numbers (Box–Muller), computed from the
/// raw ChaCha output like the rest of `rng`, so the values do not depend on
/// a `rand_distr` release.
fn gaussian_pair(rng: &mut ChaCha8Rng) -> (f64, f64) {
    // 1 − u is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng::unit_f64(rng);
    let u2 = rng::unit_f64(rng);
    let r = (-2.0 * u1.ln()).sqrt();
    let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
    (r * c, r * s)
}

/// The option `key` probably meant: a near spelling, or a longer or
/// shorter name for the same thing (`rotation`, `contrast`, `gaussian_noise`).
fn suggestion(key: &str) -> Option<String> {
    let common_prefix = |a: &str, b: &str| a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    closest(key, OPTIONS).or_else(|| {
        OPTIONS
            .iter()
            .find(|o| common_prefix(o, key) >= 4 || (key.len() >= 4 && o.contains(key)) || key.contains(*o))
            .map(|o| o.to_string())
    })
}

fn error(span: Span, title: impl Into<String>, label: impl Into<String>) -> Diagnostic {
    Diagnostic::new(title).label(span, label)
}

/// A few words on what an option value is, for "found ..." messages.
fn describe(e: &Expr) -> String {
    if let Some(v) = constant_number(e) {
        return format!("{v}");
    }
    match &e.kind {
        ExprKind::Str(s) => format!("the string \"{s}\""),
        ExprKind::List(items) => format!("a list of {} items", items.len()),
        ExprKind::Name(n) => format!("the name `{n}` (only literal numbers are accepted here)"),
        _ => "an expression that is not a literal number".into(),
    }
}

/// A literal number (or arithmetic on literals) in `[lo, hi]`.
fn number_in(e: &Expr, key: &str, lo: f64, hi: f64, expected: &str) -> Result<f64, Diagnostic> {
    match constant_number(e) {
        Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v),
        _ => Err(error(e.span, format!("`augment` option `{key}` must be {expected}"), format!("found {}", describe(e)))),
    }
}

/// `[H, W]` or `[C, H, W]`, checked against the row's feature count.
fn image_shape(e: &Expr, features: usize) -> Result<ImageShape, Diagnostic> {
    let bad_form = || {
        error(e.span, "`image` must list 2 or 3 positive whole numbers", format!("expected `[H, W]` or `[C, H, W]`, found {}", describe(e)))
    };
    let ExprKind::List(items) = &e.kind else { return Err(bad_form()) };
    let mut dims = Vec::new();
    for item in items {
        match constant_number(item) {
            Some(v) if v >= 1.0 && v.fract() == 0.0 && v <= u32::MAX as f64 => dims.push(v as usize),
            _ => return Err(error(item.span, "an image size must be a positive whole number", format!("found {}", describe(item)))),
        }
    }
    let shape = match dims[..] {
        [height, width] => ImageShape { channels: 1, height, width },
        [channels, height, width] => ImageShape { channels, height, width },
        _ => return Err(bad_form()),
    };
    if shape.features() != features {
        let written = dims.iter().map(usize::to_string).collect::<Vec<_>>().join(" x ");
        let d = error(
            e.span,
            format!("`image` describes rows of {} features, but this data has {features} features per row", shape.features()),
            format!("expected a shape of {features} values in all, found {written} = {}", shape.features()),
        )
        .note("the features of a row are read as the image, row-major, channels first");
        return Err(shape_hint(d, features));
    }
    Ok(shape)
}

/// "help: `image: [8, 8]` fits 64 features" when the feature count is a
/// square (or three squares), to add to a shape message.
fn shape_hint(d: Diagnostic, features: usize) -> Diagnostic {
    let square = |n: usize| (1..=n).take_while(|s| s * s <= n).find(|s| s * s == n);
    let fits = match square(features) {
        Some(s) => Some(format!("[{s}, {s}]")),
        None if features.is_multiple_of(3) => square(features / 3).map(|s| format!("[3, {s}, {s}]")),
        None => None,
    };
    match fits {
        Some(shape) => d.note(format!("help: `image: {shape}` fits {features} features")),
        None => d,
    }
}
