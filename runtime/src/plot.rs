//! Training curves: a CSV of the values and a PNG line chart.

use std::fmt;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// Width of the PNG written by [`write_curves`], in pixels.
pub const PLOT_WIDTH: u32 = 960;
/// Height of the PNG written by [`write_curves`], in pixels.
pub const PLOT_HEIGHT: u32 = 600;

/// Series colours (the "tab10" palette), reused cyclically.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// What the points of a curve are: point `k` (from 0) is at `(k + 1) · every` on an
/// axis called `label`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct XAxis {
    pub label: &'static str,
    pub every: usize,
}

impl XAxis {
    /// One point per epoch.
    pub const EPOCHS: XAxis = XAxis { label: "epoch", every: 1 };

    fn at(self, k: usize) -> f64 {
        ((k + 1) * self.every) as f64
    }
}

/// Errors from writing curves.
#[derive(Debug)]
pub enum PlotError {
    /// Creating a directory or writing a file failed.
    Io { path: PathBuf, source: std::io::Error },
    /// The chart could not be drawn or encoded.
    Draw { path: PathBuf, message: String },
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlotError::Io { path, source } => {
                write!(f, "{}: cannot write: {source}", path.display())
            }
            PlotError::Draw { path, message } => {
                write!(f, "{}: cannot draw chart: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for PlotError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PlotError::Io { source, .. } => Some(source),
            PlotError::Draw { .. } => None,
        }
    }
}

/// Writes `series` (name, one value per point of `x`) as a CSV and a PNG chart.
///
/// The CSV has the header `<x label>,<name1>,<name2>,...` and one row per point;
/// the first column is the point's place on `x` (epochs count from 1); a series shorter
/// than the longest has empty cells. The PNG ([`PLOT_WIDTH`] x
/// [`PLOT_HEIGHT`]) draws one coloured line per series with a legend, x axis
/// labelled as `x` says, y axis "training loss", and a logarithmic y axis when all values
/// are positive and span more than two decades. Non-finite values are written
/// to the CSV but left out of the chart. Parent directories are created.
///
/// If text cannot be rendered (no usable system font), the chart is drawn
/// without text rather than failing.
pub fn write_curves(png: &Path, csv: &Path, title: &str, x: XAxis, series: &[(String, Vec<f64>)]) -> Result<(), PlotError> {
    write_csv(csv, x, series)?;
    ensure_parent(png)?;
    match draw_png(png, title, x, series, true) {
        Ok(()) => Ok(()),
        Err(with_text) => draw_png(png, title, x, series, false).map_err(|_| with_text),
    }
}

fn ensure_parent(path: &Path) -> Result<(), PlotError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            fs::create_dir_all(dir).map_err(|source| PlotError::Io { path: dir.to_path_buf(), source })
        }
        _ => Ok(()),
    }
}

/// `"2.5000"` -> `"2.5"`, `"3.0000"` -> `"3"`.
fn trim_number(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn write_csv(path: &Path, x: XAxis, series: &[(String, Vec<f64>)]) -> Result<(), PlotError> {
    ensure_parent(path)?;
    let rows = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let mut out = String::from(x.label);
    for (name, _) in series {
        out.push(',');
        out.push_str(&csv_field(name));
    }
    out.push('\n');
    for i in 0..rows {
        // Writing to a String cannot fail.
        let _ = write!(out, "{}", x.at(i));
        for (_, values) in series {
            out.push(',');
            if let Some(v) = values.get(i) {
                let _ = write!(out, "{v}");
            }
        }
        out.push('\n');
    }
    fs::write(path, out).map_err(|source| PlotError::Io { path: path.to_path_buf(), source })
}

/// The y range to plot and whether it is logarithmic.
fn y_range(series: &[(String, Vec<f64>)]) -> (f64, f64, bool) {
    let finite = series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0, false); // no finite data
    }
    if lo > 0.0 && hi / lo > 100.0 {
        return (lo / 1.25, hi * 1.25, true);
    }
    if lo == hi {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - pad, hi + pad, false);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad, false)
}

fn draw_png(png: &Path, title: &str, x: XAxis, series: &[(String, Vec<f64>)], with_text: bool) -> Result<(), PlotError> {
    let err = |e: &dyn fmt::Display| PlotError::Draw { path: png.to_path_buf(), message: e.to_string() };
    let n = series.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let (x_min, x_max) = (x.at(0), x.at(n.max(2) - 1));
    let (y_lo, y_hi, log) = y_range(series);

    let root = BitMapBackend::new(png, (PLOT_WIDTH, PLOT_HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    if log {
        draw_chart(&root, (x_min..x_max, (y_lo..y_hi).log_scale()), title, x, series, with_text, true).map_err(|e| err(&e))?;
    } else {
        draw_chart(&root, (x_min..x_max, y_lo..y_hi), title, x, series, with_text, false).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type DrawResult = Result<(), DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>>;

fn draw_chart<Y>(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    (x_range, y_range): (std::ops::Range<f64>, Y),
    title: &str,
    x: XAxis,
    series: &[(String, Vec<f64>)],
    with_text: bool,
    log: bool,
) -> DrawResult
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if with_text {
        builder.caption(title, ("sans-serif", 26)).x_label_area_size(50).y_label_area_size(80);
    } else {
        builder.x_label_area_size(10).y_label_area_size(10);
    }
    let mut chart = builder.build_cartesian_2d(x_range, y_range)?;

    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if with_text {
        let fmt_x = |x: &f64| {
            if x.fract() == 0.0 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        };
        let fmt_y = |y: &f64| {
            if log {
                format!("{y:.0e}")
            } else {
                trim_number(format!("{y:.4}"))
            }
        };
        mesh.x_desc(x.label)
            .y_desc("training loss")
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()?;
    } else {
        mesh.x_labels(0).y_labels(0).draw()?;
    }

    for (i, (name, values)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> =
            values.iter().enumerate().filter(|(_, v)| v.is_finite() && (!log || **v > 0.0)).map(|(k, v)| (x.at(k), *v)).collect();
        let style = ShapeStyle::from(&color).stroke_width(2);
        let drawn = chart.draw_series(LineSeries::new(points.clone(), style))?;
        if with_text {
            drawn.label(name.as_str()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
        }
        if points.len() == 1 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    if with_text && !series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn y_range_rules() {
        let s = |v: Vec<f64>| vec![("a".to_string(), v)];
        assert!(y_range(&s(vec![10.0, 0.01])).2);
        assert!(!y_range(&s(vec![10.0, 0.2])).2);
        assert!(!y_range(&s(vec![10.0, -1.0])).2);
        assert_eq!(y_range(&s(vec![])), (0.0, 1.0, false));
        let (lo, hi, _) = y_range(&s(vec![2.0, 2.0]));
        assert!(lo < 2.0 && hi > 2.0);
    }

    #[test]
    fn csv_quotes_awkward_names() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
