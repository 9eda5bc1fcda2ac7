//! What the window's job forms share (the training launch form, the
//! evaluate form, "Generate"): defaults taken from the project, the rule
//! for a new output folder's name, and the REC profile picker.

use std::path::Path;

use crate::core::rec::profile::RecProfile;

/// Defaults a project offers to the forms: the bundled demo's tiny model
/// and REC set when the project sits beside them (`assets/demo` next to
/// `assets/tiny-model`), nothing otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectDefaults {
    /// Model folder, relative to the project (empty: none found).
    pub model: String,
    /// REC set, relative to the project (empty: none found).
    pub rec: String,
    /// REC profile matching the model.
    pub profile: String,
}

impl ProjectDefaults {
    /// The defaults for the project in `root`.
    pub fn for_project(root: &Path) -> ProjectDefaults {
        const TINY: &str = "../tiny-model";
        const REC: &str = "rec/finetune_demo_val.json";
        let tiny = root.join(TINY).join("config.json").is_file();
        let own = |found: bool, p: &str| if found { p.to_string() } else { String::new() };
        ProjectDefaults {
            model: own(tiny, TINY),
            rec: own(root.join(REC).is_file(), REC),
            profile: if tiny { "tiny" } else { "llava" }.into(),
        }
    }
}

/// Whether `name` can be a new folder's name: not empty, no path
/// separator, not hidden (so it cannot leave `runs/` or `evals/`).
pub fn is_plain_name(name: &str) -> bool {
    let n = name.trim();
    !n.is_empty() && !n.contains(['/', '\\']) && !n.starts_with('.')
}

/// A combo box over the built-in REC profiles.
pub fn profile_combo(ui: &mut egui::Ui, id: &str, profile: &mut String) {
    egui::ComboBox::from_id_salt(id)
        .selected_text(profile.as_str())
        .show_ui(ui, |ui| {
            for p in RecProfile::BUILT_IN {
                ui.selectable_value(profile, p.to_string(), p);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_their_folder() {
        assert!(is_plain_name("dpo-beta0.1"));
        for bad in ["", "  ", "../x", "a/b", "a\\b", ".hidden"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_demo_offers_the_tiny_model_and_its_rec_set() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
        let d = ProjectDefaults::for_project(&demo);
        assert_eq!(d.model, "../tiny-model");
        assert_eq!(d.rec, "rec/finetune_demo_val.json");
        assert_eq!(d.profile, "tiny");
        let tmp = tempfile::tempdir().unwrap();
        let none = ProjectDefaults::for_project(tmp.path());
        assert_eq!((none.model.as_str(), none.rec.as_str()), ("", ""));
        assert_eq!(none.profile, "llava");
    }
}
