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

/// What a worker sends back: the cache generation it was asked in, whether
/// it is a thumbnail, the path, the result.
struct Loaded {
    generation: u64,
    thumb: bool,
    path: PathBuf,
    result: Result<egui::ColorImage, String>,
}

/// Decoded images and thumbnails as egui textures, by path.
///
/// [`ImageCache::clear`] starts a new generation: decodes still running for
/// a project that was closed come back with the old generation and are
/// dropped, so they never show up in the next project.
pub struct ImageCache {
    tx: Sender<Loaded>,
    rx: Receiver<Loaded>,
    generation: u64,
    full: HashMap<PathBuf, Result<egui::TextureHandle, String>>,
    thumbs: HashMap<PathBuf, Result<egui::TextureHandle, String>>,
    pending: HashSet<(bool, PathBuf)>,
}

impl Default for ImageCache {
    fn default() -> Self {
        let (tx, rx) = channel();
        Self {
            tx,
            rx,
            generation: 0,
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
    /// Number of decodes in flight for the current generation.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn request(&mut self, ctx: &egui::Context, path: &Path, thumb: bool) {
        if !self.pending.insert((thumb, path.to_path_buf())) {
            return;
        }
        let tx = self.tx.clone();
        let ctx = ctx.clone();
        let generation = self.generation;
        let path = path.to_path_buf();
        // Thumbnails share the rayon pool; full images get their own thread
        // so a large decode never waits behind a page of thumbnails.
        let work = move || {
            let result = decode(&path, thumb);
            let _ = tx.send(Loaded {
                generation,
                thumb,
                path,
                result,
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
        while let Ok(l) = self.rx.try_recv() {
            if l.generation != self.generation {
                continue;
            }
            self.pending.remove(&(l.thumb, l.path.clone()));
            let name = format!(
                "{}-{}",
                if l.thumb { "thumb" } else { "image" },
                l.path.display()
            );
            let tex = l
                .result
                .map(|c| ctx.load_texture(name, c, egui::TextureOptions::LINEAR));
            if l.thumb {
                self.thumbs.insert(l.path, tex);
            } else {
                self.full.insert(l.path, tex);
            }
        }
    }

    /// The full image, requesting it if needed (`None` while it loads).
    pub fn full(
        &mut self,
        ctx: &egui::Context,
        path: &Path,
    ) -> Option<&Result<egui::TextureHandle, String>> {
        if !self.full.contains_key(path) {
            self.request(ctx, path, false);
            return None;
        }
        self.full.get(path)
    }

    /// The thumbnail, requesting it if needed.
    pub fn thumb(
        &mut self,
        ctx: &egui::Context,
        path: &Path,
    ) -> Option<&Result<egui::TextureHandle, String>> {
        if !self.thumbs.contains_key(path) {
            self.request(ctx, path, true);
            return None;
        }
        self.thumbs.get(path)
    }

    /// Forget everything, including decodes still running (another project
    /// was opened).
    pub fn clear(&mut self) {
        self.generation += 1;
        self.full.clear();
        self.thumbs.clear();
        self.pending.clear();
    }

    /// The decode error of a full image, if it failed.
    pub fn error(&self, path: &Path) -> Option<&str> {
        match self.full.get(path) {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(
        cache: &mut ImageCache,
        ctx: &egui::Context,
        generation_pending: impl Fn(&ImageCache) -> bool,
    ) {
        let start = std::time::Instant::now();
        while generation_pending(cache) && start.elapsed() < std::time::Duration::from_secs(10) {
            cache.poll(ctx);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn decodes_of_a_closed_project_never_appear() {
        let ctx = egui::Context::default();
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/images");
        let (a, b) = (demo.join("scene_001.png"), demo.join("scene_002.png"));
        let mut cache = ImageCache::default();
        // Requested for the old project, then the project changes before
        // the decode comes back.
        assert!(cache.full(&ctx, &a).is_none());
        cache.clear();
        assert_eq!(cache.pending(), 0);
        assert!(cache.full(&ctx, &b).is_none());
        settle(&mut cache, &ctx, |c| c.pending() > 0);
        // Give the old decode time to arrive too, then drain.
        std::thread::sleep(std::time::Duration::from_millis(200));
        cache.poll(&ctx);
        assert!(matches!(cache.full.get(&b), Some(Ok(_))));
        assert!(!cache.full.contains_key(&a), "a stale decode was kept");
    }
}
