//! The launch form of a training run: the options of `spr train` a
//! researcher sets most, turned into the exact command line the child
//! process runs (shown under the form, so it can be copied to a cluster).

use std::path::Path;

use crate::app::forms::{is_plain_name, profile_combo, ProjectDefaults};
use crate::core::runs::config::Objective;

/// The form's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchForm {
    /// Run name (folder under `runs/`).
    pub name: String,
    /// Model folder or hub id.
    pub model: String,
    /// Preference data: the project (its pairs) or a TRL JSONL.
    pub data: String,
    /// Objective.
    pub objective: Objective,
    /// β.
    pub beta: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA α.
    pub lora_alpha: f64,
    /// Optimizer steps.
    pub steps: u64,
    /// Pairs per batch.
    pub batch: usize,
    /// Checkpoint every N steps (0: on stop and at the end).
    pub checkpoint_every: u64,
    /// REC set evaluated during training (empty: none).
    pub eval_data: String,
    /// Evaluate every N steps (0: at the end).
    pub eval_every: u64,
    /// REC prompt profile.
    pub eval_profile: String,
}

impl LaunchForm {
    /// Defaults for a project in `root`: its pairs, and the demo's tiny
    /// model and REC set when they are there.
    pub fn for_project(root: &Path) -> LaunchForm {
        let defaults = ProjectDefaults::for_project(root);
        LaunchForm {
            name: "run-1".into(),
            model: defaults.model,
            data: ".".into(),
            objective: Objective::Dpo,
            beta: 0.1,
            lr: 1e-4,
            lora_r: 16,
            lora_alpha: 32.0,
            steps: 100,
            batch: 2,
            checkpoint_every: 50,
            eval_data: defaults.rec,
            eval_every: 0,
            eval_profile: defaults.profile,
        }
    }

    /// The run folder, relative to the project.
    pub fn run_dir(&self) -> String {
        format!("runs/{}", self.name.trim())
    }

    /// What is wrong with the fields, if anything.
    pub fn problem(&self, root: &Path) -> Option<String> {
        let name = self.name.trim();
        if !is_plain_name(name) {
            return Some("run name: a plain folder name, e.g. dpo-beta0.1".into());
        }
        if root.join(self.run_dir()).exists() {
            return Some(format!(
                "runs/{name} exists: pick another name, or resume that run"
            ));
        }
        if self.model.trim().is_empty() {
            return Some("model: a llava-hf model folder or hub id".into());
        }
        if self.data.trim().is_empty() {
            return Some("data: the project (.) or a TRL JSONL".into());
        }
        if self.steps == 0 || self.batch == 0 {
            return Some("steps and batch must be at least 1".into());
        }
        None
    }

    /// The arguments of `spr`.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--model",
            self.model.trim(),
            "--data",
            self.data.trim(),
            "--run",
            &self.run_dir(),
            "--objective",
            self.objective.name(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in [
            ("--beta", self.beta.to_string()),
            ("--lr", self.lr.to_string()),
            ("--lora-r", self.lora_r.to_string()),
            ("--lora-alpha", self.lora_alpha.to_string()),
            ("--steps", self.steps.to_string()),
            ("--batch", self.batch.to_string()),
            ("--checkpoint-every", self.checkpoint_every.to_string()),
        ] {
            a.push(k.into());
            a.push(v);
        }
        if !self.eval_data.trim().is_empty() {
            for (k, v) in [
                ("--eval-data", self.eval_data.trim().to_string()),
                ("--eval-every", self.eval_every.to_string()),
                ("--eval-profile", self.eval_profile.clone()),
            ] {
                a.push(k.into());
                a.push(v);
            }
        }
        a
    }

    /// The form's widgets.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        egui::Grid::new("launch-form")
            .num_columns(2)
            .show(ui, |ui| {
                let text = |ui: &mut egui::Ui, label: &str, v: &mut String, hint: &str| {
                    let l = ui.label(label);
                    ui.add(
                        egui::TextEdit::singleline(v)
                            .hint_text(hint)
                            .desired_width(220.0),
                    )
                    .labelled_by(l.id);
                    ui.end_row();
                };
                text(ui, "run name", &mut self.name, "dpo-beta0.1");
                text(ui, "model", &mut self.model, "folder or hub id");
                text(ui, "data", &mut self.data, ". (the project) or pairs.jsonl");
                ui.label("objective");
                egui::ComboBox::from_id_salt("objective")
                    .selected_text(self.objective.name())
                    .show_ui(ui, |ui| {
                        for o in Objective::ALL {
                            ui.selectable_value(&mut self.objective, o, o.name());
                        }
                    });
                ui.end_row();
                ui.label("β");
                ui.add(
                    egui::DragValue::new(&mut self.beta)
                        .speed(0.01)
                        .range(0.0..=10.0),
                );
                ui.end_row();
                ui.label("learning rate");
                ui.add(
                    egui::DragValue::new(&mut self.lr)
                        .speed(1e-6)
                        .range(0.0..=1.0)
                        .custom_formatter(|v, _| format!("{v:.1e}")),
                );
                ui.end_row();
                ui.label("LoRA r / α");
                ui.horizontal(|ui| {
                    ui.add(egui::DragValue::new(&mut self.lora_r).range(1..=1024));
                    ui.add(egui::DragValue::new(&mut self.lora_alpha).range(1.0..=4096.0));
                });
                ui.end_row();
                ui.label("steps");
                ui.add(egui::DragValue::new(&mut self.steps).range(1..=10_000_000));
                ui.end_row();
                ui.label("batch");
                ui.add(egui::DragValue::new(&mut self.batch).range(1..=4096));
                ui.end_row();
                ui.label("checkpoint every");
                ui.add(egui::DragValue::new(&mut self.checkpoint_every).range(0..=10_000_000));
                ui.end_row();
                text(
                    ui,
                    "eval data",
                    &mut self.eval_data,
                    "REC set (empty: none)",
                );
                ui.label("eval every / profile");
                ui.horizontal(|ui| {
                    ui.add(egui::DragValue::new(&mut self.eval_every).range(0..=10_000_000));
                    profile_combo(ui, "eval-profile", &mut self.eval_profile);
                });
                ui.end_row();
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_is_the_command_line_spr_train_parses() {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = LaunchForm::for_project(tmp.path());
        assert!(f.problem(tmp.path()).is_some(), "no model yet");
        f.model = "m".into();
        f.eval_data = "rec.json".into();
        assert_eq!(f.problem(tmp.path()), None);
        let args = f.args();
        let at = |k: &str| args[args.iter().position(|a| a == k).unwrap() + 1].clone();
        assert_eq!(at("--run"), "runs/run-1");
        assert_eq!(at("--objective"), "dpo");
        assert_eq!(at("--steps"), "100");
        assert_eq!(at("--eval-data"), "rec.json");
        std::fs::create_dir_all(tmp.path().join("runs/run-1")).unwrap();
        assert!(f.problem(tmp.path()).unwrap().contains("exists"));
        f.name = "../x".into();
        assert!(f.problem(tmp.path()).unwrap().starts_with("run name"));
    }
}
