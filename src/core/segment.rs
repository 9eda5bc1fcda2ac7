//! Response segmenters for fDPO: every token of a response gets a segment
//! id, so the objective can sum log-probs per segment and give each segment
//! its own β (see [`crate::train::objectives`]).
//!
//! fDPO (SpatialReasoner-R1, "Fine-Grained Preference Optimization Improves
//! Spatial Reasoning in VLMs", arXiv 2506.21656) splits a response into a
//! descriptive part and a reasoning part, written in `<description>…` and
//! `<reasoning>…` sections ([`SectionSegmenter`]). For SPR data (arXiv
//! 2510.14374) we split a grounded description into its text tokens and its
//! box tokens instead ([`GroundedSegmenter`]), with the reward gaps
//! ΔR_text = semantic score gap and ΔR_box = localization score gap
//! ([`spr_reward_gaps`]): fDPO over SPR's two scores.
//!
//! Segmenters are pluggable through the [`Segmenter`] trait. A segmenter
//! marks byte spans of the text ([`Segmenter::spans`]); bytes outside every
//! span belong to its default segment. Tokens are mapped to segments from
//! their byte offsets ([`assign_tokens`]), so this module needs no
//! tokenizer: pass, per token, the `(start, end)` byte range in the response
//! text that `tokenizers::Encoding::get_offsets` gives when the response is
//! encoded on its own (byte offsets, not `encode_char_offsets`).
//!
//! **Token rule.** A token goes to the segment that owns most of its
//! non-whitespace bytes (all bytes when it has only whitespace); a tie goes
//! to a marked segment over the default, then to the lower id. So a BPE
//! token `" ["` is a box token, `"]."` is a box token (one byte each; the
//! box wins), and `" the"` before a box is text. Tokens with an empty range
//! (special tokens such as BOS report `(0, 0)`) go to the default segment.

use serde::{Deserialize, Serialize};

use crate::core::grounded::BoxFormat;
use crate::core::project::PairRecord;
use crate::core::scores::Components;

/// Errors from mapping tokens to segments.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// A token's offsets are not a range inside the text.
    #[error(
        "token {token}: offsets ({start}, {end}) are not a byte range inside the {len}-byte text"
    )]
    BadOffsets {
        /// Index of the token.
        token: usize,
        /// Its start offset.
        start: usize,
        /// Its end offset.
        end: usize,
        /// Length of the text in bytes.
        len: usize,
    },
    /// A span names a segment the segmenter does not have.
    #[error("span {start}..{end} names segment {segment}, but there are only {n_segments}")]
    BadSegment {
        /// Span start.
        start: usize,
        /// Span end.
        end: usize,
        /// The segment id.
        segment: u32,
        /// How many segments exist.
        n_segments: usize,
    },
}

/// A byte range `start..end` of a text that belongs to one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSpan {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Segment id, `0..n_segments`.
    pub segment: u32,
}

/// Splits a response into segments for fDPO.
pub trait Segmenter {
    /// Number of segments; ids are `0..n_segments()`.
    fn n_segments(&self) -> usize;

    /// A short name of segment `id` (for logs and plots).
    fn segment_name(&self, id: u32) -> &str;

    /// The segment of bytes outside every span.
    fn default_segment(&self) -> u32;

    /// The marked byte spans of `text`, in order, not overlapping.
    fn spans(&self, text: &str) -> Vec<SegmentSpan>;

    /// The segment id of every token, from its byte offsets in `text`
    /// (see the module docs for the rule).
    fn token_segments(
        &self,
        text: &str,
        offsets: &[(usize, usize)],
    ) -> Result<Vec<u32>, SegmentError> {
        assign_tokens(
            text,
            &self.spans(text),
            self.default_segment(),
            self.n_segments(),
            offsets,
        )
    }
}

/// Maps tokens to segments: `spans` mark bytes of `text`, other bytes belong
/// to `default`; each token takes the segment of most of its non-whitespace
/// bytes (ties: marked over default, then lower id; empty tokens: default).
pub fn assign_tokens(
    text: &str,
    spans: &[SegmentSpan],
    default: u32,
    n_segments: usize,
    offsets: &[(usize, usize)],
) -> Result<Vec<u32>, SegmentError> {
    let bytes = text.as_bytes();
    let mut owner = vec![default; bytes.len()];
    for s in spans {
        if s.segment as usize >= n_segments {
            return Err(SegmentError::BadSegment {
                start: s.start,
                end: s.end,
                segment: s.segment,
                n_segments,
            });
        }
        let end = s.end.min(bytes.len());
        if s.start < end {
            owner[s.start..end].fill(s.segment);
        }
    }
    let mut counts = vec![0usize; n_segments];
    offsets
        .iter()
        .enumerate()
        .map(|(token, &(start, end))| {
            if start > end || end > bytes.len() {
                return Err(SegmentError::BadOffsets {
                    token,
                    start,
                    end,
                    len: bytes.len(),
                });
            }
            if start == end {
                return Ok(default);
            }
            counts.fill(0);
            let range = start..end;
            let mut any_visible = false;
            for i in range.clone() {
                if !bytes[i].is_ascii_whitespace() {
                    any_visible = true;
                    counts[owner[i] as usize] += 1;
                }
            }
            if !any_visible {
                for i in range {
                    counts[owner[i] as usize] += 1;
                }
            }
            let best = (0..n_segments)
                .max_by_key(|&s| (counts[s], s as u32 != default, std::cmp::Reverse(s)))
                .map_or(default, |s| s as u32);
            Ok(best)
        })
        .collect()
}

/// A section of a SpatialReasoner-R1 response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// `<description>…</description>`: what is in the image (segment 0).
    Description,
    /// `<reasoning>…</reasoning>`: the logical steps (segment 1).
    #[default]
    Reasoning,
}

impl Section {
    /// The segment id.
    pub fn id(self) -> u32 {
        match self {
            Section::Description => SectionSegmenter::DESCRIPTION,
            Section::Reasoning => SectionSegmenter::REASONING,
        }
    }

    fn tags(self) -> (&'static str, &'static str) {
        match self {
            Section::Description => ("<description>", "</description>"),
            Section::Reasoning => ("<reasoning>", "</reasoning>"),
        }
    }
}

/// Description vs reasoning sections (SpatialReasoner-R1).
///
/// A section runs from its opening tag to the end of its closing tag, tags
/// included (writing the tag is part of writing the section); an
/// unterminated section runs to the end of the text (a truncated
/// generation). Sections do not nest: inside one, only its own closing tag
/// counts. Tags are matched exactly (lower case, no attributes). Text
/// outside both sections, e.g. an `<answer>` part, goes to
/// [`SectionSegmenter::outside`] (by default reasoning: the final answer is
/// the conclusion of the reasoning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionSegmenter {
    /// The segment of text outside both sections.
    pub outside: Section,
}

impl SectionSegmenter {
    /// Segment id of the description section.
    pub const DESCRIPTION: u32 = 0;
    /// Segment id of the reasoning section.
    pub const REASONING: u32 = 1;

    /// A segmenter putting text outside both sections into `outside`.
    pub fn new(outside: Section) -> Self {
        Self { outside }
    }
}

impl Segmenter for SectionSegmenter {
    fn n_segments(&self) -> usize {
        2
    }

    fn segment_name(&self, id: u32) -> &str {
        match id {
            Self::DESCRIPTION => "description",
            Self::REASONING => "reasoning",
            _ => "?",
        }
    }

    fn default_segment(&self) -> u32 {
        self.outside.id()
    }

    fn spans(&self, text: &str) -> Vec<SegmentSpan> {
        let bytes = text.as_bytes();
        let mut spans = Vec::new();
        let mut at = 0;
        loop {
            let next = [Section::Description, Section::Reasoning]
                .into_iter()
                .filter_map(|s| find(bytes, s.tags().0.as_bytes(), at).map(|p| (p, s)))
                .min_by_key(|(p, _)| *p);
            let Some((start, section)) = next else { break };
            let (open, close) = section.tags();
            let body = start + open.len();
            let end = find(bytes, close.as_bytes(), body).map_or(bytes.len(), |p| p + close.len());
            spans.push(SegmentSpan {
                start,
                end,
                segment: section.id(),
            });
            at = end;
        }
        spans
    }
}

/// Text vs box tokens of a grounded description (SPR data), for the box
/// syntax of one model family ([`BoxFormat`], chosen by the model profile).
///
/// Box spans, found syntactically (values are not range-checked: what the
/// model wrote as a box is a box):
/// - Ferret, Unit, InternVL: `[n, n, n, n]`, four unsigned integers or
///   decimals separated by commas, spaces allowed; brackets included.
/// - Qwen: `<box>…</box>`, tags included; `<ref>phrase</ref>` is text.
/// - PaliGemma: each `<locNNNN>` (four digits).
///
/// Everything else, phrases and punctuation included, is text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundedSegmenter {
    /// The box syntax.
    pub format: BoxFormat,
}

impl GroundedSegmenter {
    /// Segment id of text tokens.
    pub const TEXT: u32 = 0;
    /// Segment id of box tokens.
    pub const BOX: u32 = 1;

    /// A segmenter for `format`.
    pub fn new(format: BoxFormat) -> Self {
        Self { format }
    }
}

impl Segmenter for GroundedSegmenter {
    fn n_segments(&self) -> usize {
        2
    }

    fn segment_name(&self, id: u32) -> &str {
        match id {
            Self::TEXT => "text",
            Self::BOX => "box",
            _ => "?",
        }
    }

    fn default_segment(&self) -> u32 {
        Self::TEXT
    }

    fn spans(&self, text: &str) -> Vec<SegmentSpan> {
        let bytes = text.as_bytes();
        let ranges = match self.format {
            BoxFormat::Ferret | BoxFormat::Unit | BoxFormat::InternVl => bracket_boxes(bytes),
            BoxFormat::Qwen => qwen_boxes(bytes),
            BoxFormat::PaliGemma => loc_tokens(bytes),
        };
        ranges
            .into_iter()
            .map(|(start, end)| SegmentSpan {
                start,
                end,
                segment: Self::BOX,
            })
            .collect()
    }
}

/// Which segmenter to use, as configured (`kind = "sections"` or
/// `kind = "grounded"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SegmenterConfig {
    /// [`SectionSegmenter`].
    Sections {
        /// Segment of text outside both sections.
        #[serde(default)]
        outside: Section,
    },
    /// [`GroundedSegmenter`].
    Grounded {
        /// The model family's box syntax.
        format: BoxFormat,
    },
}

impl SegmenterConfig {
    /// The configured segmenter.
    pub fn build(&self) -> Box<dyn Segmenter + Send + Sync> {
        match *self {
            SegmenterConfig::Sections { outside } => Box::new(SectionSegmenter::new(outside)),
            SegmenterConfig::Grounded { format } => Box::new(GroundedSegmenter::new(format)),
        }
    }
}

/// fDPO reward gaps for SPR pairs, in [`GroundedSegmenter`]'s segment order:
/// `[ΔR_text, ΔR_box]` = `[semantic(chosen) − semantic(rejected),
/// localization(chosen) − localization(rejected)]`.
///
/// When either semantic score is missing (no CLIP scorer has run) or a
/// score is not finite, that gap is 0: no evidence either way. The text
/// segment then keeps weight `softmax(0, λ_f·ΔR_box)`, below ½ when the
/// chosen description localizes better, so fDPO leans on the box tokens,
/// the only segment the data says something about.
pub fn spr_reward_gaps(chosen: &Components, rejected: &Components) -> [f32; 2] {
    let gap = |c: f32, r: f32| {
        if c.is_finite() && r.is_finite() {
            c - r
        } else {
            0.0
        }
    };
    let text = match (chosen.semantic, rejected.semantic) {
        (Some(c), Some(r)) => gap(c, r),
        _ => 0.0,
    };
    [text, gap(chosen.localization, rejected.localization)]
}

/// [`spr_reward_gaps`] for a stored pair. The chosen side uses the
/// localization score of the *refined* chosen text (what is trained on);
/// refinement only moves or removes boxes, so its semantic score (computed
/// on the text with boxes stripped) is unchanged.
pub fn spr_pair_reward_gaps(pair: &PairRecord) -> [f32; 2] {
    let chosen = Components {
        semantic: pair.chosen_scores.semantic,
        localization: pair.chosen_refined_localization,
    };
    spr_reward_gaps(&chosen, &pair.rejected_scores)
}

/// First occurrence of `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// `[n, n, n, n]` boxes: byte ranges including the brackets.
fn bracket_boxes(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' {
            if let Some(end) = bracket_box_end(b, i) {
                out.push((i, end));
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// End (exclusive) of a `[n, n, n, n]` box starting at `start`, if any.
fn bracket_box_end(b: &[u8], start: usize) -> Option<usize> {
    let skip_ws = |mut i: usize| {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        i
    };
    let mut i = start + 1;
    for k in 0..4 {
        i = skip_ws(i);
        i = number_end(b, i)?;
        i = skip_ws(i);
        let want = if k < 3 { b',' } else { b']' };
        if b.get(i) != Some(&want) {
            return None;
        }
        i += 1;
    }
    Some(i)
}

/// End of an unsigned decimal number (`12`, `0.125`, `.5`, `3.`) at `i`.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i, i - s)
    };
    let (after_int, n_int) = digits(i);
    i = after_int;
    let mut n_frac = 0;
    if b.get(i) == Some(&b'.') {
        let (after_frac, n) = digits(i + 1);
        i = after_frac;
        n_frac = n;
    }
    (n_int + n_frac > 0).then_some(i)
}

/// Qwen `<box>…</box>` ranges, tags included; unterminated boxes are text.
fn qwen_boxes(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = find(b, b"<box>", at) {
        match find(b, b"</box>", start + 5) {
            Some(close) => {
                let end = close + 6;
                out.push((start, end));
                at = end;
            }
            None => break,
        }
    }
    out
}

/// PaliGemma `<locNNNN>` tokens.
fn loc_tokens(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = find(b, b"<loc", at) {
        let digits = b.get(start + 4..start + 8);
        if digits.is_some_and(|d| d.iter().all(u8::is_ascii_digit))
            && b.get(start + 8) == Some(&b'>')
        {
            out.push((start, start + 9));
            at = start + 9;
        } else {
            at = start + 4;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::geometry::Bbox;
    use crate::core::grounded::{self, GroundedText, Piece};
    use proptest::prelude::*;

    /// Offsets of a hand-made tokenization (the pieces must spell `text`).
    fn offsets(text: &str, tokens: &[&str]) -> Vec<(usize, usize)> {
        assert_eq!(tokens.concat(), text, "tokens spell the text");
        let mut at = 0;
        tokens
            .iter()
            .map(|t| {
                let r = (at, at + t.len());
                at += t.len();
                r
            })
            .collect()
    }

    /// The tokens of one segment, joined.
    fn joined(tokens: &[&str], ids: &[u32], segment: u32) -> String {
        tokens
            .iter()
            .zip(ids)
            .filter(|(_, &s)| s == segment)
            .map(|(t, _)| *t)
            .collect()
    }

    const T: u32 = GroundedSegmenter::TEXT;
    const B: u32 = GroundedSegmenter::BOX;

    #[test]
    fn ferret_boxes_are_box_tokens() {
        let text = "A red circle [120, 340, 560, 780] sits beside two squares [10, 20, 30, 40], [50, 60, 70, 80].";
        let tokens = [
            "A", " red", " circle", " [", "120", ",", " 340", ",", " 560", ",", " 780", "]",
            " sits", " beside", " two", " squares", " [", "10", ",", " 20", ",", " 30", ",", " 40",
            "],", " [", "50", ",", " 60", ",", " 70", ",", " 80", "].",
        ];
        let seg = GroundedSegmenter::new(BoxFormat::Ferret);
        let ids = seg.token_segments(text, &offsets(text, &tokens)).unwrap();
        assert_eq!(
            joined(&tokens, &ids, T),
            "A red circle sits beside two squares"
        );
        assert_eq!(
            joined(&tokens, &ids, B),
            " [120, 340, 560, 780] [10, 20, 30, 40], [50, 60, 70, 80]."
        );
        assert_eq!(seg.spans(text).len(), 3);
        assert_eq!(seg.segment_name(B), "box");
    }

    #[test]
    fn unit_and_internvl_boxes() {
        let text = "a cat [0.100, 0.200, 0.500, 0.600] on a mat [.1,.2,1.,1.0]";
        let seg = GroundedSegmenter::new(BoxFormat::Unit);
        let spans = seg.spans(text);
        let got: Vec<&str> = spans.iter().map(|s| &text[s.start..s.end]).collect();
        assert_eq!(got, ["[0.100, 0.200, 0.500, 0.600]", "[.1,.2,1.,1.0]"]);
        let text = "the dog [100, 200, 1000, 999]";
        let spans = GroundedSegmenter::new(BoxFormat::InternVl).spans(text);
        assert_eq!(&text[spans[0].start..spans[0].end], "[100, 200, 1000, 999]");
    }

    #[test]
    fn bracket_lookalikes_are_text() {
        let seg = GroundedSegmenter::new(BoxFormat::Ferret);
        for text in [
            "three values [1, 2, 3]",
            "five values [1, 2, 3, 4, 5]",
            "letters [a, b, c, d]",
            "signed [-1, 2, 3, 4]",
            "unterminated [1, 2, 3, 4",
            "empty [] and [, , , ]",
            "dots [., ., ., .]",
        ] {
            assert!(seg.spans(text).is_empty(), "{text}");
        }
        // A broken box does not hide a good one right after it.
        let text = "[[1, 2, 3, 4]";
        assert_eq!(
            seg.spans(text),
            [SegmentSpan {
                start: 1,
                end: 13,
                segment: B
            }]
        );
    }

    #[test]
    fn qwen_box_tags_are_box_and_ref_tags_text() {
        let text = "<ref>a cat</ref><box>(100,200),(300,400)</box> on a mat";
        let tokens = [
            "<ref>", "a", " cat", "</ref>", "<box>", "(", "100", ",", "200", "),(", "300", ",",
            "400", ")", "</box>", " on", " a", " mat",
        ];
        let seg = GroundedSegmenter::new(BoxFormat::Qwen);
        let ids = seg.token_segments(text, &offsets(text, &tokens)).unwrap();
        assert_eq!(joined(&tokens, &ids, T), "<ref>a cat</ref> on a mat");
        assert_eq!(joined(&tokens, &ids, B), "<box>(100,200),(300,400)</box>");
        assert!(seg.spans("<box>(1,2),(3,4) no end").is_empty());
    }

    #[test]
    fn paligemma_loc_tokens_are_box() {
        let text = "<loc0256><loc0512><loc0768><loc1023> a cat ; <loc0000><loc0001><loc0002><loc0003> a dog <loc12>";
        let tokens = [
            "<loc0256>",
            "<loc0512>",
            "<loc0768>",
            "<loc1023>",
            " a",
            " cat",
            " ;",
            " ",
            "<loc0000>",
            "<loc0001>",
            "<loc0002>",
            "<loc0003>",
            " a",
            " dog",
            " <",
            "loc",
            "12",
            ">",
        ];
        let seg = GroundedSegmenter::new(BoxFormat::PaliGemma);
        let ids = seg.token_segments(text, &offsets(text, &tokens)).unwrap();
        assert_eq!(ids.iter().filter(|&&s| s == B).count(), 8);
        assert_eq!(joined(&tokens, &ids, T), " a cat ;  a dog <loc12>");
    }

    #[test]
    fn rendered_text_of_every_format_has_one_box_span_per_box() {
        let text = GroundedText {
            pieces: vec![
                Piece::Text("There is".into()),
                Piece::Object {
                    phrase: "a red circle".into(),
                    boxes: vec![Bbox::new(10.0, 20.0, 50.0, 60.0)],
                },
                Piece::Text("next to".into()),
                Piece::Object {
                    phrase: "two squares".into(),
                    boxes: vec![
                        Bbox::new(5.0, 5.0, 25.0, 30.0),
                        Bbox::new(60.0, 10.0, 90.0, 40.0),
                    ],
                },
            ],
        };
        for format in BoxFormat::ALL {
            let s = grounded::render(&text, format, 100.0, 100.0);
            let spans = GroundedSegmenter::new(format).spans(&s);
            let boxes = if format == BoxFormat::PaliGemma {
                12
            } else {
                3
            };
            assert_eq!(spans.len(), boxes, "{format:?}: {s}");
            // Removing the box spans leaves the plain text.
            let mut rest = String::new();
            let mut at = 0;
            for sp in &spans {
                rest.push_str(&s[at..sp.start]);
                at = sp.end;
            }
            rest.push_str(&s[at..]);
            for phrase in ["a red circle", "two squares", "next to"] {
                assert!(rest.contains(phrase), "{format:?}: {rest}");
            }
        }
    }

    #[test]
    fn sections_split_description_and_reasoning() {
        let text = "<description>The red cup is left of the plate.</description>\n<reasoning>The cup's x is smaller, so it is left.</reasoning>\n<answer>Yes</answer>";
        let tokens = [
            "<",
            "description",
            ">",
            "The",
            " red",
            " cup",
            " is",
            " left",
            " of",
            " the",
            " plate",
            ".</",
            "description",
            ">\n",
            "<",
            "reason",
            "ing",
            ">",
            "The",
            " cup",
            "'s",
            " x",
            " is",
            " smaller",
            ",",
            " so",
            " it",
            " is",
            " left",
            ".</",
            "reason",
            "ing",
            ">\n",
            "<",
            "answer",
            ">",
            "Yes",
            "</",
            "answer",
            ">",
        ];
        let offs = offsets(text, &tokens);
        let seg = SectionSegmenter::default();
        let ids = seg.token_segments(text, &offs).unwrap();
        let d = SectionSegmenter::DESCRIPTION;
        let r = SectionSegmenter::REASONING;
        assert_eq!(
            joined(&tokens, &ids, d),
            "<description>The red cup is left of the plate.</description>\n"
        );
        assert!(joined(&tokens, &ids, r).starts_with("<reasoning>The cup's"));
        assert!(joined(&tokens, &ids, r).ends_with("<answer>Yes</answer>"));
        // Outside text can go to the description instead.
        let seg = SectionSegmenter::new(Section::Description);
        let ids = seg.token_segments(text, &offs).unwrap();
        assert!(joined(&tokens, &ids, d).ends_with("<answer>Yes</answer>"));
        assert_eq!(seg.segment_name(d), "description");
    }

    #[test]
    fn sections_unterminated_reversed_and_nested() {
        let seg = SectionSegmenter::default();
        let d = SectionSegmenter::DESCRIPTION;
        let text = "<reasoning>first</reasoning><description>cut off";
        let spans = seg.spans(text);
        assert_eq!(spans.len(), 2);
        assert_eq!(
            spans[1],
            SegmentSpan {
                start: 28,
                end: text.len(),
                segment: d
            }
        );
        // A reasoning tag inside a description belongs to the description.
        let text = "<description>see <reasoning> here</description>";
        assert_eq!(
            seg.spans(text),
            [SegmentSpan {
                start: 0,
                end: text.len(),
                segment: d
            }]
        );
        assert!(seg.spans("no sections at all").is_empty());
    }

    #[test]
    fn empty_tokens_go_to_the_default_and_bad_offsets_are_errors() {
        let text = "x [1, 2, 3, 4]";
        let seg = GroundedSegmenter::new(BoxFormat::Ferret);
        assert_eq!(
            seg.token_segments(text, &[(0, 0), (2, 14), (14, 14)])
                .unwrap(),
            [T, B, T]
        );
        // Whitespace-only tokens count all their bytes.
        assert_eq!(seg.token_segments(text, &[(1, 2)]).unwrap(), [T]);
        let err = seg.token_segments(text, &[(3, 20)]).unwrap_err();
        assert_eq!(
            err,
            SegmentError::BadOffsets {
                token: 0,
                start: 3,
                end: 20,
                len: 14
            }
        );
        assert!(seg.token_segments(text, &[(5, 4)]).is_err());
        let bad = [SegmentSpan {
            start: 0,
            end: 1,
            segment: 7,
        }];
        assert!(assign_tokens(text, &bad, 0, 2, &[(0, 1)]).is_err());
    }

    #[test]
    fn multibyte_text_and_byte_fallback_offsets() {
        // "é" is two bytes; a byte-fallback tokenizer may split it.
        let text = "café [1, 2, 3, 4] ✓";
        let seg = GroundedSegmenter::new(BoxFormat::Ferret);
        let spans = seg.spans(text);
        assert_eq!(&text[spans[0].start..spans[0].end], "[1, 2, 3, 4]");
        let ids = seg
            .token_segments(text, &[(0, 4), (4, 5), (5, 6), (6, 18), (18, 22)])
            .unwrap();
        assert_eq!(ids, [T, T, T, B, T]);
    }

    #[test]
    fn spr_gaps_use_scores_and_zero_for_missing_semantic() {
        let c = Components {
            semantic: Some(0.31),
            localization: 0.8,
        };
        let r = Components {
            semantic: Some(0.25),
            localization: 0.2,
        };
        let [text, boxes] = spr_reward_gaps(&c, &r);
        assert!((text - 0.06).abs() < 1e-6 && (boxes - 0.6).abs() < 1e-6);
        let c = Components {
            semantic: None,
            ..c
        };
        assert_eq!(spr_reward_gaps(&c, &r)[0], 0.0);
        let r = Components {
            localization: f32::NAN,
            ..r
        };
        assert_eq!(spr_reward_gaps(&c, &r), [0.0, 0.0]);
    }

    #[test]
    fn segmenter_config_builds_from_toml() {
        let cfg: SegmenterConfig =
            toml::from_str("kind = \"grounded\"\nformat = \"qwen\"").unwrap();
        assert_eq!(
            cfg,
            SegmenterConfig::Grounded {
                format: BoxFormat::Qwen
            }
        );
        let seg = cfg.build();
        assert_eq!(seg.n_segments(), 2);
        assert_eq!(seg.spans("<box>(1,2),(3,4)</box>").len(), 1);
        let cfg: SegmenterConfig = toml::from_str("kind = \"sections\"").unwrap();
        assert_eq!(
            cfg,
            SegmenterConfig::Sections {
                outside: Section::Reasoning
            }
        );
        assert_eq!(cfg.build().default_segment(), SectionSegmenter::REASONING);
    }

    proptest! {
        #[test]
        fn any_text_and_offsets_give_valid_ids(
            text in "(\\PC|[\\[\\]<>,. 0-9]|<box>|</box>|<loc0123>|<description>|</reasoning>){0,40}",
            cuts in proptest::collection::vec(0usize..400, 0..20),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
            cuts.sort_unstable();
            let offs: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
            let segmenters: Vec<Box<dyn Segmenter>> = std::iter::once(Box::new(SectionSegmenter::default()) as Box<dyn Segmenter>)
                .chain(BoxFormat::ALL.into_iter().map(|f| Box::new(GroundedSegmenter::new(f)) as Box<dyn Segmenter>))
                .collect();
            for seg in &segmenters {
                let spans = seg.spans(&text);
                for w in spans.windows(2) {
                    prop_assert!(w[0].end <= w[1].start);
                }
                for s in &spans {
                    prop_assert!(s.start < s.end && s.end <= text.len());
                }
                let ids = seg.token_segments(&text, &offs).unwrap();
                prop_assert_eq!(ids.len(), offs.len());
                prop_assert!(ids.iter().all(|&i| (i as usize) < seg.n_segments()));
            }
        }
    }
}
