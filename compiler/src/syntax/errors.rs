//! Turning pest's failure into one readable `Diagnostic`, plus the small
//! lexical scans that make the message precise (the token found, an
//! unterminated string, the construct an unclosed `{` belongs to).

use super::Rule;
use crate::ast::Span;
use crate::diagnostic::Diagnostic;
use pest::error::{Error, ErrorVariant, InputLocation};

const KEYWORDS: [&str; 12] = ["module", "param", "fn", "let", "data", "train", "on", "report", "plot", "rows", "where", "scalar"];

/// What pest expected, in words: either something that must come next, or a
/// way the previous construct could have continued (an operator, a call, ...),
/// which is only worth mentioning when nothing else was expected.
enum Expect {
    Main(&'static str),
    Continue,
}

fn describe(rule: Rule) -> Expect {
    use Expect::{Continue, Main};
    match rule {
        Rule::expr
        | Rule::pipe
        | Rule::sum
        | Rule::product
        | Rule::unary
        | Rule::power
        | Rule::postfix
        | Rule::neg_op
        | Rule::number
        | Rule::name
        | Rule::paren
        | Rule::list => Main("an expression"),
        Rule::string => Main("a string in double quotes"),
        Rule::ident => Main("a name"),
        Rule::field_name => Main("a field name"),
        Rule::call_arg | Rule::arg_name => Main("an argument"),
        Rule::index_item => Main("an index"),
        Rule::item => Main("an item (`module`, `fn`, `data`, `train`, `let`, `report` or `plot`)"),
        Rule::member => Main("a module member (`param`, `fn` or `name = ...`)"),
        Rule::let_stmt => Main("a `let` statement"),
        Rule::split_def | Rule::split_name => Main("a split such as `train = rows[0..100]`"),
        Rule::field => Main("a setting such as `epochs = 10`"),
        Rule::type_ann | Rule::tensor_type | Rule::scalar_type | Rule::module_type => Main("a type such as `[B, 64]`"),
        Rule::shape => Main("a shape such as `[in, out]`"),
        Rule::const_params | Rule::const_param => Main("a parameter such as `n: int`"),
        Rule::fn_arg => Main("an argument such as `x: [B, 64]`"),
        Rule::const_ty => Main("`int` or `float`"),
        Rule::eq_body | Rule::eq => Main("`=`"),
        Rule::block | Rule::lbrace => Main("`{`"),
        Rule::row_range | Rule::row_modulo | Rule::kw_rows => Main("`rows`"),
        Rule::module_def | Rule::kw_module => Main("`module`"),
        Rule::kw_param | Rule::param_decl => Main("`param`"),
        Rule::kw_buffer => Main("`buffer`"),
        Rule::kw_fn | Rule::fn_def => Main("`fn`"),
        Rule::kw_let => Main("`let`"),
        Rule::kw_data | Rule::data_def => Main("`data`"),
        Rule::kw_train | Rule::train_def => Main("`train`"),
        Rule::kw_report | Rule::report_item => Main("`report`"),
        Rule::kw_plot | Rule::plot_item => Main("`plot`"),
        Rule::kw_where => Main("`where`"),
        Rule::kw_scalar => Main("`scalar`"),
        Rule::train_on => Main("`on`"),
        Rule::row_var => Main("`i`"),
        Rule::lparen => Main("`(`"),
        Rule::rparen => Main("`)`"),
        Rule::lbrack => Main("`[`"),
        Rule::rbrack => Main("`]`"),
        Rule::rbrace => Main("`}`"),
        Rule::comma => Main("`,`"),
        Rule::colon | Rule::range_colon => Main("`:`"),
        Rule::repeat_semi => Main("`;`"),
        Rule::arrow => Main("`->`"),
        Rule::dotdot => Main("`..`"),
        Rule::percent => Main("`%`"),
        Rule::cmp_op => Main("`==` or `!=`"),
        Rule::EOI => Main("end of file"),
        Rule::sub_decl => Main("a name"),
        Rule::kw_on
        | Rule::call_open
        | Rule::index_open
        | Rule::int_kw
        | Rule::arg_colon
        | Rule::dot
        | Rule::pipe_op
        | Rule::add_op
        | Rule::mul_op
        | Rule::pow_op
        | Rule::call_suffix
        | Rule::index_suffix
        | Rule::field_suffix
        | Rule::modifier
        | Rule::modifier_name => Continue,
        _ => Continue,
    }
}

/// Where a description goes in a list of expectations: words first (in the
/// order pest tried them), then punctuation in reading order, closers last.
fn rank(words: &str) -> usize {
    const ORDER: [&str; 15] =
        ["`:`", "`->`", "`=`", "`{`", "`(`", "`[`", "`..`", "`%`", "`==` or `!=`", "`,`", "`;`", "`]`", "`)`", "`}`", "end of file"];
    ORDER.iter().position(|w| *w == words).map_or(0, |i| i + 1)
}

/// "a", "a or b", "a, b or c".
pub(super) fn join_or(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// Convert pest's error into the single diagnostic the user sees.
pub(super) fn convert(source: &str, err: &Error<Rule>) -> Diagnostic {
    let pos = match err.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    }
    .min(source.len());
    match &err.variant {
        ErrorVariant::ParsingError { positives, .. } => parsing_error(source, pos, positives),
        ErrorVariant::CustomError { message } => {
            let span = found_at(source, pos).span;
            if message.contains("limit") {
                Diagnostic::new("program is nested too deeply to parse")
                    .label(span, "the parser gave up here")
                    .note("split deeply nested expressions into smaller parts with `let`")
            } else {
                Diagnostic::new("syntax error").label(span, message.clone())
            }
        }
    }
}

fn parsing_error(source: &str, pos: usize, positives: &[Rule]) -> Diagnostic {
    let found = found_at(source, pos);

    // Lexical problems explain themselves better than any list of expectations.
    match found.special {
        Special::UnterminatedString => {
            return Diagnostic::new("unterminated string")
                .label(found.span, "this string is never closed")
                .note("a string ends with `\"` on the same line");
        }
        Special::BadEscape(esc) => {
            return Diagnostic::new(format!("unknown escape `{}` in string", slice(source, esc)))
                .label(esc, "unknown escape sequence")
                .note("the escapes are `\\\"`, `\\\\`, `\\n` and `\\t`");
        }
        Special::UnterminatedComment => {
            return Diagnostic::new("unterminated block comment").label(found.span, "this comment is never closed with `*/`");
        }
        Special::None => {}
    }

    let mut main: Vec<&'static str> = Vec::new();
    let mut continues = false;
    for &rule in positives {
        match describe(rule) {
            Expect::Main(words) => {
                if !main.contains(&words) {
                    main.push(words);
                }
            }
            Expect::Continue => continues = true,
        }
    }
    // "end of file" is only worth saying when nothing else would do.
    if main.len() > 1 {
        main.retain(|w| *w != "end of file");
    }
    main.sort_by_key(|w| rank(w));
    let expects_name = positives.contains(&Rule::ident);

    let found_words = match &found.text {
        None => "end of file".to_string(),
        Some(t) if KEYWORDS.contains(&t.as_str()) => format!("keyword `{t}`"),
        Some(t) => format!("`{t}`"),
    };
    let title = format!("unexpected {found_words}");

    if let Some(word) = found.text.as_deref().filter(|t| KEYWORDS.contains(t)) {
        if expects_name {
            return Diagnostic::new(format!("expected a name, found keyword `{word}`"))
                .label(found.span, format!("`{word}` is a reserved keyword and cannot be used as a name"))
                .note(format!("the reserved keywords are {}", KEYWORDS.map(|k| format!("`{k}`")).join(", ")));
        }
    }

    if found.text.is_none() {
        if positives.contains(&Rule::rbrace) {
            if let Some(d) = unclosed_brace(source, found.span) {
                return d;
            }
        }
        for (rule, open, close) in [(Rule::rparen, b'(', ')'), (Rule::rbrack, b'[', ']')] {
            if positives.contains(&rule) {
                if let Some(open_span) = innermost_unclosed(source, open) {
                    let expected = join_or(&main);
                    return Diagnostic::new(title)
                        .label(found.span, format!("expected {expected} here, found end of file"))
                        .label(open_span, format!("this `{}` is never closed with `{close}`", open as char));
                }
            }
        }
    }

    let message = if !main.is_empty() {
        format!("expected {} here, found {found_words}", join_or(&main))
    } else if continues {
        format!("expected an operator or the end of the expression here, found {found_words}")
    } else {
        format!("{found_words} was not expected here")
    };
    let d = Diagnostic::new(title).label(found.span, message);
    if let Some((span, label)) = unclosed_before_item(source, pos, &found, positives) {
        return d.label(span, label);
    }
    let in_block = positives.iter().any(|r| matches!(r, Rule::kw_let | Rule::let_stmt));
    if in_block && found.text.as_deref() == Some("}") {
        return d.note("a block `{ ... }` ends with the expression it evaluates to");
    }
    d
}

fn slice(source: &str, span: Span) -> &str {
    source.get(span.start..span.end).unwrap_or("")
}

// ---------------------------------------------------------------- the token found

#[derive(Debug, PartialEq)]
enum Special {
    None,
    UnterminatedString,
    BadEscape(Span),
    UnterminatedComment,
}

#[derive(Debug)]
struct Found {
    span: Span,
    /// `None` at end of file.
    text: Option<String>,
    special: Special,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The length in bytes of the char starting at `i` (1 if `i` is not on a boundary).
fn char_len(source: &str, i: usize) -> usize {
    source.get(i..).and_then(|s| s.chars().next()).map_or(1, char::len_utf8)
}

/// The end of a string literal starting at `start` (a `"`): `Ok(end)` past the
/// closing quote, or `Err(end)` at the newline or end of file that cut it off.
fn scan_string(bytes: &[u8], start: usize) -> Result<usize, usize> {
    let mut j = start + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' => j += 2,
            b'"' => return Ok(j + 1),
            b'\n' => return Err(j),
            _ => j += 1,
        }
    }
    Err(bytes.len())
}

/// The token at `pos`, up to the next whitespace or delimiter.
fn found_at(source: &str, pos: usize) -> Found {
    let bytes = source.as_bytes();
    let at = |span: Span, special: Special| Found { span, text: Some(slice(source, span).to_string()), special };
    let Some(&first) = bytes.get(pos) else {
        return Found { span: Span::new(source.len(), source.len()), text: None, special: Special::None };
    };
    let second = bytes.get(pos + 1).copied();
    if first == b'"' {
        return match scan_string(bytes, pos) {
            Err(end) => at(Span::new(pos, end.min(bytes.len())), Special::UnterminatedString),
            Ok(end) => {
                let end = end.min(bytes.len());
                let mut j = pos + 1;
                while j + 1 < end {
                    if bytes[j] == b'\\' {
                        if !matches!(bytes[j + 1], b'"' | b'\\' | b'n' | b't') {
                            let esc = Span::new(j, j + 1 + char_len(source, j + 1));
                            return at(Span::new(pos, end), Special::BadEscape(esc));
                        }
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                at(Span::new(pos, end), Special::None)
            }
        };
    }
    if first == b'/' && second == Some(b'*') {
        return at(Span::new(pos, pos + 2), Special::UnterminatedComment);
    }
    if is_word_byte(first) {
        let mut end = pos;
        while end < bytes.len()
            && (is_word_byte(bytes[end])
                || (first.is_ascii_digit() && bytes[end] == b'.' && bytes.get(end + 1).is_some_and(|b| b.is_ascii_digit())))
        {
            end += 1;
        }
        return at(Span::new(pos, end), Special::None);
    }
    const TWO: [&[u8; 2]; 7] = [b"->", b"|>", b"**", b"..", b"==", b"!=", b"//"];
    if let Some(s) = second {
        if TWO.iter().any(|t| t[0] == first && t[1] == s) {
            return at(Span::new(pos, pos + 2), Special::None);
        }
    }
    at(Span::new(pos, pos + char_len(source, pos)), Special::None)
}

// ---------------------------------------------------------------- brackets

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Word,
    Open(u8),
    Close(u8),
    Dot,
    Other,
}

#[derive(Clone, Copy, Debug)]
struct Token {
    tok: Tok,
    span: Span,
}

/// A rough tokenisation: words, brackets and everything else, skipping
/// whitespace, comments and strings (as the grammar does).
fn lex(source: &str) -> Vec<Token> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        let start = i;
        let tok = match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'/' if next == Some(b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if next == Some(b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(bytes.len());
                continue;
            }
            b'"' => {
                i = match scan_string(bytes, i) {
                    Ok(end) | Err(end) => end.min(bytes.len()),
                };
                Tok::Other
            }
            b'(' | b'[' | b'{' => {
                i += 1;
                Tok::Open(b)
            }
            b')' | b']' | b'}' => {
                i += 1;
                Tok::Close(b)
            }
            b'.' => {
                i += 1;
                Tok::Dot
            }
            _ if is_word_byte(b) => {
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                Tok::Word
            }
            _ => {
                i += char_len(source, i);
                Tok::Other
            }
        };
        out.push(Token { tok, span: Span::new(start, i.max(start + 1).min(bytes.len())) });
    }
    out
}

/// Indices into `tokens` of the brackets still open at end of file, outermost first.
fn unclosed(tokens: &[Token]) -> Vec<usize> {
    let mut stack = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match t.tok {
            Tok::Open(_) => stack.push(i),
            Tok::Close(_) => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack
}

fn innermost_unclosed(source: &str, open: u8) -> Option<Span> {
    let tokens = lex(source);
    let stack = unclosed(&tokens);
    let &i = stack.last()?;
    let t = tokens.get(i)?;
    (t.tok == Tok::Open(open)).then_some(t.span)
}

/// Words that start an item, and so cannot continue an unfinished one.
const ITEM_STARTS: [&str; 7] = ["module", "fn", "data", "train", "let", "report", "plot"];

/// The next item begins (on a later line) while a bracket is still open and
/// its closer would have been accepted: the bracket was probably never
/// closed. Returns a label for it (the header of a `{ ... }` construct).
fn unclosed_before_item(source: &str, pos: usize, found: &Found, positives: &[Rule]) -> Option<(Span, String)> {
    let word = found.text.as_deref()?;
    if !ITEM_STARTS.contains(&word) {
        return None;
    }
    let prefix = source.get(..pos)?;
    let tokens = lex(prefix);
    let last = tokens.last()?.span;
    if !prefix.get(last.end..)?.contains('\n') {
        return None;
    }
    let &innermost = unclosed(&tokens).last()?;
    let opener = tokens.get(innermost)?;
    let (open, closer) = match opener.tok {
        Tok::Open(b'(') => ('(', Rule::rparen),
        Tok::Open(b'[') => ('[', Rule::rbrack),
        Tok::Open(b'{') => ('{', Rule::rbrace),
        _ => return None,
    };
    if !positives.contains(&closer) {
        return None;
    }
    Some(match (open, brace_owner(prefix)) {
        ('{', Some((span, what))) => (span, format!("{what} starts here, and its `{{` is never closed")),
        _ => (opener.span, format!("this `{open}` is never closed")),
    })
}

/// "expected `}` to close the module `Mlp` that starts here", pointing at the
/// header of the construct whose `{` is never closed.
fn unclosed_brace(source: &str, eof: Span) -> Option<Diagnostic> {
    let (span, what) = brace_owner(source)?;
    Some(
        Diagnostic::new("unexpected end of file")
            .label(span, format!("expected `}}` to close {what} that starts here"))
            .label(eof, "the file ends here"),
    )
}

/// The innermost `{` still open at the end of `source`, as the span of the
/// construct's header (`module Mlp {`) and words for it ("the module `Mlp`").
fn brace_owner(source: &str) -> Option<(Span, String)> {
    let tokens = lex(source);
    let stack = unclosed(&tokens);
    let &open = stack.iter().rev().find(|&&i| tokens.get(i).is_some_and(|t| t.tok == Tok::Open(b'{')))?;
    let brace = tokens.get(open)?.span;

    // Walk back over the header to the keyword that introduced this block,
    // skipping bracketed groups and field names (`digits.train`).
    let mut depth = 0usize;
    let mut owner = None;
    for k in (0..open).rev() {
        let t = tokens.get(k)?;
        match t.tok {
            Tok::Close(b'}') if depth == 0 => break,
            Tok::Open(b'{') if depth == 0 => break,
            Tok::Close(_) => depth += 1,
            Tok::Open(_) if depth == 0 => break,
            Tok::Open(_) => depth -= 1,
            Tok::Word if depth == 0 => {
                let after_dot = k > 0 && tokens.get(k - 1).is_some_and(|p| p.tok == Tok::Dot);
                let word = slice(source, t.span);
                if !after_dot && matches!(word, "module" | "fn" | "data" | "train") {
                    owner = Some((k, word));
                    break;
                }
            }
            _ => {}
        }
    }

    let (span, what) = match owner {
        Some((k, word)) => {
            let name =
                tokens.get(k + 1).filter(|t| t.tok == Tok::Word).map(|t| format!(" `{}`", slice(source, t.span))).unwrap_or_default();
            let what = match word {
                "module" => format!("the module{name}"),
                "fn" => format!("the body of function{name}"),
                "data" => format!("the data definition{name}"),
                _ => format!("the training run{name}"),
            };
            (Span::new(tokens.get(k)?.span.start, brace.end), what)
        }
        None => (brace, "the block".to_string()),
    };
    Some((span, what))
}

/// Reject bracket nesting deeper than `max` before pest sees the text (both
/// pest and the later recursive passes need stack in proportion to it).
/// A literal too large to hold: `1e400` (past f64's 1.8e308) or an integer
/// above 2^53 (past which f64 skips integers).
pub(super) fn number_too_large(span: Span, text: &str, is_int: bool) -> Diagnostic {
    let excerpt: String = text.chars().take(24).collect();
    let excerpt = if excerpt.len() < text.len() { format!("{excerpt}…") } else { excerpt };
    if is_int {
        Diagnostic::new(format!("the integer {excerpt} is too large"))
            .label(span, "expected a whole number of at most 2^53 = 9007199254740992")
            .note("numbers are held as 64-bit floats, which skip whole numbers above 2^53")
    } else {
        Diagnostic::new(format!("the number {excerpt} is too large"))
            .label(span, "expected a number below about 1.8e308")
            .note("this is past the largest 64-bit float, so it would be infinite")
    }
}

pub(super) fn check_nesting(source: &str, max: usize) -> Option<Diagnostic> {
    let mut depth = 0usize;
    for t in lex(source) {
        match t.tok {
            Tok::Open(b) => {
                depth += 1;
                if depth > max {
                    return Some(
                        Diagnostic::new("brackets are nested too deeply")
                            .label(t.span, format!("this `{}` is nested more than {max} levels deep", b as char))
                            .note("split the expression into smaller parts with `let`"),
                    );
                }
            }
            Tok::Close(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_words() {
        assert_eq!(join_or(&[]), "");
        assert_eq!(join_or(&["a"]), "a");
        assert_eq!(join_or(&["a", "b"]), "a or b");
        assert_eq!(join_or(&["a", "b", "c"]), "a, b or c");
    }

    #[test]
    fn found_tokens() {
        let src = "x = foo_1 + 2.5e3 -> \"ab\\\"c\" é";
        let f = |p: usize| found_at(src, p).text;
        assert_eq!(f(4).as_deref(), Some("foo_1"));
        assert_eq!(f(10).as_deref(), Some("+"));
        assert_eq!(f(12).as_deref(), Some("2.5e3"));
        assert_eq!(f(18).as_deref(), Some("->"));
        assert_eq!(f(21).as_deref(), Some("\"ab\\\"c\""));
        assert_eq!(f(src.len() - 2).as_deref(), Some("é"));
        assert_eq!(f(src.len()), None);
        assert_eq!(found_at("\"abc\ndef", 0).special, Special::UnterminatedString);
        assert_eq!(found_at("/* x", 0).special, Special::UnterminatedComment);
        assert!(matches!(found_at("\"a\\qb\"", 0).special, Special::BadEscape(s) if s == Span::new(2, 4)));
    }

    #[test]
    fn lexer_skips_strings_and_comments() {
        let src = "a(\"(\" /* ( */ // (\n [b]";
        let tokens = lex(src);
        let kinds: Vec<Tok> = tokens.iter().map(|t| t.tok).collect();
        assert_eq!(kinds, vec![Tok::Word, Tok::Open(b'('), Tok::Other, Tok::Open(b'['), Tok::Word, Tok::Close(b']')]);
        assert_eq!(unclosed(&tokens), vec![1]);
    }
}
