//! Text data for language models: reading a corpus, a character-level
//! tokenizer, and cutting the token stream into training windows.
//!
//! A window row holds `context` token ids as features and the same positions
//! shifted by one as labels (the next token at every position), so one row
//! trains `context` predictions. Rows are consecutive, non-overlapping pieces
//! of the corpus in order, so `rows[..n]` is a prefix of the text and a split
//! by row range is a split by position (train on the start, validate on the end).

use crate::data::Table;
use flate2::read::MultiGzDecoder;
use ndarray::Array2;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// A tokenizer's vocabulary: token `i` is `tokens[i]`. A character vocabulary
/// has no merges; a BPE vocabulary starts with the characters and adds one
/// token per merge (`merges[i]` made token `chars + i` from a pair of tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub merges: Vec<(u32, u32)>,
}

#[derive(Debug)]
pub enum TextError {
    Io(std::io::Error),
    NotUtf8,
    /// A character the vocabulary has no token for (when encoding a prompt).
    Unknown {
        ch: char,
        at: usize,
    },
    TooShort {
        tokens: usize,
        context: usize,
    },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::Io(e) => write!(f, "{e}"),
            TextError::NotUtf8 => write!(f, "the file is not UTF-8 text"),
            TextError::Unknown { ch, at } => write!(f, "character {ch:?} at position {at} is not in the vocabulary"),
            TextError::TooShort { tokens, context } => {
                write!(f, "the text has {tokens} tokens, too few for one window of {context} plus the next token")
            }
        }
    }
}

/// The whole file as text; `.gz` files are decompressed, every member of
/// them (`cat a.gz b.gz > c.gz` is a valid gzip file: reading only its first
/// member once gave 249 of a corpus's 2,499 rows without a word).
pub fn read_text(path: &Path) -> Result<String, TextError> {
    let raw = std::fs::read(path).map_err(TextError::Io)?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        MultiGzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(TextError::Io)?;
        out
    } else {
        raw
    };
    String::from_utf8(bytes).map_err(|_| TextError::NotUtf8)
}

impl Vocab {
    /// One token per distinct character of `text`, in code-point order.
    pub fn chars_of(text: &str) -> Vocab {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocab { tokens: chars.into_iter().map(String::from).collect(), merges: Vec::new() }
    }

    /// Byte-pair encoding (the notes' subword tokenizer): start from the
    /// characters of `text` and repeatedly merge the most frequent adjacent pair
    /// of tokens into a new token, until there are `size` tokens or no pair
    /// occurs twice. Pairs never span two pieces of `pieces` (a word with its
    /// leading space, a run of digits, of punctuation or of whitespace), so a
    /// token never glues the end of one word to the start of the next.
    pub fn bpe_of(text: &str, size: usize) -> Vocab {
        let mut vocab = Vocab::chars_of(text);
        let index = vocab.index();
        let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for p in pieces(text) {
            *counts.entry(p).or_default() += 1;
        }
        // Each distinct piece once, as token ids, with its count (sorted for determinism).
        let mut words: Vec<(Vec<u32>, usize)> = counts.into_iter().map(|(p, n)| (p.chars().map(|c| index[&c]).collect(), n)).collect();
        words.sort();
        while vocab.tokens.len() < size {
            let mut pairs: std::collections::HashMap<(u32, u32), usize> = std::collections::HashMap::new();
            for (w, n) in &words {
                for p in w.windows(2) {
                    *pairs.entry((p[0], p[1])).or_default() += n;
                }
            }
            // The most frequent pair; ties go to the smallest ids, so training is deterministic.
            let Some((&pair, &count)) = pairs.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))) else { break };
            if count < 2 {
                break;
            }
            let id = vocab.tokens.len() as u32;
            let joined = format!("{}{}", vocab.tokens[pair.0 as usize], vocab.tokens[pair.1 as usize]);
            vocab.tokens.push(joined);
            vocab.merges.push(pair);
            for (w, _) in &mut words {
                merge_pair(w, pair, id);
            }
        }
        vocab
    }

    fn index(&self) -> std::collections::HashMap<char, u32> {
        let base = self.tokens.len() - self.merges.len();
        self.tokens[..base].iter().enumerate().filter_map(|(i, t)| Some((t.chars().next()?, i as u32))).collect()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Token ids of `text`: its characters, then (BPE) each piece's merges
    /// applied in the order they were learned, as in training.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextError> {
        let index = self.index();
        let chars: Vec<u32> = text
            .chars()
            .enumerate()
            .map(|(at, ch)| index.get(&ch).copied().ok_or(TextError::Unknown { ch, at }))
            .collect::<Result<_, _>>()?;
        if self.merges.is_empty() {
            return Ok(chars);
        }
        let base = (self.tokens.len() - self.merges.len()) as u32;
        let rank: std::collections::HashMap<(u32, u32), u32> = self.merges.iter().enumerate().map(|(i, &p)| (p, i as u32)).collect();
        let mut cache: std::collections::HashMap<&str, Vec<u32>> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(chars.len());
        let mut at = 0;
        for piece in pieces(text) {
            let n = piece.chars().count();
            let ids = cache.entry(piece).or_insert_with(|| {
                let mut w = chars[at..at + n].to_vec();
                // The earliest-learned merge present, again and again.
                while let Some((pair, r)) =
                    w.windows(2).filter_map(|p| rank.get(&(p[0], p[1])).map(|&r| ((p[0], p[1]), r))).min_by_key(|x| x.1)
                {
                    merge_pair(&mut w, pair, base + r);
                }
                w
            });
            out.extend_from_slice(ids);
            at += n;
        }
        Ok(out)
    }

    /// The text of `ids` (ids outside the vocabulary are skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().filter_map(|&i| self.tokens.get(i as usize)).map(String::as_str).collect()
    }
}

/// Every occurrence of `pair` in `w` replaced by `id`, left to right.
fn merge_pair(w: &mut Vec<u32>, pair: (u32, u32), id: u32) {
    let mut out = Vec::with_capacity(w.len());
    let mut i = 0;
    while i < w.len() {
        if i + 1 < w.len() && (w[i], w[i + 1]) == pair {
            out.push(id);
            i += 2;
        } else {
            out.push(w[i]);
            i += 1;
        }
    }
    *w = out;
}

/// What kind of piece a character continues.
#[derive(Clone, Copy, PartialEq)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() || c == '\'' {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// The text cut where BPE merges may not cross: a run of letters (with
/// apostrophes), digits or other symbols, each taking one space before it
/// (` word`), and runs of whitespace otherwise. Concatenated, the pieces are
/// the text.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    // The class of the current piece's characters (a leading space not counted).
    let mut kind: Option<Class> = None;
    let mut last = (0, ' ');
    for (i, c) in text.char_indices() {
        let k = class(c);
        match kind {
            Some(cur) if cur == k => {}
            None => kind = Some(k),
            Some(Class::Space) => {
                // A whitespace run ends: its final plain space leads the new piece.
                let cut = if last.1 == ' ' { last.0 } else { i };
                if cut > start {
                    out.push(&text[start..cut]);
                }
                start = cut;
                kind = Some(k);
            }
            Some(_) => {
                out.push(&text[start..i]);
                start = i;
                kind = Some(k);
            }
        }
        last = (i, c);
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Consecutive windows of `context` ids (features) and their next tokens (labels).
pub fn windows(ids: &[u32], context: usize) -> Result<Table, TextError> {
    let context = context.max(1);
    let rows = ids.len().saturating_sub(1) / context;
    if rows == 0 {
        return Err(TextError::TooShort { tokens: ids.len(), context });
    }
    let mut x = Vec::with_capacity(rows * context);
    let mut y = Vec::with_capacity(rows * context);
    for r in 0..rows {
        let s = r * context;
        x.extend(ids[s..s + context].iter().map(|&i| i as f32));
        y.extend(ids[s + 1..s + context + 1].iter().map(|&i| i as f32));
    }
    let shape = (rows, context);
    let (Ok(features), Ok(labels)) = (Array2::from_shape_vec(shape, x), Array2::from_shape_vec(shape, y)) else {
        return Err(TextError::TooShort { tokens: ids.len(), context });
    };
    let feature_names = (0..context).map(|i| format!("t{i}")).collect();
    Ok(Table { features, labels, feature_names, label_name: "next".into() })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn char_vocab_round_trips() {
        let v = Vocab::chars_of("hello world\n");
        assert_eq!(v.tokens.concat(), "\n dehlorw");
        let ids = v.encode("hold").unwrap();
        assert_eq!(v.decode(&ids), "hold");
        assert!(matches!(v.encode("hz"), Err(TextError::Unknown { ch: 'z', at: 1 })));
    }

    #[test]
    fn pieces_keep_one_leading_space_per_word() {
        assert_eq!(pieces("To be,  or not 2b!\n\nHa"), vec!["To", " be", ",", " ", " or", " not", " 2", "b", "!", "\n\n", "Ha"]);
        assert_eq!(pieces(""), Vec::<&str>::new());
        assert_eq!(pieces(" x"), vec![" x"]);
        let text = "It's 1,000 ducats; 'tis\tso.";
        assert_eq!(pieces(text).concat(), text);
    }

    #[test]
    fn bpe_learns_frequent_pairs_and_round_trips() {
        let text = "the thin thing then the theme ".repeat(20);
        let v = Vocab::bpe_of(&text, 30);
        // " th" is the most frequent pair chain: it must be a token.
        assert!(v.tokens.iter().any(|t| t == " th"), "{:?}", v.tokens);
        assert!(v.tokens.len() <= 30);
        let ids = v.encode(&text).unwrap();
        assert!(ids.len() * 3 < text.len(), "{} tokens for {} characters", ids.len(), text.len());
        assert_eq!(v.decode(&ids), text);
        // Unseen words still encode (from characters), and decode back.
        let other = "then thin the";
        assert_eq!(v.decode(&v.encode(other).unwrap()), other);
        // Training is deterministic.
        assert_eq!(Vocab::bpe_of(&text, 30), v);
    }

    /// `parts` compressed one gzip member each and concatenated, as `cat` would.
    pub(crate) fn multi_member_gzip(parts: &[&[u8]]) -> Vec<u8> {
        use std::io::Write;
        let mut out = Vec::new();
        for p in parts {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(p).unwrap();
            out.extend(enc.finish().unwrap());
        }
        out
    }

    #[test]
    fn reads_every_member_of_a_gzip_file() {
        let path = std::env::temp_dir().join(format!("nnc-two-members-{}.txt.gz", std::process::id()));
        std::fs::write(&path, multi_member_gzip(&[b"to be or ", b"not to be"])).unwrap();
        let text = read_text(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text.unwrap(), "to be or not to be");
    }

    #[test]
    fn windows_shift_by_one() {
        let ids: Vec<u32> = (0..10).collect();
        let t = windows(&ids, 4).unwrap();
        assert_eq!(t.features, ndarray::array![[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]);
        assert_eq!(t.labels, ndarray::array![[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]);
        assert!(windows(&ids[..4], 4).is_err());
    }
}
