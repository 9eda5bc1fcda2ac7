//! Prompt templates for candidate generation (`spr generate`) and the
//! `[generate]` settings of `spr.toml`.
//!
//! SPR asks the model for grounded region descriptions with several
//! diverse prompts, some of which give the region's objects as "object
//! references", so that the candidates of one query differ in what they
//! mention and how precisely. A template is plain text with optional
//! placeholders filled per region:
//!
//! | placeholder | becomes |
//! |---|---|
//! | `{objects}` | the region's objects by name with counts: "two red circles, a blue square" |
//! | `{objects_with_boxes}` | each object with its box in the model's syntax, crop frame: "a red circle [120, 40, 300, 260], …" |
//! | `{count}` | the number of objects in the region |
//!
//! Built-in templates ([`built_in_templates`]):
//!
//! | id | gives the objects | text |
//! |---|---|---|
//! | `describe` | no | the export prompt: "Describe this image region in detail. Give the bounding box of every object you mention." |
//! | `layout` | no | where each object is and how they are arranged |
//! | `list` | no | every object with its box, one after another |
//! | `objects` | names (`{objects}`) | describe the named objects with their boxes |
//! | `referenced` | names and boxes (`{objects_with_boxes}`) | SPR's object references: describe each referenced object |
//!
//! `spr.toml` selects templates by id and may add its own:
//!
//! ```toml
//! [generate]
//! prompts = ["describe", "objects", "mine"]
//! samples = 2            # per (query, prompt)
//! temperature = 0.7      # 0 = greedy
//! top_p = 0.9
//! seed = 0
//! max_new_tokens = 160
//!
//! [[generate.templates]]
//! id = "mine"
//! text = "There are {count} objects here: {objects}. Describe them with boxes."
//! ```

use serde::{Deserialize, Serialize};

use crate::core::geometry::Bbox;
use crate::core::grounded::{self, BoxFormat, GroundedText, Piece};

/// A prompt template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptTemplate {
    /// Short id, unique among the templates; recorded in every candidate.
    pub id: String,
    /// The text, with placeholders (see the module docs).
    pub text: String,
}

/// The built-in templates, in their default order.
pub fn built_in_templates() -> Vec<PromptTemplate> {
    let t = |id: &str, text: &str| PromptTemplate {
        id: id.into(),
        text: text.into(),
    };
    vec![
        t(
            "describe",
            "Describe this image region in detail. Give the bounding box of every object you mention.",
        ),
        t(
            "layout",
            "Describe where each object in this image is and how the objects are arranged. Give a bounding box for every object.",
        ),
        t(
            "list",
            "List the objects in this image one by one, each with its bounding box.",
        ),
        t(
            "objects",
            "This image region contains {objects}. Describe them in detail and give the bounding box of each.",
        ),
        t(
            "referenced",
            "This image region contains {objects_with_boxes}. Describe each of these objects and where it is, with its bounding box.",
        ),
    ]
}

/// `[generate]` in `spr.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateConfig {
    /// Ids of the templates to use, in order.
    pub prompts: Vec<String>,
    /// Samples per (query, prompt).
    pub samples: usize,
    /// Softmax temperature; 0 decodes greedily (then one sample is enough).
    pub temperature: f64,
    /// Nucleus mass of top-p sampling.
    pub top_p: f64,
    /// Seed of every sequence's sampling stream (mixed with the query,
    /// prompt and sample, so a sequence's text does not depend on the
    /// batch or shard it ran in).
    pub seed: u64,
    /// Most tokens per description.
    pub max_new_tokens: usize,
    /// Templates added to the built-in ones (an id may replace a built-in).
    pub templates: Vec<PromptTemplate>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            prompts: vec![
                "describe".into(),
                "layout".into(),
                "objects".into(),
                "referenced".into(),
            ],
            samples: 2,
            temperature: 0.7,
            top_p: 0.9,
            seed: 0,
            max_new_tokens: 160,
            templates: Vec::new(),
        }
    }
}

impl GenerateConfig {
    /// The selected templates, in order, or an error naming an unknown id
    /// and the known ones.
    pub fn selected(&self) -> Result<Vec<PromptTemplate>, String> {
        let mut known = built_in_templates();
        for t in &self.templates {
            match known.iter_mut().find(|k| k.id == t.id) {
                Some(k) => *k = t.clone(),
                None => known.push(t.clone()),
            }
        }
        if self.prompts.is_empty() {
            return Err("[generate] prompts: select at least one template".into());
        }
        let mut out: Vec<PromptTemplate> = Vec::new();
        for id in &self.prompts {
            let t = known.iter().find(|k| &k.id == id).ok_or_else(|| {
                format!(
                    "[generate] prompts: unknown template {id:?}; known: {}",
                    known
                        .iter()
                        .map(|k| k.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            if out.iter().any(|o| o.id == t.id) {
                return Err(format!("[generate] prompts: {id:?} is listed twice"));
            }
            out.push(t.clone());
        }
        Ok(out)
    }

    /// Checks the sampling values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.samples == 0 {
            return Err("[generate] samples: must be at least 1".into());
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "[generate] temperature: must be finite and >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!(
                "[generate] top_p: must be in (0, 1], got {}",
                self.top_p
            ));
        }
        if self.max_new_tokens == 0 {
            return Err("[generate] max_new_tokens: must be at least 1".into());
        }
        self.selected().map(|_| ())
    }
}

/// One object of a region, as a template sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionObject {
    /// Category name ("red circle").
    pub name: String,
    /// Box, image pixels.
    pub bbox: Bbox,
}

/// "a", "two", … for a count.
fn count_word(n: usize) -> String {
    const WORDS: [&str; 11] = [
        "no", "a", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    WORDS
        .get(n)
        .map(|w| w.to_string())
        .unwrap_or_else(|| n.to_string())
}

/// English plural of a noun phrase's last word (enough for category names).
fn plural(name: &str) -> String {
    let (head, last) = match name.rsplit_once(' ') {
        Some((h, l)) => (format!("{h} "), l),
        None => (String::new(), name),
    };
    let last = if last.ends_with('s')
        || last.ends_with('x')
        || last.ends_with("ch")
        || last.ends_with("sh")
    {
        format!("{last}es")
    } else if last.ends_with('y')
        && !last.ends_with("ay")
        && !last.ends_with("ey")
        && !last.ends_with("oy")
    {
        format!("{}ies", &last[..last.len() - 1])
    } else {
        format!("{last}s")
    };
    format!("{head}{last}")
}

/// Names joined as English: "a, b and c".
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The template's text for a region: `objects` in reading order, `crop`
/// the frame the model sees (image pixels), `format` its box syntax.
pub fn render_prompt(
    template: &PromptTemplate,
    objects: &[RegionObject],
    crop: Bbox,
    format: BoxFormat,
) -> String {
    let mut text = template.text.clone();
    if text.contains("{objects}") {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for o in objects {
            match counts.iter_mut().find(|(n, _)| *n == o.name) {
                Some((_, c)) => *c += 1,
                None => counts.push((o.name.clone(), 1)),
            }
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|(name, c)| {
                if *c == 1 {
                    format!("a {name}")
                } else {
                    format!("{} {}", count_word(*c), plural(name))
                }
            })
            .collect();
        text = text.replace("{objects}", &join_and(&parts));
    }
    if text.contains("{objects_with_boxes}") {
        let parts: Vec<String> = objects
            .iter()
            .map(|o| {
                let g = GroundedText {
                    pieces: vec![Piece::Object {
                        phrase: format!("a {}", o.name),
                        boxes: vec![o.bbox],
                    }],
                }
                .crop_from_image(crop);
                grounded::render(&g, format, crop.width(), crop.height())
            })
            .collect();
        text = text.replace("{objects_with_boxes}", &join_and(&parts));
    }
    text.replace("{count}", &objects.len().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> Vec<RegionObject> {
        let o = |name: &str, b: [f32; 4]| RegionObject {
            name: name.into(),
            bbox: b.into(),
        };
        vec![
            o("red circle", [10.0, 10.0, 20.0, 20.0]),
            o("blue square", [30.0, 10.0, 40.0, 20.0]),
            o("red circle", [50.0, 50.0, 60.0, 60.0]),
        ]
    }

    #[test]
    fn placeholders_are_filled_per_region() {
        let crop = Bbox::new(0.0, 0.0, 100.0, 100.0);
        let t = PromptTemplate {
            id: "x".into(),
            text: "{count}: {objects}. Refs: {objects_with_boxes}".into(),
        };
        let text = render_prompt(&t, &objects(), crop, BoxFormat::Ferret);
        assert_eq!(
            text,
            "3: two red circles and a blue square. Refs: a red circle [100, 100, 200, 200], \
             a blue square [300, 100, 400, 200] and a red circle [500, 500, 599, 599]"
        );
        assert_eq!(plural("glass"), "glasses");
        assert_eq!(plural("toy"), "toys");
        assert_eq!(plural("berry"), "berries");
    }

    #[test]
    fn defaults_give_four_templates_some_with_objects() {
        let cfg = GenerateConfig::default();
        cfg.validate().unwrap();
        let sel = cfg.selected().unwrap();
        assert!(sel.len() >= 4);
        assert!(sel.iter().any(|t| t.text.contains("{objects")));
        assert!(sel.iter().any(|t| !t.text.contains("{objects")));
    }

    #[test]
    fn spr_toml_selects_replaces_and_adds_templates() {
        let cfg: GenerateConfig = toml::from_str(
            "prompts = [\"mine\", \"describe\"]\nsamples = 1\ntemperature = 0.0\n\
             [[templates]]\nid = \"mine\"\ntext = \"{objects}?\"\n\
             [[templates]]\nid = \"describe\"\ntext = \"Say it.\"\n",
        )
        .unwrap();
        let sel = cfg.selected().unwrap();
        assert_eq!(sel[0].text, "{objects}?");
        assert_eq!(sel[1].text, "Say it.");
        let bad = GenerateConfig {
            prompts: vec!["nope".into()],
            ..GenerateConfig::default()
        };
        let err = bad.validate().unwrap_err();
        assert!(err.contains("nope") && err.contains("describe"), "{err}");
        let twice = GenerateConfig {
            prompts: vec!["list".into(), "list".into()],
            ..GenerateConfig::default()
        };
        assert!(twice.validate().unwrap_err().contains("twice"));
    }
}
