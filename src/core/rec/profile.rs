//! REC prompt profiles: how a model family is asked for the box of a
//! referring expression, and in which syntax it answers.
//!
//! Box syntaxes differ by family and are never guessed per string (see
//! [`crate::core::grounded`]); so does the question. The built-in
//! profiles follow the prompts in use elsewhere:
//!
//! | profile | prompt | answer | source |
//! |---|---|---|---|
//! | `llava` | "Please provide the bounding box coordinate of the region this sentence describes: {expression}" | floats in 0–1 | lmms-eval's RefCOCO bbox tasks for LLaVA-1.5 |
//! | `ferret` | "What is the location of {expression} in the image?" | 0–999 grid | Ferret's REC evaluation |
//! | `qwen` | "<ref>{expression}</ref><box>" (the model completes the box) | `(x1,y1),(x2,y2)</box>`, 0–999 | Qwen-VL's `evaluate_grounding.py` |
//! | `internvl` | "Please provide the bounding box coordinate of the region this sentence describes: <ref>{expression}</ref>" | 0–1000 grid | InternVL's RefCOCO evaluation |
//! | `paligemma` | "detect {expression}" | `<loc…>` tokens, y first | PaliGemma's detection prefix |
//! | `tiny` | "Where is {expression}? Answer with its bounding box." | 0–999 grid | the tiny demo model's REC rows (`spr tiny data`) |
//!
//! A profile can also be written by hand (`--prompt` and `--format` on the
//! command line, or in a run's config): the prompt must contain
//! `{expression}`.

use serde::{Deserialize, Serialize};

use crate::core::grounded::BoxFormat;

/// The placeholder a prompt template holds.
pub const EXPRESSION: &str = "{expression}";

/// How to ask a model for one referring expression's box and read its
/// answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecProfile {
    /// Name (a built-in one, or anything for a hand-written profile).
    pub name: String,
    /// The user turn, with [`EXPRESSION`] where the expression goes.
    pub prompt: String,
    /// Box syntax of the answer.
    pub format: BoxFormat,
    /// Text the prompt already opened and the answer continues (Qwen's
    /// `<box>`): put in front of the answer before it is parsed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub answer_prefix: String,
}

impl RecProfile {
    /// Names of the built-in profiles.
    pub const BUILT_IN: [&'static str; 6] =
        ["llava", "ferret", "qwen", "internvl", "paligemma", "tiny"];

    /// A built-in profile by name (ASCII case ignored).
    pub fn built_in(name: &str) -> Option<RecProfile> {
        let p = |name: &str, prompt: &str, format, prefix: &str| RecProfile {
            name: name.into(),
            prompt: prompt.into(),
            format,
            answer_prefix: prefix.into(),
        };
        let describe =
            "Please provide the bounding box coordinate of the region this sentence describes: ";
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "llava" => p(
                "llava",
                &format!("{describe}{EXPRESSION}"),
                BoxFormat::Unit,
                "",
            ),
            "ferret" => p(
                "ferret",
                "What is the location of {expression} in the image?",
                BoxFormat::Ferret,
                "",
            ),
            "qwen" => p(
                "qwen",
                "<ref>{expression}</ref><box>",
                BoxFormat::Qwen,
                "<box>",
            ),
            "internvl" => p(
                "internvl",
                &format!("{describe}<ref>{EXPRESSION}</ref>"),
                BoxFormat::InternVl,
                "",
            ),
            "paligemma" => p("paligemma", "detect {expression}", BoxFormat::PaliGemma, ""),
            "tiny" => p(
                "tiny",
                "Where is {expression}? Answer with its bounding box.",
                BoxFormat::Ferret,
                "",
            ),
            _ => return None,
        })
    }

    /// A built-in profile, or an error listing them.
    pub fn named(name: &str) -> Result<RecProfile, String> {
        Self::built_in(name).ok_or_else(|| {
            format!(
                "unknown REC profile `{name}`; built-in profiles: {}",
                Self::BUILT_IN.join(", ")
            )
        })
    }

    /// Checks that the prompt has a place for the expression.
    pub fn validate(&self) -> Result<(), String> {
        if self.prompt.contains(EXPRESSION) {
            Ok(())
        } else {
            Err(format!(
                "prompt {:?} has no {EXPRESSION} placeholder",
                self.prompt
            ))
        }
    }

    /// The user turn for `expression`.
    pub fn prompt_for(&self, expression: &str) -> String {
        self.prompt.replace(EXPRESSION, expression)
    }

    /// The answer as the parser should see it ([`Self::answer_prefix`]
    /// put back in front, unless the model repeated it).
    pub fn answer_text(&self, output: &str) -> String {
        let trimmed = output.trim_start();
        if self.answer_prefix.is_empty() || trimmed.starts_with(&self.answer_prefix) {
            output.to_string()
        } else {
            format!("{}{output}", self.answer_prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::grounded;

    #[test]
    fn every_built_in_profile_is_valid_and_named() {
        for name in RecProfile::BUILT_IN {
            let p = RecProfile::built_in(name).unwrap();
            assert_eq!(p.name, name);
            p.validate().unwrap();
            assert!(p.prompt_for("the dog").contains("the dog"));
        }
        assert!(RecProfile::named("nope").unwrap_err().contains("llava"));
        assert_eq!(RecProfile::named("LLaVA").unwrap().format, BoxFormat::Unit);
    }

    #[test]
    fn qwen_answers_are_completed_before_parsing() {
        let q = RecProfile::named("qwen").unwrap();
        let text = q.answer_text("(100,200),(300,400)</box>");
        let parsed = grounded::parse(&text, q.format, 999.0, 999.0);
        assert_eq!(parsed.text.boxes().len(), 1);
        assert_eq!(
            q.answer_text("<box>(1,2),(3,4)</box>"),
            "<box>(1,2),(3,4)</box>"
        );
    }

    #[test]
    fn a_prompt_without_placeholder_is_refused() {
        let mut p = RecProfile::named("ferret").unwrap();
        p.prompt = "Where is it?".into();
        assert!(p.validate().unwrap_err().contains("{expression}"));
    }
}
