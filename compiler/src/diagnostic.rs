//! Diagnostics as data, and the one place that renders them (with ariadne).
//!
//! Each stage has its own error enum holding spans and facts (both shapes, the
//! op, the names in scope); each converts to a `Diagnostic` here-shaped value.
//! Only this module touches the renderer.

use crate::ast::Span;
use ariadne::{Color, Config, Label as AriadneLabel, Report, ReportKind, Source};

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// A short title: "inner dimensions of `@` differ".
    pub title: String,
    /// Labels on the spans involved; the first is the primary location.
    pub labels: Vec<Label>,
    /// Extra lines under the report ("help: ...", "note: ...").
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

impl Diagnostic {
    pub fn new(title: impl Into<String>) -> Diagnostic {
        Diagnostic { title: title.into(), labels: Vec::new(), notes: Vec::new() }
    }
    pub fn label(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label { span, message: message.into() });
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
    /// Where the diagnostic points (its first label), for sorting.
    pub fn primary_span(&self) -> Span {
        self.labels.first().map(|l| l.span).unwrap_or_default()
    }
}

/// How many characters of a file's content a message quotes: enough to
/// recognise a column name or a cell, never the whole of a line of garbage
/// (a 2 GB cell was once copied into a message whole).
pub const EXCERPT_CHARS: usize = 40;

/// `text` as a message may quote it: at most [`EXCERPT_CHARS`] characters
/// (then `…`), with control characters escaped so a quoted cell cannot break
/// the message's lines. Every quote of user data (CSV headers and cells,
/// corpora, IDX and checkpoint names) goes through here.
pub fn excerpt(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == EXCERPT_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Render diagnostics against `source` as text, in source order. `color`
/// chooses ANSI colours (terminal) or plain text (golden tests, pipes).
pub fn render(diagnostics: &[Diagnostic], filename: &str, source: &str, color: bool) -> String {
    let mut sorted: Vec<&Diagnostic> = diagnostics.iter().collect();
    sorted.sort_by_key(|d| d.primary_span());
    let mut out = Vec::new();
    for d in sorted {
        render_one(d, filename, source, color, &mut out);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn render_one(d: &Diagnostic, filename: &str, source: &str, color: bool, out: &mut Vec<u8>) {
    let name = filename.to_string();
    // ariadne counts characters, pest and our spans count bytes.
    let to_chars = |byte: usize| source.get(..byte.min(source.len())).map_or(0, |s| s.chars().count());
    let range = |s: Span| to_chars(s.start)..to_chars(s.end.max(s.start));
    let primary = d.primary_span();
    let mut report = Report::build(ReportKind::Error, (name.clone(), range(primary)))
        .with_config(Config::default().with_color(color).with_index_type(ariadne::IndexType::Char))
        .with_message(&d.title);
    let palette = [Color::Red, Color::Yellow, Color::Cyan, Color::Magenta, Color::Green];
    // Hand the labels over in source order: ariadne starts a new snippet
    // (repeating the file header) whenever a label lies above the previous one.
    let mut labels: Vec<(usize, &Label)> = d.labels.iter().enumerate().collect();
    labels.sort_by_key(|(_, l)| (l.span.start, l.span.end));
    for (i, l) in labels {
        let mut label = AriadneLabel::new((name.clone(), range(l.span))).with_message(&l.message);
        if color {
            label = label.with_color(palette[i % palette.len()]);
        }
        report = report.with_label(label);
    }
    // "help: ..." notes print as `Help:`, the rest as `Note:` (a leading "note: " is dropped).
    for n in &d.notes {
        report = match n.strip_prefix("help: ") {
            Some(help) => report.with_help(help),
            None => report.with_note(n.strip_prefix("note: ").unwrap_or(n)),
        };
    }
    // Writing into a Vec cannot fail.
    let _ = report.finish().write((name, Source::from(source)), &mut *out);
}
