//! The state every panel reads — what is selected and the live scoring
//! parameters — and the commands panels push to change it.
//!
//! Panels never change the workspace or the selection directly: they read
//! [`Selection`] and [`Live`] and push [`Command`]s, which
//! `WorkbenchApp::apply_commands` carries out in one place after all
//! panels have drawn. That keeps the rules (what a new image selects, what
//! an undo invalidates, when a text edit session ends) in one function
//! instead of in every button.

use std::path::PathBuf;

use crate::core::workspace::Edit;

/// What the user has selected in the annotation view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// Selected image (dataset index).
    pub image: Option<usize>,
    /// Selected region (query id).
    pub region: Option<String>,
    /// Selected candidate (index into the workspace's candidates).
    pub candidate: Option<usize>,
}

/// The live parameters the ranking uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Live {
    /// Weight of the semantic score.
    pub lambda: f32,
    /// IoU threshold for matching.
    pub iou: f32,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            lambda: crate::core::scores::DEFAULT_LAMBDA,
            iou: crate::core::scores::MATCH_IOU,
        }
    }
}

/// Something a panel asks the app to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Open a project folder.
    Open(PathBuf),
    /// Select an image (dataset index): its first region, no candidate.
    SelectImage(usize),
    /// Select a region of the current image.
    SelectRegion(String),
    /// Select a candidate (or none).
    SelectCandidate(Option<usize>),
    /// Apply an edit (one undo step, saved).
    Apply(Box<Edit>),
    /// Show typed text of a candidate without saving it (an edit session).
    PreviewText {
        /// The candidate id.
        id: String,
        /// The text typed so far.
        text: String,
    },
    /// End the text edit session: one undo step, one write.
    CommitText,
    /// Undo the last edit.
    Undo,
    /// Redo the last undone edit.
    Redo,
    /// Write pairs and the TRL export at the live λ and IoU.
    Export,
    /// Show a message in the status bar.
    Status(String),
}
