//! Grounded text: model descriptions with bounding boxes embedded, parsed
//! into phrases and pixel boxes, and rendered back in a model's own syntax.
//!
//! SPR builds preference pairs from what grounding MLLMs write about an image
//! region: sentences whose noun phrases carry boxes. Scoring, refinement and
//! export all need the boxes in pixels and the phrases as text, so every
//! candidate is parsed once here. The box syntax depends on the model family
//! and is chosen by configuration ([`BoxFormat`]), never guessed per string,
//! because the same characters mean different coordinates in different
//! families (`[100, 200, 300, 400]` is a 0–999 grid for Ferret and a 0–1000
//! grid for InternVL):
//!
//! | format | syntax | values |
//! |---|---|---|
//! | [`BoxFormat::Ferret`] (Ferret, You et al. 2024) | `a cat [x1, y1, x2, y2]` | integers, 0–999 |
//! | [`BoxFormat::Unit`] (LLaVA-1.5, Shikra, lmms-eval) | `a cat [0.100, 0.200, 0.500, 0.600]` | floats in 0–1, 3 decimals |
//! | [`BoxFormat::InternVl`] (InternVL) | `a cat [x1, y1, x2, y2]` | integers, 0–1000 |
//! | [`BoxFormat::Qwen`] (Qwen-VL) | `<ref>a cat</ref><box>(x1,y1),(x2,y2)</box>` | integers, 0–999 |
//! | [`BoxFormat::PaliGemma`] (PaliGemma) | `<loc0256><loc0512><loc0768><loc1023> a cat` | `y1 x1 y2 x2`, 1024 bins |
//!
//! [`parse`] turns model output into a [`GroundedText`] (text pieces and
//! phrases with their boxes, pixel `xyxy` in the frame the model saw) plus a
//! list of [`TextIssue`]s for markup it had to drop or keep as text. It never
//! panics and never returns an invalid box. [`render`] writes a
//! [`GroundedText`] back in a format's syntax, quantising boxes to its grid;
//! parsing the result gives back every box within one grid cell and the same
//! [`GroundedText::plain`] text.
//!
//! Bracket formats carry no phrase markup, so the phrase of a box is taken
//! from the words just before it: at most [`MAX_PHRASE_WORDS`] words after
//! the last `.,;:!?` or newline (or the previous box); within those, the
//! phrase starts at the last determiner (`a`, `the`, `two`, …) when there is
//! one, and otherwise after any leading function words (`and`, `on`, `is`, …).
//! "There are two squares [..]" gives the phrase "two squares"; "A red
//! circle [..]" gives "A red circle".
//!
//! Piece boundaries are word boundaries: [`GroundedText::plain`] and
//! [`render`] put a space between two pieces unless one side already has
//! whitespace there or the right side starts with closing punctuation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::core::geometry::Bbox;

/// The most words a bracket-format phrase takes from the text before its box.
pub const MAX_PHRASE_WORDS: usize = 8;

/// The box syntax of a model family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BoxFormat {
    /// Ferret: `phrase [x1, y1, x2, y2]`, integers on a 0–999 grid.
    #[default]
    Ferret,
    /// LLaVA-1.5, Shikra, lmms-eval: `phrase [x1, y1, x2, y2]`, floats in
    /// 0–1 rendered with 3 decimals.
    Unit,
    /// InternVL: `phrase [x1, y1, x2, y2]`, integers on a 0–1000 grid.
    #[serde(rename = "internvl")]
    InternVl,
    /// Qwen-VL: `<ref>phrase</ref><box>(x1,y1),(x2,y2)</box>`, integers on a
    /// 0–999 grid.
    Qwen,
    /// PaliGemma: `<locY1><locX1><locY2><locX2> phrase`, four-digit tokens
    /// `0000`–`1023`, y first. A value is `floor(coord / size * 1024)`
    /// clamped to 1023 and reads back as `value / 1024 * size`.
    #[serde(rename = "paligemma")]
    PaliGemma,
}

impl BoxFormat {
    /// Every format, in declaration order.
    pub const ALL: [BoxFormat; 5] = [
        BoxFormat::Ferret,
        BoxFormat::Unit,
        BoxFormat::InternVl,
        BoxFormat::Qwen,
        BoxFormat::PaliGemma,
    ];

    /// The configuration name (as in serde and [`FromStr`]).
    pub fn name(self) -> &'static str {
        match self {
            BoxFormat::Ferret => "ferret",
            BoxFormat::Unit => "unit",
            BoxFormat::InternVl => "internvl",
            BoxFormat::Qwen => "qwen",
            BoxFormat::PaliGemma => "paligemma",
        }
    }

    /// Grid cells per image side: 999 (Ferret, Qwen), 1000 (Unit's three
    /// decimals, InternVL) or 1024 (PaliGemma).
    pub fn cells(self) -> u32 {
        match self {
            BoxFormat::Ferret | BoxFormat::Qwen => 999,
            BoxFormat::Unit | BoxFormat::InternVl => 1000,
            BoxFormat::PaliGemma => 1024,
        }
    }

    /// The width in pixels of one grid cell on a side of `side` pixels: the
    /// precision a render–parse round trip keeps.
    pub fn cell_size(self, side: f32) -> f32 {
        side / self.cells() as f32
    }

    /// The value that maps to the full side (`value / denom * side`).
    fn denom(self) -> f64 {
        match self {
            BoxFormat::Ferret | BoxFormat::Qwen => 999.0,
            BoxFormat::Unit => 1.0,
            BoxFormat::InternVl => 1000.0,
            BoxFormat::PaliGemma => 1024.0,
        }
    }

    /// The largest value the syntax allows.
    fn max_value(self) -> f64 {
        match self {
            BoxFormat::Ferret | BoxFormat::Qwen => 999.0,
            BoxFormat::Unit => 1.0,
            BoxFormat::InternVl => 1000.0,
            BoxFormat::PaliGemma => 1023.0,
        }
    }

    /// Pixel coordinate → grid value (already rounded to what is written).
    fn to_value(self, px: f32, side: f32) -> f64 {
        let r = px as f64 / side as f64;
        let v = match self {
            BoxFormat::Unit => (r * 1000.0).round() / 1000.0,
            BoxFormat::PaliGemma => (r * 1024.0).floor(),
            _ => (r * self.denom()).round(),
        };
        if v.is_nan() {
            0.0
        } else {
            v.clamp(0.0, self.max_value())
        }
    }

    /// Grid value → pixel coordinate.
    fn to_px(self, v: f64, side: f32) -> f32 {
        (v * side as f64 / self.denom()) as f32
    }

    /// A grid value as written in this format.
    fn write_value(self, out: &mut String, v: f64) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = match self {
            BoxFormat::Unit => write!(out, "{v:.3}"),
            BoxFormat::PaliGemma => write!(out, "<loc{:04}>", v as u32),
            _ => write!(out, "{}", v as i64),
        };
    }
}

impl fmt::Display for BoxFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A box-format name that is not one of [`BoxFormat::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown box format `{0}`; valid formats: {names}", names = BoxFormat::ALL.map(BoxFormat::name).join(", "))]
pub struct UnknownBoxFormat(
    /// The name that was given.
    pub String,
);

impl FromStr for BoxFormat {
    type Err = UnknownBoxFormat;

    /// Parses a configuration name, ignoring ASCII case and surrounding
    /// whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        BoxFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownBoxFormat(s.to_string()))
    }
}

/// A description with its grounded phrases, in reading order.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GroundedText {
    /// Text and grounded phrases, in order.
    pub pieces: Vec<Piece>,
}

/// One piece of a [`GroundedText`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Piece {
    /// Text with no box.
    Text(String),
    /// A phrase grounded to one or more boxes, pixel xyxy in the frame the text refers to.
    Object {
        /// The words the boxes belong to (may be empty for a bare box).
        phrase: String,
        /// The boxes, in the order written.
        boxes: Vec<Bbox>,
    },
}

/// Something [`parse`] dropped or kept as text, at a byte offset of the input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextIssue {
    /// Byte offset in the parsed text where the offending markup starts.
    pub byte_offset: usize,
    /// What was wrong and what was done about it.
    pub message: String,
}

impl fmt::Display for TextIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "byte {}: {}", self.byte_offset, self.message)
    }
}

/// The result of [`parse`]: the grounded text and what had to be dropped.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Parsed {
    /// Text and grounded phrases; every box is finite and valid.
    pub text: GroundedText,
    /// Malformed or invalid markup, in input order.
    pub issues: Vec<TextIssue>,
}

/// Parse model output. frame_w/frame_h = pixel size of the image the model saw (e.g. the crop). Never panics, for any input.
///
/// Boxes whose values are out of the format's range, inverted or empty, or
/// that map to an empty pixel box (e.g. a zero-sized frame), are dropped
/// with a [`TextIssue`] and their phrase is kept as text. Malformed markup
/// (an unterminated box, a stray tag, an incomplete `<loc>` group) is kept
/// as text with an issue. Text with no markup is one [`Piece::Text`] and no
/// issue.
pub fn parse(text: &str, format: BoxFormat, frame_w: f32, frame_h: f32) -> Parsed {
    let mut b = Builder {
        src: text,
        format,
        frame_w,
        frame_h,
        pieces: Vec::new(),
        issues: Vec::new(),
        boundary: false,
    };
    match format {
        BoxFormat::Ferret | BoxFormat::Unit | BoxFormat::InternVl => parse_brackets(&mut b),
        BoxFormat::Qwen => parse_qwen(&mut b),
        BoxFormat::PaliGemma => parse_paligemma(&mut b),
    }
    Parsed {
        text: GroundedText { pieces: b.pieces },
        issues: b.issues,
    }
}

/// Render in the model's syntax, boxes quantised to the format's grid.
///
/// Bracket formats write an object as `phrase [a, b, c, d]` (several boxes
/// joined by `", "`, a bare box without phrase), Qwen as
/// `<ref>phrase</ref><box>(a,b),(c,d)</box>…`, PaliGemma as
/// `<loc…>×4 phrase` with objects (and any text after one) separated by
/// `" ; "`. An object with no box is written as its phrase. Nothing is
/// escaped: text that looks like markup will parse as markup.
pub fn render(text: &GroundedText, format: BoxFormat, frame_w: f32, frame_h: f32) -> String {
    let mut out = String::new();
    let mut after_object = false;
    for piece in &text.pieces {
        let (s, is_object) = match piece {
            Piece::Text(t) => (t.clone(), false),
            Piece::Object { phrase, boxes } if boxes.is_empty() => (phrase.clone(), false),
            Piece::Object { phrase, boxes } => {
                (render_object(phrase, boxes, format, frame_w, frame_h), true)
            }
        };
        if s.is_empty() {
            continue;
        }
        if after_object && format == BoxFormat::PaliGemma {
            // Otherwise whatever follows would join the object's phrase.
            out.push_str(" ; ");
        }
        push_with_boundary(&mut out, &s);
        after_object = is_object;
    }
    out
}

fn render_object(phrase: &str, boxes: &[Bbox], format: BoxFormat, w: f32, h: f32) -> String {
    let phrase = phrase.trim();
    let mut out = String::new();
    let values = |b: &Bbox| {
        [
            format.to_value(b.x1, w),
            format.to_value(b.y1, h),
            format.to_value(b.x2, w),
            format.to_value(b.y2, h),
        ]
    };
    match format {
        BoxFormat::Ferret | BoxFormat::Unit | BoxFormat::InternVl => {
            if !phrase.is_empty() {
                out.push_str(phrase);
                out.push(' ');
            }
            for (i, b) in boxes.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push('[');
                for (k, v) in values(b).into_iter().enumerate() {
                    if k > 0 {
                        out.push_str(", ");
                    }
                    format.write_value(&mut out, v);
                }
                out.push(']');
            }
        }
        BoxFormat::Qwen => {
            if !phrase.is_empty() {
                out.push_str("<ref>");
                out.push_str(phrase);
                out.push_str("</ref>");
            }
            for b in boxes {
                let [x1, y1, x2, y2] = values(b);
                out.push_str("<box>(");
                format.write_value(&mut out, x1);
                out.push(',');
                format.write_value(&mut out, y1);
                out.push_str("),(");
                format.write_value(&mut out, x2);
                out.push(',');
                format.write_value(&mut out, y2);
                out.push_str(")</box>");
            }
        }
        BoxFormat::PaliGemma => {
            for b in boxes {
                let [x1, y1, x2, y2] = values(b);
                for v in [y1, x1, y2, x2] {
                    format.write_value(&mut out, v);
                }
            }
            if !phrase.is_empty() {
                out.push(' ');
                out.push_str(phrase);
            }
        }
    }
    out
}

impl GroundedText {
    /// All text with box markup removed, phrases kept, whitespace runs
    /// collapsed to one space and trimmed.
    ///
    /// Piece boundaries count as word boundaries (see the module docs), so
    /// turning an object into text of its phrase does not change the result.
    pub fn plain(&self) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            let s = match piece {
                Piece::Text(t) => t.as_str(),
                Piece::Object { phrase, .. } => phrase.as_str(),
            };
            push_with_boundary(&mut out, s);
        }
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// Every box, in order.
    pub fn boxes(&self) -> Vec<Bbox> {
        self.pieces
            .iter()
            .flat_map(|p| match p {
                Piece::Object { boxes, .. } => boxes.as_slice(),
                Piece::Text(_) => &[],
            })
            .copied()
            .collect()
    }

    /// `(phrase, boxes)` for each [`Piece::Object`], in order.
    pub fn objects(&self) -> Vec<(&str, &[Bbox])> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Object { phrase, boxes } => Some((phrase.as_str(), boxes.as_slice())),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// The number of boxes.
    pub fn box_count(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Object { boxes, .. } => boxes.len(),
                Piece::Text(_) => 0,
            })
            .sum()
    }

    /// The same text with every box mapped by `f`.
    pub fn map_boxes(&self, f: impl Fn(Bbox) -> Bbox) -> GroundedText {
        let pieces = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Object { phrase, boxes } => Piece::Object {
                    phrase: phrase.clone(),
                    boxes: boxes.iter().map(|&b| f(b)).collect(),
                },
                Piece::Text(t) => Piece::Text(t.clone()),
            })
            .collect();
        GroundedText { pieces }
    }

    /// Boxes given in the pixel space of `crop` mapped to image pixels
    /// (translated by the crop origin).
    pub fn image_from_crop(&self, crop: Bbox) -> GroundedText {
        self.map_boxes(|b| b.image_from_crop(crop))
    }

    /// Boxes given in image pixels mapped to the pixel space of `crop`.
    pub fn crop_from_image(&self, crop: Bbox) -> GroundedText {
        self.map_boxes(|b| b.crop_from_image(crop))
    }

    /// Rebuild with each box replaced by what `f` returns: an empty Vec removes the box; if an Object loses all its boxes it becomes Piece::Text(phrase) (phrase kept). Used by SPR refinement.
    ///
    /// `f` is called once per box, in order. An object with an empty phrase
    /// that loses all its boxes disappears. [`GroundedText::plain`] is
    /// unchanged by any `f`.
    pub fn replace_boxes(&self, mut f: impl FnMut(Bbox) -> Vec<Bbox>) -> GroundedText {
        let mut pieces = Vec::with_capacity(self.pieces.len());
        for p in &self.pieces {
            match p {
                Piece::Text(t) => pieces.push(Piece::Text(t.clone())),
                Piece::Object { phrase, boxes } => {
                    let boxes: Vec<Bbox> = boxes.iter().flat_map(|&b| f(b)).collect();
                    if !boxes.is_empty() {
                        pieces.push(Piece::Object {
                            phrase: phrase.clone(),
                            boxes,
                        });
                    } else if !phrase.is_empty() {
                        pieces.push(Piece::Text(phrase.clone()));
                    }
                }
            }
        }
        GroundedText { pieces }
    }
}

// ---------------------------------------------------------------------------
// Word boundaries

/// Whether a space is needed between `left` and `right` for them to read as
/// separate words.
fn needs_space(left: char, right: char) -> bool {
    !(left.is_whitespace()
        || right.is_whitespace()
        || matches!(right, '.' | ',' | ';' | ':' | '!' | '?' | ')' | ']' | '}')
        || matches!(left, '(' | '[' | '{'))
}

/// Append `s` to `out`, with a space between them where they would
/// otherwise run together.
fn push_with_boundary(out: &mut String, s: &str) {
    if let (Some(l), Some(r)) = (out.chars().next_back(), s.chars().next()) {
        if needs_space(l, r) {
            out.push(' ');
        }
    }
    out.push_str(s);
}

// ---------------------------------------------------------------------------
// Parsing

/// Collects pieces and issues; owns the validation of boxes.
struct Builder<'a> {
    src: &'a str,
    format: BoxFormat,
    frame_w: f32,
    frame_h: f32,
    pieces: Vec<Piece>,
    issues: Vec<TextIssue>,
    /// Markup was removed since the last text: the next text is a new word.
    boundary: bool,
}

impl Builder<'_> {
    /// Append text, merging with a preceding text piece.
    fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(Piece::Text(t)) = self.pieces.last_mut() {
            if self.boundary {
                push_with_boundary(t, s);
            } else {
                t.push_str(s);
            }
        } else {
            self.pieces.push(Piece::Text(s.to_string()));
        }
        self.boundary = false;
    }

    /// Append the input between two byte offsets as text.
    fn src_text(&mut self, from: usize, to: usize) {
        let src = self.src;
        self.text(src.get(from..to).unwrap_or(""));
    }

    /// Markup was removed here.
    fn mark_boundary(&mut self) {
        self.boundary = true;
    }

    /// An object, or (when every box was dropped) its phrase as text.
    fn object(&mut self, phrase: &str, boxes: Vec<Bbox>) {
        if boxes.is_empty() {
            self.mark_boundary();
            self.text(phrase);
            self.mark_boundary();
        } else {
            self.pieces.push(Piece::Object {
                phrase: phrase.to_string(),
                boxes,
            });
            self.boundary = false;
        }
    }

    fn issue(&mut self, byte_offset: usize, message: String) {
        self.issues.push(TextIssue {
            byte_offset,
            message,
        });
    }

    /// Validate grid values `[x1, y1, x2, y2]` and map them to pixels;
    /// on failure record an issue naming the box as `raw`.
    fn make_box(&mut self, at: usize, v: [f64; 4], raw: &str) -> Option<Bbox> {
        let f = self.format;
        let max = f.max_value();
        let problem = if v.iter().any(|x| !x.is_finite()) {
            Some("has a value that is not a finite number".to_string())
        } else if v.iter().any(|&x| !(0.0..=max).contains(&x)) {
            Some(format!("has a value outside 0–{max}"))
        } else if v[2] < v[0] {
            Some("has x2 < x1".to_string())
        } else if v[2] == v[0] {
            Some("has zero width (x2 = x1)".to_string())
        } else if v[3] < v[1] {
            Some("has y2 < y1".to_string())
        } else if v[3] == v[1] {
            Some("has zero height (y2 = y1)".to_string())
        } else {
            None
        };
        let (w, h) = (self.frame_w, self.frame_h);
        let px = Bbox::new(
            f.to_px(v[0], w),
            f.to_px(v[1], h),
            f.to_px(v[2], w),
            f.to_px(v[3], h),
        );
        let problem = problem.or_else(|| {
            (!px.is_valid()).then(|| format!("maps to an empty pixel box in a {w}×{h} frame"))
        });
        match problem {
            None => Some(px),
            Some(p) => {
                self.issue(at, format!("box {raw} {p}; box dropped, phrase kept"));
                None
            }
        }
    }
}

/// A byte cursor over the input. Only ever stops on ASCII bytes or the end,
/// so every offset it yields is a char boundary.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }

    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    /// A decimal number `[+-]digits[.digits]` (or `.digits`): its value and text.
    fn number(&mut self) -> Option<(f64, &'a str)> {
        let start = self.i;
        if matches!(self.peek(), Some(b'+' | b'-')) {
            self.i += 1;
        }
        let mut n = self.digits();
        if self.peek() == Some(b'.') {
            self.i += 1;
            n += self.digits();
        }
        let s: &'a str = self.s;
        let text = s.get(start..self.i).unwrap_or("");
        match text.parse::<f64>() {
            Ok(v) if n > 0 => Some((v, text)),
            _ => {
                self.i = start;
                None
            }
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

fn starts_at(b: &[u8], i: usize, pat: &[u8]) -> bool {
    b.get(i..).is_some_and(|s| s.starts_with(pat))
}

/// The text of `s` from byte `from` to about byte `to` (whole chars), at
/// most `n` chars, for issue messages.
fn excerpt(s: &str, from: usize, to: usize, n: usize) -> String {
    let limit = to.saturating_sub(from);
    let t: String = s
        .get(from..)
        .unwrap_or("")
        .char_indices()
        .take_while(|&(i, _)| i < limit)
        .map(|(_, c)| c)
        .collect();
    let t = t.trim_end();
    let mut out: String = t.chars().take(n).collect();
    if t.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

// --- Bracket formats -------------------------------------------------------

enum Bracket {
    /// `[a, b, c, d]` ending before byte `end`.
    Box {
        end: usize,
        vals: [f64; 4],
        raw: String,
    },
    /// Numbers with no closing `]`: kept as text with an issue.
    Unclosed { end: usize },
    /// Anything else: plain text.
    NotBox,
}

/// Scan the bracket group opening at byte `i` (which holds `[`).
fn scan_bracket(src: &str, i: usize) -> Bracket {
    let mut c = Cursor { s: src, i: i + 1 };
    let mut vals = [0.0; 4];
    let mut raws: Vec<&str> = Vec::with_capacity(4);
    let mut count = 0usize;
    c.ws();
    let closed = loop {
        let Some((v, text)) = c.number() else {
            break false;
        };
        if count < 4 {
            vals[count] = v;
            raws.push(text);
        }
        count += 1;
        c.ws();
        if c.eat(b',') {
            c.ws();
            continue;
        }
        break c.eat(b']');
    };
    if closed {
        if count == 4 {
            Bracket::Box {
                end: c.i,
                vals,
                raw: format!("[{}]", raws.join(", ")),
            }
        } else {
            Bracket::NotBox
        }
    } else if count >= 3 || (count >= 2 && c.at_end()) {
        Bracket::Unclosed { end: c.i }
    } else {
        Bracket::NotBox
    }
}

/// Words that open a noun phrase; the phrase starts at the last one.
const DETERMINERS: &[&str] = &[
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "another", "each", "every",
    "several", "many", "few", "both", "one", "two", "three", "four", "five", "six", "seven",
    "eight", "nine", "ten", "my", "your", "his", "her", "its", "our", "their",
];

/// Words skipped at the start of a phrase that has no determiner.
const LEADING_FUNCTION_WORDS: &[&str] = &[
    "and", "or", "but", "nor", "then", "while", "whereas", "also", "with", "without", "of", "on",
    "in", "at", "to", "from", "by", "for", "into", "onto", "under", "over", "above", "below",
    "behind", "beside", "beneath", "near", "between", "among", "inside", "outside", "around", "is",
    "are", "was", "were", "be", "there", "here", "shows", "show", "showing", "contains", "has",
    "have", "see",
];

fn is_determiner(word: &str) -> bool {
    DETERMINERS.iter().any(|w| w.eq_ignore_ascii_case(word))
        || (!word.is_empty() && word.bytes().all(|c| c.is_ascii_digit()))
}

fn is_function_word(word: &str) -> bool {
    LEADING_FUNCTION_WORDS
        .iter()
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// Split the text before a bracket box into `(rest, phrase)` by the phrase
/// rule (see the module docs). `rest` keeps any whitespace before the phrase.
fn split_phrase(before: &str) -> (&str, &str) {
    let floor = before
        .rfind(['.', ',', ';', ':', '!', '?', '\n'])
        .map_or(0, |p| p + 1);
    let tail = before.get(floor..).unwrap_or("");
    let trimmed = tail.trim_end();
    // (start, end) byte offsets of each word in `trimmed`.
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (idx, ch) in trimmed.char_indices() {
        match (ch.is_whitespace(), start) {
            (false, None) => start = Some(idx),
            (true, Some(s)) => {
                words.push((s, idx));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push((s, trimmed.len()));
    }
    if words.is_empty() {
        return (before, "");
    }
    let window = &words[words.len().saturating_sub(MAX_PHRASE_WORDS)..];
    let word = |&(s, e): &(usize, usize)| trimmed.get(s..e).unwrap_or("");
    let first = match window.iter().rposition(|w| is_determiner(word(w))) {
        Some(k) => k,
        None => {
            let mut k = 0;
            while k + 1 < window.len() && is_function_word(word(&window[k])) {
                k += 1;
            }
            k
        }
    };
    let phrase_start = floor + window[first].0;
    let phrase_end = floor + trimmed.len();
    (
        before.get(..phrase_start).unwrap_or(""),
        before.get(phrase_start..phrase_end).unwrap_or(""),
    )
}

fn parse_brackets(bld: &mut Builder<'_>) {
    let src = bld.src;
    let b = src.as_bytes();
    let mut i = 0;
    let mut seg = 0;
    while i < b.len() {
        if b[i] != b'[' {
            i += 1;
            continue;
        }
        match scan_bracket(src, i) {
            Bracket::NotBox => i += 1,
            Bracket::Unclosed { end } => {
                let ex = excerpt(src, i, end, 40);
                bld.issue(i, format!("unterminated box `{ex}`; kept as text"));
                i = end.max(i + 1);
            }
            Bracket::Box { end, vals, raw } => {
                let mut group = vec![(i, vals, raw)];
                let mut j = end;
                loop {
                    let mut k = skip_ws(b, j);
                    if b.get(k) == Some(&b',') {
                        k = skip_ws(b, k + 1);
                    }
                    if b.get(k) != Some(&b'[') {
                        break;
                    }
                    match scan_bracket(src, k) {
                        Bracket::Box { end, vals, raw } => {
                            group.push((k, vals, raw));
                            j = end;
                        }
                        _ => break,
                    }
                }
                let boxes: Vec<Bbox> = group
                    .into_iter()
                    .filter_map(|(at, v, raw)| bld.make_box(at, v, &raw))
                    .collect();
                let before = src.get(seg..i).unwrap_or("");
                if boxes.is_empty() {
                    bld.text(before);
                    bld.mark_boundary();
                } else {
                    let (rest, phrase) = split_phrase(before);
                    bld.text(rest);
                    bld.object(phrase, boxes);
                }
                seg = j;
                i = j;
            }
        }
    }
    bld.src_text(seg, b.len());
}

// --- Qwen ------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tag {
    RefOpen,
    RefClose,
    BoxOpen,
    BoxClose,
}

impl Tag {
    const ALL: [(Tag, &'static [u8]); 4] = [
        (Tag::RefOpen, b"<ref>"),
        (Tag::RefClose, b"</ref>"),
        (Tag::BoxOpen, b"<box>"),
        (Tag::BoxClose, b"</box>"),
    ];

    fn len(self) -> usize {
        match self {
            Tag::RefOpen | Tag::BoxOpen => 5,
            Tag::RefClose | Tag::BoxClose => 6,
        }
    }
}

/// Every Qwen tag in the input, in order (tags cannot overlap).
fn scan_tags(b: &[u8]) -> Vec<(usize, Tag)> {
    let mut out = Vec::new();
    for (i, &c) in b.iter().enumerate() {
        if c == b'<' {
            if let Some(&(t, _)) = Tag::ALL.iter().find(|(_, p)| starts_at(b, i, p)) {
                out.push((i, t));
            }
        }
    }
    out
}

/// `(x1,y1),(x2,y2)` with optional whitespace.
fn parse_point_pair(s: &str) -> Option<[f64; 4]> {
    let mut c = Cursor { s, i: 0 };
    let mut v = [0.0; 4];
    for (k, pair) in v.chunks_exact_mut(2).enumerate() {
        c.ws();
        if k == 1 {
            if !c.eat(b',') {
                return None;
            }
            c.ws();
        }
        if !c.eat(b'(') {
            return None;
        }
        c.ws();
        pair[0] = c.number()?.0;
        c.ws();
        if !c.eat(b',') {
            return None;
        }
        c.ws();
        pair[1] = c.number()?.0;
        c.ws();
        if !c.eat(b')') {
            return None;
        }
    }
    c.ws();
    c.at_end().then_some(v)
}

fn parse_qwen(bld: &mut Builder<'_>) {
    let src = bld.src;
    let b = src.as_bytes();
    let tags = scan_tags(b);
    let mut t = 0;
    let mut seg = 0;
    while let Some(&(pos, tag)) = tags.get(t) {
        match (tag, tags.get(t + 1).copied()) {
            (Tag::RefOpen, Some((close, Tag::RefClose))) => {
                let phrase = src.get(pos + tag.len()..close).unwrap_or("").trim();
                let (raw_boxes, end, next_t) =
                    collect_qwen_boxes(src, &tags, t + 2, close + Tag::RefClose.len());
                bld.src_text(seg, pos);
                if raw_boxes.is_empty() {
                    let ex = excerpt(src, pos, end, 40);
                    bld.issue(pos, format!("`{ex}` has no <box>; phrase kept as text"));
                }
                let boxes = qwen_boxes(bld, raw_boxes);
                bld.object(phrase, boxes);
                seg = end;
                t = next_t;
            }
            (Tag::BoxOpen, Some((_, Tag::BoxClose))) => {
                let (raw_boxes, end, next_t) = collect_qwen_boxes(src, &tags, t, pos);
                bld.src_text(seg, pos);
                let boxes = qwen_boxes(bld, raw_boxes);
                bld.object("", boxes);
                seg = end;
                t = next_t;
            }
            _ => {
                let what = match tag {
                    Tag::RefOpen => "<ref> without a matching </ref>",
                    Tag::BoxOpen => "<box> without a matching </box>",
                    Tag::RefClose => "</ref> without a matching <ref>",
                    Tag::BoxClose => "</box> without a matching <box>",
                };
                bld.issue(pos, format!("{what}; kept as text"));
                t += 1;
            }
        }
    }
    bld.src_text(seg, b.len());
}

/// The `<box>…</box>` elements starting at tag `k`, separated from byte
/// `end` and from each other only by whitespace: `(offset, content)` of each,
/// the byte after the last, and the next tag index.
fn collect_qwen_boxes<'s>(
    src: &'s str,
    tags: &[(usize, Tag)],
    mut k: usize,
    mut end: usize,
) -> (Vec<(usize, &'s str)>, usize, usize) {
    let mut out = Vec::new();
    while let (Some(&(open, Tag::BoxOpen)), Some(&(close, Tag::BoxClose))) =
        (tags.get(k), tags.get(k + 1))
    {
        let gap = src.get(end..open).unwrap_or("x");
        if !gap.bytes().all(|c| c.is_ascii_whitespace()) {
            break;
        }
        out.push((
            open,
            src.get(open + Tag::BoxOpen.len()..close).unwrap_or(""),
        ));
        end = close + Tag::BoxClose.len();
        k += 2;
    }
    (out, end, k)
}

fn qwen_boxes(bld: &mut Builder<'_>, raw: Vec<(usize, &str)>) -> Vec<Bbox> {
    let mut boxes = Vec::with_capacity(raw.len());
    for (at, content) in raw {
        let shown = format!("<box>{}</box>", excerpt(content, 0, content.len(), 40));
        match parse_point_pair(content) {
            Some(v) => boxes.extend(bld.make_box(at, v, &shown)),
            None => bld.issue(
                at,
                format!("box {shown} is not of the form (x1,y1),(x2,y2); box dropped, phrase kept"),
            ),
        }
    }
    boxes
}

// --- PaliGemma -------------------------------------------------------------

const LOC_LEN: usize = 9; // "<loc" + 4 digits + ">"

/// The value of a well-formed `<locNNNN>` token at byte `i`.
fn loc_token(b: &[u8], i: usize) -> Option<u32> {
    let t = b.get(i..i + LOC_LEN)?;
    if !t.starts_with(b"<loc") || t[8] != b'>' {
        return None;
    }
    let mut v = 0u32;
    for &d in &t[4..8] {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(d - b'0');
    }
    Some(v)
}

enum LocGroup {
    /// Four tokens `y1 x1 y2 x2`, ending before byte `end`.
    Full { end: usize, vals: [u32; 4] },
    /// One to three tokens.
    Partial { end: usize, count: usize },
    /// No well-formed token at the start.
    Malformed,
}

fn read_loc_group(b: &[u8], i: usize) -> LocGroup {
    let mut vals = [0u32; 4];
    let mut count = 0;
    let mut j = i;
    while count < 4 {
        let k = if count == 0 { j } else { skip_ws(b, j) };
        match loc_token(b, k) {
            Some(v) => {
                vals[count] = v;
                count += 1;
                j = k + LOC_LEN;
            }
            None => break,
        }
    }
    match count {
        4 => LocGroup::Full { end: j, vals },
        0 => LocGroup::Malformed,
        _ => LocGroup::Partial { end: j, count },
    }
}

fn parse_paligemma(bld: &mut Builder<'_>) {
    let src = bld.src;
    let b = src.as_bytes();
    let mut i = 0;
    let mut seg = 0;
    while i < b.len() {
        if !starts_at(b, i, b"<loc") {
            i += 1;
            continue;
        }
        match read_loc_group(b, i) {
            LocGroup::Malformed => {
                if b.get(i + 4).is_some_and(|c| c.is_ascii_digit()) {
                    let ex = excerpt(src, i, i + LOC_LEN, LOC_LEN);
                    bld.issue(i, format!("malformed location token `{ex}`; kept as text"));
                }
                i += 1;
            }
            LocGroup::Partial { end, count } => {
                let ex = excerpt(src, i, end, 60);
                bld.issue(
                    i,
                    format!("incomplete location group `{ex}` ({count} of 4 <loc> tokens); kept as text"),
                );
                i = end;
            }
            LocGroup::Full { end, vals } => {
                let mut groups = vec![(i, end, vals)];
                let mut j = end;
                loop {
                    let k = skip_ws(b, j);
                    match read_loc_group(b, k) {
                        LocGroup::Full { end, vals } => {
                            groups.push((k, end, vals));
                            j = end;
                        }
                        _ => break,
                    }
                }
                let mut p = j;
                while p < b.len() && b[p] != b';' && !starts_at(b, p, b"<loc") {
                    p += 1;
                }
                let phrase = src.get(j..p).unwrap_or("").trim();
                let next = if b.get(p) == Some(&b';') {
                    skip_ws(b, p + 1)
                } else {
                    p
                };
                bld.src_text(seg, i);
                let mut boxes = Vec::with_capacity(groups.len());
                for (at, e, [y1, x1, y2, x2]) in groups {
                    let raw = src.get(at..e).unwrap_or("").to_string();
                    let v = [f64::from(x1), f64::from(y1), f64::from(x2), f64::from(y2)];
                    boxes.extend(bld.make_box(at, v, &raw));
                }
                bld.object(phrase, boxes);
                seg = next;
                i = next;
            }
        }
    }
    bld.src_text(seg, b.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: Bbox, b: Bbox, tol: f32) -> bool {
        (a.x1 - b.x1).abs() <= tol
            && (a.y1 - b.y1).abs() <= tol
            && (a.x2 - b.x2).abs() <= tol
            && (a.y2 - b.y2).abs() <= tol
    }

    fn bx(x1: f32, y1: f32, x2: f32, y2: f32) -> Bbox {
        Bbox::new(x1, y1, x2, y2)
    }

    fn obj(phrase: &str, boxes: Vec<Bbox>) -> Piece {
        Piece::Object {
            phrase: phrase.into(),
            boxes,
        }
    }

    fn txt(s: &str) -> Piece {
        Piece::Text(s.into())
    }

    #[test]
    fn format_names_serde_and_from_str() {
        for f in BoxFormat::ALL {
            assert_eq!(f.name().parse::<BoxFormat>(), Ok(f));
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.name())
            );
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!(" QWEN ".parse::<BoxFormat>(), Ok(BoxFormat::Qwen));
        assert_eq!(
            serde_json::from_str::<BoxFormat>("\"internvl\"").unwrap(),
            BoxFormat::InternVl
        );
        let err = "llava".parse::<BoxFormat>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown box format `llava`; valid formats: ferret, unit, internvl, qwen, paligemma"
        );
        assert_eq!(BoxFormat::default(), BoxFormat::Ferret);
    }

    #[test]
    fn ferret_hand_worked() {
        let p = parse(
            "A red circle [100, 200, 300, 400] left of a square.",
            BoxFormat::Ferret,
            999.0,
            999.0,
        );
        assert!(p.issues.is_empty());
        assert_eq!(
            p.text.pieces,
            vec![
                obj("A red circle", vec![bx(100.0, 200.0, 300.0, 400.0)]),
                txt(" left of a square.")
            ]
        );
        assert_eq!(p.text.plain(), "A red circle left of a square.");
        // Twice the frame: twice the pixels.
        let p = parse("[0, 0, 999, 999]", BoxFormat::Ferret, 1998.0, 999.0);
        assert_eq!(
            p.text.pieces,
            vec![obj("", vec![bx(0.0, 0.0, 1998.0, 999.0)])]
        );
    }

    #[test]
    fn bracket_phrase_rule() {
        let p = parse(
            "This part of the picture shows two squares [1, 2, 3, 4], [5, 6, 7, 8] and a circle [10, 10, 20, 20]. Done",
            BoxFormat::Ferret,
            999.0,
            999.0,
        );
        assert!(p.issues.is_empty());
        let objects = p.text.objects();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].0, "two squares");
        assert_eq!(
            objects[0].1,
            &[bx(1.0, 2.0, 3.0, 4.0), bx(5.0, 6.0, 7.0, 8.0)]
        );
        assert_eq!(objects[1].0, "a circle");
        assert_eq!(p.text.pieces[0], txt("This part of the picture shows "));
        assert_eq!(p.text.pieces[2], txt(" and "));
        assert_eq!(
            p.text.plain(),
            "This part of the picture shows two squares and a circle. Done"
        );
        // No determiner: leading function words are skipped.
        let (rest, phrase) = split_phrase("and on red boxes ");
        assert_eq!((rest, phrase), ("and on ", "red boxes"));
        // At most eight words, after the last delimiter.
        let (rest, phrase) = split_phrase("Hi. bb cc dd ee ff gg hh ii jj kk");
        assert_eq!(phrase, "dd ee ff gg hh ii jj kk");
        assert_eq!(rest, "Hi. bb cc ");
        assert_eq!(split_phrase("end. "), ("end. ", ""));
        // A box straight after a delimiter has an empty phrase.
        let p = parse("Look: [1, 2, 3, 4]", BoxFormat::Ferret, 999.0, 999.0);
        assert_eq!(
            p.text.pieces,
            vec![txt("Look: "), obj("", vec![bx(1.0, 2.0, 3.0, 4.0)])]
        );
    }

    #[test]
    fn unit_and_internvl_hand_worked() {
        let p = parse("[0.1, 0.2, 0.5, 0.6]", BoxFormat::Unit, 200.0, 100.0);
        assert!(p.issues.is_empty());
        assert_eq!(p.text.box_count(), 1);
        assert!(close(p.text.boxes()[0], bx(20.0, 20.0, 100.0, 60.0), 1e-4));
        let p = parse(
            "a dog [0, 250, 500, 1000]",
            BoxFormat::InternVl,
            2000.0,
            400.0,
        );
        assert_eq!(
            p.text.pieces,
            vec![obj("a dog", vec![bx(0.0, 100.0, 1000.0, 400.0)])]
        );
        // 1000 is off Ferret's grid.
        let p = parse(
            "a dog [0, 250, 500, 1000]",
            BoxFormat::Ferret,
            2000.0,
            400.0,
        );
        assert_eq!(p.text.box_count(), 0);
        assert_eq!(p.issues.len(), 1);
        assert!(
            p.issues[0].message.contains("outside 0–999"),
            "{}",
            p.issues[0]
        );
        let g = GroundedText {
            pieces: vec![obj("a dog", vec![bx(20.0, 20.0, 100.0, 60.0)])],
        };
        assert_eq!(
            render(&g, BoxFormat::Unit, 200.0, 100.0),
            "a dog [0.100, 0.200, 0.500, 0.600]"
        );
        assert_eq!(
            render(&g, BoxFormat::InternVl, 200.0, 100.0),
            "a dog [100, 200, 500, 600]"
        );
        assert_eq!(
            render(&g, BoxFormat::Ferret, 200.0, 100.0),
            "a dog [100, 200, 500, 599]"
        );
    }

    #[test]
    fn qwen_hand_worked() {
        let s = "<ref>the dog</ref><box>(100,200),(300,400)</box> chases <ref>two cats</ref><box>(0,0),(10,10)</box> <box>( 20 , 20 ),(30,30)</box>.";
        let p = parse(s, BoxFormat::Qwen, 999.0, 999.0);
        assert!(p.issues.is_empty(), "{:?}", p.issues);
        assert_eq!(
            p.text.pieces,
            vec![
                obj("the dog", vec![bx(100.0, 200.0, 300.0, 400.0)]),
                txt(" chases "),
                obj(
                    "two cats",
                    vec![bx(0.0, 0.0, 10.0, 10.0), bx(20.0, 20.0, 30.0, 30.0)]
                ),
                txt("."),
            ]
        );
        assert_eq!(p.text.plain(), "the dog chases two cats.");
        let p = parse(
            "see <box>(0,0),(999,999)</box>",
            BoxFormat::Qwen,
            1998.0,
            999.0,
        );
        assert_eq!(
            p.text.pieces,
            vec![txt("see "), obj("", vec![bx(0.0, 0.0, 1998.0, 999.0)])]
        );
        let g = GroundedText {
            pieces: vec![txt("Here"), obj("a cat", vec![bx(0.0, 0.0, 50.0, 25.0)])],
        };
        assert_eq!(
            render(&g, BoxFormat::Qwen, 100.0, 100.0),
            "Here <ref>a cat</ref><box>(0,0),(500,250)</box>"
        );
    }

    #[test]
    fn paligemma_hand_worked() {
        let p = parse(
            "<loc0256><loc0512><loc0768><loc1023> cat",
            BoxFormat::PaliGemma,
            1024.0,
            1024.0,
        );
        assert!(p.issues.is_empty());
        assert_eq!(
            p.text.pieces,
            vec![obj("cat", vec![bx(512.0, 256.0, 1023.0, 768.0)])]
        );
        let s = "<loc0000><loc0000><loc0512><loc0512> cat ; <loc0512><loc0512><loc1023><loc1023><loc0000><loc0512><loc0100><loc0600> dogs";
        let p = parse(s, BoxFormat::PaliGemma, 2048.0, 1024.0);
        assert!(p.issues.is_empty());
        assert_eq!(
            p.text.pieces,
            vec![
                obj("cat", vec![bx(0.0, 0.0, 1024.0, 512.0)]),
                obj(
                    "dogs",
                    vec![
                        bx(1024.0, 512.0, 2046.0, 1023.0),
                        bx(1024.0, 0.0, 1200.0, 100.0)
                    ]
                ),
            ]
        );
        assert_eq!(p.text.plain(), "cat dogs");
        let g = GroundedText {
            pieces: vec![
                obj("cat", vec![bx(512.0, 256.0, 1024.0, 768.0)]),
                obj("dog", vec![bx(0.0, 0.0, 10.0, 10.0)]),
                txt("end"),
            ],
        };
        assert_eq!(
            render(&g, BoxFormat::PaliGemma, 1024.0, 1024.0),
            "<loc0256><loc0512><loc0768><loc1023> cat ; <loc0000><loc0000><loc0010><loc0010> dog ; end"
        );
    }

    #[test]
    fn issue_display() {
        let s = "Left bracket box [12, 40, 5, 90]";
        let p = parse(s, BoxFormat::Ferret, 999.0, 999.0);
        assert_eq!(p.issues.len(), 1);
        assert_eq!(
            p.issues[0].to_string(),
            "byte 17: box [12, 40, 5, 90] has x2 < x1; box dropped, phrase kept"
        );
        assert_eq!(p.text.plain(), "Left bracket box");
        assert_eq!(p.text.box_count(), 0);
    }

    #[test]
    fn bracket_malformed() {
        let f = BoxFormat::Ferret;
        // One good box and one inverted box.
        let s = "a cat [10, 10, 20, 20] and a bad dog [12, 40, 5, 90] here";
        let p = parse(s, f, 999.0, 999.0);
        assert_eq!(p.text.box_count(), 1);
        assert_eq!(p.issues.len(), 1);
        assert_eq!(p.issues[0].byte_offset, s.find("[12").unwrap());
        assert_eq!(p.text.plain(), "a cat and a bad dog here");
        // A bad box in a group drops only itself.
        let p = parse(
            "dogs [1, 1, 5, 5], [9, 9, 9, 20], [6, 6, 8, 8]",
            f,
            999.0,
            999.0,
        );
        assert_eq!(
            p.text.objects(),
            vec![(
                "dogs",
                &[bx(1.0, 1.0, 5.0, 5.0), bx(6.0, 6.0, 8.0, 8.0)][..]
            )]
        );
        assert_eq!(p.issues.len(), 1);
        assert!(p.issues[0].message.contains("zero width"));
        // Unterminated.
        let p = parse("a cat [12, 34, 56", f, 999.0, 999.0);
        assert_eq!(p.text.pieces, vec![txt("a cat [12, 34, 56")]);
        assert_eq!(p.issues.len(), 1);
        assert_eq!(p.issues[0].byte_offset, 6);
        assert!(p.issues[0].message.contains("unterminated"));
        // Out of range, negative, Unit above 1.
        assert_eq!(parse("x [-1, 0, 5, 5]", f, 999.0, 999.0).issues.len(), 1);
        let p = parse(
            "a [0.1, 0.2, 1.5, 0.6] b [0.1, 0.2, 0.5, 0.6]",
            BoxFormat::Unit,
            10.0,
            10.0,
        );
        assert_eq!((p.text.box_count(), p.issues.len()), (1, 1));
        assert_eq!(p.text.plain(), "a b");
        // Zero-sized frame: no box survives.
        let p = parse("x [1, 2, 3, 4]", f, 0.0, 0.0);
        assert_eq!((p.text.box_count(), p.issues.len()), (0, 1));
        let p = parse("x [1, 2, 3, 4]", f, f32::NAN, 10.0);
        assert_eq!((p.text.box_count(), p.issues.len()), (0, 1));
    }

    #[test]
    fn plain_text_is_valid() {
        for f in BoxFormat::ALL {
            for s in [
                "Nothing to see here.",
                "A list [1, 2, 3] and [see figure] and [] and [1,2,3,4,5].",
                "a < b > c <location> (1, 2)",
                "",
            ] {
                let p = parse(s, f, 100.0, 100.0);
                assert!(p.issues.is_empty(), "{f}: {s:?}: {:?}", p.issues);
                assert_eq!(p.text.box_count(), 0);
                if s.is_empty() {
                    assert!(p.text.pieces.is_empty());
                } else {
                    assert_eq!(p.text.pieces, vec![txt(s)]);
                }
            }
        }
    }

    #[test]
    fn qwen_malformed() {
        let q = BoxFormat::Qwen;
        let p = parse(
            "<ref>a</ref><box>(1,2),(3,4)</box> <ref>b</ref><box>(9,9),(5,5)</box> c",
            q,
            999.0,
            999.0,
        );
        assert_eq!((p.text.box_count(), p.issues.len()), (1, 1));
        assert_eq!(p.issues[0].byte_offset, 47);
        assert_eq!(p.text.plain(), "a b c");
        // Unterminated box after a ref: ref kept as text, box kept as text.
        let p = parse("<ref>a</ref><box>(1,2)", q, 999.0, 999.0);
        assert_eq!(p.text.box_count(), 0);
        assert_eq!(p.issues.len(), 2);
        assert_eq!(p.text.plain(), "a <box>(1,2)");
        // Malformed content.
        let p = parse("<ref>a</ref><box>(1,2)</box>", q, 999.0, 999.0);
        assert_eq!((p.text.box_count(), p.issues.len()), (0, 1));
        assert!(p.issues[0].message.contains("not of the form"));
        // Stray closing tag and unclosed ref, next to a good box.
        let p = parse("x </box> <ref>y <box>(1,1),(2,2)</box>", q, 999.0, 999.0);
        assert_eq!((p.text.box_count(), p.issues.len()), (1, 2));
        assert_eq!(p.issues[0].byte_offset, 2);
        assert_eq!(p.issues[1].byte_offset, 9);
        assert_eq!(p.text.plain(), "x </box> <ref>y");
    }

    #[test]
    fn paligemma_malformed() {
        let g = BoxFormat::PaliGemma;
        let p = parse(
            "<loc0100><loc0100> cat ; <loc0000><loc0000><loc0500><loc0500> dog",
            g,
            1024.0,
            1024.0,
        );
        assert_eq!((p.text.box_count(), p.issues.len()), (1, 1));
        assert!(p.issues[0].message.contains("2 of 4"));
        assert_eq!(
            p.text.objects(),
            vec![("dog", &[bx(0.0, 0.0, 500.0, 500.0)][..])]
        );
        // Inverted group keeps its phrase.
        let p = parse(
            "<loc0500><loc0000><loc0100><loc0100> cat",
            g,
            1024.0,
            1024.0,
        );
        assert_eq!((p.text.box_count(), p.issues.len()), (0, 1));
        assert!(p.issues[0].message.contains("x2 < x1") || p.issues[0].message.contains("y2 < y1"));
        assert_eq!(p.text.plain(), "cat");
        // Malformed token and an out-of-range value.
        let p = parse(
            "<loc12> x <loc0000><loc0000><loc2000><loc0100> y",
            g,
            1024.0,
            1024.0,
        );
        assert_eq!((p.text.box_count(), p.issues.len()), (0, 2));
        assert!(p.issues[1].message.contains("outside 0–1023"));
    }

    #[test]
    fn replace_boxes_keeps_phrases() {
        let g = GroundedText {
            pieces: vec![
                txt("The"),
                obj("cat", vec![bx(0.0, 0.0, 5.0, 5.0), bx(1.0, 1.0, 3.0, 3.0)]),
                obj("dog", vec![bx(10.0, 10.0, 20.0, 20.0)]),
                obj("", vec![bx(1.0, 1.0, 2.0, 2.0)]),
                txt(", done."),
            ],
        };
        let r = g.replace_boxes(|b| {
            if b.x1 >= 1.0 {
                vec![]
            } else {
                vec![b, b.translate(1.0, 1.0)]
            }
        });
        assert_eq!(
            r.pieces,
            vec![
                txt("The"),
                obj("cat", vec![bx(0.0, 0.0, 5.0, 5.0), bx(1.0, 1.0, 6.0, 6.0)]),
                txt("dog"),
                txt(", done."),
            ]
        );
        assert_eq!(r.plain(), g.plain());
        assert_eq!(r.plain(), "The cat dog, done.");
        assert_eq!(r.box_count(), 2);
    }

    #[test]
    fn crop_maps_and_accessors() {
        let g = GroundedText {
            pieces: vec![txt("a "), obj("cat", vec![bx(1.0, 2.0, 3.0, 4.0)])],
        };
        let crop = bx(10.0, 20.0, 110.0, 120.0);
        let img = g.image_from_crop(crop);
        assert_eq!(img.boxes(), vec![bx(11.0, 22.0, 13.0, 24.0)]);
        assert_eq!(img.crop_from_image(crop), g);
        assert_eq!(g.objects(), vec![("cat", &[bx(1.0, 2.0, 3.0, 4.0)][..])]);
        assert_eq!(g.map_boxes(|b| b.round()).plain(), "a cat");
    }

    #[test]
    fn pathological_inputs_stay_linear() {
        // Quadratic scanning would make these take minutes.
        let parts = [
            "<ref>",
            "[1,2,3 ",
            "<loc0001>",
            "<box>",
            "[1, 2, 3, 4]",
            "<loc12",
            "a; ",
        ];
        for part in parts {
            let s = part.repeat(50_000);
            for f in BoxFormat::ALL {
                let p = parse(&s, f, 100.0, 100.0);
                assert!(p.text.boxes().iter().all(|b| b.is_valid()));
            }
        }
    }

    // --- Property tests ----------------------------------------------------

    fn word() -> impl Strategy<Value = String> {
        "[a-z]{1,8}"
    }

    fn phrase() -> impl Strategy<Value = String> {
        prop::collection::vec(word(), 1..4).prop_map(|w| w.join(" "))
    }

    fn box_in(w: f32, h: f32) -> impl Strategy<Value = Bbox> {
        // At least 2.5 cells of the coarsest grid (999) per side.
        let (mw, mh) = (2.5 * w / 999.0, 2.5 * h / 999.0);
        (0f32..1.0, 0f32..1.0, 0f32..1.0, 0f32..1.0).prop_map(move |(a, b, c, d)| {
            let x1 = a * (w - mw);
            let y1 = c * (h - mh);
            let x2 = (x1 + mw + b * (w - x1 - mw)).min(w);
            let y2 = (y1 + mh + d * (h - y1 - mh)).min(h);
            Bbox::new(x1, y1, x2, y2)
        })
    }

    fn grounded_in(w: f32, h: f32) -> impl Strategy<Value = GroundedText> {
        let piece = prop_oneof![
            "[a-z ]{0,30}".prop_map(Piece::Text),
            (phrase(), prop::collection::vec(box_in(w, h), 1..=3))
                .prop_map(|(phrase, boxes)| Piece::Object { phrase, boxes }),
        ];
        prop::collection::vec(piece, 0..7).prop_map(|pieces| GroundedText { pieces })
    }

    fn case() -> impl Strategy<Value = (f32, f32, GroundedText)> {
        (50f32..2000.0, 50f32..2000.0).prop_flat_map(|(w, h)| (Just(w), Just(h), grounded_in(w, h)))
    }

    fn round_trip(
        format: BoxFormat,
        w: f32,
        h: f32,
        g: &GroundedText,
    ) -> Result<(), TestCaseError> {
        let s = render(g, format, w, h);
        let p = parse(&s, format, w, h);
        prop_assert!(p.issues.is_empty(), "{:?} in {:?}", p.issues, s);
        prop_assert_eq!(p.text.plain(), g.plain(), "rendered {:?}", s);
        let (got, want) = (p.text.boxes(), g.boxes());
        prop_assert_eq!(got.len(), want.len(), "rendered {:?}", s);
        let (tx, ty) = (
            format.cell_size(w) * 1.001 + 1e-3,
            format.cell_size(h) * 1.001 + 1e-3,
        );
        for (a, b) in got.iter().zip(&want) {
            prop_assert!(
                (a.x1 - b.x1).abs() <= tx
                    && (a.x2 - b.x2).abs() <= tx
                    && (a.y1 - b.y1).abs() <= ty
                    && (a.y2 - b.y2).abs() <= ty,
                "{:?} vs {:?} in {:?}",
                a,
                b,
                s
            );
        }
        Ok(())
    }

    fn near_markup() -> impl Strategy<Value = String> {
        let frags = prop::sample::select(vec![
            "[",
            "]",
            ",",
            " ",
            "1",
            "12",
            "999",
            "1000",
            "-3",
            "0.5",
            ".",
            "\n",
            "<ref>",
            "</ref>",
            "<box>",
            "</box>",
            "(",
            ")",
            "<loc",
            "<loc0123>",
            "<loc1023>",
            "<loc12",
            ">",
            ";",
            "é",
            "漢",
            "🦀",
            "cat",
            "the",
            "1e5",
            "NaN",
            "[1,2,3",
            "<ref>a</ref><box>(1,2)",
            "[1, 2, 3, 4]",
            "<box>(1,2),(3,4)</box>",
            "99999999999999999999999999",
        ]);
        prop::collection::vec(frags, 0..40).prop_map(|v| v.concat())
    }

    fn check_parse(s: &str, w: f32, h: f32) -> Result<(), TestCaseError> {
        for f in BoxFormat::ALL {
            let p = parse(s, f, w, h);
            for b in p.text.boxes() {
                prop_assert!(b.is_finite() && b.is_valid(), "{:?} from {:?}", b, s);
            }
            for (_, boxes) in p.text.objects() {
                prop_assert!(!boxes.is_empty());
            }
            for i in &p.issues {
                prop_assert!(s.is_char_boundary(i.byte_offset));
            }
            let _ = render(&p.text, f, w, h);
            let _ = p.text.plain();
        }
        Ok(())
    }

    fn frame_side() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => 1f32..5000.0,
            1 => Just(0.0f32),
            1 => Just(f32::NAN),
            1 => Just(-10.0f32),
            1 => Just(f32::MAX),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_ferret((w, h, g) in case()) { round_trip(BoxFormat::Ferret, w, h, &g)?; }

        #[test]
        fn round_trip_unit((w, h, g) in case()) { round_trip(BoxFormat::Unit, w, h, &g)?; }

        #[test]
        fn round_trip_internvl((w, h, g) in case()) { round_trip(BoxFormat::InternVl, w, h, &g)?; }

        #[test]
        fn round_trip_qwen((w, h, g) in case()) { round_trip(BoxFormat::Qwen, w, h, &g)?; }

        #[test]
        fn round_trip_paligemma((w, h, g) in case()) { round_trip(BoxFormat::PaliGemma, w, h, &g)?; }

        #[test]
        fn parse_never_panics_on_any_string(s in any::<String>(), w in frame_side(), h in frame_side()) {
            check_parse(&s, w, h)?;
        }

        #[test]
        fn parse_never_panics_near_markup(s in near_markup(), w in frame_side(), h in frame_side()) {
            check_parse(&s, w, h)?;
        }

        #[test]
        fn replace_boxes_never_changes_plain((w, h, g) in case(), keep in prop::collection::vec(0u8..3, 0..30)) {
            let mut k = 0;
            let r = g.replace_boxes(|b| {
                let n = keep.get(k).copied().unwrap_or(0);
                k += 1;
                vec![b; n as usize]
            });
            prop_assert_eq!(r.plain(), g.plain());
            let _ = (w, h);
        }
    }
}
