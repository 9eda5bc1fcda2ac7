//! Background image decoding for the canvas and the browser's thumbnails.
//!
//! The UI thread never decodes: requests go to worker threads and results
//! come back through a channel that the UI drains each frame (and a repaint
//! request wakes it). Failures (missing file, corrupt bytes, decode limits)
//! come back as messages shown where the image would be.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};

/// Side of a thumbnail in pixels.
pub const THUMB_SIDE: u32 = 64;

/// What a worker sends back.
enum Loaded {
    Full(usize, Result<egui::ColorImage, String>),
    Thumb(usize, Result<egui::ColorImage, String>),
}

/// Decoded images and thumbnails as egui textures, by dataset image index.
pub struct ImageCache {
    tx: Sender<Loaded>,
    rx: Receiver<Loaded>,
    full: HashMap<usize, Result<egui::TextureHandle, String>>,
    thumbs: HashMap<usize, Result<egui::TextureHandle, String>>,
    pending: HashSet<(bool, usize)>,
}

impl Default for ImageCache {
    fn default() -> Self {
        let (tx, rx) = channel();
        Self {
            tx,
            rx,
            full: HashMap::new(),
            thumbs: HashMap::new(),
            pending: HashSet::new(),
        }
    }
}

fn decode(path: &Path, thumb: bool) -> Result<egui::ColorImage, String> {
    let rgb = crate::core::imageio::load_rgb(path).map_err(|e| e.to_string())?;
    let rgb = if thumb {
        image::imageops::thumbnail(
            &rgb,
            THUMB_SIDE,
            THUMB_SIDE * rgb.height() / rgb.width().max(1),
        )
    } else {
        rgb
    };
    let size = [rgb.width() as usize, rgb.height() as usize];
    Ok(egui::ColorImage::from_rgb(size, rgb.as_raw()))
}

impl ImageCache {
    /// Number of decodes in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn request(&mut self, ctx: &egui::Context, image: usize, path: PathBuf, thumb: bool) {
        if !self.pending.insert((thumb, image)) {
            return;
        }
        let tx = self.tx.clone();
        let ctx = ctx.clone();
        // Thumbnails share the rayon pool; full images get their own thread
        // so a large decode never waits behind a page of thumbnails.
        let work = move || {
            let r = decode(&path, thumb);
            let _ = tx.send(if thumb {
                Loaded::Thumb(image, r)
            } else {
                Loaded::Full(image, r)
            });
            ctx.request_repaint();
        };
        if thumb {
            rayon::spawn(work);
        } else {
            std::thread::spawn(work);
        }
    }

    /// Move finished decodes into textures (call once per frame).
    pub fn poll(&mut self, ctx: &egui::Context) {
        while let Ok(loaded) = self.rx.try_recv() {
            let (thumb, image, result) = match loaded {
                Loaded::Full(i, r) => (false, i, r),
                Loaded::Thumb(i, r) => (true, i, r),
            };
            self.pending.remove(&(thumb, image));
            let name = format!("{}-{image}", if thumb { "thumb" } else { "image" });
            let tex = result.map(|c| ctx.load_texture(name, c, egui::TextureOptions::LINEAR));
            if thumb {
                self.thumbs.insert(image, tex);
            } else {
                self.full.insert(image, tex);
            }
        }
    }

    /// The full image, requesting it if needed (`None` while it loads).
    pub fn full(
        &mut self,
        ctx: &egui::Context,
        image: usize,
        path: impl FnOnce() -> PathBuf,
    ) -> Option<&Result<egui::TextureHandle, String>> {
        if !self.full.contains_key(&image) {
            self.request(ctx, image, path(), false);
            return None;
        }
        self.full.get(&image)
    }

    /// The thumbnail, requesting it if needed.
    pub fn thumb(
        &mut self,
        ctx: &egui::Context,
        image: usize,
        path: impl FnOnce() -> PathBuf,
    ) -> Option<&Result<egui::TextureHandle, String>> {
        if !self.thumbs.contains_key(&image) {
            self.request(ctx, image, path(), true);
            return None;
        }
        self.thumbs.get(&image)
    }

    /// Forget everything (another project was opened).
    pub fn clear(&mut self) {
        self.full.clear();
        self.thumbs.clear();
    }

    /// The decode error of a full image, if it failed.
    pub fn error(&self, image: usize) -> Option<&str> {
        match self.full.get(&image) {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }
}
